//! Rotation of the clinic keyring's data keys, on a seeded clinic with two
//! nodes sharing one database: a scheduled rotation announces the new key
//! to every node before sealing under it, re-seals every row and retires
//! the old key; a compromise re-seals every row under the key, destroys it,
//! lists what it touched and leaves the audit chain verifiable; a forged
//! row under the key stops it before anything is destroyed; a writer
//! updating rows meanwhile loses nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use careconnect_authz::session::SystemClock;
use careconnect_authz::{Principal, Role, RoleSet, UserId};
use careconnect_core::audit::Verification;
use careconnect_core::finance::DateRange;
use careconnect_core::rotation::DataKeyKind;
use careconnect_core::seed::{DEMO_USERS, demo};
use careconnect_core::{Clinic, ClinicConfig, CoreError, KmsConfig};
use careconnect_crypto::kms::{LocalKms, RootSecret};
use careconnect_crypto::{KeyState, KmsKeyId};
use careconnect_storage::{Collection, RowData, RowId, Store};

const ISSUER: &str = "https://idp.test";
const RECHECK: Duration = Duration::from_millis(100);

fn who(s: &str, role: Role) -> Principal {
    Principal::new(
        UserId::new(ISSUER, s).unwrap(),
        [role].into_iter().collect(),
    )
}

fn admin() -> Principal {
    who("admin-adam", Role::Admin)
}

fn local_kms(dir: &Path) -> Arc<LocalKms> {
    let root = RootSecret::load_or_create_file(&dir.join("kms-root.key")).unwrap();
    let kms = LocalKms::open_or_create(dir.join("kms.bin"), root).unwrap();
    let mut keys = vec![
        KmsKeyId::new("careconnect-clinic").unwrap(),
        KmsKeyId::new("careconnect-documents").unwrap(),
    ];
    keys.extend(
        careconnect_core::subjects::SubjectKeys::kms_keys_named("careconnect-subjects-", 2)
            .unwrap(),
    );
    for k in keys {
        kms.ensure_key(&k).unwrap();
    }
    Arc::new(kms)
}

async fn store(dir: &Path) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.join("clinic.db").display());
    careconnect_storage::connect(&url).await.unwrap()
}

/// A node of the clinic in `dir`.
async fn node(dir: &Path, kms: Arc<LocalKms>) -> Clinic {
    let mut config = ClinicConfig::embedded(dir).unwrap();
    config.subject_buckets = 2;
    config.kms = KmsConfig::Provided(kms);
    config.keyring_recheck = RECHECK;
    Clinic::open_with(config, store(dir).await, Arc::new(SystemClock))
        .await
        .unwrap()
}

async fn seeded(dir: &Path) -> (Clinic, Clinic, Arc<LocalKms>) {
    let kms = local_kms(dir);
    let a = node(dir, kms.clone()).await;
    demo(&a, ISSUER).await.unwrap();
    let grey = who("doctor-grey", Role::Doctor);
    for i in 0..3 {
        let id = a
            .medicloud()
            .upload(
                &grey,
                &format!("scan-{i}.pdf"),
                "application/pdf",
                format!("%PDF-1.7 {i}").as_bytes(),
            )
            .await
            .unwrap();
        a.medicloud()
            .share(
                &grey,
                &id.id,
                &UserId::new(ISSUER, "partner-pat").unwrap(),
                None,
            )
            .await
            .unwrap();
    }
    let b = node(dir, kms.clone()).await;
    (a, b, kms)
}

/// Writes a row straight into the database, as someone with write access
/// to it (and no keys) could: `fill` bytes of garbage under `key_id`.
async fn forge(dir: &Path, coll: &str, id: &str, key_id: u32, fill: u8) {
    store(dir)
        .await
        .insert(
            &Collection::new(coll).unwrap(),
            &RowId::new(id).unwrap(),
            RowData {
                key_id,
                envelope: vec![fill; 90],
                indexes: vec![],
            },
        )
        .await
        .unwrap();
}

/// Deletes a row straight from the database.
async fn unforge(dir: &Path, coll: &str, id: &str) {
    let s = store(dir).await;
    let (coll, id) = (Collection::new(coll).unwrap(), RowId::new(id).unwrap());
    let row = s.get(&coll, &id).await.unwrap();
    s.delete(&coll, &id, row.version).await.unwrap();
}

