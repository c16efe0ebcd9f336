//! The clinic's services end to end, one suite on SQLite and on a
//! PostgreSQL database of its own: main flows, abuse (each a typed refusal
//! that changes nothing in storage), races, break-glass, a directory
//! import, the compromise of a clinic data key, and no plaintext patient
//! data in the SQLite file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use careconnect_authz::session::ManualClock;
use careconnect_authz::{Principal, Role, RoleSet, UserId};
use careconnect_core::audit::{Flag, Verification};
use careconnect_core::disclosures::AccessBasis;
use careconnect_core::eps::{PrescriptionInput, SignatureStatus, Status};
use careconnect_core::finance::DateRange;
use careconnect_core::records::PatientDetails;
use careconnect_core::{Clinic, ClinicConfig, CoreError};
use careconnect_storage::{Collection, RecordStore, Row, RowData, RowId, Store};

const ISSUER: &str = "https://idp.test";
/// Monday 2027-01-04 07:00 UTC.
const START: u64 = 1_799_046_000;
const DAY: u64 = 86_400;

fn user(s: &str) -> UserId {
    UserId::new(ISSUER, s).unwrap()
}

fn who(s: &str, role: Role) -> Principal {
    Principal::new(user(s), [role].into_iter().collect())
}

fn admin() -> Principal {
    who("admin-adam", Role::Admin)
}
fn grey() -> Principal {
    who("doctor-grey", Role::Doctor)
}
fn shepherd() -> Principal {
    who("doctor-shepherd", Role::Doctor)
}
fn alice() -> Principal {
    who("patient-alice", Role::Patient)
}
fn bob() -> Principal {
    who("patient-bob", Role::Patient)
}
fn fiona() -> Principal {
    who("finance-fiona", Role::Finance)
}
fn pat() -> Principal {
    who("partner-pat", Role::External)
}

fn denied<T: std::fmt::Debug>(r: Result<T, CoreError>) {
    assert!(
        matches!(r, Err(CoreError::Denied(_))),
        "expected a denial, got {r:?}"
    );
}

fn not_found<T: std::fmt::Debug>(r: Result<T, CoreError>) {
    assert!(
        matches!(r, Err(CoreError::NotFound)),
        "expected not found, got {r:?}"
    );
}

fn rx(drug: &str) -> PrescriptionInput {
    PrescriptionInput {
        drug: drug.into(),
        dosage: "10 mg".into(),
        frequency: "once daily".into(),
        notes: String::new(),
    }
}

const COLLECTIONS: [&str; 11] = [
    "core_records",
    "core_notes",
    "core_appointments",
    "core_slots",
    "core_prescriptions",
    "core_transactions",
    "core_care",
    "core_break_glass",
    "core_people",
    "core_signing_keys",
    "core_subjects",
];

/// Every row of the clinic's collections (id -> version, envelope).
async fn snapshot(store: &dyn RecordStore) -> BTreeMap<(String, String), (u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for c in COLLECTIONS {
        let coll = Collection::new(c).unwrap();
        let mut after = None;
        loop {
            let page = store.list(&coll, after.as_ref(), 1000).await.unwrap();
            for r in &page.rows {
                out.insert(
                    (c.to_owned(), r.id.as_str().to_owned()),
                    (r.version, r.envelope.clone()),
                );
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    out
}

struct Fixture {
    clinic: Clinic,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn fixture(store: Arc<dyn Store>, dir: tempfile::TempDir) -> Fixture {
    let clock = Arc::new(ManualClock::new(START));
    let mut config = ClinicConfig::embedded(dir.path()).unwrap();
    config.subject_buckets = 4;
    // Data-key rotations wait twice this between their steps.
    config.keyring_recheck = Duration::from_millis(50);
    let clinic = Clinic::open_with(config, store.clone(), clock.clone())
        .await
        .unwrap();
    let a = admin();
    let staff = [
        ("doctor-grey", "Dr Meredith Grey", Role::Doctor),
        ("doctor-shepherd", "Dr Derek Shepherd", Role::Doctor),
        ("finance-fiona", "Fiona Banks", Role::Finance),
        ("partner-pat", "Pat Lab", Role::External),
    ];
    for (s, name, role) in staff {
        clinic
            .admin()
            .set_person(&a, &user(s), name, [role].into_iter().collect())
            .await
            .unwrap();
    }
    for (s, name) in [
        ("patient-alice", "Alice Smith"),
        ("patient-bob", "Bob Jones"),
    ] {
        clinic
            .records()
            .register(
                &a,
                &user(s),
                &PatientDetails {
                    name: name.into(),
                    date_of_birth: "1980-02-29".into(),
                    blood_type: "O+".into(),
                    allergies: vec!["penicillin".into()],
                },
            )
            .await
            .unwrap();
    }
    Fixture {
        clinic,
        store,
        clock,
        _dir: dir,
    }
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("clinic.db").display());
    let store = careconnect_storage::connect(&url).await.unwrap();
    fixture(store, dir).await
}

/// Tomorrow at `hour`:00 UTC.
fn tomorrow(hour: u64) -> u64 {
    (START / DAY + 1) * DAY + hour * 3600
}

macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::sqlite().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = careconnect_testkit::OwnDb::create("cc_clinic").await;
                let store = careconnect_storage::connect(&db.url).await.unwrap();
                super::$name(super::fixture(store, tempfile::tempdir().unwrap()).await).await;
                db.drop_db().await;
            }
        }
    };
}

both_backends!(main_flows);
both_backends!(abuse_changes_nothing);
both_backends!(races_have_one_winner);
both_backends!(break_glass);
both_backends!(directory_import);
both_backends!(data_key_compromise);

