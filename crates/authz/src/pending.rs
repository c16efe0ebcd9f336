//! Where started logins wait for their callback: in memory (one process) or
//! in a [`RecordStore`] shared by several web nodes, so the callback may land
//! on any node. Either way a login is taken at most once.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use careconnect_storage::{Collection, RecordStore, RowData, RowId, StorageError};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::AuthzError;
use crate::rows::{hashed_row, purge};

/// A started login: the PKCE verifier and nonce to use on the way back.
/// Secret until it is used; never in Debug output.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    pub(crate) verifier: Zeroizing<String>,
    pub(crate) nonce: Zeroizing<String>,
    /// When the login started, Unix seconds.
    pub started: u64,
}

impl fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogin")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

/// Storage for pending logins, keyed by their `state`.
#[async_trait]
pub trait PendingLogins: Send + Sync + fmt::Debug {
    /// Keeps `login` under `state`.
    ///
    /// # Errors
    ///
    /// Storage failures, or too many logins in progress.
    async fn put(&self, state: &str, login: PendingLogin) -> Result<(), AuthzError>;

    /// Removes and returns the login under `state`; of concurrent callers
    /// with the same `state`, at most one gets it.
    ///
    /// # Errors
    ///
    /// Storage failures.
    async fn take(&self, state: &str) -> Result<Option<PendingLogin>, AuthzError>;
}

/// Pending logins in this process's memory (the default), at most
/// `capacity`; when full, logins older than `timeout` seconds are dropped.
#[derive(Debug)]
pub struct MemoryPendingLogins {
    map: Mutex<HashMap<String, PendingLogin>>,
    capacity: usize,
    timeout: u64,
}

impl MemoryPendingLogins {
    /// Room for `capacity` logins; `timeout_secs` is the login timeout.
    pub fn new(capacity: usize, timeout_secs: u64) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            capacity,
            timeout: timeout_secs,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingLogin>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl PendingLogins for MemoryPendingLogins {
    async fn put(&self, state: &str, login: PendingLogin) -> Result<(), AuthzError> {
        let mut map = self.lock();
        if map.len() >= self.capacity {
            let now = login.started;
            map.retain(|_, p| now < p.started.saturating_add(self.timeout));
            if map.len() >= self.capacity {
                return Err(AuthzError::Busy("too many logins in progress"));
            }
        }
        map.insert(state.to_owned(), login);
        Ok(())
    }

    async fn take(&self, state: &str) -> Result<Option<PendingLogin>, AuthzError> {
        Ok(self.lock().remove(state))
    }
}

/// The collection stored pending logins live in.
pub const PENDING_COLLECTION: &str = "authz_pending_logins";

/// Pending logins in a [`RecordStore`] (e.g. the PostgreSQL database several
/// web nodes share). Rows are keyed by a hash of the `state`; they hold the
/// verifier and nonce for at most the login timeout, after which
/// [`StoredPendingLogins::purge_expired`] removes abandoned ones.
#[derive(Clone)]
pub struct StoredPendingLogins {
    store: Arc<dyn RecordStore>,
    coll: Collection,
}

impl fmt::Debug for StoredPendingLogins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredPendingLogins")
            .finish_non_exhaustive()
    }
}

impl StoredPendingLogins {
    /// Pending logins in `store`.
    ///
    /// # Errors
    ///
    /// Never in practice (the collection name is a valid constant).
    pub fn new(store: Arc<dyn RecordStore>) -> Result<Self, AuthzError> {
        Ok(Self {
            store,
            coll: Collection::new(PENDING_COLLECTION)?,
        })
    }

    fn row(state: &str) -> Result<RowId, AuthzError> {
        hashed_row(&[b"pending-login", state.as_bytes()])
    }

    /// Deletes logins started `timeout_secs` or more before `now`; returns
    /// how many.
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn purge_expired(&self, now: u64, timeout_secs: u64) -> Result<usize, AuthzError> {
        purge(self.store.as_ref(), &self.coll, |body| {
            serde_json::from_slice::<PendingLogin>(body)
                .map_or(true, |p| now >= p.started.saturating_add(timeout_secs))
        })
        .await
    }
}

#[async_trait]
impl PendingLogins for StoredPendingLogins {
    async fn put(&self, state: &str, login: PendingLogin) -> Result<(), AuthzError> {
        let data = RowData {
            key_id: 0,
            envelope: serde_json::to_vec(&login)
                .map_err(|_| AuthzError::Corrupt("pending login"))?,
            indexes: vec![],
        };
        self.store
            .insert(&self.coll, &Self::row(state)?, data)
            .await?;
        Ok(())
    }

    async fn take(&self, state: &str) -> Result<Option<PendingLogin>, AuthzError> {
        let id = Self::row(state)?;
        let row = match self.store.get(&self.coll, &id).await {
            Ok(r) => r,
            Err(StorageError::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // Whoever deletes the version read wins; everyone else gets None.
        match self.store.delete(&self.coll, &id, row.version).await {
            Ok(()) => serde_json::from_slice(&row.envelope)
                .map(Some)
                .map_err(|_| AuthzError::Corrupt("pending login")),
            Err(StorageError::NotFound | StorageError::VersionConflict { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use careconnect_storage::MemoryStore;

    fn login(started: u64) -> PendingLogin {
        PendingLogin {
            verifier: Zeroizing::new("v".repeat(43)),
            nonce: Zeroizing::new("n".into()),
            started,
        }
    }

    #[tokio::test]
    async fn taken_once_in_both_implementations() {
        let stored = StoredPendingLogins::new(Arc::new(MemoryStore::new())).unwrap();
        let memory = MemoryPendingLogins::new(10, 600);
        for p in [&stored as &dyn PendingLogins, &memory] {
            p.put("s1", login(100)).await.unwrap();
            assert_eq!(p.take("s1").await.unwrap().unwrap().started, 100);
            assert!(p.take("s1").await.unwrap().is_none());
            assert!(p.take("never").await.unwrap().is_none());
        }
        assert!(!format!("{:?}", login(1)).contains("vvvv"));
    }

    #[tokio::test]
    async fn concurrent_takers_get_it_at_most_once() {
        let stored = Arc::new(StoredPendingLogins::new(Arc::new(MemoryStore::new())).unwrap());
        stored.put("s", login(1)).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let s = stored.clone();
                tokio::spawn(async move { s.take("s").await.unwrap().is_some() })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            winners += usize::from(t.await.unwrap());
        }
        assert_eq!(winners, 1);
    }

    #[tokio::test]
    async fn memory_is_bounded_and_stored_is_purged() {
        let memory = MemoryPendingLogins::new(2, 600);
        memory.put("a", login(0)).await.unwrap();
        memory.put("b", login(0)).await.unwrap();
        assert!(matches!(
            memory.put("c", login(10)).await,
            Err(AuthzError::Busy(_))
        ));
        memory.put("c", login(700)).await.unwrap(); // the old ones timed out
        let stored = StoredPendingLogins::new(Arc::new(MemoryStore::new())).unwrap();
        stored.put("old", login(0)).await.unwrap();
        stored.put("new", login(500)).await.unwrap();
        assert_eq!(stored.purge_expired(700, 600).await.unwrap(), 1);
        assert!(stored.take("new").await.unwrap().is_some());
    }
}