/// What every clinic-keyring collection holds, as the services show it.
async fn manifest(c: &Clinic) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let admin = admin();
    for u in DEMO_USERS.iter().filter(|u| u.role == Role::Patient) {
        let p = who(u.subject, Role::Patient);
        let record = c.patients().record(&p).await.unwrap();
        let appointments = c.patients().appointments(&p, &p.user).await.unwrap();
        let prescriptions = c.patients().prescriptions(&p, &p.user).await.unwrap();
        out.insert(
            format!("patient {}", u.subject),
            format!("{record:?} {appointments:?} {prescriptions:?}"),
        );
    }
    let grey = who("doctor-grey", Role::Doctor);
    out.insert(
        "issued".into(),
        format!("{:?}", c.eps().issued(&grey, &grey.user).await.unwrap()),
    );
    out.insert(
        "in care".into(),
        format!("{:?}", c.records().patients(&grey).await.unwrap()),
    );
    out.insert(
        "documents".into(),
        format!("{:?}", c.medicloud().list(&grey).await.unwrap()),
    );
    let pat = who("partner-pat", Role::External);
    out.insert(
        "shared".into(),
        format!("{:?}", c.medicloud().list(&pat).await.unwrap()),
    );
    let fiona = who("finance-fiona", Role::Finance);
    out.insert(
        "transactions".into(),
        format!(
            "{:?}",
            c.finance()
                .transactions(&fiona, &DateRange::default())
                .await
                .unwrap()
        ),
    );
    out.insert(
        "doctors".into(),
        format!("{:?}", c.doctors().await.unwrap()),
    );
    out.insert(
        "patients".into(),
        format!("{:?}", c.records().patients(&admin).await.unwrap()),
    );
    out
}

async fn key_states(c: &Clinic) -> BTreeMap<u32, KeyState> {
    c.admin()
        .key_status(&admin())
        .await
        .unwrap()
        .clinic_keys
        .iter()
        .map(|k| (k.id.get(), k.state))
        .collect()
}

fn primary(states: &BTreeMap<u32, KeyState>) -> u32 {
    *states
        .iter()
        .find(|(_, s)| **s == KeyState::Primary)
        .unwrap()
        .0
}

async fn compromise(
    c: &Clinic,
    k: u32,
) -> Result<careconnect_core::rotation::DataKeyReport, CoreError> {
    c.rotation()
        .data_key_compromised(&admin(), k, false, &mut |_| {})
        .await
}