async fn main_flows(f: Fixture) {
    let c = &f.clinic;
    // A patient books: the doctor gets the patient in care.
    assert!(c.records().patients(&grey()).await.unwrap().is_empty());
    let appt = c
        .patients()
        .book(&alice(), &alice().user, &grey().user, tomorrow(9), "cough")
        .await
        .unwrap();
    let mine = c
        .patients()
        .appointments(&alice(), &alice().user)
        .await
        .unwrap();
    assert_eq!(mine, vec![appt.clone()]);
    let list = c.records().patients(&grey()).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].patient.clone(), list[0].name.as_str()),
        (alice().user, "Alice Smith")
    );
    // Notes are appended, numbered, amended without overwriting.
    let n1 = c
        .records()
        .add_note(&grey(), &alice().user, "Dry cough for 2 weeks.", None)
        .await
        .unwrap();
    let n2 = c
        .records()
        .add_note(&grey(), &alice().user, "Correction: 3 weeks.", Some(n1.seq))
        .await
        .unwrap();
    assert_eq!((n1.seq, n2.seq, n2.amends), (1, 2, Some(1)));
    let record = c.records().record(&grey(), &alice().user).await.unwrap();
    assert_eq!(record.details.name, "Alice Smith");
    assert_eq!(record.notes, vec![n1.clone(), n2]);
    assert_eq!(c.patients().record(&alice()).await.unwrap(), record);
    // Prescribe (signed), the patient sees it verified and pays it once.
    let p = c
        .eps()
        .prescribe(&grey(), &alice().user, &rx("Amoxicillin"))
        .await
        .unwrap();
    assert_eq!(
        (p.signature, p.status),
        (SignatureStatus::Valid, Status::Issued)
    );
    let seen = c
        .patients()
        .prescriptions(&alice(), &alice().user)
        .await
        .unwrap();
    assert_eq!(seen, vec![p.clone()]);
    let tx = c.patients().pay(&alice(), &p.id).await.unwrap();
    assert_eq!(tx.amount_pence, 990);
    assert!(tx.pseudonym.starts_with("P-") && !tx.pseudonym.contains("alice"));
    assert!(matches!(
        c.patients().pay(&alice(), &p.id).await,
        Err(CoreError::Conflict(_))
    ));
    assert!(matches!(
        c.eps().cancel(&grey(), &p.id).await,
        Err(CoreError::Conflict(_))
    ));
    let issued = c.eps().issued(&grey(), &grey().user).await.unwrap();
    assert!(matches!(issued[0].status, Status::Paid { .. }));
    // The prescriber cancels an unpaid one.
    let p2 = c
        .eps()
        .prescribe(&grey(), &alice().user, &rx("Ibuprofen"))
        .await
        .unwrap();
    let cancelled = c.eps().cancel(&grey(), &p2.id).await.unwrap();
    assert!(matches!(cancelled.status, Status::Cancelled { .. }));
    assert!(matches!(
        c.patients().pay(&alice(), &p2.id).await,
        Err(CoreError::Conflict(_))
    ));
    // Finance: one transaction, pseudonymous; date filters; CSV.
    let all = c
        .finance()
        .transactions(&fiona(), &DateRange::default())
        .await
        .unwrap();
    assert_eq!(all, vec![tx.clone()]);
    let before = DateRange {
        from: None,
        to: Some("2027-01-03".into()),
    };
    assert!(
        c.finance()
            .transactions(&fiona(), &before)
            .await
            .unwrap()
            .is_empty()
    );
    let that_day = DateRange {
        from: Some("2027-01-04".into()),
        to: Some("2027-01-04".into()),
    };
    assert_eq!(
        c.finance()
            .transactions(&fiona(), &that_day)
            .await
            .unwrap()
            .len(),
        1
    );
    let csv = c
        .finance()
        .export_csv(&fiona(), &DateRange::default())
        .await
        .unwrap();
    assert!(csv.starts_with("id,date_utc,amount,description,patient_pseudonym\n"));
    // Finance sees the day only (review finding 7): a time to the second
    // would match the payment's audit entry and link the pseudonyms.
    let txs = c
        .finance()
        .transactions(&fiona(), &DateRange::default())
        .await
        .unwrap();
    assert!(!txs.is_empty() && txs.iter().all(|t| t.at % 86_400 == 0));
    assert!(!csv.contains(':'), "no time of day in the export: {csv}");
    assert!(csv.contains(",9.90,Prescription charge,P-"), "{csv}");
    assert!(!csv.contains("Amoxicillin") && !csv.contains("Alice"));
    // Cancel an own future appointment; the slot is free again, and the
    // care the booking made ends with it.
    c.patients().cancel(&alice(), &appt.id).await.unwrap();
    denied(c.records().record(&grey(), &alice().user).await);
    assert!(c.records().patients(&grey()).await.unwrap().is_empty());
    assert!(matches!(
        c.patients().cancel(&alice(), &appt.id).await,
        Err(CoreError::Conflict(_))
    ));
    c.patients()
        .book(&bob(), &bob().user, &grey().user, tomorrow(9), "")
        .await
        .unwrap();
    // Admin: audit log intact and flagged overrides; key status.
    let r = c.records().record(&admin(), &alice().user).await.unwrap();
    assert_eq!(r.notes.len(), 2);
    let view = c.admin().audit_log(&admin(), 1, 1000).await.unwrap();
    assert!(matches!(view.verification, Verification::Intact { .. }));
    assert!(
        view.entries
            .iter()
            .any(|(_, e)| e.flags.contains(&Flag::AdminOverride))
    );
    assert!(
        view.entries
            .iter()
            .all(|(_, e)| !e.resource.contains("patient-alice")
                && e.actor
                    .as_ref()
                    .is_none_or(|a| a.subject() != "patient-alice")),
        "the audit log names patients by pseudonym"
    );
    let own_reads = view
        .entries
        .iter()
        .filter(|(_, e)| e.action == "ReadHealthRecord" && e.roles == "patient")
        .count();
    assert!(own_reads >= 1);
    let keys = c.admin().key_status(&admin()).await.unwrap();
    assert_eq!(keys.clinic_keys.len(), 1);
    assert_eq!(keys.kms_keys.len(), 6);
    // Care by admin assignment, then revoked.
    assert!(c.records().patients(&shepherd()).await.unwrap().is_empty());
    c.admin()
        .assign_care(&admin(), &shepherd().user, &bob().user)
        .await
        .unwrap();
    c.records().record(&shepherd(), &bob().user).await.unwrap();
    c.admin()
        .revoke_care(&admin(), &shepherd().user, &bob().user)
        .await
        .unwrap();
    denied(c.records().record(&shepherd(), &bob().user).await);
}

