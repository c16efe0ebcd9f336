//! The domain layer's own small rows (care relationships, break-glass
//! declarations): JSON sealed with the clinic keyring and bound to their
//! collection and row id, so a row forged, altered or moved in the database
//! reads as no row at all.

use careconnect_crypto::{EncryptionContext, KeyState, Keyring};
use careconnect_storage::{Collection, Row, RowData, RowId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CoreError;

fn context(coll: &Collection, id: &RowId) -> EncryptionContext {
    EncryptionContext::new()
        .with("purpose", "careconnect/core-row")
        .with("collection", coll.as_str())
        .with("row", id.as_str())
}

/// `value` as JSON, sealed for row `id` of `coll`.
pub(crate) fn seal<T: Serialize>(
    keys: &Keyring,
    coll: &Collection,
    id: &RowId,
    value: &T,
) -> Result<RowData, CoreError> {
    let json =
        zeroize::Zeroizing::new(serde_json::to_vec(value).map_err(|_| CoreError::Corrupt("row"))?);
    Ok(RowData {
        key_id: keys.primary().get(),
        envelope: keys.seal(&context(coll, id), &json)?,
        indexes: vec![],
    })
}

/// The row's value, or `None` when it cannot be trusted: forged, altered,
/// moved, undecodable, or sealed under a key that is unknown, destroyed or
/// compromised. Logged by row id only.
pub(crate) fn open<T: DeserializeOwned>(keys: &Keyring, coll: &Collection, row: &Row) -> Option<T> {
    let value = keys
        .open(&row.envelope, &context(coll, &row.id))
        .ok()
        .filter(|o| o.key_state != KeyState::Compromised)
        .and_then(|o| serde_json::from_slice(&o.plaintext).ok());
    if value.is_none() {
        tracing::warn!(
            collection = coll.as_str(),
            row = row.id.as_str(),
            "stored row not trusted: ignored"
        );
    }
    value
}