async fn intact(c: &Clinic) {
    let v = c.audit().verify().await.unwrap();
    assert!(matches!(v, Verification::Intact { .. }), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_rotation_reaches_every_node_reseals_and_retires() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _kms) = seeded(dir.path()).await;
    let before = manifest(&a).await;
    let states = key_states(&a).await;
    let old = primary(&states);

    let dry = a
        .rotation()
        .rotate_data_key(&admin(), true, true, &mut |_| {})
        .await
        .unwrap();
    assert!(dry.dry_run && dry.total_rows() > 10, "{dry:?}");
    assert_eq!(key_states(&a).await, states, "a dry run changes nothing");

    let doctor = who("doctor-grey", Role::Doctor);
    assert!(matches!(
        a.rotation()
            .rotate_data_key(&doctor, true, false, &mut |_| {})
            .await,
        Err(CoreError::Denied(_))
    ));

    let report = a
        .rotation()
        .rotate_data_key(&admin(), true, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(report.kind, DataKeyKind::Scheduled);
    assert_eq!(report.old_keys, vec![old]);
    assert_eq!(report.retired, vec![old]);
    assert_eq!(report.total_rows(), dry.total_rows());
    assert_eq!(report.touched.len() as u64, report.total_rows());
    let after = key_states(&a).await;
    assert_eq!(after.get(&old), Some(&KeyState::Retired));
    assert_eq!(primary(&after), report.new_key);

    // Node b re-read the keyset on its own and reads what a re-sealed.
    tokio::time::sleep(RECHECK * 3).await;
    assert_eq!(primary(&key_states(&b).await), report.new_key);
    assert_eq!(manifest(&b).await, before);
    assert_eq!(manifest(&a).await, before);
    // Nothing is left under the old key.
    let left = a
        .rotation()
        .data_key_compromised(&admin(), old, true, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(left.total_rows(), 0, "{left:?}");
    intact(&a).await;

    // Without re-encryption: a new primary, old keys kept as they are.
    let plain = b
        .rotation()
        .rotate_data_key(&admin(), false, false, &mut |_| {})
        .await
        .unwrap();
    assert!(plain.old_keys.is_empty() && plain.total_rows() == 0);
    tokio::time::sleep(RECHECK * 3).await;
    let states = key_states(&a).await;
    assert_eq!(primary(&states), plain.new_key);
    assert_eq!(states.get(&report.new_key), Some(&KeyState::Active));
    assert_eq!(manifest(&a).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_data_key_is_replaced_destroyed_and_the_audit_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _kms) = seeded(dir.path()).await;
    let before = manifest(&a).await;
    let k = primary(&key_states(&a).await);

    // Refusals: another role, a key the keyring does not hold.
    let doctor = who("doctor-grey", Role::Doctor);
    assert!(matches!(
        a.rotation()
            .data_key_compromised(&doctor, k, false, &mut |_| {})
            .await,
        Err(CoreError::Denied(_))
    ));
    let held = key_states(&a).await;
    let unknown = (1..).find(|i| !held.contains_key(i)).unwrap();
    assert!(matches!(
        a.rotation()
            .data_key_compromised(&admin(), unknown, false, &mut |_| {})
            .await,
        Err(CoreError::Invalid(_))
    ));

    // A forged row under the key: the job stops before destroying anything.
    let s = store(dir.path()).await;
    let people = Collection::new("core_people").unwrap();
    let forged = RowId::new("forged-row").unwrap();
    forge(dir.path(), "core_people", forged.as_str(), k, 1).await;
    assert!(matches!(
        compromise(&a, k).await,
        Err(CoreError::Corrupt(_))
    ));
    assert_ne!(key_states(&a).await.get(&k), Some(&KeyState::Destroyed));
    assert_eq!(manifest(&a).await, before);
    // Another kind of job while this one is unfinished is refused.
    assert!(matches!(
        a.rotation()
            .rotate_data_key(&admin(), true, false, &mut |_| {})
            .await,
        Err(CoreError::Conflict(_))
    ));
    // Verification names the forged row.
    let verified = a.rotation().verify(&admin(), &mut |_| {}).await.unwrap();
    assert!(!verified.passed());
    assert!(
        verified
            .failures
            .iter()
            .any(|f| f.starts_with("row core_people/forged-row")),
        "{verified:?}"
    );
    unforge(dir.path(), "core_people", forged.as_str()).await;

    // A row under the key whose key-id column names another key: the scans
    // miss it, the check by envelope does not, and nothing is destroyed.
    let victim = s.list(&people, None, 1).await.unwrap().rows.remove(0);
    let lie = |key_id| RowData {
        key_id,
        envelope: victim.envelope.clone(),
        indexes: victim.indexes.clone(),
    };
    let v = s
        .update(&people, &victim.id, victim.version, lie(unknown))
        .await
        .unwrap();
    assert!(matches!(
        compromise(&a, k).await,
        Err(CoreError::Corrupt(_))
    ));
    assert_eq!(key_states(&a).await.get(&k), Some(&KeyState::Compromised));
    s.update(&people, &victim.id, v, lie(k)).await.unwrap();
    let old_keyset = s.load("clinic-keyring").await.unwrap().1;

    let report = a
        .rotation()
        .data_key_compromised(&admin(), k, false, &mut |_| {})
        .await
        .unwrap();
    assert!(report.resumed);
    assert_eq!(report.kind, DataKeyKind::Compromise);
    assert_eq!(report.destroyed, vec![k]);
    assert!(report.total_rows() > 10, "{report:?}");
    assert_eq!(report.touched.len() as u64, report.total_rows());
    assert!(report.touched.iter().any(|t| t.starts_with("core_people/")));
    assert!(
        report
            .touched
            .iter()
            .any(|t| t.starts_with("core_documents/"))
    );
    assert!(report.audit_entries_sealed_off > 0);
    assert_eq!(key_states(&a).await.get(&k), Some(&KeyState::Destroyed));
    assert_eq!(manifest(&a).await, before);
    tokio::time::sleep(RECHECK * 3).await;
    assert_eq!(manifest(&b).await, before);
    // Every row opens, none under the destroyed key.
    let verified = b.rotation().verify(&admin(), &mut |_| {}).await.unwrap();
    assert!(verified.passed(), "{verified:?}");
    assert!(verified.rows_ok as usize >= report.touched.len());
    assert!(!verified.rows_by_key.contains_key(&k));
    // The chain verifies on both nodes, old entries through the checkpoint.
    intact(&a).await;
    intact(&b).await;
    // The key is gone: naming it again is a clear error.
    assert!(matches!(
        compromise(&a, k).await,
        Err(CoreError::Invalid(_))
    ));
    // An old copy of the keyset put back (K alive again) is loaded by no
    // node, and a rotation refuses to build on it.
    let (version, _) = s.load("clinic-keyring").await.unwrap();
    s.store("clinic-keyring", Some(version), old_keyset)
        .await
        .unwrap();
    tokio::time::sleep(RECHECK * 3).await;
    for n in [&a, &b] {
        let states = key_states(n).await;
        assert_eq!(states.get(&k), Some(&KeyState::Destroyed));
        assert_eq!(primary(&states), report.new_key);
    }
    assert_eq!(manifest(&b).await, before);
    assert!(matches!(
        a.rotation()
            .rotate_data_key(&admin(), false, false, &mut |_| {})
            .await,
        Err(CoreError::Corrupt(_))
    ));
    // A checkpoint cannot be recorded by hand.
    let fake = careconnect_core::audit::AuditEvent::system(
        careconnect_core::audit::CHECKPOINT_ACTION,
        "audit:through=1 history=00",
    );
    assert!(matches!(
        a.audit().record(fake).await,
        Err(CoreError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_updating_rows_during_a_compromise_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _kms) = seeded(dir.path()).await;
    let doctors: Vec<UserId> = (0..20)
        .map(|i| UserId::new(ISSUER, format!("doctor-extra-{i}")).unwrap())
        .collect();
    let roles: RoleSet = [Role::Doctor].into_iter().collect();
    for d in &doctors {
        a.admin()
            .set_person(&admin(), d, "Dr Extra v0", roles)
            .await
            .unwrap();
    }
    let k = primary(&key_states(&a).await);
    let stop = Arc::new(AtomicBool::new(false));
    // The writer works through node b, which learns of the rotation only
    // by re-reading the keyset.
    let writer = {
        let (b, doctors, roles, stop) = (b.clone(), doctors.clone(), roles, stop.clone());
        tokio::spawn(async move {
            let mut last = BTreeMap::new();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) || n < 40 {
                n += 1;
                let d = &doctors[n as usize % doctors.len()];
                let name = format!("Dr Extra v{n}");
                match b.admin().set_person(&admin(), d, &name, roles).await {
                    Ok(()) => {
                        last.insert(d.subject().to_owned(), name);
                    }
                    // Lost a compare-and-swap to the rotation: the update
                    // did not happen, and is not expected to show.
                    Err(CoreError::Conflict(_) | CoreError::Storage(_)) => {}
                    Err(e) => panic!("{e}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            last
        })
    };
    let report = a
        .rotation()
        .data_key_compromised(&admin(), k, false, &mut |_| {})
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let last = writer.await.unwrap();
    assert_eq!(report.destroyed, vec![k]);
    assert!(
        last.len() == doctors.len(),
        "every doctor written at least once"
    );
    let names: BTreeMap<String, String> = a
        .doctors()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.user.subject().to_owned(), p.name))
        .collect();
    for (d, name) in &last {
        assert_eq!(names.get(d), Some(name), "{d}: the last update shows");
    }
    // Nothing is left under the destroyed key: every row opens.
    assert_eq!(names.len(), doctors.len() + 2);
    intact(&a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_entry_under_the_key_after_its_replacement_stops_the_destruction() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _b, kms) = seeded(dir.path()).await;
    let k = primary(&key_states(&a).await);
    // A node that stopped re-reading the keyset (or a forger holding K):
    // it keeps chaining audit entries under K.
    let stale = {
        let mut config = ClinicConfig::embedded(dir.path()).unwrap();
        config.subject_buckets = 2;
        config.kms = KmsConfig::Provided(kms);
        config.keyring_recheck = Duration::from_secs(3600);
        Clinic::open_with(config, store(dir.path()).await, Arc::new(SystemClock))
            .await
            .unwrap()
    };
    let job = {
        let a = a.clone();
        tokio::spawn(async move {
            a.rotation()
                .data_key_compromised(&admin(), k, false, &mut |_| {})
                .await
        })
    };
    // Once the new key is primary and a window has passed, the stale node
    // writes an audited event under K.
    while primary(&key_states(&a).await) == k {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(a.reload_window() + RECHECK * 2).await;
    stale.admin().key_status(&admin()).await.unwrap();
    let Err(CoreError::LateAuditEntries { after, last }) = job.await.unwrap() else {
        panic!("the late entry stops the job");
    };
    assert!(last > after);
    assert_eq!(key_states(&a).await.get(&k), Some(&KeyState::Compromised));
    // Running again changes nothing: the entry is still there.
    assert!(matches!(
        compromise(&a, k).await,
        Err(CoreError::LateAuditEntries { .. })
    ));
    // Reviewed, the entry is accepted by an administrator with a reason;
    // not by anyone else, not without a reason, not for another key.
    let rotation = a.rotation();
    let accept = |who: Principal, key: u32, reason: &'static str| {
        let rotation = a.rotation();
        async move {
            rotation
                .accept_late_audit_entries(&who, key, last, reason)
                .await
        }
    };
    assert!(matches!(
        accept(who("doctor-grey", Role::Doctor), k, "reviewed: stale node").await,
        Err(CoreError::Denied(_))
    ));
    assert!(matches!(
        accept(admin(), k, "ok").await,
        Err(CoreError::ReasonRequired)
    ));
    assert!(matches!(
        accept(admin(), k ^ 1, "reviewed: stale node").await,
        Err(CoreError::NotFound)
    ));
    // Exactly what was reported: not more (entries forged later), not less.
    for wrong in [last + 1, u64::MAX, last - 1] {
        assert!(matches!(
            rotation
                .accept_late_audit_entries(&admin(), k, wrong, "reviewed: stale node")
                .await,
            Err(CoreError::Invalid(_))
        ));
    }
    rotation
        .accept_late_audit_entries(&admin(), k, last, "reviewed: node-3 did not reload")
        .await
        .unwrap();
    let report = compromise(&a, k).await.unwrap();
    assert_eq!(report.destroyed, vec![k]);
    intact(&a).await;
    let log = a.admin().audit_log(&admin(), last, 1000).await.unwrap();
    assert!(
        log.entries
            .iter()
            .any(|(_, e)| e.resource.contains("late audit entries accepted")),
        "the acceptance is on record"
    );
}

/// The key id of the first row of `coll` (a patient's subject key for a
/// patient collection).
async fn first_key(dir: &Path, coll: &str) -> (RowId, u32) {
    let s = store(dir).await;
    let row = s
        .list(&Collection::new(coll).unwrap(), None, 1)
        .await
        .unwrap()
        .rows
        .remove(0);
    (row.id, row.key_id)
}

async fn notes_of_every_patient(c: &Clinic) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for u in DEMO_USERS.iter().filter(|u| u.role == Role::Patient) {
        let p = who(u.subject, Role::Patient);
        let record = c.patients().record(&p).await.unwrap();
        out.insert(
            u.subject.to_owned(),
            record.notes.into_iter().map(|n| n.text).collect(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_patient_key_is_replaced_destroyed_and_nothing_else_moves() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _kms) = seeded(dir.path()).await;
    let before = manifest(&a).await;
    let clinic_keys = key_states(&a).await;
    let (note_id, k) = first_key(dir.path(), "core_notes").await;
    let verified = a.rotation().verify(&admin(), &mut |_| {}).await.unwrap();
    assert!(verified.passed(), "{verified:?}");
    assert!(
        verified.subjects_ok >= 3 && verified.patient_rows_ok >= 12,
        "{verified:?}"
    );

    // Refusals: another role; a clinic key; a key no one holds.
    let doctor = who("doctor-grey", Role::Doctor);
    let subject_compromise = |c: &Clinic, who: Principal, key: u32, dry: bool| {
        let c = c.clone();
        async move {
            c.rotation()
                .subject_key_compromised(&who, key, dry, &mut |_| {})
                .await
        }
    };
    assert!(matches!(
        subject_compromise(&a, doctor.clone(), k, false).await,
        Err(CoreError::Denied(_))
    ));
    for other in [primary(&clinic_keys), 7] {
        assert!(matches!(
            subject_compromise(&a, admin(), other, false).await,
            Err(CoreError::Invalid(_))
        ));
    }
    // A dry run counts the patient's record, note, appointment and
    // prescription, and changes nothing.
    let dry = subject_compromise(&a, admin(), k, true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.total_rows(), 4, "{dry:?}");
    assert_eq!(dry.rows.len(), 4, "{dry:?}");
    assert_eq!(first_key(dir.path(), "core_notes").await.1, k);

    let s = store(dir.path()).await;
    let notes = Collection::new("core_notes").unwrap();
    // A forged row under the key's id: not the patient's, left alone.
    forge(dir.path(), "core_notes", "forged-note", k, 1).await;
    // The patient's note with a key-id column that lies: the scans miss
    // it, the check by envelope stops the job before the key is destroyed.
    let victim = s.get(&notes, &note_id).await.unwrap();
    let lie = |key_id| RowData {
        key_id,
        envelope: victim.envelope.clone(),
        indexes: victim.indexes.clone(),
    };
    let v = s
        .update(&notes, &note_id, victim.version, lie(k ^ 1))
        .await
        .unwrap();
    assert!(matches!(
        subject_compromise(&a, admin(), k, false).await,
        Err(CoreError::Corrupt(_))
    ));
    // Another patient key's job while this one is unfinished is refused.
    let (_, other) = first_key(dir.path(), "core_records").await;
    if other != k {
        assert!(matches!(
            subject_compromise(&a, admin(), other, false).await,
            Err(CoreError::Conflict(_))
        ));
    }
    s.update(&notes, &note_id, v, lie(k)).await.unwrap();
    // A prescription row that opens under no clinic key: whose body it
    // holds cannot be told, so the key is not destroyed while it is there.
    let garbage = RowId::new("garbage-prescription").unwrap();
    forge(
        dir.path(),
        "core_prescriptions",
        garbage.as_str(),
        primary(&clinic_keys),
        2,
    )
    .await;
    assert!(matches!(
        subject_compromise(&a, admin(), k, false).await,
        Err(CoreError::Corrupt(_))
    ));
    unforge(dir.path(), "core_prescriptions", garbage.as_str()).await;

    // A doctor writes notes through node b meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (b, stop) = (b.clone(), stop.clone());
        tokio::spawn(async move {
            let grey = who("doctor-grey", Role::Doctor);
            let mut written = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) || n < 10 {
                n += 1;
                for p in ["patient-alice", "patient-bob"] {
                    let text = format!("note {n} for {p}");
                    let patient = UserId::new(ISSUER, p).unwrap();
                    b.records()
                        .add_note(&grey, &patient, &text, None)
                        .await
                        .unwrap();
                    written.push((p.to_owned(), text));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            written
        })
    };
    let report = subject_compromise(&a, admin(), k, false).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(report.resumed && report.destroyed, "{report:?}");
    assert_eq!(report.old_key, k);
    assert!(report.total_rows() >= 4, "{report:?}");
    assert_eq!(report.touched.len() as u64, report.total_rows());
    assert!(
        report
            .touched
            .iter()
            .any(|t| t.starts_with("core_prescriptions/"))
    );
    assert_eq!(report.foreign_rows, 1, "the forged row");
    // Clinic keys untouched; every patient reads as before on both nodes,
    // plus every note the writer wrote.
    assert_eq!(key_states(&a).await, clinic_keys);
    tokio::time::sleep(RECHECK * 3).await;
    for n in [&a, &b] {
        let notes = notes_of_every_patient(n).await;
        for (p, text) in &written {
            assert!(notes[p].contains(text), "{p}: {text} lost");
        }
    }
    let forged = s
        .get(&notes, &RowId::new("forged-note").unwrap())
        .await
        .unwrap();
    s.delete(&notes, &forged.id, forged.version).await.unwrap();
    // Nothing of the patient is under the key; it is gone from the
    // keyring, so naming it again is a clear error.
    let verified = b.rotation().verify(&admin(), &mut |_| {}).await.unwrap();
    assert!(verified.passed(), "{verified:?}");
    assert_eq!(verified.patient_rows_unattributed, 0);
    assert!(matches!(
        subject_compromise(&a, admin(), k, true).await,
        Err(CoreError::Invalid(_))
    ));
    // A row of the patient still under the destroyed key is lost data, and
    // verify says so (not "erased").
    let lost = RowId::new("lost-note").unwrap();
    s.insert(&notes, &lost, lie(k)).await.unwrap();
    let verified = b.rotation().verify(&admin(), &mut |_| {}).await.unwrap();
    assert!(
        verified
            .failures
            .iter()
            .any(|f| f.starts_with("row core_notes/lost-note: under a destroyed key")),
        "{verified:?}"
    );
    unforge(dir.path(), "core_notes", lost.as_str()).await;
    let raw = s.list(&notes, None, 1000).await.unwrap();
    assert!(raw.rows.iter().all(|r| r.key_id != k));
    // Only notes were added: records, appointments and prescriptions read
    // as before.
    let after = manifest(&a).await;
    for (what, seen) in &before {
        if !what.starts_with("patient ") {
            assert_eq!(after.get(what), Some(seen), "{what}");
        }
    }
    intact(&a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_bucket_key_is_replaced_and_every_patient_still_opens() {
    use careconnect_core::records::PatientDetails;
    use careconnect_core::rotation::CompromiseReport;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _kms) = seeded(dir.path()).await;
    let before = manifest(&a).await;
    let status = a.admin().key_status(&admin()).await.unwrap();
    let (bucket, keys) = status.bucket_keys.first().cloned().unwrap();
    let k = keys
        .iter()
        .find(|i| i.state == KeyState::Primary)
        .unwrap()
        .id
        .get();
    let compromise = |c: &Clinic, who: Principal, dry: bool| {
        let c = c.clone();
        async move {
            c.rotation()
                .key_compromised(&who, k, dry, &mut |_| {})
                .await
        }
    };
    assert!(matches!(
        compromise(&a, who("doctor-grey", Role::Doctor), false).await,
        Err(CoreError::Denied(_))
    ));
    let Ok(CompromiseReport::Bucket(dry)) = compromise(&a, admin(), true).await else {
        panic!("a bucket key");
    };
    assert!(dry.dry_run && dry.bucket == bucket && dry.subjects_resealed >= 1);
    assert!(dry.destroyed.is_empty());

    // A subject row of the bucket that opens under nothing, and is not
    // erased: destroying the key could lose it, so nothing is destroyed.
    let forged = RowId::new(format!("{:04x}{}", bucket, "ab".repeat(18))).unwrap();
    forge(dir.path(), "core_subjects", forged.as_str(), k, 3).await;
    assert!(matches!(
        compromise(&a, admin(), false).await,
        Err(CoreError::Corrupt(_))
    ));
    let held = a.admin().key_status(&admin()).await.unwrap().bucket_keys;
    assert!(held.iter().any(|(n, ks)| {
        *n == bucket
            && ks
                .iter()
                .any(|i| i.id.get() == k && i.state != KeyState::Destroyed)
    }));
    unforge(dir.path(), "core_subjects", forged.as_str()).await;

    // New patients registered through the other node meanwhile.
    let writer = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut made = Vec::new();
            for i in 0..12 {
                let p = UserId::new(ISSUER, format!("patient-new-{i}")).unwrap();
                let details = PatientDetails {
                    name: format!("New Patient {i}"),
                    date_of_birth: "1990-01-01".into(),
                    blood_type: "unknown".into(),
                    allergies: vec![],
                };
                b.records().register(&admin(), &p, &details).await.unwrap();
                made.push(p);
            }
            made
        })
    };
    let Ok(CompromiseReport::Bucket(report)) = compromise(&a, admin(), false).await else {
        panic!("a bucket key");
    };
    let made = writer.await.unwrap();
    assert!(report.destroyed.contains(&k), "{report:?}");
    assert!(
        report.subjects_resealed >= dry.subjects_resealed,
        "{report:?}"
    );
    // Every patient opens, old and new, on both nodes (the list of
    // patients grew by the new ones).
    let mut before = before;
    before.remove("patients");
    for n in [&a, &b] {
        let mut now = manifest(n).await;
        let listed = now.remove("patients").unwrap();
        assert_eq!(now, before);
        assert!(made.iter().all(|p| listed.contains(p.subject())));
    }
    for p in &made {
        let p = Principal::new(p.clone(), [Role::Patient].into_iter().collect());
        for n in [&a, &b] {
            n.patients().record(&p).await.unwrap();
        }
    }
    let verified = a.rotation().verify(&admin(), &mut |_| {}).await.unwrap();
    assert!(verified.passed(), "{verified:?}");
    assert!(verified.subjects_ok >= 3 + made.len() as u64);
    // The key is gone: naming it again is a clear error.
    assert!(matches!(
        compromise(&a, admin(), false).await,
        Err(CoreError::Invalid(_))
    ));
    intact(&a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_reread_its_keyset_stops_at_the_end_of_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _b, _kms) = seeded(dir.path()).await;
    let before = manifest(&a).await;
    // The stored keyset stops opening (a KMS that cannot unwrap it, say).
    let s = store(dir.path()).await;
    let (version, good) = s.load("clinic-keyring").await.unwrap();
    let broken = s
        .store("clinic-keyring", Some(version), vec![0; 64])
        .await
        .unwrap();
    // Within its lease the node serves; past it, it refuses every request
    // (nothing audited, nothing done), and says why.
    a.admin().key_status(&admin()).await.unwrap();
    let lease = a.reload_window() - RECHECK;
    tokio::time::sleep(lease + RECHECK * 2).await;
    let entries = a.audit().verify().await.unwrap();
    assert!(matches!(
        a.admin().key_status(&admin()).await,
        Err(CoreError::KeyringStale)
    ));
    let alice = who("patient-alice", Role::Patient);
    assert!(matches!(
        a.patients().record(&alice).await,
        Err(CoreError::KeyringStale)
    ));
    assert_eq!(
        a.audit().verify().await.unwrap(),
        entries,
        "nothing audited"
    );
    // The keyset opens again: the next re-read renews the lease.
    s.store("clinic-keyring", Some(broken), good).await.unwrap();
    tokio::time::sleep(RECHECK * 3).await;
    assert_eq!(manifest(&a).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_jobs_run_one_at_a_time_and_an_erasure_ends_a_patient_key_job() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _b, _kms) = seeded(dir.path()).await;
    let clinic_key = primary(&key_states(&a).await);
    let (_, k) = first_key(dir.path(), "core_notes").await;
    // A clinic compromise left unfinished (a forged row stops it): a
    // patient's key job waits for it.
    let forged = RowId::new("forged-row").unwrap();
    forge(dir.path(), "core_people", forged.as_str(), clinic_key, 1).await;
    assert!(matches!(
        compromise(&a, clinic_key).await,
        Err(CoreError::Corrupt(_))
    ));
    assert!(matches!(
        a.rotation()
            .key_compromised(&admin(), k, false, &mut |_| {})
            .await,
        Err(CoreError::Conflict(_))
    ));
    unforge(dir.path(), "core_people", forged.as_str()).await;
    compromise(&a, clinic_key).await.unwrap();

    // The patient is erased while the job for their key waits (every demo
    // patient is: one of them holds the key): the job ends, nothing of
    // theirs opens any more, and it leaves nothing behind.
    let job = {
        let a = a.clone();
        tokio::spawn(async move {
            a.rotation()
                .key_compromised(&admin(), k, false, &mut |_| {})
                .await
        })
    };
    tokio::time::sleep(a.reload_window() / 2).await;
    for u in DEMO_USERS.iter().filter(|u| u.role == Role::Patient) {
        let p = UserId::new(ISSUER, u.subject).unwrap();
        a.admin()
            .erase_patient(&admin(), &p, "test: erased during a key job")
            .await
            .unwrap();
    }
    let ended = job.await.unwrap();
    assert!(matches!(ended, Err(CoreError::Erased)), "{ended:?}");
    let (_, other) = first_key(dir.path(), "core_records").await;
    let next = a
        .rotation()
        .key_compromised(&admin(), other, true, &mut |_| {})
        .await;
    // Every patient's key is gone with them: no job is left to resume.
    assert!(matches!(next, Err(CoreError::Invalid(_))), "{next:?}");
}
