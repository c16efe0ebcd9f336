//! A data-key cache in front of any [`Kms`]: fewer KMS calls, at a cost.
//!
//! Off unless you wrap a KMS in [`CachingKms`]. What it trades away:
//! - a cached *generated* data key is reused for up to `max_uses` documents
//!   sealed under the same KMS key and the same encryption context, so those
//!   documents share one data key (each still gets its own HKDF message keys
//!   from a fresh 256-bit salt), and compromising that data key exposes all of
//!   them;
//! - a cached *unwrapped* data key opens again without asking the KMS, so a
//!   key disabled in the KMS, or a permission revoked, takes effect for cached
//!   entries only when they expire, and the KMS audit log no longer shows
//!   every unwrap.
//!
//! Every entry ends at `max_age` or after `max_uses`, whichever comes first;
//! [`CachingKms::clear`] drops everything at once (do it when a key is
//! suspected compromised), and [`Kms::rotate`] drops the rotated key's
//! generated entries so new documents get data keys from the new version.
//! Cached keys are zeroized when they leave the cache.
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use careconnect_crypto::kms::{CacheLimits, CachingKms};
//! use careconnect_crypto::{EncryptionContext, Kms, KmsKeyId, LocalKms, RootSecret};
//!
//! let dir = tempfile::tempdir()?;
//! let local = LocalKms::open_or_create(dir.path().join("kms.bin"), RootSecret::generate())?;
//! let kek = KmsKeyId::new("medicloud")?;
//! local.ensure_key(&kek)?;
//! let kms = CachingKms::new(local, CacheLimits { max_age: Duration::from_secs(60), max_uses: 10, max_entries: 1000 });
//! let ctx = EncryptionContext::new().with("collection", "documents");
//! let (_, first) = kms.generate_data_key(&kek, &ctx).await?;
//! let (_, second) = kms.generate_data_key(&kek, &ctx).await?;
//! assert_eq!(first, second); // one KMS call served both
//! assert_eq!(kms.stats().kms_calls, 1);
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{KeyDescription, Kms, KmsKeyId, RotationSchedule, WrappedKey};
use crate::context::EncryptionContext;
use crate::error::Error;
use crate::key::DataKey;

/// How long and how often a cached data key may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// An entry older than this is never served.
    pub max_age: Duration,
    /// An entry serves at most this many calls (the first included).
    pub max_uses: u32,
    /// Entries kept per kind (generated, unwrapped); the oldest goes first.
    pub max_entries: usize,
}

/// Counters since the cache was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Calls answered from the cache.
    pub hits: u64,
    /// Calls that went to the KMS.
    pub kms_calls: u64,
}

struct Entry<T> {
    value: T,
    created: Instant,
    uses: u32,
}

/// Generated keys by (KMS key, canonical context); unwrapped keys by
/// (KMS key, wrapped bytes, canonical context).
type GenKey = (KmsKeyId, Vec<u8>);
type UnwrapKey = (KmsKeyId, Vec<u8>, Vec<u8>);

#[derive(Default)]
struct State {
    generated: HashMap<GenKey, Entry<(DataKey, WrappedKey)>>,
    unwrapped: HashMap<UnwrapKey, Entry<DataKey>>,
    stats: CacheStats,
}

/// Any [`Kms`] with a bounded data-key cache in front (see the module docs
/// for what it costs).
pub struct CachingKms<K> {
    inner: K,
    limits: CacheLimits,
    state: Mutex<State>,
}

impl<K: Kms> CachingKms<K> {
    /// Wraps `inner`. `max_uses` 0 or `max_entries` 0 caches nothing.
    pub fn new(inner: K, limits: CacheLimits) -> Self {
        Self {
            inner,
            limits,
            state: Mutex::new(State::default()),
        }
    }

    /// The wrapped KMS.
    pub fn inner(&self) -> &K {
        &self.inner
    }

    /// Drops every cached key.
    pub fn clear(&self) {
        let mut s = self.lock();
        s.generated.clear();
        s.unwrapped.clear();
    }

    /// Hits and KMS calls so far.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only counters and whole
        // entries behind: the state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn enabled(&self) -> bool {
        self.limits.max_uses > 0 && self.limits.max_entries > 0
    }

    /// Serves `slot` from the map `pick` selects, or awaits `fetch` (the KMS
    /// call) and keeps its answer there. `None` for `slot` bypasses the cache.
    async fn through<Q, T>(
        &self,
        slot: Option<Q>,
        pick: fn(&mut State) -> &mut HashMap<Q, Entry<T>>,
        fetch: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error>
    where
        Q: std::hash::Hash + Eq + Clone,
        T: Clone,
    {
        if let Some(slot) = &slot {
            let mut s = self.lock();
            if let Some(hit) = take(pick(&mut s), slot, &self.limits) {
                s.stats.hits += 1;
                return Ok(hit);
            }
        }
        let fresh = fetch.await?;
        let mut s = self.lock();
        s.stats.kms_calls += 1;
        if let Some(slot) = slot {
            put(pick(&mut s), slot, fresh.clone(), &self.limits);
        }
        Ok(fresh)
    }
}

