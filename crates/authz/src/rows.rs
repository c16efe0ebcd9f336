//! The crate's rows in a `RecordStore`: sealed, and bound to their place.
//!
//! Sessions and role assignments decide who is signed in and with which
//! roles. Someone who can write the database must not be able to insert a
//! session for an id they chose with the role `admin`, nor copy a row to
//! another key. So every row is sealed with a [`careconnect_crypto::Keyring`] (AEAD), bound to its
//! collection and row id: a forged, altered or moved row does not open, and
//! reads as no row at all. Sealing also keeps the e-mail addresses and roles
//! in those rows out of a database copy.

use careconnect_crypto::{EncryptionContext, Error as CryptoError, KeyState, SharedKeyring};
use careconnect_storage::{Collection, RecordStore, Row, RowData, RowId, StorageError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::error::AuthzError;

/// Why a stored row is not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Untrusted {
    /// Forged, altered, moved, undecodable, or under a compromised or
    /// destroyed key: it will never be trusted.
    Forged,
    /// Sealed under a key this keyring does not hold.
    UnknownKey,
}

/// The encryption context this crate seals row `id` of `coll` under (role
/// assignments, sessions), for a rotation that re-seals such rows under a
/// new data key without knowing what they hold.
pub fn row_context(coll: &Collection, id: &RowId) -> EncryptionContext {
    EncryptionContext::new()
        .with("purpose", "careconnect/authz-row")
        .with("collection", coll.as_str())
        .with("row", id.as_str())
}

/// One collection of sealed JSON rows.
#[derive(Clone)]
pub(crate) struct SealedRows {
    ring: SharedKeyring,
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
    pub(crate) fn new(ring: impl Into<SharedKeyring>, name: &str) -> Result<Self, AuthzError> {
        Ok(Self {
            ring: ring.into(),
            coll: Collection::new(name)?,
        })
    }

    pub(crate) fn coll(&self) -> &Collection {
        &self.coll
    }

    fn context(&self, id: &RowId) -> EncryptionContext {
        row_context(&self.coll, id)
    }

    /// `value` as JSON, sealed for row `id`.
    pub(crate) fn seal<T: Serialize>(&self, id: &RowId, value: &T) -> Result<RowData, AuthzError> {
        let json =
            Zeroizing::new(serde_json::to_vec(value).map_err(|_| AuthzError::Corrupt("row"))?);
        // Checked against the keyring's lease, if it has one: a process
        // that cannot re-read the stored keyset stops sealing.
        let ring = self.ring.sealing()?;
        Ok(RowData {
            key_id: ring.primary().get(),
            envelope: ring.seal(&self.context(id), &json)?,
            indexes: vec![],
        })
    }

    /// The row's value, or `None` when it cannot be trusted (see
    /// [`SealedRows::open_checked`]). Logged by row id only.
    pub(crate) fn open<T: DeserializeOwned>(&self, row: &Row) -> Option<T> {
        self.open_checked(row).ok()
    }

    /// The row's value, or why it cannot be trusted:
    /// - [`Untrusted::Forged`]: it does not authenticate under a key this
    ///   keyring holds (forged, altered, moved from another row), does not
    ///   decode, was sealed under a key marked compromised (whoever holds
    ///   that key could have sealed it), or under a destroyed one;
    /// - [`Untrusted::UnknownKey`]: sealed under a key this keyring does not
    ///   have (yet): perhaps another node rotated; this node cannot tell.
    pub(crate) fn open_checked<T: DeserializeOwned>(&self, row: &Row) -> Result<T, Untrusted> {
        let outcome = match self
            .ring
            .current()
            .open(&row.envelope, &self.context(&row.id))
        {
            Ok(o) if o.key_state == KeyState::Compromised => Err(Untrusted::Forged),
            Ok(o) => serde_json::from_slice(&o.plaintext).map_err(|_| Untrusted::Forged),
            Err(CryptoError::UnknownKey(_)) => Err(Untrusted::UnknownKey),
            Err(_) => Err(Untrusted::Forged),
        };
        if let Err(why) = &outcome {
            tracing::warn!(
                collection = self.coll.as_str(),
                row = row.id.as_str(),
                ?why,
                "stored row not trusted: ignored"
            );
        }
        outcome
    }

    /// Deletes every row for which `dead` says so (given its opened value,
    /// `None` for a row that can never be trusted); returns how many. Rows
    /// under a key this keyring does not know are kept: a node with an older
    /// keyring must not delete what newer nodes wrote. Rows changed
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
                let value = match self.open_checked(row) {
                    Ok(v) => Some(v),
                    Err(Untrusted::UnknownKey) => continue,
                    Err(Untrusted::Forged) => None,
                };
                if dead(value) {
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
