//! Names, ids and rows.

use std::fmt;

use crate::error::StorageError;

fn check_name(s: &str, what: &'static str, max: usize) -> Result<(), StorageError> {
    if s.is_empty() || s.len() > max {
        return Err(StorageError::Invalid {
            what,
            why: "length out of range",
        });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(StorageError::Invalid {
            what,
            why: "only ASCII letters, digits, '_', '-', '.'",
        });
    }
    Ok(())
}

/// A collection of rows (health records, notes, prescriptions...):
/// 1 to 64 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Collection(String);

impl Collection {
    /// Validates a collection name.
    ///
    /// # Errors
    ///
    /// [`StorageError::Invalid`] for anything else.
    pub fn new(name: impl Into<String>) -> Result<Self, StorageError> {
        let name = name.into();
        check_name(&name, "collection", 64)?;
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A row id, chosen by the caller (e.g. a UUID): 1 to 128 characters of
/// `[A-Za-z0-9_.-]`. Ids order bytewise; lists and scans follow that order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowId(String);

impl RowId {
    /// Validates a row id.
    ///
    /// # Errors
    ///
    /// [`StorageError::Invalid`] for anything else.
    pub fn new(id: impl Into<String>) -> Result<Self, StorageError> {
        let id = id.into();
        check_name(&id, "row id", 128)?;
        Ok(Self(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A row id that says nothing of what it keys: the hex SHA-256 of the
    /// length-prefixed (u64 BE) `parts`, e.g. an identity or a session id.
    pub fn digest(parts: &[&[u8]]) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        Self(hex::encode(h.finalize()))
    }
}

impl fmt::Display for RowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A blind-index entry: the index's name and the opaque token the caller
/// computed (a keyed HMAC of the lookup value; storage never sees the value).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    /// Index name, same rules as a [`Collection`].
    pub name: String,
    /// The token.
    pub token: Vec<u8>,
}

impl IndexEntry {
    /// A validated entry.
    ///
    /// # Errors
    ///
    /// [`StorageError::Invalid`] for a bad name or a token over 64 bytes.
    pub fn new(name: impl Into<String>, token: impl Into<Vec<u8>>) -> Result<Self, StorageError> {
        let name = name.into();
        check_name(&name, "index name", 64)?;
        let token = token.into();
        if token.is_empty() || token.len() > 64 {
            return Err(StorageError::Invalid {
                what: "index token",
                why: "1 to 64 bytes",
            });
        }
        Ok(Self { name, token })
    }
}

/// What the caller writes: an envelope, the data-key id that sealed it, and
/// its blind-index entries (at most one per index name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowData {
    /// The data-key id that sealed `envelope` (for rotation scans).
    pub key_id: u32,
    /// The sealed bytes. Storage never sees plaintext.
    pub envelope: Vec<u8>,
    /// Blind-index entries.
    pub indexes: Vec<IndexEntry>,
}

/// A row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Its id.
    pub id: RowId,
    /// Its version: 1 when inserted, +1 on every update.
    pub version: u64,
    /// The data-key id that sealed it.
    pub key_id: u32,
    /// The sealed bytes.
    pub envelope: Vec<u8>,
    /// Blind-index entries, sorted by name.
    pub indexes: Vec<IndexEntry>,
}

/// A page of a listing or scan, and where to resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The rows, in id order.
    pub rows: Vec<Row>,
    /// Pass this back to get the next page; `None` at the end.
    pub next: Option<RowId>,
}

/// One write of an atomic batch ([`crate::RecordStore::commit`]).
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert a new row at version 1 (fails with
    /// [`StorageError::DuplicateId`] if the id exists).
    Insert {
        /// The collection.
        coll: Collection,
        /// The new row's id.
        id: RowId,
        /// What it holds.
        data: RowData,
    },
    /// Replace a row still at `expected` (compare-and-swap).
    Update {
        /// The collection.
        coll: Collection,
        /// The row.
        id: RowId,
        /// The version the caller read.
        expected: u64,
        /// What it holds from now on.
        data: RowData,
    },
    /// Delete a row still at `expected`.
    Delete {
        /// The collection.
        coll: Collection,
        /// The row.
        id: RowId,
        /// The version the caller read.
        expected: u64,
    },
}

impl Write {
    /// The row this write touches.
    pub fn target(&self) -> (&Collection, &RowId) {
        match self {
            Self::Insert { coll, id, .. }
            | Self::Update { coll, id, .. }
            | Self::Delete { coll, id, .. } => (coll, id),
        }
    }
}

/// Most writes one atomic batch may hold.
pub const MAX_WRITES: usize = 100;

/// Refuses an empty batch, one larger than [`MAX_WRITES`], one touching a
/// row twice, or one with an invalid row.
pub(crate) fn check_writes(writes: &[Write]) -> Result<(), StorageError> {
    if writes.is_empty() || writes.len() > MAX_WRITES {
        return Err(StorageError::Invalid {
            what: "write batch",
            why: "1 to 100 writes",
        });
    }
    let mut targets: Vec<(&Collection, &RowId)> = writes.iter().map(Write::target).collect();
    targets.sort_unstable();
    if targets.windows(2).any(|w| w[0] == w[1]) {
        return Err(StorageError::Invalid {
            what: "write batch",
            why: "one write per row",
        });
    }
    for w in writes {
        if let Write::Insert { data, .. } | Write::Update { data, .. } = w {
            check_rows(data)?;
        }
    }
    Ok(())
}

/// The largest page a store returns.
pub const MAX_PAGE: usize = 1000;

pub(crate) fn check_rows(data: &RowData) -> Result<(), StorageError> {
    let mut names: Vec<&str> = data.indexes.iter().map(|i| i.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(StorageError::Invalid {
            what: "indexes",
            why: "one entry per index name",
        });
    }
    Ok(())
}

pub(crate) fn check_limit(limit: usize) -> Result<usize, StorageError> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(StorageError::Invalid {
            what: "page limit",
            why: "1 to 1000",
        });
    }
    Ok(limit)
}

/// Makes a page from up to `limit + 1` rows fetched in id order: the extra
/// row, if any, only says that there is more.
pub(crate) fn page_of(mut rows: Vec<Row>, limit: usize) -> Page {
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| r.id.clone())
    } else {
        None
    };
    Page { rows, next }
}

/// The version after `v`; an error rather than an overflow at the end of the range.
pub(crate) fn next_version(v: u64) -> crate::error::Result<u64> {
    v.checked_add(1).ok_or(StorageError::Invalid {
        what: "version",
        why: "overflow",
    })
}

/// Most entries one chained audit append may write.
pub(crate) const MAX_CHAINED_BATCH: usize = 10_000;

/// Refuses a chained batch larger than [`MAX_CHAINED_BATCH`].
pub(crate) fn check_batch(entries: &[Vec<u8>]) -> crate::error::Result<()> {
    if entries.len() > MAX_CHAINED_BATCH {
        return Err(StorageError::Invalid {
            what: "audit batch",
            why: "more than 10,000 entries",
        });
    }
    Ok(())
}