/// Serves from `map[key]` if the entry is still within limits, counting the use.
fn take<Q, T: Clone>(map: &mut HashMap<Q, Entry<T>>, key: &Q, limits: &CacheLimits) -> Option<T>
where
    Q: std::hash::Hash + Eq,
{
    let fresh = map
        .get(key)
        .is_some_and(|e| e.created.elapsed() < limits.max_age && e.uses < limits.max_uses);
    if !fresh {
        map.remove(key);
        return None;
    }
    let e = map.get_mut(key)?;
    e.uses += 1;
    let value = e.value.clone();
    if e.uses >= limits.max_uses {
        map.remove(key);
    }
    Some(value)
}

/// Stores a value that has served once, evicting the oldest when full.
fn put<Q, T>(map: &mut HashMap<Q, Entry<T>>, key: Q, value: T, limits: &CacheLimits)
where
    Q: std::hash::Hash + Eq + Clone,
{
    if limits.max_uses <= 1 {
        return;
    }
    map.retain(|_, e| e.created.elapsed() < limits.max_age);
    while map.len() >= limits.max_entries {
        let oldest = map
            .iter()
            .min_by_key(|(_, e)| e.created)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => map.remove(&k),
            None => break,
        };
    }
    map.insert(
        key,
        Entry {
            value,
            created: Instant::now(),
            uses: 1,
        },
    );
}

fn canonical(ctx: &EncryptionContext) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    ctx.encode_into(&mut out).ok().map(|()| out)
}

#[async_trait]
impl<K: Kms> Kms for CachingKms<K> {
    async fn generate_data_key(
        &self,
        key: &KmsKeyId,
        ctx: &EncryptionContext,
    ) -> Result<(DataKey, WrappedKey), Error> {
        let slot = canonical(ctx)
            .filter(|_| self.enabled())
            .map(|c| (key.clone(), c));
        self.through(
            slot,
            |s| &mut s.generated,
            self.inner.generate_data_key(key, ctx),
        )
        .await
    }

    async fn decrypt(
        &self,
        key: &KmsKeyId,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, Error> {
        let slot = canonical(ctx)
            .filter(|_| self.enabled())
            .map(|c| (key.clone(), wrapped.as_bytes().to_vec(), c));
        self.through(
            slot,
            |s| &mut s.unwrapped,
            self.inner.decrypt(key, wrapped, ctx),
        )
        .await
    }

    async fn re_encrypt(
        &self,
        from: &KmsKeyId,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
        to: &KmsKeyId,
    ) -> Result<WrappedKey, Error> {
        self.lock().stats.kms_calls += 1;
        self.inner.re_encrypt(from, wrapped, ctx, to).await
    }

    async fn rotate(&self, key: &KmsKeyId) -> Result<KeyDescription, Error> {
        let out = self.inner.rotate(key).await?;
        let mut s = self.lock();
        s.stats.kms_calls += 1;
        s.generated.retain(|(k, _), _| k != key);
        Ok(out)
    }

    async fn describe(&self, key: &KmsKeyId) -> Result<KeyDescription, Error> {
        self.lock().stats.kms_calls += 1;
        self.inner.describe(key).await
    }

    fn can_destroy_versions(&self) -> bool {
        self.inner.can_destroy_versions()
    }

    fn version_of(&self, wrapped: &WrappedKey) -> Option<u32> {
        self.inner.version_of(wrapped)
    }

    async fn rotation_schedule(&self, key: &KmsKeyId) -> Result<Option<RotationSchedule>, Error> {
        self.lock().stats.kms_calls += 1;
        self.inner.rotation_schedule(key).await
    }

    async fn schedule_rotation(
        &self,
        key: &KmsKeyId,
        period_days: u32,
    ) -> Result<RotationSchedule, Error> {
        self.lock().stats.kms_calls += 1;
        self.inner.schedule_rotation(key, period_days).await
    }

    async fn destroy_version(&self, key: &KmsKeyId, version: u32) -> Result<KeyDescription, Error> {
        let out = self.inner.destroy_version(key, version).await?;
        // Cached unwraps may come from the destroyed version: drop them all.
        self.clear();
        self.lock().stats.kms_calls += 1;
        Ok(out)
    }
}

impl<K: std::fmt::Debug> std::fmt::Debug for CachingKms<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingKms")
            .field("inner", &self.inner)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::{LocalKms, RootSecret};

