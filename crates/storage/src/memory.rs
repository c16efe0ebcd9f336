//! An in-memory backend, for tests of other crates. Same semantics as the
//! SQL backends (the conformance suite runs against all of them).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::error::{Result, StorageError};
use crate::traits::{AuditLog, ChainBuilder, KeyStore, RecordStore};
use crate::types::{
    Collection, IndexEntry, Page, Row, RowData, RowId, Write, check_batch, check_limit,
    check_writes, page_of,
};

/// Rows, audit entries and key material in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    rows: Mutex<BTreeMap<(Collection, RowId), Row>>,
    audit: Mutex<Vec<Vec<u8>>>,
    keys: Mutex<BTreeMap<String, (u64, Vec<u8>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn row(id: &RowId, version: u64, mut data: RowData) -> Row {
    data.indexes.sort_by(|a, b| a.name.cmp(&b.name));
    Row {
        id: id.clone(),
        version,
        key_id: data.key_id,
        envelope: data.envelope,
        indexes: data.indexes,
    }
}

fn page(
    rows: &BTreeMap<(Collection, RowId), Row>,
    coll: &Collection,
    after: Option<&RowId>,
    limit: usize,
    keep: impl Fn(&Row) -> bool,
) -> Page {
    let out: Vec<Row> = rows
        .iter()
        .filter(|((c, id), r)| c == coll && after.is_none_or(|a| id > a) && keep(r))
        .take(limit + 1)
        .map(|(_, r)| r.clone())
        .collect();
    page_of(out, limit)
}

#[async_trait]
impl RecordStore for MemoryStore {
    async fn commit(&self, writes: &[Write]) -> Result<Vec<u64>> {
        check_writes(writes)?;
        let mut rows = lock(&self.rows);
        // Check every write against the current rows first, then apply:
        // all or nothing.
        let mut versions = Vec::with_capacity(writes.len());
        for w in writes {
            let (coll, id) = w.target();
            let current = rows.get(&(coll.clone(), id.clone())).map(|r| r.version);
            let next = match (w, current) {
                (Write::Insert { .. }, None) => 1,
                (Write::Insert { .. }, Some(_)) => return Err(StorageError::DuplicateId),
                (Write::Update { .. } | Write::Delete { .. }, None) => {
                    return Err(StorageError::NotFound);
                }
                (Write::Update { expected, .. } | Write::Delete { expected, .. }, Some(actual))
                    if actual != *expected =>
                {
                    return Err(StorageError::VersionConflict {
                        expected: *expected,
                        actual,
                    });
                }
                (Write::Update { expected, .. }, Some(_)) => crate::types::next_version(*expected)?,
                (Write::Delete { .. }, Some(_)) => 0,
            };
            versions.push(next);
        }
        for (w, &version) in writes.iter().zip(&versions) {
            match w {
                Write::Insert { coll, id, data } | Write::Update { coll, id, data, .. } => {
                    rows.insert((coll.clone(), id.clone()), row(id, version, data.clone()));
                }
                Write::Delete { coll, id, .. } => {
                    rows.remove(&(coll.clone(), id.clone()));
                }
            }
        }
        Ok(versions)
    }

    async fn get(&self, coll: &Collection, id: &RowId) -> Result<Row> {
        lock(&self.rows)
            .get(&(coll.clone(), id.clone()))
            .cloned()
            .ok_or(StorageError::NotFound)
    }

    async fn find(&self, coll: &Collection, entry: &IndexEntry) -> Result<Vec<Row>> {
        Ok(lock(&self.rows)
            .iter()
            .filter(|((c, _), r)| c == coll && r.indexes.contains(entry))
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn list(&self, coll: &Collection, after: Option<&RowId>, limit: usize) -> Result<Page> {
        let limit = check_limit(limit)?;
        Ok(page(&lock(&self.rows), coll, after, limit, |_| true))
    }

    async fn scan_key(
        &self,
        coll: &Collection,
        key_id: u32,
        after: Option<&RowId>,
        limit: usize,
    ) -> Result<Page> {
        let limit = check_limit(limit)?;
        Ok(page(&lock(&self.rows), coll, after, limit, |r| {
            r.key_id == key_id
        }))
    }
}

#[async_trait]
impl AuditLog for MemoryStore {
    async fn append(&self, entry: Vec<u8>) -> Result<u64> {
        let mut log = lock(&self.audit);
        log.push(entry);
        Ok(log.len() as u64)
    }

    async fn append_chained(&self, build: &ChainBuilder<'_>) -> Result<u64> {
        let mut log = lock(&self.audit);
        let next = log.len() as u64 + 1;
        let entries = build(log.last().map(|e| (next - 1, e.as_slice())));
        check_batch(&entries)?;
        log.extend(entries);
        Ok(next)
    }

    async fn read(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let limit = check_limit(limit)?;
        let log = lock(&self.audit);
        let start = usize::try_from(from.max(1) - 1).unwrap_or(usize::MAX);
        Ok(log
            .iter()
            .enumerate()
            .skip(start)
            .take(limit)
            .map(|(i, e)| (i as u64 + 1, e.clone()))
            .collect())
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn load(&self, name: &str) -> Result<(u64, Vec<u8>)> {
        lock(&self.keys)
            .get(name)
            .cloned()
            .ok_or(StorageError::NotFound)
    }

    async fn store(&self, name: &str, expected: Option<u64>, bytes: Vec<u8>) -> Result<u64> {
        let mut keys = lock(&self.keys);
        let next = match (keys.get(name), expected) {
            (None, None) => 1,
            (Some(_), None) => return Err(StorageError::DuplicateId),
            (None, Some(_)) => return Err(StorageError::NotFound),
            (Some((v, _)), Some(e)) if *v != e => {
                return Err(StorageError::VersionConflict {
                    expected: e,
                    actual: *v,
                });
            }
            (Some((v, _)), Some(_)) => crate::types::next_version(*v)?,
        };
        keys.insert(name.to_owned(), (next, bytes));
        Ok(next)
    }
}
