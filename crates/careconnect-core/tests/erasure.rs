//! Erasure by crypto-shredding on a SQLite file and the local KMS: after
//! erasing a patient, neither the live database nor a copy taken before the
//! erasure opens that patient's rows with anything the clinic still holds;
//! every other patient still opens in the live database, and in the copy
//! every bucket but the erased patient's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::path::Path;
use std::sync::Arc;

use careconnect_authz::UserId;
use careconnect_core::subjects::SubjectKeys;
use careconnect_crypto::{EncryptionContext, LocalKms, RootSecret};
use careconnect_storage::{Collection, RecordStore, RowData, RowId, SqliteStore};

const BUCKETS: u16 = 4;
const PATIENTS: usize = 24;

fn patient(i: usize) -> UserId {
    UserId::new("https://idp.test", format!("patient-{i}")).unwrap()
}

fn note_ctx(i: usize) -> EncryptionContext {
    EncryptionContext::new()
        .with("collection", "notes")
        .with("row", format!("n{i}"))
        .with("field", "text")
}

async fn open(db: &Path, kms: &Arc<LocalKms>) -> (Arc<SqliteStore>, SubjectKeys) {
    let store = Arc::new(SqliteStore::open(db).await.unwrap());
    let keys = SubjectKeys::new(store.clone(), store.clone(), kms.clone(), BUCKETS).unwrap();
    (store, keys)
}