async fn abuse_changes_nothing(f: Fixture) {
    let c = &f.clinic;
    let appt = c
        .patients()
        .book(&bob(), &bob().user, &grey().user, tomorrow(10), "")
        .await
        .unwrap();
    c.patients()
        .book(&alice(), &alice().user, &grey().user, tomorrow(11), "")
        .await
        .unwrap();
    let bobs = c
        .eps()
        .prescribe(&grey(), &bob().user, &rx("Metformin"))
        .await
        .unwrap();
    let before = snapshot(f.store.as_ref()).await;
    let (a, b) = (alice(), bob());
    // Patients: another patient's data.
    denied(c.records().record(&a, &b.user).await);
    denied(c.patients().prescriptions(&a, &b.user).await);
    denied(c.patients().appointments(&a, &b.user).await);
    not_found(c.patients().pay(&a, &bobs.id).await);
    denied(
        c.patients()
            .book(&a, &b.user, &grey().user, tomorrow(12), "")
            .await,
    );
    not_found(c.patients().cancel(&a, &appt.id).await);
    denied(
        c.records()
            .add_note(&a, &a.user, "I am a doctor now", None)
            .await,
    );
    denied(c.eps().prescribe(&a, &a.user, &rx("Oxycodone")).await);
    denied(c.finance().transactions(&a, &DateRange::default()).await);
    denied(c.admin().assign_care(&a, &grey().user, &a.user).await);
    // A doctor outside care, and with another doctor's prescription.
    let s = shepherd();
    denied(c.records().record(&s, &b.user).await);
    denied(
        c.records()
            .add_note(&s, &b.user, "not my patient", None)
            .await,
    );
    denied(c.eps().prescribe(&s, &b.user, &rx("Warfarin")).await);
    not_found(c.eps().cancel(&s, &bobs.id).await);
    denied(c.eps().issued(&s, &grey().user).await);
    // Finance and the external partner touch no clinical data.
    for p in [fiona(), pat()] {
        denied(c.records().record(&p, &b.user).await);
        denied(c.records().patients(&p).await);
        denied(c.eps().prescribe(&p, &b.user, &rx("Aspirin")).await);
        not_found(c.eps().cancel(&p, &bobs.id).await);
        denied(c.admin().audit_log(&p, 1, 10).await);
        denied(
            c.admin()
                .erase_patient(&p, &b.user, "because I can do it")
                .await,
        );
    }
    denied(
        c.finance()
            .transactions(&pat(), &DateRange::default())
            .await,
    );
    // Made-up ids.
    for id in ["00000000000000000000000000000000", "../../etc/passwd", ""] {
        not_found(c.patients().pay(&b, id).await);
        not_found(c.eps().cancel(&grey(), id).await);
        not_found(c.patients().cancel(&b, id).await);
    }
    not_found(c.records().record(&admin(), &user("patient-nobody")).await);
    assert!(matches!(
        c.records().add_note(&grey(), &b.user, "x", Some(99)).await,
        Err(CoreError::Invalid(_))
    ));
    // Bad input.
    assert!(matches!(
        c.eps().prescribe(&grey(), &b.user, &rx("")).await,
        Err(CoreError::Invalid(_))
    ));
    assert!(matches!(
        c.patients()
            .book(&b, &b.user, &grey().user, tomorrow(3), "")
            .await,
        Err(CoreError::Invalid(_))
    ));
    assert!(matches!(
        c.patients()
            .book(&b, &b.user, &grey().user, START - 3600, "")
            .await,
        Err(CoreError::Conflict(_))
    ));
    assert!(matches!(
        c.patients()
            .book(&b, &b.user, &fiona().user, tomorrow(12), "")
            .await,
        Err(CoreError::Invalid(_))
    ));
    assert!(matches!(
        c.patients()
            .book(&b, &b.user, &grey().user, tomorrow(10), "")
            .await,
        Err(CoreError::Conflict(_))
    ));
    assert!(matches!(
        c.finance()
            .transactions(
                &fiona(),
                &DateRange {
                    from: Some("2027-13-01".into()),
                    to: None
                }
            )
            .await,
        Err(CoreError::Invalid(_))
    ));
    assert_eq!(
        snapshot(f.store.as_ref()).await,
        before,
        "refusals changed storage"
    );
    // A ciphertext copied into another row or field opens nowhere.
    let rows_of = |coll: &'static str| {
        let store = f.store.clone();
        async move {
            store
                .list(&Collection::new(coll).unwrap(), None, 1000)
                .await
                .unwrap()
                .rows
        }
    };
    let moved = |r: &Row| RowData {
        key_id: r.key_id,
        envelope: r.envelope.clone(),
        indexes: r.indexes.clone(),
    };
    let rx_rows = rows_of("core_prescriptions").await;
    let forged = RowId::new("f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0").unwrap();
    f.store
        .insert(
            &Collection::new("core_prescriptions").unwrap(),
            &forged,
            moved(&rx_rows[0]),
        )
        .await
        .unwrap();
    not_found(c.patients().pay(&b, forged.as_str()).await);
    assert_eq!(
        c.patients().prescriptions(&b, &b.user).await.unwrap().len(),
        1
    );
    // Bob's appointment copied into a row indexed for Alice: not hers.
    let appts = rows_of("core_appointments").await;
    let alices_index = appts
        .iter()
        .find(|r| r.id.as_str() != appt.id)
        .unwrap()
        .indexes
        .clone();
    let bobs_row = appts.iter().find(|r| r.id.as_str() == appt.id).unwrap();
    f.store
        .insert(
            &Collection::new("core_appointments").unwrap(),
            &forged,
            RowData {
                indexes: alices_index,
                ..moved(bobs_row)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        c.patients().appointments(&a, &a.user).await.unwrap().len(),
        1
    );
    // A note moved into the record's field, or the record moved to a note.
    let record_row = rows_of("core_records").await[0].clone();
    f.store
        .insert(
            &Collection::new("core_notes").unwrap(),
            &forged,
            moved(&record_row),
        )
        .await
        .unwrap();
    for p in [&a, &b] {
        assert!(
            c.records()
                .record(&grey(), &p.user)
                .await
                .unwrap()
                .notes
                .is_empty()
        );
    }
}

