//! Recently read sealed rows, for pages that are read far more often than
//! they change (a patient's own overview).
//!
//! What is kept is what storage holds: envelopes and blind-index tokens,
//! never plaintext. Every read still opens (decrypts and authenticates) its
//! rows. A kept result is used only within its age limit, and only while no
//! write through this node has touched its collection since the read began;
//! writes by other nodes sharing the database show once the age limit has
//! passed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use careconnect_storage::{
    Collection, IndexEntry, Page, RecordStore, Result, Row, RowData, RowId, Write,
};

/// At most this many results are kept; the next one past it starts afresh.
const MAX_KEPT: usize = 10_000;

#[derive(Debug)]
struct Kept {
    at: Instant,
    generation: u64,
    rows: Arc<Vec<Row>>,
}

/// A [`RecordStore`] that forwards everything and counts writes per
/// collection, and keeps recent `find` results for the callers that ask
/// for them ([`Recent::find_recent`]).
/// Plain [`RecordStore`] reads are never answered from what it keeps: a
/// read before a compare-and-swap sees the stored row.
#[derive(Debug)]
pub(crate) struct Recent {
    store: Arc<dyn RecordStore>,
    /// Writes through this node, by collection.
    generations: Mutex<HashMap<Collection, u64>>,
    kept: Mutex<HashMap<(Collection, IndexEntry), Kept>>,
}

impl Recent {
    pub(crate) fn new(store: Arc<dyn RecordStore>) -> Self {
        Self {
            store,
            generations: Mutex::new(HashMap::new()),
            kept: Mutex::new(HashMap::new()),
        }
    }

    fn generation(&self, coll: &Collection) -> u64 {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(coll)
            .copied()
            .unwrap_or(0)
    }

    fn wrote<'a>(&self, colls: impl IntoIterator<Item = &'a Collection>) {
        let mut generations = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for coll in colls {
            *generations.entry(coll.clone()).or_insert(0) += 1;
        }
    }

    /// As [`RecordStore::find`], as read at most `max_age` ago and
    /// unchanged by this node since. A zero age always reads.
    pub(crate) async fn find_recent(
        &self,
        coll: &Collection,
        entry: &IndexEntry,
        max_age: Duration,
    ) -> Result<Arc<Vec<Row>>> {
        if max_age.is_zero() {
            return Ok(Arc::new(self.store.find(coll, entry).await?));
        }
        let key = (coll.clone(), entry.clone());
        // The generation is read before the kept entry: a write landing in
        // between makes the entry look older than it is, never newer.
        let generation = self.generation(coll);
        if let Some(kept) = self
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            && kept.generation == generation
            && kept.at.elapsed() < max_age
        {
            return Ok(kept.rows.clone());
        }
        let at = Instant::now();
        let rows = Arc::new(self.store.find(coll, entry).await?);
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(
            key,
            Kept {
                at,
                generation,
                rows: rows.clone(),
            },
        );
        Ok(rows)
    }
}

#[async_trait]
impl RecordStore for Recent {
    async fn insert(&self, coll: &Collection, id: &RowId, data: RowData) -> Result<u64> {
        let result = self.store.insert(coll, id, data).await;
        self.wrote([coll]);
        result
    }

    async fn commit(&self, writes: &[Write]) -> Result<Vec<u64>> {
        let result = self.store.commit(writes).await;
        // Counted whatever the outcome: a write whose answer was lost may
        // still have landed.
        self.wrote(writes.iter().map(|w| w.target().0));
        result
    }

    async fn get(&self, coll: &Collection, id: &RowId) -> Result<Row> {
        self.store.get(coll, id).await
    }

    async fn update(
        &self,
        coll: &Collection,
        id: &RowId,
        expected: u64,
        data: RowData,
    ) -> Result<u64> {
        let result = self.store.update(coll, id, expected, data).await;
        self.wrote([coll]);
        result
    }

    async fn delete(&self, coll: &Collection, id: &RowId, expected: u64) -> Result<()> {
        let result = self.store.delete(coll, id, expected).await;
        self.wrote([coll]);
        result
    }

    async fn find(&self, coll: &Collection, entry: &IndexEntry) -> Result<Vec<Row>> {
        self.store.find(coll, entry).await
    }

    async fn list(&self, coll: &Collection, after: Option<&RowId>, limit: usize) -> Result<Page> {
        self.store.list(coll, after, limit).await
    }

    async fn scan_key(
        &self,
        coll: &Collection,
        key_id: u32,
        after: Option<&RowId>,
        limit: usize,
    ) -> Result<Page> {
        self.store.scan_key(coll, key_id, after, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use careconnect_storage::MemoryStore;

    fn data(byte: u8, token: &[u8]) -> RowData {
        RowData {
            key_id: 1,
            envelope: vec![byte; 4],
            indexes: vec![IndexEntry::new("by", token.to_vec()).unwrap()],
        }
    }

    #[tokio::test]
    async fn kept_results_end_with_a_write_or_their_age() {
        let recent = Recent::new(Arc::new(MemoryStore::new()));
        let coll = Collection::new("c").unwrap();
        let other = Collection::new("other").unwrap();
        let id = RowId::new("a").unwrap();
        let by = IndexEntry::new("by", b"t".to_vec()).unwrap();
        let long = Duration::from_secs(60);
        recent.insert(&coll, &id, data(1, b"t")).await.unwrap();
        assert_eq!(recent.find_recent(&coll, &by, long).await.unwrap().len(), 1);

        // Changed behind its back (another node): the kept result stands...
        recent
            .store
            .update(&coll, &id, 1, data(2, b"t"))
            .await
            .unwrap();
        let kept = recent.find_recent(&coll, &by, long).await.unwrap();
        assert_eq!(kept[0].envelope, vec![1; 4]);
        // ...but never for a plain read, nor past its age.
        assert_eq!(recent.get(&coll, &id).await.unwrap().version, 2);
        let fresh = recent
            .find_recent(&coll, &by, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(fresh[0].envelope, vec![2; 4]);

        // A write through this node to another collection changes nothing;
        // one to this collection (even a failed one) ends every kept result.
        let stale = recent.find_recent(&coll, &by, long).await.unwrap();
        assert_eq!(stale[0].envelope, vec![1; 4]);
        recent.insert(&other, &id, data(9, b"t")).await.unwrap();
        assert_eq!(
            recent.find_recent(&coll, &by, long).await.unwrap()[0].envelope,
            vec![1; 4]
        );
        assert!(recent.update(&coll, &id, 1, data(3, b"t")).await.is_err());
        assert_eq!(
            recent.find_recent(&coll, &by, long).await.unwrap()[0].envelope,
            vec![2; 4]
        );
        recent.delete(&coll, &id, 2).await.unwrap();
        assert!(
            recent
                .find_recent(&coll, &by, long)
                .await
                .unwrap()
                .is_empty()
        );

        // Past its age, a kept result is read again.
        let short = Duration::from_millis(20);
        assert!(
            recent
                .find_recent(&coll, &by, short)
                .await
                .unwrap()
                .is_empty()
        );
        recent
            .store
            .insert(&coll, &id, data(4, b"t"))
            .await
            .unwrap();
        assert!(
            recent
                .find_recent(&coll, &by, short)
                .await
                .unwrap()
                .is_empty()
        );
        tokio::time::sleep(short * 2).await;
        assert_eq!(
            recent.find_recent(&coll, &by, short).await.unwrap().len(),
            1
        );
    }
}
