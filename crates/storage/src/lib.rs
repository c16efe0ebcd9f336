//! Storage for sealed health data.
//!
//! Async traits the domain layer is written against, and backends:
//! [`MemoryStore`] (tests), [`SqliteStore`] (the embedded default, one file),
//! [`PgStore`] (several nodes sharing one PostgreSQL database).
//!
//! One driver, `sqlx`, serves both SQL backends. Why: it is async on tokio
//! (what the web layer runs on), has connection pools for both databases,
//! speaks SQLite and PostgreSQL through one API, and does not impose an ORM:
//! the schema is five small tables written out in SQL. Queries are plain
//! strings checked at run time, so building needs no database; every query
//! string is a compile-time constant (no SQL is assembled from input) and
//! every value is bound. `diesel` (sync core, ORM) and `tokio-postgres` +
//! `rusqlite` (two APIs, one blocking) fit less well.
//! Storage never sees plaintext patient data: it keeps envelopes (opaque
//! bytes) and the few plaintext columns needed to find them: ids, versions,
//! the data-key id that sealed each row, and blind-index tokens.
//!
//! - [`RecordStore`]: rows in collections; insert, get, compare-and-swap
//!   update and delete on a per-row version, blind-index lookup, paging, and
//!   a resumable scan by data-key id (for rotation).
//! - [`AuditLog`]: append-only, gap-free sequence numbers.
//! - [`KeyStore`]: versioned key material (the sealed keyset), compare-and-swap.
//! - [`BlobStore`]: streaming blobs for documents, [`FsBlobStore`] by default;
//!   names are made by the store, never taken from input.
//!
//! ```
//! use careconnect_storage::{Collection, MemoryStore, RecordStore, RowData, RowId, StorageError};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), StorageError> {
//! let store = MemoryStore::new();
//! let notes = Collection::new("notes")?;
//! let id = RowId::new("note-1")?;
//! let v1 = store.insert(&notes, &id, RowData { key_id: 7, envelope: b"sealed".to_vec(), indexes: vec![] }).await?;
//! let v2 = store.update(&notes, &id, v1, RowData { key_id: 8, envelope: b"resealed".to_vec(), indexes: vec![] }).await?;
//! // A writer still holding version 1 loses the race instead of overwriting.
//! let stale = store.update(&notes, &id, v1, RowData { key_id: 8, envelope: vec![], indexes: vec![] }).await;
//! assert!(matches!(stale, Err(StorageError::VersionConflict { expected: 1, actual: 2 })));
//! assert_eq!(store.get(&notes, &id).await?.version, v2);
//! # Ok(()) }
//! ```

mod blob;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod memory;
mod postgres;
#[cfg(feature = "s3")]
mod s3;
mod sql;
mod sqlite;
mod traits;
mod types;
mod url;

pub use blob::{BlobEntry, BlobId, BlobList, BlobReader, BlobStore, FsBlobStore};
pub use error::{Result, StorageError};
pub use memory::MemoryStore;
pub use postgres::{PG_CONNECT_TIMEOUT, PgStore};
#[cfg(feature = "s3")]
pub use s3::S3BlobStore;
pub use sqlite::SqliteStore;
pub use traits::{AuditLog, ChainBuilder, KeyStore, RecordStore};
pub use types::{Collection, IndexEntry, MAX_PAGE, MAX_WRITES, Page, Row, RowData, RowId, Write};
pub use url::{Store, connect, connect_blobs};