/// Which patients' notes open with what `keys` gives for them.
async fn readable(store: &SqliteStore, keys: &SubjectKeys) -> Vec<bool> {
    let notes = Collection::new("notes").unwrap();
    let mut out = Vec::new();
    for i in 0..PATIENTS {
        let row = store
            .get(&notes, &RowId::new(format!("n{i}")).unwrap())
            .await
            .unwrap();
        let ok = match keys.keys(&patient(i)).await {
            Ok(ring) => ring
                .open(&row.envelope, &note_ctx(i))
                .is_ok_and(|o| o.plaintext == format!("note of patient {i}").as_bytes()),
            Err(_) => false,
        };
        out.push(ok);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_patient_is_unreadable_even_in_an_earlier_copy() {
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(
        LocalKms::open_or_create(dir.path().join("kms.bin"), RootSecret::generate()).unwrap(),
    );
    for k in SubjectKeys::kms_keys(BUCKETS).unwrap() {
        kms.ensure_key(&k).unwrap();
    }
    let live = dir.path().join("clinic.db");
    {
        let (store, keys) = open(&live, &kms).await;
        let notes = Collection::new("notes").unwrap();
        for i in 0..PATIENTS {
            let ring = keys.keys(&patient(i)).await.unwrap();
            let envelope = ring
                .seal(&note_ctx(i), format!("note of patient {i}").as_bytes())
                .unwrap();
            store
                .insert(
                    &notes,
                    &RowId::new(format!("n{i}")).unwrap(),
                    RowData {
                        key_id: 0,
                        envelope,
                        indexes: vec![],
                    },
                )
                .await
                .unwrap();
        }
        assert!(readable(&store, &keys).await.iter().all(|r| *r));
        store.close().await;
    }
    // A copy of the database before the erasure (a backup, a stolen file).
    let copy = dir.path().join("copy.db");
    std::fs::copy(&live, &copy).unwrap();

    let erased = 7;
    let (store, keys) = open(&live, &kms).await;
    let report = keys.erase(&patient(erased)).await.unwrap().unwrap();
    assert!(report.kms_versions_destroyed >= 1, "{report:?}");
    // Live: everyone but the erased patient still opens.
    let after = readable(&store, &keys).await;
    for (i, ok) in after.iter().enumerate() {
        assert_eq!(*ok, i != erased, "live, patient {i}");
    }
    // Erasing again has nothing left to do; the subject stays erased.
    assert_eq!(keys.erase(&patient(erased)).await.unwrap(), None);
    assert!(matches!(
        keys.keys(&patient(erased)).await,
        Err(careconnect_core::CoreError::Erased)
    ));
    store.close().await;

    // The copy, with everything the clinic still holds (same KMS file and
    // root secret): the erased patient's bucket no longer opens at all, so
    // neither does the erased patient; other buckets still open.
    let (copy_store, copy_keys) = open(&copy, &kms).await;
    let in_copy = readable(&copy_store, &copy_keys).await;
    assert!(!in_copy[erased], "the erased patient opened in the copy");
    let same_bucket: Vec<usize> = (0..PATIENTS).filter(|i| !in_copy[*i]).collect();
    assert!(
        same_bucket.len() < PATIENTS,
        "other buckets of the copy still open: {in_copy:?}"
    );
    assert_eq!(
        same_bucket.len(),
        report.resealed + 1,
        "in the copy, exactly the erased patient's bucket is gone"
    );
}

/// Someone who can write the database (no keys) tampers with subject rows
/// around an erasure: hiding the patient's row does not make the erasure a
/// no-op; blanking a live patient's row does not make them read as erased;
/// a row of the bucket that does not open stops the erasure before any key
/// is destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_writer_cannot_steer_an_erasure() {
    use careconnect_core::CoreError;
    use careconnect_crypto::mac::MacKey;
    use careconnect_storage::MemoryStore;

    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(
        LocalKms::open_or_create(dir.path().join("kms.bin"), RootSecret::generate()).unwrap(),
    );
    for k in SubjectKeys::kms_keys(2).unwrap() {
        kms.ensure_key(&k).unwrap();
    }
    let store = Arc::new(MemoryStore::new());
    let handle_key = MacKey::generate();
    let handle_key_bytes = handle_key.clone();
    let fresh = || {
        SubjectKeys::new(store.clone(), store.clone(), kms.clone(), 2)
            .unwrap()
            .with_handle_key(handle_key_bytes.clone())
    };
    let keys = fresh();
    let mut notes = Vec::new();
    for i in 0..8 {
        let ring = keys.keys(&patient(i)).await.unwrap();
        notes.push(ring.seal(&note_ctx(i), b"note").unwrap());
    }
    let subjects = Collection::new("core_subjects").unwrap();
    let blank = |r: &careconnect_storage::Row| RowData {
        key_id: 0,
        envelope: Vec::new(),
        indexes: r.indexes.clone(),
    };
    let as_was = |r: &careconnect_storage::Row| RowData {
        key_id: r.key_id,
        envelope: r.envelope.clone(),
        indexes: r.indexes.clone(),
    };
    // A live patient's row blanked: corrupt, never "erased"; restored, fine.
    let h1 = keys.handle(&patient(1)).unwrap();
    let saved = store.get(&subjects, &h1).await.unwrap();
    let v = store
        .update(&subjects, &h1, saved.version, blank(&saved))
        .await
        .unwrap();
    assert!(matches!(
        fresh().keys(&patient(1)).await,
        Err(CoreError::Corrupt(_))
    ));
    store
        .update(&subjects, &h1, v, as_was(&saved))
        .await
        .unwrap();
    fresh().keys(&patient(1)).await.unwrap();

    // The erased patient's row hidden during the erasure, then put back:
    // the erasure ran all the same, and the row is dead.
    let h0 = keys.handle(&patient(0)).unwrap();
    let saved = store.get(&subjects, &h0).await.unwrap();
    store.delete(&subjects, &h0, saved.version).await.unwrap();
    let report = keys.erase(&patient(0)).await.unwrap();
    assert!(report.is_some());
    store.insert(&subjects, &h0, as_was(&saved)).await.unwrap();
    let later = fresh();
    assert!(matches!(
        later.keys(&patient(0)).await,
        Err(CoreError::Erased)
    ));
    for (i, note) in notes.iter().enumerate().skip(1) {
        let ring = later.keys(&patient(i)).await.unwrap();
        assert!(ring.open(note, &note_ctx(i)).is_ok(), "patient {i}");
    }

    // A forged row in patient 2's bucket: the erasure stops before any key
    // is destroyed; everyone still opens.
    let h2 = later.handle(&patient(2)).unwrap();
    let mut forged = h2.as_str().to_owned();
    forged.pop();
    forged.push(if h2.as_str().ends_with('0') { '1' } else { '0' });
    store
        .insert(
            &subjects,
            &RowId::new(forged).unwrap(),
            RowData {
                key_id: 1,
                envelope: vec![1u8; 90],
                indexes: vec![],
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        later.erase(&patient(2)).await,
        Err(CoreError::Corrupt(_))
    ));
    let after = fresh();
    for (i, note) in notes.iter().enumerate().skip(1) {
        let ring = after.keys(&patient(i)).await.unwrap();
        assert!(ring.open(note, &note_ctx(i)).is_ok(), "patient {i}");
    }
}
