//! KMS master-key rotation on a seeded clinic with documents: a dry run
//! changes nothing; a rotation gives every KMS key one new version and
//! re-wraps every keyset and document key, after which the previous
//! versions can be destroyed and everything still opens, byte for byte
//! against a manifest taken first; a job interrupted at any point resumes
//! and rotates each key once; uploads and deletes running meanwhile lose
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use careconnect_authz::session::SystemClock;
use careconnect_authz::{Principal, Role, UserId};
use careconnect_core::rotation::{Phase, Progress};
use careconnect_core::seed::{DEMO_USERS, demo};
use careconnect_core::subjects::SubjectKeys;
use careconnect_core::{Clinic, ClinicConfig, CoreError, KmsConfig};
use careconnect_crypto::kms::{LocalKms, RootSecret};
use careconnect_crypto::{Kms, KmsKeyId};

const ISSUER: &str = "https://idp.test";

fn who(s: &str, role: Role) -> Principal {
    Principal::new(
        UserId::new(ISSUER, s).unwrap(),
        [role].into_iter().collect(),
    )
}

fn admin() -> Principal {
    who("admin-adam", Role::Admin)
}

fn doctor() -> Principal {
    who("doctor-grey", Role::Doctor)
}

fn pdf(seed: usize, n: usize) -> Vec<u8> {
    let mut v = format!("%PDF-1.7 {seed}\n").into_bytes();
    v.extend((0..n).map(|i| ((i + seed) % 251) as u8));
    v
}

/// The local KMS of `dir`, with the clinic's keys.
fn local_kms(dir: &Path) -> Arc<LocalKms> {
    let root = RootSecret::load_or_create_file(&dir.join("kms-root.key")).unwrap();
    let kms = LocalKms::open_or_create(dir.join("kms.bin"), root).unwrap();
    for k in kms_keys() {
        kms.ensure_key(&k).unwrap();
    }
    Arc::new(kms)
}

fn kms_keys() -> Vec<KmsKeyId> {
    let mut keys = vec![
        KmsKeyId::new("careconnect-clinic").unwrap(),
        KmsKeyId::new("careconnect-documents").unwrap(),
    ];
    keys.extend(SubjectKeys::kms_keys_named("careconnect-subjects-", 2).unwrap());
    keys
}

async fn open(dir: &Path, kms: Arc<LocalKms>) -> Clinic {
    let mut config = ClinicConfig::embedded(dir).unwrap();
    config.subject_buckets = 2;
    config.kms = KmsConfig::Provided(kms);
    let url = format!("sqlite://{}", dir.join("clinic.db").display());
    let store = careconnect_storage::connect(&url).await.unwrap();
    Clinic::open_with(config, store, Arc::new(SystemClock))
        .await
        .unwrap()
}

/// Every patient's record and every document's bytes, by name.
async fn manifest(c: &Clinic) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for u in DEMO_USERS.iter().filter(|u| u.role == Role::Patient) {
        let record = c
            .patients()
            .record(&who(u.subject, Role::Patient))
            .await
            .unwrap();
        out.insert(
            format!("record {}", u.subject),
            format!("{record:?}").into_bytes(),
        );
    }
    for d in c.medicloud().list(&doctor()).await.unwrap() {
        let mut body = Vec::new();
        c.medicloud()
            .download(&doctor(), &d.id, &mut body)
            .await
            .unwrap();
        out.insert(format!("document {}", d.id), body);
    }
    out
}

async fn versions(kms: &LocalKms) -> Vec<u32> {
    let mut out = Vec::new();
    for k in kms_keys() {
        out.push(Kms::describe(kms, &k).await.unwrap().current_version);
    }
    out
}

