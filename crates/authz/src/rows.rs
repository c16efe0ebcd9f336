//! The crate's rows in a `RecordStore`: sealed, and bound to their place.
//!
//! Sessions and role assignments decide who is signed in and with which
//! roles. Someone who can write the database must not be able to insert a
//! session for an id they chose with the role `admin`, nor copy a row to
//! another key. So every row is sealed with a [`Keyring`] (AEAD), bound to its
//! collection and row id: a forged, altered or moved row does not open, and
//! reads as no row at all. Sealing also keeps the e-mail addresses and roles
//! in those rows out of a database copy.

use careconnect_crypto::{EncryptionContext, Keyring};
use careconnect_storage::{Collection, RecordStore, Row, RowData, RowId, StorageError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

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

/// One collection of sealed JSON rows.
#[derive(Clone)]
pub(crate) struct SealedRows {
    ring: Keyring,
    coll: Collection,
}

impl std::fmt::Debug for SealedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRows")
            .field("collection", &self.coll.as_str())
            .finish_non_exhaustive()
    }
}

impl SealedRows {
    /// Rows of the collection `name`, sealed with `ring`'s primary key.
    pub(crate) fn new(ring: Keyring, name: &str) -> Result<Self, AuthzError> {
        Ok(Self {
            ring,
            coll: Collection::new(name)?,
        })
    }

    pub(crate) fn coll(&self) -> &Collection {
        &self.coll
    }

    fn context(&self, id: &RowId) -> EncryptionContext {
        EncryptionContext::new()
            .with("purpose", "careconnect/authz-row")
            .with("collection", self.coll.as_str())
            .with("row", id.as_str())
    }

    /// `value` as JSON, sealed for row `id`.
    pub(crate) fn seal<T: Serialize>(&self, id: &RowId, value: &T) -> Result<RowData, AuthzError> {
        let json = Zeroizing::new(
            serde_json::to_vec(value).map_err(|_| AuthzError::Corrupt(self.what()))?,
        );
        Ok(RowData {
            key_id: self.ring.primary().get(),
            envelope: self.ring.seal(&self.context(id), &json)?,
            indexes: vec![],
        })
    }

    /// The row's value, or `None` when it does not open (forged, altered,
    /// moved from another row, or sealed under a key this keyring lacks) or
    /// does not decode. Logged by row id only.
    pub(crate) fn open<T: DeserializeOwned>(&self, row: &Row) -> Option<T> {
        let value = self
            .ring
            .open(&row.envelope, &self.context(&row.id))
            .ok()
            .and_then(|o| serde_json::from_slice(&o.plaintext).ok());
        if value.is_none() {
            tracing::warn!(
                collection = self.coll.as_str(),
                row = row.id.as_str(),
                "stored row does not open: ignored as forged or corrupt"
            );
        }
        value
    }

    fn what(&self) -> &'static str {
        "row"
    }

    /// Deletes every row for which `dead` says so (given its opened value,
    /// `None` for a row that does not open); returns how many. Rows changed
    /// meanwhile are left alone.
    pub(crate) async fn purge<T: DeserializeOwned>(
        &self,
        store: &dyn RecordStore,
        dead: impl Fn(Option<T>) -> bool,
    ) -> Result<usize, AuthzError> {
        let mut after: Option<RowId> = None;
        let mut purged = 0;
        loop {
            let page = store.list(&self.coll, after.as_ref(), 500).await?;
            for row in &page.rows {
                if dead(self.open(row)) {
                    match store.delete(&self.coll, &row.id, row.version).await {
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
}
