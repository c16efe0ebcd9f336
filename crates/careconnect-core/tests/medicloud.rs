//! Medicloud on the local KMS and filesystem blobs: upload, list, download
//! and delete; the sharing matrix (owner, shared, not shared, expired,
//! revoked; every role); bad input that stores nothing; tampered, truncated
//! and swapped blobs that never pass for a complete file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use careconnect_authz::session::ManualClock;
use careconnect_authz::{Principal, Role, UserId};
use careconnect_core::medicloud::{FileType, display_name};
use careconnect_core::{Clinic, ClinicConfig, CoreError};
use sha2::{Digest, Sha256};

const START: u64 = 1_799_046_000;

fn who(s: &str, role: Role) -> Principal {
    Principal::new(
        UserId::new("https://idp.test", s).unwrap(),
        [role].into_iter().collect(),
    )
}

fn pdf(n: usize) -> Vec<u8> {
    let mut v = b"%PDF-1.7\n".to_vec();
    v.extend((0..n).map(|i| (i % 251) as u8));
    v
}

async fn clinic(dir: &Path, max_bytes: u64) -> (Clinic, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(START));
    let mut config = ClinicConfig::embedded(dir).unwrap();
    config.subject_buckets = 2;
    config.medicloud.max_bytes = max_bytes;
    let url = format!("sqlite://{}", dir.join("clinic.db").display());
    let store = careconnect_storage::connect(&url).await.unwrap();
    (
        Clinic::open_with(config, store, clock.clone())
            .await
            .unwrap(),
        clock,
    )
}

fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn download(c: &Clinic, p: &Principal, id: &str) -> Result<Vec<u8>, CoreError> {
    let mut out = Vec::new();
    c.medicloud().download(p, id, &mut out).await.map(|_| out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_list_download_share_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (c, clock) = clinic(dir.path(), 25 << 20).await;
    let (grey, shepherd, pat, alice, fiona, adam) = (
        who("doctor-grey", Role::Doctor),
        who("doctor-shepherd", Role::Doctor),
        who("partner-pat", Role::External),
        who("patient-alice", Role::Patient),
        who("finance-fiona", Role::Finance),
        who("admin-adam", Role::Admin),
    );
    let body = pdf(300_000);
    let doc = c
        .medicloud()
        .upload(
            &grey,
            "scans/referral letter.pdf",
            "application/pdf",
            body.as_slice(),
        )
        .await
        .unwrap();
    assert_eq!(
        (doc.name.as_str(), doc.file_type, doc.size),
        ("referral letter.pdf", FileType::Pdf, body.len() as u64)
    );
    assert_eq!(doc.sha256, hex::encode(Sha256::digest(&body)));
    // The blob holds no plaintext.
    let stored: Vec<u8> = std::fs::read_dir(dir.path().join("blobs"))
        .unwrap()
        .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!stored.windows(9).any(|w| w == b"%PDF-1.7\n"));
    assert_eq!(download(&c, &grey, &doc.id).await.unwrap(), body);
    assert_eq!(c.medicloud().list(&grey).await.unwrap(), vec![doc.clone()]);

    // Not shared: another doctor, the partner; no Medicloud role at all:
    // the patient, finance. Not found, and nothing listed.
    for p in [&shepherd, &pat, &alice, &fiona] {
        assert!(
            matches!(download(&c, p, &doc.id).await, Err(CoreError::NotFound)),
            "{p:?}"
        );
        assert!(matches!(
            c.medicloud().share(p, &doc.id, &p.user, None).await,
            Err(CoreError::NotFound)
        ));
        assert!(matches!(
            c.medicloud().delete(p, &doc.id).await,
            Err(CoreError::NotFound)
        ));
    }
    for p in [&shepherd, &pat] {
        assert!(c.medicloud().list(p).await.unwrap().is_empty());
    }
    for p in [&alice, &fiona] {
        assert!(matches!(
            c.medicloud().list(p).await,
            Err(CoreError::Denied(_))
        ));
    }
    // The administrator looks in (an audited override).
    assert_eq!(c.medicloud().list(&adam).await.unwrap().len(), 1);
    assert_eq!(download(&c, &adam, &doc.id).await.unwrap(), body);

    // Only people in the directory who may hold a grant can be given one
    // (review finding 18): an unknown id, a patient.
    for nobody in [&shepherd, &pat, &alice] {
        assert!(matches!(
            c.medicloud()
                .share(&grey, &doc.id, &nobody.user, None)
                .await,
            Err(CoreError::Invalid("recipient"))
        ));
    }
    for (p, name) in [(&shepherd, "Dr Derek Shepherd"), (&pat, "Pat Lab")] {
        c.admin()
            .set_person(&adam, &p.user, name, p.roles)
            .await
            .unwrap();
    }
    c.records()
        .register(
            &adam,
            &alice.user,
            &careconnect_core::records::PatientDetails {
                name: "Alice Smith".into(),
                date_of_birth: "1980-02-29".into(),
                blood_type: "O+".into(),
                allergies: vec![],
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        c.medicloud().share(&grey, &doc.id, &alice.user, None).await,
        Err(CoreError::Invalid("recipient"))
    ));
    // Shared with the partner for an hour, and with another doctor.
    c.medicloud()
        .share(&grey, &doc.id, &pat.user, Some(START + 3600))
        .await
        .unwrap();
    c.medicloud()
        .share(&grey, &doc.id, &shepherd.user, None)
        .await
        .unwrap();
    for p in [&pat, &shepherd] {
        assert_eq!(download(&c, p, &doc.id).await.unwrap(), body);
        assert_eq!(c.medicloud().list(p).await.unwrap(), vec![doc.clone()]);
        // Read-only: a share gives no right to share on or delete.
        assert!(matches!(
            c.medicloud().share(p, &doc.id, &alice.user, None).await,
            Err(CoreError::NotFound)
        ));
        assert!(matches!(
            c.medicloud().delete(p, &doc.id).await,
            Err(CoreError::NotFound)
        ));
    }
    assert!(matches!(
        c.medicloud()
            .share(&grey, &doc.id, &pat.user, Some(START - 1))
            .await,
        Err(CoreError::Invalid(_))
    ));
    // Expired, and revoked.
    clock.advance(Duration::from_secs(3601));
    assert!(matches!(
        download(&c, &pat, &doc.id).await,
        Err(CoreError::NotFound)
    ));
    assert!(c.medicloud().list(&pat).await.unwrap().is_empty());
    c.medicloud()
        .revoke(&grey, &doc.id, &shepherd.user)
        .await
        .unwrap();
    assert!(matches!(
        download(&c, &shepherd, &doc.id).await,
        Err(CoreError::NotFound)
    ));
    // Every download, share, revoke and refusal is in the audit log.
    let log = c.admin().audit_log(&adam, 1, 1000).await.unwrap();
    let count = |a: &str| log.entries.iter().filter(|(_, e)| e.action == a).count();
    assert!(count("DownloadDocument") >= 8 && count("ShareDocument") >= 4);

    // The owner deletes: metadata, shares and blob gone.
    let files = blob_files(dir.path());
    c.medicloud().delete(&grey, &doc.id).await.unwrap();
    assert_eq!(blob_files(dir.path()), files - 1);
    assert!(c.medicloud().list(&grey).await.unwrap().is_empty());
    assert!(matches!(
        download(&c, &grey, &doc.id).await,
        Err(CoreError::NotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = clinic(dir.path(), 64 * 1024).await;
    let grey = who("doctor-grey", Role::Doctor);
    let before = blob_files(dir.path());
    let bad = |r: Result<_, CoreError>, what: &str| {
        assert!(matches!(r, Err(CoreError::Invalid(_))), "{what}: {r:?}");
    };
    // A Windows executable named like a PDF.
    let mut exe = b"MZ\x90\x00\x03\x00\x00\x00".to_vec();
    exe.extend([0u8; 600]);
    bad(
        c.medicloud()
            .upload(&grey, "report.pdf", "application/pdf", exe.as_slice())
            .await,
        "magic",
    );
    // A ZIP that is neither ODT nor named .docx.
    let zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00rest of a zip archive".to_vec();
    bad(
        c.medicloud()
            .upload(&grey, "notes.pdf", "application/pdf", zip.as_slice())
            .await,
        "zip",
    );
    // Over the limit: refused while streaming.
    let r = c
        .medicloud()
        .upload(&grey, "big.pdf", "application/pdf", pdf(100_000).as_slice())
        .await;
    assert!(
        matches!(r, Err(CoreError::TooLarge { limit: 65_536 })),
        "oversized: {r:?}"
    );
    bad(
        c.medicloud()
            .upload(&grey, "empty.txt", "text/plain", &b""[..])
            .await,
        "empty",
    );
    for name in ["", "   ", "../..", "\u{0}\n", "/"] {
        bad(
            c.medicloud()
                .upload(&grey, name, "application/pdf", pdf(10).as_slice())
                .await,
            "name",
        );
    }
    assert_eq!(
        blob_files(dir.path()),
        before,
        "a refused upload stored a blob"
    );
    assert!(c.medicloud().list(&grey).await.unwrap().is_empty());
    // Names are display data: paths and controls do not survive.
    assert_eq!(display_name("../../etc/passwd").as_deref(), Some("passwd"));
    assert_eq!(display_name("a\"b;\r\nc.pdf").as_deref(), Some("a_b_c.pdf"));
    let ok = c
        .medicloud()
        .upload(&grey, "..\\..\\boot.ini.txt", "text/plain", &b"hello"[..])
        .await
        .unwrap();
    assert_eq!(
        (ok.name.as_str(), ok.file_type),
        ("boot.ini.txt", FileType::Txt)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_truncated_or_swapped_blobs_never_pass_for_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = clinic(dir.path(), 25 << 20).await;
    let grey = who("doctor-grey", Role::Doctor);
    let body = pdf(3 << 20);
    let a = c
        .medicloud()
        .upload(&grey, "a.pdf", "application/pdf", body.as_slice())
        .await
        .unwrap();
    let b = c
        .medicloud()
        .upload(&grey, "b.pdf", "application/pdf", body.as_slice())
        .await
        .unwrap();
    let blobs: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path().join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(blobs.len(), 2);
    let originals: Vec<Vec<u8>> = blobs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let restore = || {
        for (p, bytes) in blobs.iter().zip(&originals) {
            std::fs::write(p, bytes).unwrap();
        }
    };
    let both_fail = || async {
        for id in [&a.id, &b.id] {
            let r = download(&c, &grey, id).await;
            assert!(
                matches!(r, Err(CoreError::Crypto(_))),
                "{:?}",
                r.map(|v| v.len())
            );
        }
    };
    // A flipped byte in the middle of each.
    for (p, bytes) in blobs.iter().zip(&originals) {
        let mut t = bytes.clone();
        let mid = t.len() / 2;
        t[mid] ^= 0x40;
        std::fs::write(p, t).unwrap();
    }
    both_fail().await;
    restore();
    // Cut short by one byte, and by a whole chunk.
    for (i, (p, bytes)) in blobs.iter().zip(&originals).enumerate() {
        let cut = if i == 0 { 1 } else { (1 << 20) + 16 };
        std::fs::write(p, &bytes[..bytes.len() - cut]).unwrap();
    }
    both_fail().await;
    restore();
    // Swapped: each document's blob holds the other's bytes.
    std::fs::write(&blobs[0], &originals[1]).unwrap();
    std::fs::write(&blobs[1], &originals[0]).unwrap();
    both_fail().await;
    restore();
    assert_eq!(download(&c, &grey, &a.id).await.unwrap(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documents_key_rotates_when_due_and_old_documents_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let clock = Arc::new(ManualClock::new(now));
    let mut config = ClinicConfig::embedded(dir.path()).unwrap();
    config.subject_buckets = 2;
    let url = format!("sqlite://{}", dir.path().join("clinic.db").display());
    let store = careconnect_storage::connect(&url).await.unwrap();
    let c = Clinic::open_with(config, store, clock.clone())
        .await
        .unwrap();
    let (grey, adam) = (
        who("doctor-grey", Role::Doctor),
        who("admin-adam", Role::Admin),
    );
    assert!(matches!(
        c.medicloud().rotate_if_due(&grey).await,
        Err(CoreError::Denied(_))
    ));
    let before = c.medicloud().rotation_status(&adam).await.unwrap();
    assert_eq!(before.current_version, 1);
    let due = before.next_due.unwrap();
    assert!(
        due >= now + 89 * 86_400 && due <= now + 91 * 86_400,
        "{before:?}"
    );
    let old = c
        .medicloud()
        .upload(&grey, "old.pdf", "application/pdf", pdf(5000).as_slice())
        .await
        .unwrap();
    assert_eq!(c.medicloud().rotate_if_due(&adam).await.unwrap(), None);
    clock.advance(Duration::from_secs(91 * 86_400));
    assert_eq!(c.medicloud().rotate_if_due(&adam).await.unwrap(), Some(2));
    assert_eq!(c.medicloud().rotate_if_due(&adam).await.unwrap(), None);
    let after = c.medicloud().rotation_status(&adam).await.unwrap();
    assert_eq!(after.current_version, 2);
    let new = c
        .medicloud()
        .upload(&grey, "new.pdf", "application/pdf", pdf(5000).as_slice())
        .await
        .unwrap();
    for d in [&old, &new] {
        assert_eq!(download(&c, &grey, &d.id).await.unwrap(), pdf(5000));
    }
}

/// Makes the blob file `id` look written `secs` ago.
fn age_blob(dir: &Path, id: &str, secs: u64) {
    let f = std::fs::File::options()
        .write(true)
        .open(dir.join("blobs").join(id))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_blobs_are_collected_after_the_grace_and_never_when_metadata_is_forged() {
    use careconnect_storage::{BlobStore, Collection, FsBlobStore, RowData, RowId};
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = clinic(dir.path(), 25 << 20).await;
    let (grey, adam) = (
        who("doctor-grey", Role::Doctor),
        who("admin-adam", Role::Admin),
    );
    let kept = c
        .medicloud()
        .upload(&grey, "kept.pdf", "application/pdf", pdf(70_000).as_slice())
        .await
        .unwrap();
    // What a crash between an upload's blob and its metadata leaves: blobs
    // nothing references, one from long ago and one from just now.
    let blobs = FsBlobStore::open(dir.path().join("blobs")).await.unwrap();
    let old = blobs.put(&mut &pdf(10)[..]).await.unwrap();
    let young = blobs.put(&mut &pdf(10)[..]).await.unwrap();
    age_blob(dir.path(), old.as_str(), 7200);
    // The kept document is old too: being referenced is what keeps it.
    for e in std::fs::read_dir(dir.path().join("blobs")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name != young.as_str() {
            age_blob(dir.path(), &name, 7200);
        }
    }
    assert_eq!(blob_files(dir.path()), 3);

    // Only an administrator collects; a refusal deletes nothing.
    assert!(matches!(
        c.medicloud().collect_orphans(&grey).await,
        Err(CoreError::Denied(_))
    ));
    assert_eq!(blob_files(dir.path()), 3);

    let report = c.medicloud().collect_orphans(&adam).await.unwrap();
    assert_eq!(
        (report.documents, report.blobs, report.young, report.deleted),
        (1, 3, 1, 1),
        "{report:?}"
    );
    assert!(!blobs.exists(&old).await.unwrap());
    assert!(blobs.exists(&young).await.unwrap());
    assert_eq!(
        download(&c, &grey, &kept.id).await.unwrap(),
        pdf(70_000),
        "a referenced blob is never collected, however old"
    );
    // Again: nothing more to do.
    let again = c.medicloud().collect_orphans(&adam).await.unwrap();
    assert_eq!((again.blobs, again.deleted), (2, 0));

    // A forged metadata row: its blob could be any of them, so nothing is
    // collected, not even the orphan that is now old enough.
    age_blob(dir.path(), young.as_str(), 7200);
    let url = format!("sqlite://{}", dir.path().join("clinic.db").display());
    let store = careconnect_storage::connect(&url).await.unwrap();
    let forged = RowData {
        key_id: 1,
        envelope: vec![0x42; 200],
        indexes: vec![],
    };
    let coll = Collection::new(careconnect_core::medicloud::DOCUMENTS_COLLECTION).unwrap();
    let forged_id = RowId::new("forged-document").unwrap();
    store.insert(&coll, &forged_id, forged).await.unwrap();
    assert!(matches!(
        c.medicloud().collect_orphans(&adam).await,
        Err(CoreError::Corrupt(_))
    ));
    assert!(blobs.exists(&young).await.unwrap());
    assert_eq!(download(&c, &grey, &kept.id).await.unwrap(), pdf(70_000));
    // Once the forged row is gone, collection resumes.
    store.delete(&coll, &forged_id, 1).await.unwrap();
    let report = c.medicloud().collect_orphans(&adam).await.unwrap();
    assert_eq!((report.blobs, report.deleted), (2, 1));
    assert!(!blobs.exists(&young).await.unwrap());
    assert_eq!(download(&c, &grey, &kept.id).await.unwrap(), pdf(70_000));
    let log = c.admin().audit_log(&adam, 1, 1000).await.unwrap();
    assert!(
        log.entries
            .iter()
            .any(|(_, e)| e.action == "CollectOrphans" && e.resource.contains("deleted=1")),
        "what was collected is on record"
    );

    // An upload slower than half the grace is refused and keeps nothing:
    // its blob could look old to a collector before its metadata exists.
    drop(c);
    let mut config = ClinicConfig::embedded(dir.path()).unwrap();
    config.subject_buckets = 2;
    config.medicloud.orphan_grace = Duration::ZERO;
    let store = careconnect_storage::connect(&url).await.unwrap();
    let hasty = Clinic::open_with(config, store, Arc::new(ManualClock::new(START)))
        .await
        .unwrap();
    let before = blob_files(dir.path());
    assert!(matches!(
        hasty
            .medicloud()
            .upload(&grey, "late.pdf", "application/pdf", pdf(10).as_slice())
            .await,
        Err(CoreError::Conflict(_))
    ));
    assert_eq!(blob_files(dir.path()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_provider_sealed_the_other_opens() {
    use careconnect_core::records::PatientDetails;
    let providers = careconnect_crypto::provider::all_providers();
    assert!(providers.len() >= 2, "the tests build every provider");
    let (doctor, admin, patient) = (
        who("doctor-grey", Role::Doctor),
        who("admin-adam", Role::Admin),
        who("patient-alice", Role::Patient),
    );
    for (i, sealer) in providers.iter().enumerate() {
        for opener in &providers {
            let dir = tempfile::tempdir().unwrap();
            let open = |provider| {
                let dir = dir.path().to_owned();
                async move {
                    let mut config = ClinicConfig::embedded(&dir).unwrap();
                    config.subject_buckets = 2;
                    config.provider = provider;
                    let url = format!("sqlite://{}", dir.join("clinic.db").display());
                    let store = careconnect_storage::connect(&url).await.unwrap();
                    Clinic::open_with(config, store, Arc::new(ManualClock::new(START)))
                        .await
                        .unwrap()
                }
            };
            let c = open(*sealer).await;
            let details = PatientDetails {
                name: format!("Patient {i}"),
                date_of_birth: "1970-01-01".into(),
                blood_type: "O+".into(),
                allergies: vec![],
            };
            c.records()
                .register(&admin, &patient.user, &details)
                .await
                .unwrap();
            let doc = c
                .medicloud()
                .upload(&doctor, "a.pdf", "application/pdf", pdf(200_000).as_slice())
                .await
                .unwrap();
            drop(c);
            let c = open(*opener).await;
            let what = format!("{} -> {}", sealer.name(), opener.name());
            assert_eq!(
                download(&c, &doctor, &doc.id).await.unwrap(),
                pdf(200_000),
                "{what}"
            );
            let record = c.patients().record(&patient).await.unwrap();
            assert_eq!(record.details, details, "{what}");
        }
    }
}