async fn races_have_one_winner(f: Fixture) {
    let c = &f.clinic;
    // 16 bookings of one slot by two patients: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let c = c.clone();
        let p = if i % 2 == 0 { alice() } else { bob() };
        tasks.push(tokio::spawn(async move {
            c.patients()
                .book(&p, &p.user, &grey().user, tomorrow(14), "")
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(CoreError::Conflict(_)) => {}
            Err(e) => panic!("booking race: {e}"),
        }
    }
    assert_eq!(wins, 1, "exactly one booking of the slot");
    let booked = c
        .patients()
        .appointments(&alice(), &alice().user)
        .await
        .unwrap()
        .len()
        + c.patients()
            .appointments(&bob(), &bob().user)
            .await
            .unwrap()
            .len();
    assert_eq!(booked, 1);
    // 16 payments of one prescription: exactly one payment, one transaction.
    c.admin()
        .assign_care(&admin(), &grey().user, &alice().user)
        .await
        .unwrap();
    let p = c
        .eps()
        .prescribe(&grey(), &alice().user, &rx("Atorvastatin"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, id) = (c.clone(), p.id.clone());
        tasks.push(tokio::spawn(async move {
            c.patients().pay(&alice(), &id).await
        }));
    }
    let mut paid = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => paid += 1,
            Err(CoreError::Conflict(_)) => {}
            Err(e) => panic!("payment race: {e}"),
        }
    }
    assert_eq!(paid, 1, "exactly one payment");
    let txs = c
        .finance()
        .transactions(&fiona(), &DateRange::default())
        .await
        .unwrap();
    assert_eq!(txs.len(), 1, "exactly one transaction");
    // 8 doctors' notes at once: all kept, numbered 1..=8.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.records()
                .add_note(&grey(), &alice().user, &format!("note {i}"), None)
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let notes = c
        .records()
        .record(&grey(), &alice().user)
        .await
        .unwrap()
        .notes;
    assert_eq!(
        notes.iter().map(|n| n.seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
}

async fn break_glass(f: Fixture) {
    let c = &f.clinic;
    let s = shepherd();
    denied(c.records().record(&s, &alice().user).await);
    assert!(matches!(
        c.records()
            .declare_break_glass(&s, &alice().user, "urgent")
            .await,
        Err(CoreError::ReasonRequired)
    ));
    denied(c.records().record(&s, &alice().user).await);
    c.records()
        .declare_break_glass(&s, &alice().user, "unconscious in A&E, allergy check")
        .await
        .unwrap();
    c.records().record(&s, &alice().user).await.unwrap();
    c.eps()
        .prescribe(&s, &alice().user, &rx("Adrenaline"))
        .await
        .unwrap();
    // Break-glass is not care: she is not on his list.
    assert!(c.records().patients(&s).await.unwrap().is_empty());
    f.clock.advance(Duration::from_secs(3601));
    denied(c.records().record(&s, &alice().user).await);
    let log = c.admin().audit_log(&admin(), 1, 1000).await.unwrap();
    let glass: Vec<_> = log
        .entries
        .iter()
        .filter(|(_, e)| e.flags.contains(&Flag::BreakGlass))
        .collect();
    assert_eq!(glass.len(), 3, "declaration, read and prescribe flagged");
    let review = c.admin().break_glass_review(&admin()).await.unwrap();
    assert_eq!(review.len(), 1);
    assert_eq!(review[0].doctor, s.user);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_patient_data_in_the_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("clinic.db").display());
    let store = careconnect_storage::connect(&url).await.unwrap();
    let mut config = ClinicConfig::embedded(dir.path()).unwrap();
    config.subject_buckets = 4;
    let clinic = Clinic::open_with(
        config,
        store,
        Arc::new(careconnect_authz::session::SystemClock),
    )
    .await
    .unwrap();
    let seeded = careconnect_core::seed::demo(&clinic, ISSUER).await.unwrap();
    let doctor = Principal::new(
        UserId::new(ISSUER, "doctor-shepherd").unwrap(),
        [Role::Doctor].into_iter().collect(),
    );
    clinic
        .records()
        .declare_break_glass(
            &doctor,
            &UserId::new(ISSUER, "patient-alice").unwrap(),
            "suspected anaphylaxis after contrast",
        )
        .await
        .unwrap();
    assert_eq!(
        (seeded.notes, seeded.prescriptions, seeded.payments),
        (3, 3, 1)
    );
    // Seeding again adds nothing.
    let again = careconnect_core::seed::demo(&clinic, ISSUER).await.unwrap();
    assert_eq!(again, careconnect_core::seed::Seeded::default());
    let mut bytes = Vec::new();
    for f in ["clinic.db", "clinic.db-wal"] {
        if let Ok(b) = std::fs::read(dir.path().join(f)) {
            bytes.extend(b);
        }
    }
    assert!(bytes.len() > 10_000, "the database holds the seeded rows");
    for needle in [
        "Alice Smith",
        "Bob Jones",
        "Carol White",
        "1984-03-12",
        "penicillin",
        "Peak flow",
        "Hypertension",
        "Migraine",
        "Salbutamol",
        "Amlodipine",
        "Sumatriptan",
        "spacer",
        "anaphylaxis",
        // Patients' identities: pseudonyms in the audit log, keyed MACs in
        // row ids, sealed everywhere else.
        "patient-alice",
        "patient-bob",
        "patient-carol",
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle:?} is in the SQLite file in plaintext"
        );
    }
    let _ = RoleSet::EMPTY;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_reaches_a_copy_taken_before_it() {
    let f = sqlite().await;
    let c = &f.clinic;
    let dir = f._dir.path();
    // More patients, so some share the erased one's bucket and some do not.
    let others: Vec<UserId> = (0..8).map(|i| user(&format!("patient-{i}"))).collect();
    for p in &others {
        c.records()
            .register(
                &admin(),
                p,
                &PatientDetails {
                    name: format!("Patient {}", p.subject()),
                    date_of_birth: "1999-12-31".into(),
                    blood_type: "unknown".into(),
                    allergies: vec![],
                },
            )
            .await
            .unwrap();
    }
    c.patients()
        .book(&alice(), &alice().user, &grey().user, tomorrow(9), "")
        .await
        .unwrap();
    c.records()
        .add_note(&grey(), &alice().user, "Confidential history", None)
        .await
        .unwrap();
    let p = c
        .eps()
        .prescribe(&grey(), &alice().user, &rx("Sertraline"))
        .await
        .unwrap();
    let tx = c.patients().pay(&alice(), &p.id).await.unwrap();
    // The copy: database, WAL and the audit anchor, as a backup would take them.
    let copy = tempfile::tempdir().unwrap();
    for name in [
        "clinic.db",
        "clinic.db-wal",
        "clinic.db-shm",
        "audit.anchor",
        "kms-root.key",
    ] {
        if dir.join(name).exists() {
            std::fs::copy(dir.join(name), copy.path().join(name)).unwrap();
        }
    }
    assert!(matches!(
        c.admin()
            .erase_patient(&admin(), &alice().user, "short")
            .await,
        Err(CoreError::ReasonRequired)
    ));
    let done = c
        .admin()
        .erase_patient(&admin(), &alice().user, "GDPR art. 17 request #4411")
        .await
        .unwrap()
        .unwrap();
    assert!(done.kms_versions_destroyed >= 1);
    // Live: the patient is gone from every service; others are not.
    for r in [
        c.records().record(&admin(), &alice().user).await.map(drop),
        c.patients()
            .prescriptions(&alice(), &alice().user)
            .await
            .map(drop),
        c.patients()
            .appointments(&alice(), &alice().user)
            .await
            .map(drop),
    ] {
        match r {
            Err(CoreError::Erased) | Ok(()) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(matches!(
        c.records().record(&admin(), &alice().user).await,
        Err(CoreError::Erased)
    ));
    assert!(
        c.patients()
            .prescriptions(&alice(), &alice().user)
            .await
            .map_or(true, |v| v.is_empty())
    );
    assert!(
        c.eps()
            .issued(&grey(), &grey().user)
            .await
            .unwrap()
            .is_empty()
    );
    c.records().record(&admin(), &bob().user).await.unwrap();
    for p in &others {
        c.records().record(&admin(), p).await.unwrap();
    }
    // Finance keeps the pseudonym and amount; the audit chain verifies and
    // holds the reason.
    assert_eq!(
        c.finance()
            .transactions(&fiona(), &DateRange::default())
            .await
            .unwrap(),
        vec![tx]
    );
    let log = c.admin().audit_log(&admin(), 1, 1000).await.unwrap();
    assert!(matches!(log.verification, Verification::Intact { .. }));
    assert!(log.entries.iter().any(|(_, e)| e.action == "ErasePatient"
        && e.reason.as_deref() == Some("GDPR art. 17 request #4411")));
    drop(f.clinic);
    // The copy, opened with everything the clinic holds now (its KMS file).
    std::fs::copy(dir.join("kms.bin"), copy.path().join("kms.bin")).unwrap();
    let url = format!("sqlite://{}", copy.path().join("clinic.db").display());
    let mut config = ClinicConfig::embedded(copy.path()).unwrap();
    config.subject_buckets = 4;
    let old = Clinic::open_with(
        config,
        careconnect_storage::connect(&url).await.unwrap(),
        Arc::new(ManualClock::new(START)),
    )
    .await
    .unwrap();
    assert!(old.records().record(&admin(), &alice().user).await.is_err());
    // Every other bucket of the copy still opens; the erased patient's
    // bucket (which some of these share) does not.
    let mut opened_elsewhere = 0;
    for p in others.iter().chain([&bob().user]) {
        if old.records().record(&admin(), p).await.is_ok() {
            opened_elsewhere += 1;
        }
    }
    assert!(opened_elsewhere > 0);
}

/// A second node on the SQLite clinic of `f` (its own audit anchor), its
/// configuration changed by `tweak`.
async fn second_node(f: &Fixture, tweak: impl FnOnce(&mut ClinicConfig)) -> Clinic {
    let dir = f._dir.path();
    let url = format!("sqlite://{}", dir.join("clinic.db").display());
    let mut config = ClinicConfig::embedded(dir).unwrap();
    config.subject_buckets = 4;
    config.audit_anchor = dir.join("node-b.anchor");
    tweak(&mut config);
    Clinic::open_with(
        config,
        careconnect_storage::connect(&url).await.unwrap(),
        f.clock.clone(),
    )
    .await
    .unwrap()
}

/// Two nodes on one database: a note written through one shows there at
/// once, and on the other within its read cache's lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_written_on_one_node_reach_the_other_within_the_read_cache() {
    let f = sqlite().await;
    let b = second_node(&f, |c| c.read_cache = Duration::from_millis(300)).await;
    let a = &f.clinic;
    a.admin()
        .assign_care(&admin(), &grey().user, &alice().user)
        .await
        .unwrap();
    assert!(
        b.records()
            .record(&grey(), &alice().user)
            .await
            .unwrap()
            .notes
            .is_empty()
    );
    a.records()
        .add_note(&grey(), &alice().user, "written on node A", None)
        .await
        .unwrap();
    assert_eq!(
        a.records()
            .record(&grey(), &alice().user)
            .await
            .unwrap()
            .notes
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        b.records()
            .record(&grey(), &alice().user)
            .await
            .unwrap()
            .notes
            .len(),
        1
    );
    // And B's own write shows on B at once.
    b.records()
        .add_note(&grey(), &alice().user, "written on node B", None)
        .await
        .unwrap();
    assert_eq!(
        b.records()
            .record(&grey(), &alice().user)
            .await
            .unwrap()
            .notes
            .len(),
        2
    );
}

async fn directory_import(f: Fixture) {
    let c = &f.clinic;
    let doctor: RoleSet = [Role::Doctor].into_iter().collect();
    let people: Vec<(UserId, String, RoleSet)> = (0..120)
        .map(|i| (user(&format!("doctor-{i:03}")), format!("Dr {i}"), doctor))
        .collect();
    // Refusals change nothing: another role, one bad name, a duplicate.
    let before = snapshot(f.store.as_ref()).await;
    denied(c.admin().import_people(&grey(), &people).await);
    let mut bad = people.clone();
    bad[77].1 = "line\u{7}bell".into();
    assert!(matches!(
        c.admin().import_people(&admin(), &bad).await,
        Err(CoreError::Invalid(_))
    ));
    let mut twice = people.clone();
    twice[100].0 = user("doctor-003");
    assert!(matches!(
        c.admin().import_people(&admin(), &twice).await,
        Err(CoreError::Invalid(_))
    ));
    assert_eq!(snapshot(f.store.as_ref()).await, before);

    assert_eq!(
        c.admin().import_people(&admin(), &people).await.unwrap(),
        120
    );
    let doctors = c.doctors().await.unwrap();
    for (u, name, _) in &people {
        assert!(doctors.iter().any(|d| &d.user == u && &d.name == name));
    }
    // Imported again with other names: updates, as set_person would.
    let renamed: Vec<_> = people
        .iter()
        .map(|(u, n, r)| (u.clone(), format!("{n} (renamed)"), *r))
        .collect();
    c.admin().import_people(&admin(), &renamed).await.unwrap();
    assert_eq!(
        c.doctors()
            .await
            .unwrap()
            .iter()
            .filter(|d| d.name.ends_with("(renamed)"))
            .count(),
        120
    );
}

async fn data_key_compromise(f: Fixture) {
    use careconnect_crypto::KeyState;
    let c = &f.clinic;
    let view = || async {
        format!(
            "{:?} {:?} {:?} {:?}",
            c.doctors().await.unwrap(),
            c.records().patients(&admin()).await.unwrap(),
            c.patients().record(&alice()).await.unwrap(),
            c.records().patients(&grey()).await.unwrap(),
        )
    };
    c.admin()
        .assign_care(&admin(), &user("doctor-grey"), &user("patient-alice"))
        .await
        .unwrap();
    let before = view().await;
    let primary = |keys: &[careconnect_crypto::KeyInfo]| {
        keys.iter()
            .find(|k| k.state == KeyState::Primary)
            .unwrap()
            .id
            .get()
    };
    let k = primary(&c.admin().key_status(&admin()).await.unwrap().clinic_keys);
    let report = c
        .rotation()
        .data_key_compromised(&admin(), k, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(report.destroyed, vec![k]);
    assert!(report.total_rows() >= 8, "{report:?}");
    let keys = c.admin().key_status(&admin()).await.unwrap().clinic_keys;
    assert!(
        keys.iter()
            .any(|i| i.id.get() == k && i.state == KeyState::Destroyed)
    );
    assert_ne!(primary(&keys), k);
    assert_eq!(view().await, before);
    assert!(matches!(
        c.audit().verify().await.unwrap(),
        Verification::Intact { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_taken_away_reaches_every_node_within_the_recheck() {
    let f = sqlite().await;
    let b = second_node(&f, |_| {}).await;
    let a = &f.clinic;
    let doctor: RoleSet = [Role::Doctor].into_iter().collect();
    let grey_id = user("doctor-grey");
    a.admin()
        .set_person(&admin(), &grey_id, "Dr Meredith Grey", doctor)
        .await
        .unwrap();
    // A session keeps the claims' roles (none here); stored ones are added.
    for node in [a, &b] {
        assert_eq!(
            node.principal(&grey_id, RoleSet::EMPTY)
                .await
                .unwrap()
                .roles,
            doctor
        );
    }
    a.admin()
        .set_person(&admin(), &grey_id, "Dr Meredith Grey", RoleSet::EMPTY)
        .await
        .unwrap();
    assert!(
        a.principal(&grey_id, RoleSet::EMPTY)
            .await
            .unwrap()
            .roles
            .is_empty(),
        "the node that changed it knows at once"
    );
    tokio::time::sleep(careconnect_core::clinic::ROLES_RECHECK + Duration::from_millis(100)).await;
    assert!(
        b.principal(&grey_id, RoleSet::EMPTY)
            .await
            .unwrap()
            .roles
            .is_empty(),
        "the other node within the recheck"
    );
    // Roles the claims gave stay: they are configuration, not assignments.
    let finance: RoleSet = [Role::Finance].into_iter().collect();
    assert_eq!(b.principal(&grey_id, finance).await.unwrap().roles, finance);

    // The directory is an administrator's alone, and looking is audited.
    denied(b.admin().directory(&grey()).await);
    let people = b.admin().directory(&admin()).await.unwrap();
    assert!(
        people
            .iter()
            .any(|e| e.person.user == grey_id && e.person.roles.is_empty())
    );
    let Verification::Intact { entries } = a.audit().verify().await.unwrap() else {
        panic!("chain broken")
    };
    let tail = a.audit().read(entries.saturating_sub(3), 10).await.unwrap();
    assert!(tail.iter().any(|(_, e)| e.action == "ReadDirectory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_is_ones_own_and_one_audited_read() {
    let f = sqlite().await;
    let c = &f.clinic;
    careconnect_core::seed::demo(c, ISSUER).await.unwrap();
    let Verification::Intact { entries: before } = c.audit().verify().await.unwrap() else {
        panic!("chain broken")
    };
    let o = c.patients().overview(&alice()).await.unwrap();
    assert_eq!(o.record.details.name, "Alice Smith");
    assert_eq!(o.appointments.len(), 1);
    assert_eq!(o.prescriptions.len(), 1);
    assert_eq!(o.prescriptions[0].signature, SignatureStatus::Valid);
    // The same as the three separate reads.
    assert_eq!(o.record, c.patients().record(&alice()).await.unwrap());
    assert_eq!(
        o.appointments,
        c.patients()
            .appointments(&alice(), &alice().user)
            .await
            .unwrap()
    );
    let Verification::Intact { entries: after } = c.audit().verify().await.unwrap() else {
        panic!("chain broken")
    };
    let reads = c.audit().read(before, 10).await.unwrap();
    let first_new = reads.iter().find(|(seq, _)| *seq > before).unwrap();
    assert_eq!(first_new.1.action, "ReadHealthRecord");
    // The overview, then record (1) and appointments (1): three in all.
    assert_eq!(after - before, 3);
    // Staff have no overview of their own; finance is refused, audited.
    denied(c.patients().overview(&fiona()).await);
    denied(c.patients().overview(&grey()).await);
}

/// The overview's rows may be kept for the read cache's lifetime: a
/// booking, a payment and a cancellation through one node show on its
/// overview at once, and on another node's within that lifetime; a
/// forged row never opens, kept or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_follows_writes_on_either_node() {
    let f = sqlite().await;
    let a = &f.clinic;
    careconnect_core::seed::demo(a, ISSUER).await.unwrap();
    let b = second_node(&f, |c| c.read_cache = Duration::from_millis(300)).await;
    let before_b = b.patients().overview(&alice()).await.unwrap();
    let before_a = a.patients().overview(&alice()).await.unwrap();
    assert_eq!(before_a, before_b);

    let booked = a
        .patients()
        .book(
            &alice(),
            &alice().user,
            &grey().user,
            tomorrow(11),
            "follow-up",
        )
        .await
        .unwrap();
    let issued = a
        .eps()
        .prescribe(&grey(), &alice().user, &rx("Amoxicillin"))
        .await
        .unwrap();
    a.patients().pay(&alice(), &issued.id).await.unwrap();
    let on_a = a.patients().overview(&alice()).await.unwrap();
    assert!(
        on_a.appointments.iter().any(|x| x.id == booked.id),
        "at once on A"
    );
    assert_eq!(on_a.prescriptions.len(), before_a.prescriptions.len() + 1);
    assert!(
        on_a.prescriptions
            .iter()
            .any(|p| p.id == issued.id && matches!(p.status, Status::Paid { .. }))
    );

    tokio::time::sleep(Duration::from_millis(350)).await;
    let on_b = b.patients().overview(&alice()).await.unwrap();
    assert_eq!(on_b, on_a, "on B within its read cache");

    // B's own cancellation shows on B at once, and on A within its own.
    b.patients().cancel(&alice(), &booked.id).await.unwrap();
    let on_b = b.patients().overview(&alice()).await.unwrap();
    let cancelled = |o: &careconnect_core::patients::Overview| {
        o.appointments
            .iter()
            .any(|x| x.id == booked.id && x.cancelled_at.is_some())
    };
    assert!(cancelled(&on_b));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(cancelled(&a.patients().overview(&alice()).await.unwrap()));

    // Every overview is decided and audited, kept rows or not.
    let Verification::Intact { entries: before } = a.audit().verify().await.unwrap() else {
        panic!("chain broken")
    };
    for _ in 0..3 {
        a.patients().overview(&alice()).await.unwrap();
    }
    let Verification::Intact { entries: after } = a.audit().verify().await.unwrap() else {
        panic!("chain broken")
    };
    assert_eq!(after - before, 3);

    // A copy of one of Alice's rows under another id, written behind both
    // nodes' backs: once read, it opens as nothing.
    let coll = Collection::new("core_appointments").unwrap();
    let hers = f
        .store
        .get(&coll, &RowId::new(&booked.id).unwrap())
        .await
        .unwrap();
    f.store
        .insert(
            &coll,
            &RowId::new("forged-appointment").unwrap(),
            RowData {
                key_id: hers.key_id,
                envelope: hers.envelope.clone(),
                indexes: hers.indexes.clone(),
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for node in [a, &b] {
        let o = node.patients().overview(&alice()).await.unwrap();
        assert_eq!(o.appointments.len(), on_a.appointments.len());
    }
}

fn self_treatment<T: std::fmt::Debug>(r: Result<T, CoreError>) {
    assert!(
        matches!(
            r,
            Err(CoreError::Denied(
                careconnect_authz::DenyReason::SelfTreatment
            ))
        ),
        "expected a self-treatment refusal, got {r:?}"
    );
}

fn self_grant<T: std::fmt::Debug>(r: Result<T, CoreError>) {
    assert!(
        matches!(
            r,
            Err(CoreError::Denied(careconnect_authz::DenyReason::SelfGrant))
        ),
        "expected a self-grant refusal, got {r:?}"
    );
}

/// Review findings 2 and 17: a doctor who is also a patient could book
/// himself, be put in his own care, declare break-glass on himself, then
/// write his own notes and prescriptions; an administrator could give
/// himself the doctor role and a patient's care.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_one_treats_themselves_and_no_administrator_grants_himself_care() {
    let f = sqlite().await;
    let c = &f.clinic;
    let a = admin();
    let house_id = user("doctor-house");
    c.records()
        .register(
            &a,
            &house_id,
            &PatientDetails {
                name: "Dr Gregory House".into(),
                date_of_birth: "1959-06-11".into(),
                blood_type: "A-".into(),
                allergies: vec![],
            },
        )
        .await
        .unwrap();
    let both: RoleSet = [Role::Doctor, Role::Patient].into_iter().collect();
    c.admin()
        .set_person(&a, &house_id, "Dr Gregory House", both)
        .await
        .unwrap();
    let house = Principal::new(house_id.clone(), both);
    let before = c
        .admin()
        .audit_log(&a, 1, 1000)
        .await
        .unwrap()
        .entries
        .len();

    self_treatment(
        c.patients()
            .book(&house, &house_id, &house_id, tomorrow(9), "pain")
            .await,
    );
    self_treatment(c.admin().assign_care(&a, &house_id, &house_id).await);
    self_treatment(
        c.records()
            .declare_break_glass(&house, &house_id, "leg pain, need my own history now")
            .await,
    );
    self_treatment(
        c.records()
            .add_note(&house, &house_id, "patient is fine", None)
            .await,
    );
    self_treatment(c.eps().prescribe(&house, &house_id, &rx("Vicodin")).await);
    // Nothing was made: no appointment, no care, no declaration.
    assert!(
        c.patients()
            .appointments(&house, &house_id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(c.records().patients(&house).await.unwrap().is_empty());
    assert!(c.admin().break_glass_review(&a).await.unwrap().is_empty());
    // He still reads his own record, as a patient.
    c.patients().record(&house).await.unwrap();
    // Each attempt is on record as a refusal saying why.
    let log = c.admin().audit_log(&a, 1, 1000).await.unwrap().entries;
    let refused = log[before..]
        .iter()
        .filter(|(_, e)| {
            e.outcome == careconnect_core::audit::Outcome::Denied
                && e.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("self-treatment"))
        })
        .count();
    assert_eq!(refused, 3, "booking, assignment and break-glass refusals");
    let policy_refusals = log[before..]
        .iter()
        .filter(|(_, e)| {
            e.outcome == careconnect_core::audit::Outcome::Denied
                && (e.action == "AddClinicalNote" || e.action == "Prescribe")
        })
        .count();
    assert_eq!(policy_refusals, 2, "note and prescription refusals");
    // Another doctor treats him as usual.
    c.patients()
        .book(&house, &house_id, &grey().user, tomorrow(10), "leg pain")
        .await
        .unwrap();
    c.records()
        .add_note(&grey(), &house_id, "infarction of the thigh muscle", None)
        .await
        .unwrap();

    // Separation of duties: an administrator does not make himself a
    // doctor, nor put patients in his own care; another administrator may.
    let eve_id = user("admin-eve");
    c.admin()
        .set_person(
            &a,
            &eve_id,
            "Eve Admin",
            [Role::Admin].into_iter().collect(),
        )
        .await
        .unwrap();
    let eve = who("admin-eve", Role::Admin);
    let adam_doctor: RoleSet = [Role::Admin, Role::Doctor].into_iter().collect();
    self_grant(
        c.admin()
            .set_person(&a, &a.user, "Adam Admin", adam_doctor)
            .await,
    );
    self_grant(
        c.admin()
            .import_people(&a, &[(a.user.clone(), "Adam Admin".into(), adam_doctor)])
            .await,
    );
    c.admin()
        .set_person(&eve, &a.user, "Adam Admin", adam_doctor)
        .await
        .unwrap();
    let adam = Principal::new(a.user.clone(), adam_doctor);
    self_grant(c.admin().assign_care(&adam, &a.user, &alice().user).await);
    c.admin()
        .assign_care(&eve, &a.user, &alice().user)
        .await
        .unwrap();
    // Keeping a role one holds is not a grant.
    c.admin()
        .set_person(&adam, &a.user, "Adam A. Admin", adam_doctor)
        .await
        .unwrap();
}

/// Log lines, captured on this thread.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<String>>>);

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={v:?}", f.name()));
            }
        }
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Review finding 16: a patient probing another patient's appointment id
/// raised a tamper warning naming the id from the request.
#[tokio::test]
async fn another_patients_appointment_id_is_not_found_without_a_tamper_alarm() {
    let logs = Capture::default();
    let _guard = tracing::subscriber::set_default(logs.clone());
    let f = sqlite().await;
    let c = &f.clinic;
    let appt = c
        .patients()
        .book(&alice(), &alice().user, &grey().user, tomorrow(9), "cough")
        .await
        .unwrap();
    logs.0.lock().unwrap().clear();
    not_found(c.patients().cancel(&bob(), &appt.id).await);
    let seen = logs.0.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|l| !l.starts_with("WARN") && !l.contains(&appt.id)),
        "a probe is not a tamper alarm, and its id is not logged: {seen:?}"
    );
    // Hers, altered in the database: that is an alarm, still without the id.
    let coll = Collection::new("core_appointments").unwrap();
    let row = f
        .store
        .get(&coll, &RowId::new(&appt.id).unwrap())
        .await
        .unwrap();
    let mut envelope = row.envelope.clone();
    let last = envelope.len() - 1;
    envelope[last] ^= 1;
    f.store
        .update(
            &coll,
            &row.id,
            row.version,
            RowData {
                key_id: row.key_id,
                envelope,
                indexes: row.indexes.clone(),
            },
        )
        .await
        .unwrap();
    not_found(c.patients().cancel(&alice(), &appt.id).await);
    let seen = logs.0.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("WARN") && l.contains("does not open")),
        "{seen:?}"
    );
    assert!(seen.iter().all(|l| !l.contains(&appt.id)), "{seen:?}");
}

/// Review finding 14: a break-glass reason of ten zero-width spaces was
/// accepted, and a file name with U+202E displayed as another.
#[tokio::test]
async fn invisible_reasons_and_bidirectional_names_are_refused_or_neutralised() {
    let f = sqlite().await;
    let c = &f.clinic;
    let s = shepherd();
    for reason in [
        "\u{200b}".repeat(10),
        format!("{}x", "\u{200b} ".repeat(12)),
        "urgent care \u{202e}dedeen".to_owned(),
        "unconscious\u{2066} in A&E".to_owned(),
        "unconscious\nin A&E".to_owned(),
    ] {
        assert!(
            matches!(
                c.records()
                    .declare_break_glass(&s, &alice().user, &reason)
                    .await,
                Err(CoreError::ReasonRequired)
            ),
            "{reason:?}"
        );
    }
    denied(c.records().record(&s, &alice().user).await);
    // Right-to-left text is a reason like any other.
    c.records()
        .declare_break_glass(&s, &alice().user, "מטופלת מחוסרת הכרה ב-A&E")
        .await
        .unwrap();
    // Names: bidirectional controls refused in a person's name, removed
    // from a file's.
    assert!(matches!(
        c.admin()
            .set_person(
                &admin(),
                &user("doctor-evil"),
                "Dr \u{202e}liveD",
                [Role::Doctor].into_iter().collect(),
            )
            .await,
        Err(CoreError::Invalid(_))
    ));
    assert_eq!(
        careconnect_core::medicloud::display_name("invoice\u{202e}fdp.exe").as_deref(),
        Some("invoicefdp.exe")
    );
    assert_eq!(
        careconnect_core::medicloud::display_name("\u{200b}\u{2066}").as_deref(),
        None
    );
}

/// Review finding 18: erasing someone who is not a patient answered like a
/// real erasure.
#[tokio::test]
async fn erasing_someone_who_is_not_a_patient_is_not_found_and_destroys_nothing() {
    let f = sqlite().await;
    let c = &f.clinic;
    let before = c
        .admin()
        .audit_log(&admin(), 1, 1000)
        .await
        .unwrap()
        .entries
        .len();
    for who in [grey().user, user("nobody-at-all")] {
        not_found(
            c.admin()
                .erase_patient(&admin(), &who, "right to erasure request 42")
                .await,
        );
    }
    // Grey works as before; the refusals are on record.
    c.patients()
        .book(&alice(), &alice().user, &grey().user, tomorrow(9), "")
        .await
        .unwrap();
    c.records().record(&grey(), &alice().user).await.unwrap();
    let log = c
        .admin()
        .audit_log(&admin(), 1, 1000)
        .await
        .unwrap()
        .entries;
    let refused = log[before..]
        .iter()
        .filter(|(_, e)| {
            e.action == "ErasePatient" && e.outcome == careconnect_core::audit::Outcome::Denied
        })
        .count();
    assert_eq!(refused, 2);
    // A patient is erased as before, and again is a no-op.
    c.admin()
        .erase_patient(&admin(), &bob().user, "right to erasure request 43")
        .await
        .unwrap();
    c.admin()
        .erase_patient(&admin(), &bob().user, "right to erasure request 43")
        .await
        .unwrap();
}

/// Review finding 6: declaring break-glass again overwrote the earlier
/// declaration in the review, and renewals were unlimited.
#[tokio::test]
async fn every_break_glass_declaration_is_kept_and_renewals_are_capped_per_day() {
    let f = sqlite().await;
    let c = &f.clinic;
    let s = shepherd();
    let reasons = [
        "unconscious in A&E, allergy check",
        "still in resus, checking medication history",
        "transfer to ICU, need the full record",
    ];
    for reason in reasons {
        c.records()
            .declare_break_glass(&s, &alice().user, reason)
            .await
            .unwrap();
        f.clock.advance(Duration::from_secs(3600));
    }
    // A fourth within 24 hours of the first: refused, and on record.
    assert!(matches!(
        c.records()
            .declare_break_glass(&s, &alice().user, "one more hour please, still busy")
            .await,
        Err(CoreError::Conflict(_))
    ));
    let review = c.admin().break_glass_review(&admin()).await.unwrap();
    let mut kept: Vec<&str> = review.iter().map(|b| b.reason.as_str()).collect();
    kept.reverse();
    assert_eq!(kept, reasons, "every declaration, newest first");
    // Another pair is not affected; a day after the first, one more may be
    // declared.
    c.records()
        .declare_break_glass(&s, &bob().user, "unconscious in A&E, allergy check")
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(21 * 3600 + 1));
    c.records()
        .declare_break_glass(&s, &alice().user, "readmitted, unconscious again")
        .await
        .unwrap();
    assert_eq!(
        c.admin().break_glass_review(&admin()).await.unwrap().len(),
        5
    );
}

/// "Who has seen my record": a patient sees every access to their data by
/// someone else, from the audit chain, newest first, with its basis; never
/// another patient's, nor their own.
#[tokio::test]
async fn a_patient_sees_who_has_seen_their_record_and_nothing_of_anyone_elses() {
    let f = sqlite().await;
    let c = &f.clinic;
    let before = c.disclosures(&alice(), None, 50).await.unwrap();
    assert!(before.entries.is_empty(), "{before:?}");
    // Alice's own reads are not disclosures.
    c.patients().record(&alice()).await.unwrap();
    // Dr Shepherd under break-glass, Dr Grey in care, an administrator.
    c.records()
        .declare_break_glass(
            &shepherd(),
            &alice().user,
            "unconscious in A&E, allergy check",
        )
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(1));
    c.records()
        .record(&shepherd(), &alice().user)
        .await
        .unwrap();
    c.patients()
        .book(&alice(), &alice().user, &grey().user, tomorrow(9), "")
        .await
        .unwrap();
    c.records()
        .add_note(&grey(), &alice().user, "seen in clinic", None)
        .await
        .unwrap();
    c.records().record(&admin(), &alice().user).await.unwrap();
    // Someone else's access to Bob.
    c.admin()
        .assign_care(&admin(), &grey().user, &bob().user)
        .await
        .unwrap();
    c.records().record(&grey(), &bob().user).await.unwrap();

    let seen = c.disclosures(&alice(), None, 50).await.unwrap();
    let rows: Vec<(&str, &str, AccessBasis)> = seen
        .entries
        .iter()
        .map(|d| (d.who.as_str(), d.what.as_str(), d.basis))
        .collect();
    assert_eq!(
        rows,
        [
            (
                "An administrator",
                "Opened your health record",
                AccessBasis::AdminOverride
            ),
            (
                "Dr Meredith Grey",
                "Added a clinical note",
                AccessBasis::Care
            ),
            (
                "Dr Derek Shepherd",
                "Opened your health record",
                AccessBasis::BreakGlass
            ),
        ],
        "{seen:?}"
    );
    assert!(seen.entries.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
    // Bob sees who put him in whose care, and Grey's read of his record;
    // none of Alice's.
    let bobs = c.disclosures(&bob(), None, 50).await.unwrap();
    let rows: Vec<(&str, &str, AccessBasis)> = bobs
        .entries
        .iter()
        .map(|d| (d.who.as_str(), d.what.as_str(), d.basis))
        .collect();
    assert_eq!(
        rows,
        [
            (
                "Dr Meredith Grey",
                "Opened your health record",
                AccessBasis::Care
            ),
            (
                "An administrator",
                "Put you in the care of Dr Meredith Grey",
                AccessBasis::Assignment
            ),
        ],
        "{bobs:?}"
    );
    // Paged: one at a time, newest first, the same three.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = c.disclosures(&alice(), before, 1).await.unwrap();
        paged.extend(page.entries.iter().map(|d| d.what.clone()));
        match page.next_before {
            Some(b) if !page.entries.is_empty() => before = Some(b),
            _ => break,
        }
    }
    assert_eq!(
        paged,
        [
            "Opened your health record",
            "Added a clinical note",
            "Opened your health record"
        ]
    );
    // Only a patient reads their own: a doctor (not a patient) is refused,
    // and no one reads another's.
    denied(c.disclosures(&grey(), None, 50).await);
}

/// Review finding 3: assigning and revoking care wrote the same opaque
/// entry; a role change logged neither the roles before nor after; an
/// import logged a count; sharing and revoking a document looked alike and
/// carried neither recipient nor expiry; an upload's entry had no document
/// id.
#[tokio::test]
async fn the_audit_log_accounts_for_every_grant_with_its_facts() {
    let f = sqlite().await;
    let c = &f.clinic;
    let a = admin();
    let from = c
        .admin()
        .audit_log(&a, 1, 1000)
        .await
        .unwrap()
        .entries
        .len();
    c.admin()
        .assign_care(&a, &grey().user, &bob().user)
        .await
        .unwrap();
    c.admin()
        .revoke_care(&a, &grey().user, &bob().user)
        .await
        .unwrap();
    c.admin()
        .set_person(
            &a,
            &user("doctor-shepherd"),
            "Dr Derek Shepherd",
            [Role::Doctor, Role::External].into_iter().collect(),
        )
        .await
        .unwrap();
    c.admin()
        .import_people(
            &a,
            &[(
                user("finance-fiona"),
                "Fiona Banks".into(),
                [Role::Finance].into_iter().collect(),
            )],
        )
        .await
        .unwrap();
    let doc = c
        .medicloud()
        .upload(
            &grey(),
            "referral.pdf",
            "application/pdf",
            b"%PDF-1.7 x".as_slice(),
        )
        .await
        .unwrap();
    c.medicloud()
        .share(&grey(), &doc.id, &pat().user, Some(START + 7200))
        .await
        .unwrap();
    c.medicloud()
        .revoke(&grey(), &doc.id, &pat().user)
        .await
        .unwrap();
    let log = c.admin().audit_log(&a, 1, 1000).await.unwrap().entries;
    let find = |action: &str| {
        log[from..]
            .iter()
            .map(|(_, e)| e)
            .find(|e| e.action == action)
            .unwrap_or_else(|| panic!("no {action} in {:#?}", &log[from..]))
            .clone()
    };
    let reason = |e: &careconnect_core::audit::AuditEvent| -> serde_json::Value {
        serde_json::from_str(e.reason.as_deref().unwrap()).unwrap()
    };
    let assigned = find("AssignCare");
    let revoked = find("RevokeCare");
    // Named by the patient's pseudonym (never the identity), with the doctor.
    assert!(assigned.resource.starts_with("patient:P-"), "{assigned:?}");
    assert_eq!(assigned.resource, revoked.resource);
    assert_eq!(reason(&assigned)["doctor"], "doctor-grey");
    assert_eq!(reason(&revoked)["doctor"], "doctor-grey");
    assert!(!assigned.resource.contains("bob"));
    let roles = find("SetRoles");
    assert_eq!(reason(&roles)["before"], serde_json::json!(["doctor"]));
    assert_eq!(
        reason(&roles)["after"],
        serde_json::json!(["doctor", "external"])
    );
    let imported = log[from..]
        .iter()
        .filter(|(_, e)| e.action == "SetRoles" && e.resource == "roles:finance-fiona")
        .count();
    assert_eq!(imported, 1, "each imported person on record");
    let stored = find("DocumentStored");
    assert_eq!(stored.resource, format!("document:{}", doc.id));
    let shared = find("DocumentShared");
    assert_eq!(reason(&shared)["recipient"], "partner-pat");
    assert_eq!(reason(&shared)["expires_at"], START + 7200);
    let unshared = find("DocumentShareRevoked");
    assert_eq!(reason(&unshared)["recipient"], "partner-pat");
}

/// Review finding 4: erasure shredded the patient's keyring but left the
/// directory row (identity, name, roles), care rows, break-glass rows (with
/// the clinical reason), the stored role assignment and sessions readable
/// under the clinic keyring.
#[tokio::test]
async fn erasure_leaves_no_row_that_names_the_patient() {
    let f = sqlite().await;
    let c = &f.clinic;
    let a = admin();
    c.patients()
        .book(&alice(), &alice().user, &grey().user, tomorrow(9), "")
        .await
        .unwrap();
    c.records()
        .declare_break_glass(
            &shepherd(),
            &alice().user,
            "unconscious in A&E, allergy check",
        )
        .await
        .unwrap();
    let sessions = c
        .sessions(careconnect_authz::session::SessionConfig::default())
        .unwrap();
    let (sid, _) = sessions.login(None, alice()).await.unwrap();
    let named = |dir: &Vec<careconnect_core::admin::DirectoryEntry>| {
        dir.iter().any(|e| {
            e.person.user == alice().user
                || e.person.name == "Alice Smith"
                || e.in_care.contains(&alice().user)
        })
    };
    assert!(named(&c.admin().directory(&a).await.unwrap()));
    c.admin()
        .erase_patient(&a, &alice().user, "right to erasure request 77")
        .await
        .unwrap();
    // Nothing an administrator (holding every remaining key) reads names
    // her: directory, care lists, break-glass review, sessions.
    assert!(!named(&c.admin().directory(&a).await.unwrap()));
    assert!(
        c.records()
            .patients(&grey())
            .await
            .unwrap()
            .iter()
            .all(|p| p.name != "Alice Smith")
    );
    assert!(
        c.admin()
            .break_glass_review(&a)
            .await
            .unwrap()
            .iter()
            .all(|b| b.patient != alice().user)
    );
    assert!(sessions.get(&sid).await.unwrap().is_none());
    // Her data does not open; other patients' does.
    assert!(c.records().record(&a, &alice().user).await.is_err());
    c.records().record(&a, &bob().user).await.unwrap();
    // The audit log names no one (pseudonyms only) and still verifies.
    let log = c.admin().audit_log(&a, 1, 1000).await.unwrap();
    for (_, e) in &log.entries {
        let text = format!("{:?} {} {:?}", e.actor, e.resource, e.reason);
        assert!(
            !text.contains("patient-alice") && !text.contains("Alice Smith"),
            "{e:?}"
        );
    }
    assert!(matches!(log.verification, Verification::Intact { .. }));
    // A rerun (after a crash, say) finds nothing left to do.
    c.admin()
        .erase_patient(&a, &alice().user, "right to erasure request 77")
        .await
        .unwrap();
}
