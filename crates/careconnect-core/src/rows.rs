//! Sealed JSON rows. The domain layer's own rows (care relationships,
//! break-glass declarations, directory, finance): JSON sealed with the
//! clinic keyring and bound to their collection and row id, so a row
//! forged, altered or moved in the database reads as no row at all. Patient
//! data uses the same two functions with its own context (`clinic.rs`).

use std::sync::Arc;

use careconnect_crypto::{EncryptionContext, KeyState, Keyring, SharedKeyring};
use careconnect_storage::{Collection, Row, RowData, RowId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CoreError;

/// The encryption context of row `id` of `coll`.
pub(crate) fn context(coll: &Collection, id: &RowId) -> EncryptionContext {
    EncryptionContext::new()
        .with("purpose", "careconnect/core-row")
        .with("collection", coll.as_str())
        .with("row", id.as_str())
}

/// `value` as JSON, sealed under `keys` with `ctx`.
pub(crate) fn seal_json<T: Serialize>(
    keys: &Keyring,
    ctx: &EncryptionContext,
    value: &T,
) -> Result<Vec<u8>, CoreError> {
    let json =
        zeroize::Zeroizing::new(serde_json::to_vec(value).map_err(|_| CoreError::Corrupt("row"))?);
    Ok(keys.seal(ctx, &json)?)
}

/// The clinic keyring, to seal with: refused past its lease
/// ([`CoreError::KeyringStale`]), so a node that cannot re-read the stored
/// keyset stops sealing under a key a rotation may have moved past.
pub(crate) fn sealing(keys: &SharedKeyring) -> Result<Arc<Keyring>, CoreError> {
    keys.sealing().map_err(|e| match e {
        careconnect_crypto::Error::KeyringStale => CoreError::KeyringStale,
        e => e.into(),
    })
}

/// `value` as JSON, sealed for row `id` of `coll` under the clinic
/// keyring's primary (checked against its lease).
pub(crate) fn seal<T: Serialize>(
    keys: &SharedKeyring,
    coll: &Collection,
    id: &RowId,
    value: &T,
) -> Result<RowData, CoreError> {
    let keys = sealing(keys)?;
    Ok(RowData {
        key_id: keys.primary().get(),
        envelope: seal_json(&keys, &context(coll, id), value)?,
        indexes: vec![],
    })
}

/// The value sealed in `envelope` with `ctx` (row `id` of `coll`), or
/// `None` when it cannot be trusted: forged, altered, moved, undecodable,
/// or sealed under a key that is unknown, destroyed or compromised. Logged
/// by row id only.
pub(crate) fn open_json<T: DeserializeOwned>(
    keys: &Keyring,
    ctx: &EncryptionContext,
    envelope: &[u8],
    coll: &Collection,
    id: &RowId,
) -> Option<T> {
    let value = try_open_json(keys, ctx, envelope);
    if value.is_none() {
        tracing::warn!(
            collection = coll.as_str(),
            row = id.as_str(),
            "stored row not trusted: ignored"
        );
    }
    value
}

/// [`open_json`] without the log line: for a caller that knows better
/// whether a row that does not open is an alarm (one named by a request
/// may simply be someone else's), and never logs an id a request chose.
pub(crate) fn try_open_json<T: DeserializeOwned>(
    keys: &Keyring,
    ctx: &EncryptionContext,
    envelope: &[u8],
) -> Option<T> {
    keys.open(envelope, ctx)
        .ok()
        .filter(|o| o.key_state != KeyState::Compromised)
        .and_then(|o| serde_json::from_slice(&o.plaintext).ok())
}

/// The row's value, or `None` when it cannot be trusted (see [`open_json`]).
pub(crate) fn open<T: DeserializeOwned>(keys: &Keyring, coll: &Collection, row: &Row) -> Option<T> {
    open_json(keys, &context(coll, &row.id), &row.envelope, coll, &row.id)
}
