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

/// Audit entries with their sequence numbers as column values.
pub(crate) type Numbered = Vec<(i64, Vec<u8>)>;

/// Chained audit entries numbered from the one after `last`, as column
/// values: the first new sequence number and `(seq, entry)` pairs. Checked:
/// the end of the range is an error, never an overflow.
pub(crate) fn numbered(last: u64, entries: Vec<Vec<u8>>) -> Result<(u64, Numbered)> {
    crate::types::check_batch(&entries)?;
    let (_, first_col, first) = versions(last)?;
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let seq = i64::try_from(i)
            .ok()
            .and_then(|i| first_col.checked_add(i))
            .ok_or(StorageError::Invalid {
                what: "audit sequence",
                why: "overflow",
            })?;
        out.push((seq, entry));
    }
    Ok((first, out))
}
