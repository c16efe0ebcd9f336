//! The storage conformance suite against every backend that runs here:
//! memory and SQLite (a real file). PostgreSQL joins when its backend lands.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::sync::Arc;

use careconnect::storage::{MemoryStore, SqliteStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_conforms() {
    conformance::run_all(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("clinic.db"))
        .await
        .unwrap();
    conformance::run_all(Arc::new(store)).await;
}

#[tokio::test]
async fn sqlite_reopens_with_data_and_url() {
    use careconnect::storage::{Collection, RecordStore, RowData, RowId};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clinic.db");
    let c = Collection::new("notes").unwrap();
    let id = RowId::new("n1").unwrap();
    {
        let s = SqliteStore::open(&path).await.unwrap();
        s.insert(
            &c,
            &id,
            RowData {
                key_id: 1,
                envelope: b"e".to_vec(),
                indexes: vec![],
            },
        )
        .await
        .unwrap();
        s.close().await;
    }
    let url = format!("sqlite://{}", path.display());
    let s = SqliteStore::open_url(&url).await.unwrap();
    assert_eq!(s.get(&c, &id).await.unwrap().envelope, b"e");
}
