//! Small helpers for the crate's rows in a `RecordStore`.

use careconnect_storage::{Collection, RecordStore, RowId, StorageError};
use sha2::{Digest, Sha256};

use crate::error::AuthzError;

/// A row id from the SHA-256 of length-prefixed parts, so ids reveal
/// nothing of what they key (identities, session ids, login states).
pub(crate) fn hashed_row(parts: &[&[u8]]) -> Result<RowId, AuthzError> {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    Ok(RowId::new(hex::encode(h.finalize()))?)
}

/// Deletes every row of `coll` whose body `dead` says is expired (or that
/// does not decode); returns how many. Rows changed meanwhile are left alone.
pub(crate) async fn purge(
    store: &dyn RecordStore,
    coll: &Collection,
    dead: impl Fn(&[u8]) -> bool,
) -> Result<usize, AuthzError> {
    let mut after: Option<RowId> = None;
    let mut purged = 0;
    loop {
        let page = store.list(coll, after.as_ref(), 500).await?;
        for row in &page.rows {
            if dead(&row.envelope) {
                match store.delete(coll, &row.id, row.version).await {
                    Ok(()) => purged += 1,
                    Err(StorageError::NotFound | StorageError::VersionConflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(purged),
        }
    }
}
