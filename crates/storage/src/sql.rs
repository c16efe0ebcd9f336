//! What the SQL backends share: column conversions.

use crate::error::{Result, StorageError};

/// A version or sequence number read from a signed 64-bit column.
pub(crate) fn version_of(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("negative version {v}")))
}

/// A data-key id read from a signed 64-bit column.
pub(crate) fn key_id_of(v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| StorageError::Corrupt(format!("key id {v} out of range")))
}

/// A caller's expected version and the version after it, as signed 64-bit
/// column values, and the next version as the caller sees it. Checked: a
/// version at the end of the range is an error, never an overflow.
pub(crate) fn versions(expected: u64) -> Result<(i64, i64, u64)> {
    let next = crate::types::next_version(expected)?;
    Ok((version_col(expected)?, version_col(next)?, next))
}

/// A caller's expected version as a signed 64-bit column value.
pub(crate) fn version_col(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StorageError::Invalid {
        what: "version",
        why: "too large",
    })
}
