//! The storage traits the domain layer is written against.

use async_trait::async_trait;

use crate::error::Result;
use crate::types::{Collection, IndexEntry, Page, Row, RowData, RowId, Write};

/// Sealed rows grouped in collections, with per-row versions for
/// compare-and-swap, blind indexes and data-key scans.
#[async_trait]
pub trait RecordStore: Send + Sync + std::fmt::Debug {
    /// Inserts a new row at version 1.
    ///
    /// # Errors
    ///
    /// [`crate::StorageError::DuplicateId`] if the id exists.
    async fn insert(&self, coll: &Collection, id: &RowId, data: RowData) -> Result<u64> {
        let (coll, id) = (coll.clone(), id.clone());
        only(self.commit(&[Write::Insert { coll, id, data }]).await?)
    }

    /// Applies `writes` atomically: all of them, or (on any error) none.
    /// Returns each write's new version, in order (0 for a delete). This is
    /// how one domain step that touches several rows (mark a prescription
    /// paid and record its payment) stays one step.
    ///
    /// # Errors
    ///
    /// The first failing write's error ([`crate::StorageError::DuplicateId`],
    /// [`crate::StorageError::VersionConflict`],
    /// [`crate::StorageError::NotFound`]), with nothing applied;
    /// [`crate::StorageError::Invalid`] for an empty batch, more than
    /// [`crate::MAX_WRITES`] writes, or two writes to one row.
    async fn commit(&self, writes: &[Write]) -> Result<Vec<u64>>;

    /// Reads a row.
    ///
    /// # Errors
    ///
    /// [`crate::StorageError::NotFound`].
    async fn get(&self, coll: &Collection, id: &RowId) -> Result<Row>;

    /// Replaces a row if it is still at `expected`; returns the new version.
    ///
    /// # Errors
    ///
    /// [`crate::StorageError::VersionConflict`] if it moved on,
    /// [`crate::StorageError::NotFound`] if it is gone.
    async fn update(
        &self,
        coll: &Collection,
        id: &RowId,
        expected: u64,
        data: RowData,
    ) -> Result<u64> {
        let (coll, id) = (coll.clone(), id.clone());
        only(
            self.commit(&[Write::Update {
                coll,
                id,
                expected,
                data,
            }])
            .await?,
        )
    }

    /// Deletes a row if it is still at `expected`.
    ///
    /// # Errors
    ///
    /// As [`RecordStore::update`].
    async fn delete(&self, coll: &Collection, id: &RowId, expected: u64) -> Result<()> {
        let (coll, id) = (coll.clone(), id.clone());
        self.commit(&[Write::Delete { coll, id, expected }])
            .await
            .map(drop)
    }

    /// Rows whose index `entry.name` holds `entry.token`, in id order.
    ///
    /// # Errors
    ///
    /// Backend errors.
    async fn find(&self, coll: &Collection, entry: &IndexEntry) -> Result<Vec<Row>>;

    /// Up to `limit` rows after `after` (exclusive), in id order.
    ///
    /// # Errors
    ///
    /// [`crate::StorageError::Invalid`] for a limit outside 1..=1000.
    async fn list(&self, coll: &Collection, after: Option<&RowId>, limit: usize) -> Result<Page>;

    /// Up to `limit` rows sealed under data key `key_id`, after `after`, in id
    /// order: resume with the returned `next` (rotation uses this).
    ///
    /// # Errors
    ///
    /// As [`RecordStore::list`].
    async fn scan_key(
        &self,
        coll: &Collection,
        key_id: u32,
        after: Option<&RowId>,
        limit: usize,
    ) -> Result<Page>;
}

/// The one version a one-write batch returns.
fn only(versions: Vec<u64>) -> Result<u64> {
    versions
        .first()
        .copied()
        .ok_or(crate::StorageError::Corrupt("empty commit result".into()))
}

/// Builds the entries of a chained append from the log's last entry
/// (sequence number and bytes; `None` for an empty log). See
/// [`AuditLog::append_chained`]. It may be called more than once, so it
/// must depend on its argument alone.
pub type ChainBuilder<'a> = dyn Fn(Option<(u64, &[u8])>) -> Vec<Vec<u8>> + Send + Sync + 'a;

/// An append-only audit log: the store assigns gap-free sequence numbers
/// from 1. There is no update or delete.
#[async_trait]
pub trait AuditLog: Send + Sync + std::fmt::Debug {
    /// Appends an entry (the caller seals or signs it); returns its sequence number.
    ///
    /// # Errors
    ///
    /// Backend errors.
    async fn append(&self, entry: Vec<u8>) -> Result<u64>;

    /// Appends the entries `build` makes from the log's current last entry,
    /// numbered consecutively right after it, atomically: no other append
    /// (from this handle, another handle or another process sharing the
    /// store) comes between reading the last entry and writing these. This
    /// is what a hash chain needs. Returns the first new entry's sequence
    /// number (for an empty batch, the next one; nothing is written).
    ///
    /// # Errors
    ///
    /// Backend errors; [`crate::StorageError::Invalid`] for more than
    /// 10,000 entries at once.
    async fn append_chained(&self, build: &ChainBuilder<'_>) -> Result<u64>;

    /// Up to `limit` entries from sequence number `from` (inclusive).
    ///
    /// # Errors
    ///
    /// [`crate::StorageError::Invalid`] for a limit outside 1..=1000.
    async fn read(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;
}

/// Versioned key material (the crypto layer's sealed keyset), by name.
#[async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// The current bytes and version.
    ///
    /// # Errors
    ///
    /// [`crate::StorageError::NotFound`].
    async fn load(&self, name: &str) -> Result<(u64, Vec<u8>)>;

    /// Stores `bytes` if the current version is `expected` (`None`: must not
    /// exist yet); returns the new version.
    ///
    /// # Errors
    ///
    /// [`crate::StorageError::VersionConflict`] or
    /// [`crate::StorageError::DuplicateId`].
    async fn store(&self, name: &str, expected: Option<u64>, bytes: Vec<u8>) -> Result<u64>;
}