    fn local() -> (tempfile::TempDir, LocalKms, KmsKeyId) {
        let dir = tempfile::tempdir().unwrap();
        let kms = LocalKms::open_or_create(dir.path().join("k"), RootSecret::generate()).unwrap();
        let id = KmsKeyId::new("k").unwrap();
        kms.ensure_key(&id).unwrap();
        (dir, kms, id)
    }

    fn limits(max_uses: u32) -> CacheLimits {
        CacheLimits {
            max_age: Duration::from_secs(3600),
            max_uses,
            max_entries: 4,
        }
    }

    #[tokio::test]
    async fn generated_keys_serve_max_uses_then_renew() {
        let (_d, inner, id) = local();
        let kms = CachingKms::new(inner, limits(3));
        let ctx = EncryptionContext::new().with("c", "d");
        let mut wrapped = Vec::new();
        for _ in 0..7 {
            wrapped.push(kms.generate_data_key(&id, &ctx).await.unwrap().1);
        }
        // 3 + 3 + 1: a new data key after every third use.
        assert_eq!(wrapped[0], wrapped[2]);
        assert_ne!(wrapped[2], wrapped[3]);
        assert_eq!(wrapped[3], wrapped[5]);
        assert_ne!(wrapped[5], wrapped[6]);
        assert_eq!(
            kms.stats(),
            CacheStats {
                hits: 4,
                kms_calls: 3
            }
        );
    }

    #[tokio::test]
    async fn contexts_and_keys_do_not_share_entries() {
        let (_d, inner, id) = local();
        let other = KmsKeyId::new("other").unwrap();
        inner.ensure_key(&other).unwrap();
        let kms = CachingKms::new(inner, limits(100));
        let a = EncryptionContext::new().with("doc", "1");
        let b = EncryptionContext::new().with("doc", "2");
        let (_, wa) = kms.generate_data_key(&id, &a).await.unwrap();
        let (_, wb) = kms.generate_data_key(&id, &b).await.unwrap();
        let (_, wo) = kms.generate_data_key(&other, &a).await.unwrap();
        assert_ne!(wa, wb);
        assert_ne!(wa, wo);
        // A cached unwrap still needs the right context: a miss goes to the
        // KMS, which refuses.
        kms.decrypt(&id, &wa, &a).await.unwrap();
        assert!(kms.decrypt(&id, &wa, &b).await.is_err());
    }

    #[tokio::test]
    async fn zero_age_or_uses_caches_nothing() {
        let ctx = EncryptionContext::new();
        for l in [
            CacheLimits {
                max_age: Duration::ZERO,
                ..limits(10)
            },
            limits(0),
            limits(1),
            CacheLimits {
                max_entries: 0,
                ..limits(10)
            },
        ] {
            let (_d, inner, id) = local();
            let kms = CachingKms::new(inner, l);
            let (_, w1) = kms.generate_data_key(&id, &ctx).await.unwrap();
            let (_, w2) = kms.generate_data_key(&id, &ctx).await.unwrap();
            assert_ne!(w1, w2, "{l:?}");
            kms.decrypt(&id, &w1, &ctx).await.unwrap();
            kms.decrypt(&id, &w1, &ctx).await.unwrap();
            assert_eq!(kms.stats().hits, 0, "{l:?}");
        }
    }

    #[tokio::test]
    async fn unwraps_are_cached_and_cleared() {
        let (_d, inner, id) = local();
        let kms = CachingKms::new(inner, limits(100));
        let ctx = EncryptionContext::new();
        let (dek, w) = kms.inner().generate_data_key(&id, &ctx).await.unwrap();
        let first = kms.decrypt(&id, &w, &ctx).await.unwrap();
        let again = kms.decrypt(&id, &w, &ctx).await.unwrap();
        assert_eq!(first.commitment(), dek.commitment());
        assert_eq!(again.commitment(), dek.commitment());
        assert_eq!(
            kms.stats(),
            CacheStats {
                hits: 1,
                kms_calls: 1
            }
        );
        kms.clear();
        kms.decrypt(&id, &w, &ctx).await.unwrap();
        assert_eq!(kms.stats().kms_calls, 2);
    }

    #[tokio::test]
    async fn rotation_drops_generated_entries_and_capacity_is_bounded() {
        let (_d, inner, id) = local();
        let kms = CachingKms::new(inner, limits(100));
        let ctx = EncryptionContext::new();
        let (_, before) = kms.generate_data_key(&id, &ctx).await.unwrap();
        kms.rotate(&id).await.unwrap();
        let (_, after) = kms.generate_data_key(&id, &ctx).await.unwrap();
        assert_ne!(before, after);
        for i in 0..10 {
            let c = EncryptionContext::new().with("i", i.to_string());
            kms.generate_data_key(&id, &c).await.unwrap();
        }
        assert!(kms.lock().generated.len() <= 4);
    }
}
