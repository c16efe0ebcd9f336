//! The storage conformance suite against every backend that runs here:
//! memory, SQLite (a real file) and a real PostgreSQL server
//! (`CARECONNECT_PG_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! `scripts/test.sh` starts a server when none is running).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::sync::Arc;

use careconnect::storage::{MemoryStore, PgStore, SqliteStore, conformance};

mod common;
use common::s3_store;

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

fn pg_url() -> String {
    std::env::var("CARECONNECT_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_conforms() {
    let url = pg_url();
    let store = PgStore::connect(&url, 8).await.unwrap_or_else(|e| {
        panic!("no PostgreSQL at {url} ({e}): run scripts/test.sh, which starts one, or set CARECONNECT_PG_URL")
    });
    conformance::run_all(Arc::new(store)).await;
}

#[tokio::test]
async fn postgres_unreachable_is_unavailable() {
    // Nothing listens on port 1 of loopback.
    let err = PgStore::connect("postgres://postgres@127.0.0.1:1/test", 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, careconnect::storage::StorageError::Unavailable(_)),
        "{err}"
    );
}

#[tokio::test]
async fn fs_blobs_conform_and_hide_partial_uploads() {
    use careconnect::storage::{BlobStore, FsBlobStore};
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path()).await.unwrap();
    conformance::blobs(&store).await;
    // An upload whose source fails half-way leaves nothing behind.
    struct Failing(usize);
    impl tokio::io::AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(Err(std::io::Error::other("client went away")));
            }
            self.0 -= 1;
            buf.put_slice(&[7u8; 4096]);
            std::task::Poll::Ready(Ok(()))
        }
    }
    assert!(store.put(&mut Failing(100)).await.is_err());
    assert_eq!(blob_ids(&store).await, vec![]);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temporary file left"
    );
}

#[tokio::test]
async fn backends_from_urls() {
    use careconnect::storage::{StorageError, connect, connect_blobs};
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("u.db").display());
    conformance::crud(&*connect(&sqlite).await.unwrap()).await;
    conformance::crud(&*connect("memory:").await.unwrap()).await;
    conformance::crud(&*connect(&pg_url()).await.unwrap()).await;
    let blobs = format!("file://{}", dir.path().join("blobs").display());
    conformance::blobs(&*connect_blobs(&blobs).await.unwrap()).await;
    for bad in ["mysql://x", "", "file:relative"] {
        assert!(
            matches!(connect(bad).await, Err(StorageError::UnsupportedUrl)),
            "{bad}"
        );
    }
    assert!(matches!(
        connect_blobs("s4://bucket").await,
        Err(StorageError::UnsupportedUrl)
    ));
}

async fn blob_ids(s: &dyn careconnect::storage::BlobStore) -> Vec<careconnect::storage::BlobId> {
    let listed: Vec<_> = futures::TryStreamExt::try_collect(s.list()).await.unwrap();
    listed.into_iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn s3_blobs_conform() {
    use careconnect::storage::BlobStore;
    let store = s3_store("documents");
    conformance::blobs(&store).await;
    // Bigger than one 8 MiB part: a real multipart upload.
    let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 253) as u8).collect();
    let id = store.put(&mut big.as_slice()).await.unwrap();
    let mut out = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut store.get(&id).await.unwrap(), &mut out)
        .await
        .unwrap();
    assert!(out == big, "9 MiB multipart round trip");
    store.delete(&id).await.unwrap();
    // A blob under a deeper prefix belongs to another store: not listed.
    let bucket = common::fresh_bucket();
    let (store, deeper) = (
        common::s3_store_in(Some(&bucket), "documents"),
        common::s3_store_in(Some(&bucket), "documents/deeper"),
    );
    let other = deeper.put(&mut &b"elsewhere"[..]).await.unwrap();
    assert_eq!(blob_ids(&store).await, vec![]);
    let mine = store.put(&mut &b"here"[..]).await.unwrap();
    assert_eq!(blob_ids(&store).await, vec![mine.clone()]);
    assert_eq!(blob_ids(&deeper).await, vec![other.clone()]);
    deeper.delete(&other).await.unwrap();
    store.delete(&mine).await.unwrap();
}