async fn seeded(dir: &Path, documents: usize) -> (Clinic, Arc<LocalKms>) {
    let kms = local_kms(dir);
    let c = open(dir, kms.clone()).await;
    demo(&c, ISSUER).await.unwrap();
    for i in 0..documents {
        c.medicloud()
            .upload(
                &doctor(),
                &format!("scan-{i}.pdf"),
                "application/pdf",
                pdf(i, if i < 7 { 1000 + i * 40_000 } else { 2000 + i }).as_slice(),
            )
            .await
            .unwrap();
    }
    (c, kms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_key_rotation_leaves_nothing_under_the_old_versions() {
    let dir = tempfile::tempdir().unwrap();
    let (c, kms) = seeded(dir.path(), 6).await;
    let before = manifest(&c).await;
    let start = versions(&kms).await;

    // Only an administrator.
    assert!(matches!(
        c.rotation().rotate_kek(&doctor(), false, &mut |_| {}).await,
        Err(CoreError::Denied(_))
    ));
    // A dry run counts and changes nothing.
    let dry = c
        .rotation()
        .rotate_kek(&admin(), true, &mut |_| {})
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.documents, 6);
    // The clinic and index keysets, and the bucket keysets made so far.
    assert!(dry.keysets >= 3, "{dry:?}");
    assert_eq!(versions(&kms).await, start);
    assert!(!c.rotation().pending(&admin()).await.unwrap());

    let mut phases = Vec::new();
    let report = c
        .rotation()
        .rotate_kek(&admin(), false, &mut |p: Progress| phases.push(p.phase))
        .await
        .unwrap();
    assert!(!report.resumed);
    assert_eq!(
        (report.keysets, report.documents, report.documents_gone),
        (dry.keysets, 6, 0)
    );
    for change in &report.kms_keys {
        assert_eq!(change.to_version, change.from_version + 1, "{change:?}");
    }
    assert!(phases.contains(&Phase::RewrapDocuments));
    assert_eq!(
        versions(&kms).await,
        start.iter().map(|v| v + 1).collect::<Vec<_>>()
    );
    let verified = c.rotation().verify(&admin(), &mut |_| {}).await.unwrap();
    assert!(verified.passed(), "{:?}", verified.failures);
    assert_eq!(
        (
            verified.keysets_ok,
            verified.documents_ok,
            verified.documents_rewrapped
        ),
        (dry.keysets, 6, 6)
    );
    drop(c);

    // The previous versions go for good: nothing needed them.
    for (k, v) in kms_keys().iter().zip(&start) {
        Kms::destroy_version(kms.as_ref(), k, *v).await.unwrap();
    }
    let c = open(dir.path(), kms.clone()).await;
    assert_eq!(
        manifest(&c).await,
        before,
        "every record and document, byte for byte"
    );
    let verified = c.rotation().verify(&admin(), &mut |_| {}).await.unwrap();
    assert!(verified.passed(), "{:?}", verified.failures);
    // New documents and a second rotation still work.
    let doc = c
        .medicloud()
        .upload(
            &doctor(),
            "after.pdf",
            "application/pdf",
            pdf(99, 5000).as_slice(),
        )
        .await
        .unwrap();
    let again = c
        .rotation()
        .rotate_kek(&admin(), false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(again.documents, 7);
    let mut body = Vec::new();
    c.medicloud()
        .download(&doctor(), &doc.id, &mut body)
        .await
        .unwrap();
    assert_eq!(body, pdf(99, 5000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rotation_resumes_and_rotates_each_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let (c, kms) = seeded(dir.path(), 250).await;
    let before = manifest(&c).await;
    let start = versions(&kms).await;
    // Cut the job while it is re-wrapping documents (between two awaits).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let job = {
        let c = c.clone();
        tokio::spawn(async move {
            c.rotation()
                .rotate_kek(&admin(), false, &mut |p: Progress| {
                    let _ = tx.send(p);
                })
                .await
        })
    };
    while let Some(p) = rx.recv().await {
        if p.phase == Phase::RewrapDocuments && p.done >= 100 {
            break;
        }
    }
    job.abort();
    assert!(job.await.unwrap_err().is_cancelled());
    assert!(c.rotation().pending(&admin()).await.unwrap());
    // Everything still opens in the middle of the job.
    assert_eq!(manifest(&c).await, before);
    // Documents uploaded now land on both sides of where the job stopped;
    // those behind it are caught by its last pass.
    let mut before = before;
    for i in 0..20 {
        let body = pdf(500 + i, 3000);
        let d = c
            .medicloud()
            .upload(&doctor(), "late.pdf", "application/pdf", body.as_slice())
            .await
            .unwrap();
        before.insert(format!("document {}", d.id), body);
    }

    let report = c
        .rotation()
        .rotate_kek(&admin(), false, &mut |_| {})
        .await
        .unwrap();
    assert!(report.resumed);
    assert_eq!(
        versions(&kms).await,
        start.iter().map(|v| v + 1).collect::<Vec<_>>(),
        "each key rotated once"
    );
    assert!(!c.rotation().pending(&admin()).await.unwrap());
    let verified = c.rotation().verify(&admin(), &mut |_| {}).await.unwrap();
    assert!(verified.passed(), "{:?}", verified.failures);
    assert_eq!(
        verified.documents_rewrapped, 270,
        "every document, late ones too"
    );
    for (k, v) in kms_keys().iter().zip(&start) {
        Kms::destroy_version(kms.as_ref(), k, *v).await.unwrap();
    }
    let c = open(dir.path(), kms).await;
    assert_eq!(manifest(&c).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_deletes_during_a_rotation_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _kms) = seeded(dir.path(), 120).await;
    let listed = c.medicloud().list(&doctor()).await.unwrap();
    let writer = {
        let c = c.clone();
        let doomed: Vec<String> = listed.iter().take(30).map(|d| d.id.clone()).collect();
        tokio::spawn(async move {
            let mut uploaded = Vec::new();
            for (i, id) in doomed.iter().enumerate() {
                // A delete that meets a row the job just re-wrapped is
                // refused as a conflict: the caller tries again.
                loop {
                    match c.medicloud().delete(&doctor(), id).await {
                        Ok(()) => break,
                        Err(CoreError::Conflict(_)) => tokio::task::yield_now().await,
                        Err(e) => panic!("{e}"),
                    }
                }
                let d = c
                    .medicloud()
                    .upload(
                        &doctor(),
                        "new.pdf",
                        "application/pdf",
                        pdf(1000 + i, 3000).as_slice(),
                    )
                    .await
                    .unwrap();
                uploaded.push((d.id, pdf(1000 + i, 3000)));
            }
            uploaded
        })
    };
    let report = c
        .rotation()
        .rotate_kek(&admin(), false, &mut |_| {})
        .await
        .unwrap();
    let uploaded = writer.await.unwrap();
    assert!(report.documents + report.documents_gone >= 90, "{report:?}");
    let verified = c.rotation().verify(&admin(), &mut |_| {}).await.unwrap();
    assert!(verified.passed(), "{:?}", verified.failures);
    assert_eq!(verified.documents_ok, 120);
    for (id, body) in uploaded {
        let mut got = Vec::new();
        c.medicloud()
            .download(&doctor(), &id, &mut got)
            .await
            .unwrap();
        assert_eq!(got, body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_document_key_is_replaced_and_its_blob_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _kms) = seeded(dir.path(), 3).await;
    let before = manifest(&c).await;
    let docs = c.medicloud().list(&doctor()).await.unwrap();
    let victim = &docs[0];
    let blobs_before: Vec<String> = blob_names(dir.path());
    assert!(matches!(
        c.rotation()
            .document_key_compromised(&doctor(), &victim.id)
            .await,
        Err(CoreError::Denied(_))
    ));
    assert!(matches!(
        c.rotation()
            .document_key_compromised(&admin(), "no-such-document")
            .await,
        Err(CoreError::NotFound)
    ));
    assert_eq!(
        blob_names(dir.path()),
        blobs_before,
        "refusals change nothing"
    );
    let report = c
        .rotation()
        .document_key_compromised(&admin(), &victim.id)
        .await
        .unwrap();
    assert!(report.old_blob_deleted);
    assert_eq!(report.size, victim.size);
    // One blob replaced by a new one; the others untouched.
    let after = blob_names(dir.path());
    assert_eq!(after.len(), blobs_before.len());
    assert_eq!(
        after.iter().filter(|b| !blobs_before.contains(b)).count(),
        1,
        "exactly one new blob"
    );
    assert_eq!(manifest(&c).await, before, "same bytes, new key");
    // A tampered document is not re-encrypted into a "clean" one.
    let other = blob_names(dir.path())
        .into_iter()
        .find(|b| blobs_before.contains(b))
        .unwrap();
    let path = dir.path().join("blobs").join(&other);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let names = blob_names(dir.path());
    for d in &docs[1..] {
        if let Err(e) = c.rotation().document_key_compromised(&admin(), &d.id).await {
            assert!(matches!(e, CoreError::Crypto(_)), "{e:?}");
        }
    }
    let after_tamper = blob_names(dir.path());
    assert!(after_tamper.contains(&other), "the tampered blob stays");
    assert_eq!(after_tamper.len(), names.len(), "no new blob kept for it");
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let verified = c.rotation().verify(&admin(), &mut |_| {}).await.unwrap();
    assert!(verified.passed(), "{:?}", verified.failures);
}

fn blob_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_kms_key_version_is_moved_off_checked_and_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let (c, kms) = seeded(dir.path(), 8).await;
    let before = manifest(&c).await;
    let documents = KmsKeyId::new("careconnect-documents").unwrap();
    let v = Kms::describe(kms.as_ref(), &documents)
        .await
        .unwrap()
        .current_version;

    // Refusals change nothing: another role, a key the clinic does not
    // use, a version that is not enabled.
    let nothing = |_: Progress| {};
    assert!(matches!(
        c.rotation()
            .kek_version_compromised(&doctor(), documents.as_str(), v, false, &mut { nothing })
            .await,
        Err(CoreError::Denied(_))
    ));
    assert!(matches!(
        c.rotation()
            .kek_version_compromised(&admin(), "someone-elses-key", 1, false, &mut { nothing })
            .await,
        Err(CoreError::Invalid(_))
    ));
    assert!(matches!(
        c.rotation()
            .kek_version_compromised(&admin(), documents.as_str(), v + 5, false, &mut { nothing })
            .await,
        Err(CoreError::Invalid(_))
    ));
    // A dry run lists every document wrapped under it, and changes nothing.
    let dry = c
        .rotation()
        .kek_version_compromised(&admin(), documents.as_str(), v, true, &mut { nothing })
        .await
        .unwrap();
    assert_eq!(dry.wrapped_under.len(), 8, "{dry:?}");
    assert!(!dry.destroyed);
    assert_eq!(versions(&kms).await.iter().sum::<u32>(), 4);

    let report = c
        .rotation()
        .kek_version_compromised(&admin(), documents.as_str(), v, false, &mut { nothing })
        .await
        .unwrap();
    assert!(report.destroyed && report.wrapped_under.is_empty());
    assert_eq!(report.rotation.unwrap().documents, 8);
    let d = Kms::describe(kms.as_ref(), &documents).await.unwrap();
    assert!(d.destroyed_versions.contains(&v));
    assert_eq!(manifest(&c).await, before);
    assert!(
        c.rotation()
            .verify(&admin(), &mut { nothing })
            .await
            .unwrap()
            .passed()
    );
    // The clinic keyset's version too (no document: keysets only).
    let clinic_key = KmsKeyId::new("careconnect-clinic").unwrap();
    let cv = Kms::describe(kms.as_ref(), &clinic_key)
        .await
        .unwrap()
        .current_version;
    let dry = c
        .rotation()
        .kek_version_compromised(&admin(), clinic_key.as_str(), cv, true, &mut { nothing })
        .await
        .unwrap();
    assert_eq!(
        dry.wrapped_under,
        vec!["keyset clinic-keyring", "keyset clinic-index-keyring"]
    );
    c.rotation()
        .kek_version_compromised(&admin(), clinic_key.as_str(), cv, false, &mut { nothing })
        .await
        .unwrap();
    // A clinic opened afresh (keysets read from the store) still opens it all.
    drop(c);
    let again = open(dir.path(), kms.clone()).await;
    assert_eq!(manifest(&again).await, before);
}
