//! Per-patient subject keys, for erasure by crypto-shredding
//! (`docs/erasure.md`).
//!
//! ```text
//! KMS key careconnect-subjects-NNNN (one per bucket, versioned, outside the database)
//!   └─ wraps the bucket keyring R_b   (KeyStore entry subject-bucket-NNNN)
//!        └─ seals subject keyring S_P (row per patient in core_subjects)
//!             └─ seals the patient's data
//! ```
//!
//! [`SubjectKeys::erase`] makes every row sealed under `S_P` unopenable,
//! **including in a copy of the database taken before the erasure**: the
//! bucket keyring is rotated, every other subject of the bucket is re-sealed
//! under the new key, the old key is destroyed, the keyring is sealed under a
//! new KMS version and every older KMS version is destroyed. A copy's bucket
//! keyring is wrapped under a destroyed version, so nothing the clinic still
//! holds opens it. Other buckets of the copy still open.
//!
//! Each step leaves the live data readable (the old bucket key is destroyed
//! only after every other subject is re-sealed), so running the erasure
//! again after a crash finishes it (`tests/crash_erasure.rs` kills it with
//! SIGKILL at many instants). The erased subject's row becomes a tombstone:
//! the subject is never silently given a fresh keyring; a row still sealed
//! under a destroyed bucket key (an erasure cut short before its tombstone)
//! reads as erased too.
//!
//! Destroying KMS versions needs a KMS that can ([`Kms::destroy_version`]):
//! the local KMS can; on AWS KMS it is refused as unsupported, see
//! `docs/erasure.md` for the AWS path.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use careconnect_authz::UserId;
use careconnect_crypto::{
    CryptoProvider, EncryptionContext, KeyId, KeyState, Keyring, Kms, KmsKeyId, TrustedKeys,
    default_provider,
};
use careconnect_storage::{
    Collection, IndexEntry, KeyStore, RecordStore, Row, RowData, RowId, StorageError,
};

use crate::error::CoreError;

/// The collection of subject keyrings.
pub const SUBJECTS_COLLECTION: &str = "core_subjects";
/// Most attempts of a compare-and-swap that keeps losing to other writers.
const MAX_TRIES: usize = 8;
/// How long a bucket re-key waits before its second pass over the
/// bucket's subjects, for writes in flight when it started (at most the
/// subject cache's lifetime).
const WRITE_GRACE: Duration = Duration::from_secs(1);

fn kept_changing() -> CoreError {
    CoreError::Storage(StorageError::Unavailable(
        "subject row kept changing under concurrent writers".into(),
    ))
}

/// The collection of erasure records: one per erased subject (row id: the
/// handle), written before anything is destroyed.
pub const ERASURES_COLLECTION: &str = "core_erasures";

/// The blind-index name holding a subject's bucket number.
const BUCKET_INDEX: &str = "bucket";

/// What remains of an erased subject's row: no key, no index.
fn tombstone() -> RowData {
    RowData {
        key_id: 0,
        envelope: Vec::new(),
        indexes: Vec::new(),
    }
}

fn is_tombstone(row: &Row) -> bool {
    row.envelope.is_empty()
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// The bucket the subject was in.
    pub bucket: u16,
    /// Other subjects of that bucket whose keys were re-sealed.
    pub resealed: usize,
    /// KMS key versions destroyed.
    pub kms_versions_destroyed: usize,
}

/// Subject keyrings in buckets under KMS keys.
#[derive(Clone)]
pub struct SubjectKeys {
    store: Arc<dyn RecordStore>,
    keystore: Arc<dyn KeyStore>,
    kms: Arc<dyn Kms>,
    buckets: u16,
    coll: Collection,
    erasures: Collection,
    erasing: Arc<tokio::sync::Mutex<()>>,
    cache: Arc<std::sync::Mutex<HashMap<RowId, (Instant, Keyring)>>>,
    handle_key: Option<Arc<careconnect_crypto::mac::MacKey>>,
    prefix: String,
    ttl: Duration,
    provider: &'static dyn CryptoProvider,
}

/// The key-store entry of bucket `b`'s sealed keyring.
pub(crate) fn bucket_keyset_name(b: usize) -> String {
    format!("subject-bucket-{b:04}")
}

/// The default prefix of the bucket KMS keys' names.
pub const DEFAULT_KEY_PREFIX: &str = "careconnect-subjects-";

/// How long an opened subject keyring is kept in memory by default
/// ([`SubjectKeys::with_cache_ttl`]; a clinic uses its
/// `keyring_recheck`). An erasure on this node drops it at once; another
/// node sharing the database stops opening the subject's data at most this
/// long after an erasure, and picks up a rotated subject key as late.
pub const SUBJECT_CACHE_TTL: Duration = Duration::from_secs(30);
/// Most subject keyrings kept in memory (the cache is emptied when full).
const SUBJECT_CACHE_MAX: usize = 10_000;

impl std::fmt::Debug for SubjectKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKeys")
            .field("buckets", &self.buckets)
            .finish_non_exhaustive()
    }
}

/// A subject keyring is bound to its row, whose id is the hash of the
/// subject's identity: it cannot be moved to another subject.
fn subject_context(id: &RowId) -> EncryptionContext {
    EncryptionContext::new()
        .with("purpose", "careconnect/subject-key")
        .with("row", id.as_str())
}

impl SubjectKeys {
    /// Subject keys in `store`, bucket keyrings in `keystore`, wrapped by
    /// `kms` under the keys [`SubjectKeys::kms_keys`] names (create them
    /// first: `LocalKms::ensure_key`).
    ///
    /// # Errors
    ///
    /// [`CoreError::Corrupt`] for zero buckets.
    pub fn new(
        store: Arc<dyn RecordStore>,
        keystore: Arc<dyn KeyStore>,
        kms: Arc<dyn Kms>,
        buckets: u16,
    ) -> Result<Self, CoreError> {
        if buckets == 0 {
            return Err(CoreError::Corrupt("subject bucket count"));
        }
        Ok(Self {
            store,
            keystore,
            kms,
            buckets,
            coll: Collection::new(SUBJECTS_COLLECTION)?,
            erasures: Collection::new(ERASURES_COLLECTION)?,
            erasing: Arc::new(tokio::sync::Mutex::new(())),
            cache: Arc::default(),
            handle_key: None,
            prefix: DEFAULT_KEY_PREFIX.into(),
            ttl: SUBJECT_CACHE_TTL,
            provider: default_provider(),
        })
    }

    /// Names subject rows by a keyed MAC of the identity under `key`, so
    /// the database does not show who is registered or erased to someone
    /// who can hash identities. Set it before the first subject is made,
    /// and never change it.
    #[must_use]
    pub fn with_handle_key(mut self, key: careconnect_crypto::mac::MacKey) -> Self {
        self.handle_key = Some(Arc::new(key));
        self
    }

    /// Names bucket `b`'s KMS key `{prefix}{b:04}` instead of
    /// `careconnect-subjects-{b:04}` (on AWS KMS, an alias such as
    /// `alias/clinic-subjects-`).
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Keeps an opened subject keyring in memory for `ttl` (default
    /// [`SUBJECT_CACHE_TTL`]): the longest another node goes on using a
    /// subject keyring after a change, so a rotation of subject keys waits
    /// at least this long between its steps.
    #[must_use]
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long an opened subject keyring is kept in memory.
    pub fn cache_ttl(&self) -> Duration {
        self.ttl
    }

    /// Seals and opens subjects' data with `provider` (default: the crypto
    /// crate's default provider; the bytes are the same either way).
    #[must_use]
    pub fn with_provider(mut self, provider: &'static dyn CryptoProvider) -> Self {
        self.provider = provider;
        self
    }

    /// The KMS key of bucket `b`.
    ///
    /// # Errors
    ///
    /// An invalid key name (from the prefix).
    pub fn kms_key(&self, b: u16) -> Result<KmsKeyId, CoreError> {
        Ok(KmsKeyId::new(format!("{}{b:04}", self.prefix))?)
    }

    /// The KMS keys of `buckets` buckets named `{prefix}{b:04}`, to create
    /// before first use.
    ///
    /// # Errors
    ///
    /// An invalid key name (from the prefix).
    pub fn kms_keys_named(prefix: &str, buckets: u16) -> Result<Vec<KmsKeyId>, CoreError> {
        (0..buckets)
            .map(|b| Ok(KmsKeyId::new(format!("{prefix}{b:04}"))?))
            .collect()
    }

    /// The KMS keys of `buckets` buckets under the default names.
    ///
    /// # Errors
    ///
    /// Never in practice.
    pub fn kms_keys(buckets: u16) -> Result<Vec<KmsKeyId>, CoreError> {
        Self::kms_keys_named(DEFAULT_KEY_PREFIX, buckets)
    }

    fn row_id(&self, subject: &UserId) -> Result<RowId, CoreError> {
        self.handle(subject)
    }

    /// The subject's handle: the id of its keyring's row, a keyed MAC of
    /// the identity (with [`SubjectKeys::with_handle_key`]; a plain hash
    /// without). Rows that must find the subject's keys before they know
    /// the subject (a prescription listed by its prescriber) carry it,
    /// sealed.
    ///
    /// # Errors
    ///
    /// Never in practice (a hex id is a valid row id).
    pub fn handle(&self, subject: &UserId) -> Result<RowId, CoreError> {
        Ok(match &self.handle_key {
            Some(k) => {
                let mut msg = b"subject\0".to_vec();
                msg.extend_from_slice(&crate::clinic::identity_bytes(subject));
                // 40 hex digits; the first four pick the bucket.
                RowId::new(hex::encode(&k.tag(&msg)[..20]))?
            }
            None => RowId::digest(&[
                b"subject",
                subject.issuer().as_bytes(),
                subject.subject().as_bytes(),
            ]),
        })
    }

    fn cached(&self, id: &RowId) -> Option<Keyring> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .get(id)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, k)| k.clone())
    }

    fn remember(&self, id: &RowId, keys: &Keyring) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= SUBJECT_CACHE_MAX {
            cache.clear();
        }
        cache.insert(id.clone(), (Instant::now(), keys.clone()));
    }

    fn forget(&self, id: &RowId) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// The keyring of the subject with `handle`, which must exist already
    /// (never made here).
    ///
    /// # Errors
    ///
    /// [`CoreError::Erased`] for an erased subject, [`CoreError::Corrupt`]
    /// for a handle with no keyring; KMS and storage failures.
    pub async fn keys_of_handle(&self, handle: &RowId) -> Result<Keyring, CoreError> {
        if let Some(k) = self.cached(handle) {
            return Ok(k);
        }
        self.open_existing(handle)
            .await?
            .ok_or(CoreError::Corrupt("subject handle"))
    }

    /// The keyring in row `id`, `None` when there is no row.
    async fn open_existing(&self, id: &RowId) -> Result<Option<Keyring>, CoreError> {
        let b = self.bucket_of(id);
        let mut stale = 0;
        while let Some(row) = self.row(id).await? {
            if is_tombstone(&row) {
                return Err(self.dead(id).await?);
            }
            let (_, ring) = self.bucket(b).await?;
            match Keyring::open_under(&ring, &row.envelope, &subject_context(id)) {
                Ok((s, _, _)) => {
                    let s = s.with_provider(self.provider);
                    self.remember(id, &s);
                    return Ok(Some(s));
                }
                // An erasure of another subject re-sealed this row and
                // destroyed the key we read it under: read it again.
                Err(careconnect_crypto::Error::KeyDestroyed(_)) if stale < 4 => stale += 1,
                // Still under a destroyed bucket key: the erased subject of
                // an erasure cut short before its tombstone was written (its
                // erasure record says so), or a row tampered with.
                Err(careconnect_crypto::Error::KeyDestroyed(_)) => {
                    return Err(self.dead(id).await?);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// What an erasure record of row `id` holds: a keyed MAC of the id
    /// (with a handle key), so a record cannot be forged or moved to
    /// another subject by someone who can write the database.
    fn erasure_token(&self, id: &RowId) -> Vec<u8> {
        let mut msg = b"erased\0".to_vec();
        msg.extend_from_slice(id.as_str().as_bytes());
        match &self.handle_key {
            Some(k) => k.tag(&msg).to_vec(),
            None => msg,
        }
    }

    /// Whether subject row `id` has a genuine erasure record.
    async fn erased(&self, id: &RowId) -> Result<bool, CoreError> {
        match self.store.get(&self.erasures, id).await {
            Ok(r) => Ok(bool::from(subtle::ConstantTimeEq::ct_eq(
                r.envelope.as_slice(),
                self.erasure_token(id).as_slice(),
            ))),
            Err(StorageError::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The error for a subject row that no longer holds a keyring:
    /// [`CoreError::Erased`] when an erasure says so, corruption otherwise
    /// (a live subject's row blanked or altered in the database).
    async fn dead(&self, id: &RowId) -> Result<CoreError, CoreError> {
        if self.erased(id).await? {
            Ok(CoreError::Erased)
        } else {
            tracing::error!(row = id.as_str(), "subject row unreadable and not erased");
            Ok(CoreError::Corrupt("subject row unreadable and not erased"))
        }
    }

    fn bucket_of(&self, id: &RowId) -> u16 {
        let h = id
            .as_str()
            .get(..4)
            .and_then(|p| u16::from_str_radix(p, 16).ok())
            .unwrap_or(0);
        h % self.buckets
    }

    /// Bucket `b`'s keyring and its KeyStore version, made on first use.
    async fn bucket(&self, b: u16) -> Result<(u64, Keyring), CoreError> {
        let name = bucket_keyset_name(usize::from(b));
        let kms_key = self.kms_key(b)?;
        loop {
            match self.keystore.load(&name).await {
                Ok((version, sealed)) => {
                    let ring = Keyring::open_keyset(
                        self.kms.as_ref(),
                        &TrustedKeys::from(&kms_key),
                        &sealed,
                    )
                    .await?;
                    return Ok((version, ring));
                }
                Err(StorageError::NotFound) => {
                    let ring = Keyring::generate();
                    let sealed = ring.seal_keyset(self.kms.as_ref(), &kms_key).await?;
                    match self.keystore.store(&name, None, sealed).await {
                        Ok(version) => return Ok((version, ring)),
                        Err(StorageError::DuplicateId) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn store_bucket(&self, b: u16, expected: u64, ring: &Keyring) -> Result<u64, CoreError> {
        let sealed = ring
            .seal_keyset(self.kms.as_ref(), &self.kms_key(b)?)
            .await?;
        Ok(self
            .keystore
            .store(&bucket_keyset_name(usize::from(b)), Some(expected), sealed)
            .await?)
    }

    fn data(id: &RowId, s: &Keyring, b: u16, ring: &Keyring) -> Result<RowData, CoreError> {
        Ok(RowData {
            key_id: ring.primary().get(),
            envelope: s.seal_under(ring, &subject_context(id))?,
            indexes: vec![IndexEntry {
                name: BUCKET_INDEX.into(),
                token: b.to_be_bytes().to_vec(),
            }],
        })
    }

    /// Whether `subject` has any trace here: a keyring row (opening or
    /// not: a row altered in the database must not make an erasure a
    /// no-op) or an erasure record.
    pub(crate) async fn known(&self, subject: &UserId) -> Result<bool, CoreError> {
        let id = self.row_id(subject)?;
        Ok(self.row(&id).await?.is_some() || self.erased(&id).await?)
    }

    async fn row(&self, id: &RowId) -> Result<Option<Row>, CoreError> {
        match self.store.get(&self.coll, id).await {
            Ok(r) => Ok(Some(r)),
            Err(StorageError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The subject's keyring, made on first use. Seal every piece of the
    /// subject's data with it.
    ///
    /// # Errors
    ///
    /// [`CoreError::Erased`] for an erased subject (never given a new
    /// keyring); KMS and storage failures.
    pub async fn keys(&self, subject: &UserId) -> Result<Keyring, CoreError> {
        let id = self.row_id(subject)?;
        if let Some(k) = self.cached(&id) {
            return Ok(k);
        }
        let b = self.bucket_of(&id);
        for _ in 0..MAX_TRIES {
            if let Some(s) = self.open_existing(&id).await? {
                return Ok(s);
            }
            // Never a fresh keyring for an erased subject, even if its
            // tombstone went missing.
            if self.erased(&id).await? {
                return Err(CoreError::Erased);
            }
            let (version, ring) = self.bucket(b).await?;
            let s = Keyring::generate().with_provider(self.provider);
            match self
                .store
                .insert(&self.coll, &id, Self::data(&id, &s, b, &ring)?)
                .await
            {
                Ok(_) => {}
                Err(StorageError::DuplicateId) => continue,
                Err(e) => return Err(e.into()),
            }
            // An erasure in this bucket may have rotated its keyring between
            // our read and our write, and re-sealed the bucket before our row
            // existed: seal ours again under the current keyring.
            self.settle(&id, &s, b, version).await?;
            self.remember(&id, &s);
            return Ok(s);
        }
        Err(kept_changing())
    }

    /// After writing subject row `id` (holding `s`) under bucket `b`'s
    /// keyring as of keyset version `seen`: if the bucket was re-keyed
    /// meanwhile (an erasure, a bucket-key job), brings the row under the
    /// current primary, until the bucket stays put. A row that still opens
    /// is re-sealed as it is now (a later change is kept); one already
    /// under a destroyed key holds our write, which is sealed again from
    /// `s`. A row erased meanwhile is [`CoreError::Erased`].
    async fn settle(&self, id: &RowId, s: &Keyring, b: u16, seen: u64) -> Result<(), CoreError> {
        let mut seen = Some(seen);
        for _ in 0..MAX_TRIES {
            let (now, ring) = self.bucket(b).await?;
            if seen == Some(now) {
                return Ok(());
            }
            seen = Some(now);
            let Some(row) = self.row(id).await? else {
                return Ok(());
            };
            if is_tombstone(&row) {
                return Err(self.dead(id).await?);
            }
            match Keyring::open_under(&ring, &row.envelope, &subject_context(id)) {
                Ok(_) => {
                    self.reseal_to_primary(row, b, &ring).await?;
                }
                Err(careconnect_crypto::Error::KeyDestroyed(_)) => {
                    match self
                        .store
                        .update(&self.coll, id, row.version, Self::data(id, s, b, &ring)?)
                        .await
                    {
                        Ok(_) | Err(StorageError::NotFound) => {}
                        // Written meanwhile: read it again.
                        Err(StorageError::VersionConflict { .. }) => seen = None,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(kept_changing())
    }

    /// Brings a listed subject row (not the one being erased) under the
    /// bucket keyring's primary key, by compare-and-swap against the
    /// version listed (a row changed meanwhile is read again). Rows of
    /// erased subjects (with a genuine erasure record, even if the row
    /// still opens: an erasure cut short) are left alone, so the older
    /// keys' destruction finishes their shredding. Fails closed: a row that does not
    /// open, and is not erased, stops the erasure before anything is
    /// destroyed, since destroying the keys would make it unrecoverable.
    async fn reseal_to_primary(
        &self,
        listed: Row,
        b: u16,
        ring: &Keyring,
    ) -> Result<bool, CoreError> {
        if self.erased(&listed.id).await? {
            return Ok(false);
        }
        let mut row = listed;
        for _ in 0..MAX_TRIES {
            let opened = if is_tombstone(&row) {
                None
            } else {
                match Keyring::open_under(ring, &row.envelope, &subject_context(&row.id)) {
                    Ok((s, key, _)) => Some((s, key)),
                    Err(careconnect_crypto::Error::KeyDestroyed(_)) => None,
                    Err(_) => {
                        tracing::error!(row = row.id.as_str(), "subject row does not open");
                        return Err(CoreError::Corrupt(
                            "a subject row of the bucket does not open: erasure stopped",
                        ));
                    }
                }
            };
            let Some((s, key)) = opened else {
                if self.erased(&row.id).await? {
                    return Ok(false);
                }
                tracing::error!(
                    row = row.id.as_str(),
                    "subject row unreadable and not erased"
                );
                return Err(CoreError::Corrupt(
                    "a subject row of the bucket is unreadable and not erased: erasure stopped",
                ));
            };
            if key == ring.primary() {
                return Ok(false);
            }
            match self
                .store
                .update(
                    &self.coll,
                    &row.id,
                    row.version,
                    Self::data(&row.id, &s, b, ring)?,
                )
                .await
            {
                Ok(_) => return Ok(true),
                Err(StorageError::NotFound) => return Ok(false),
                Err(StorageError::VersionConflict { .. }) => match self.row(&row.id).await? {
                    Some(r) => row = r,
                    None => return Ok(false),
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(kept_changing())
    }

    /// Every subject row of bucket `b` but `except`, read from the row ids
    /// (never from the bucket index: index rows are not authenticated).
    async fn bucket_rows(&self, b: u16, except: Option<&RowId>) -> Result<Vec<Row>, CoreError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.list(&self.coll, after.as_ref(), 1000).await?;
            out.extend(
                page.rows
                    .into_iter()
                    .filter(|r| Some(&r.id) != except && self.bucket_of(&r.id) == b),
            );
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// The keyring of the subject with `handle` as stored now, past this
    /// node's cache.
    ///
    /// # Errors
    ///
    /// As [`SubjectKeys::keys_of_handle`].
    pub(crate) async fn stored_keys(&self, handle: &RowId) -> Result<Keyring, CoreError> {
        self.open_existing(handle)
            .await?
            .ok_or(CoreError::Corrupt("subject handle"))
    }

    /// Applies `change` to the stored keyring of the subject with `handle`
    /// (compare-and-swap, read again on a concurrent change) and returns
    /// the result. Other nodes see it once their cached copy expires
    /// ([`SubjectKeys::cache_ttl`]); this one at once.
    ///
    /// # Errors
    ///
    /// [`CoreError::Erased`] for an erased subject, [`CoreError::Corrupt`]
    /// for a handle with no keyring; errors of `change`; KMS and storage
    /// failures.
    pub(crate) async fn change<T>(
        &self,
        handle: &RowId,
        change: impl Fn(&mut Keyring) -> Result<T, CoreError>,
    ) -> Result<(Keyring, T), CoreError> {
        let b = self.bucket_of(handle);
        for _ in 0..MAX_TRIES {
            let Some(row) = self.row(handle).await? else {
                return Err(CoreError::Corrupt("subject handle"));
            };
            if is_tombstone(&row) {
                return Err(self.dead(handle).await?);
            }
            let (version, ring) = self.bucket(b).await?;
            let mut s = match Keyring::open_under(&ring, &row.envelope, &subject_context(handle)) {
                Ok((s, _, _)) => s.with_provider(self.provider),
                // Re-sealed by an erasure meanwhile: read it again.
                Err(careconnect_crypto::Error::KeyDestroyed(_)) if !self.erased(handle).await? => {
                    continue;
                }
                Err(careconnect_crypto::Error::KeyDestroyed(_)) => return Err(CoreError::Erased),
                Err(e) => return Err(e.into()),
            };
            let out = change(&mut s)?;
            match self
                .store
                .update(
                    &self.coll,
                    handle,
                    row.version,
                    Self::data(handle, &s, b, &ring)?,
                )
                .await
            {
                Ok(_) => {
                    // As in `keys`: an erasure in this bucket may have
                    // re-sealed it under a new key meanwhile.
                    self.settle(handle, &s, b, version).await?;
                    self.forget(handle);
                    return Ok((s, out));
                }
                Err(StorageError::VersionConflict { .. }) => {}
                Err(StorageError::NotFound) => return Err(CoreError::Corrupt("subject handle")),
                Err(e) => return Err(e.into()),
            }
        }
        Err(kept_changing())
    }

    /// Every subject row: its handle and its keyring, or why it does not
    /// open. Erased subjects are left out.
    ///
    /// # Errors
    ///
    /// KMS and storage failures.
    pub(crate) async fn all(&self) -> Result<Vec<(RowId, Result<Keyring, CoreError>)>, CoreError> {
        let mut rings = HashMap::new();
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.list(&self.coll, after.as_ref(), 1000).await?;
            for row in page.rows {
                let b = self.bucket_of(&row.id);
                if let std::collections::hash_map::Entry::Vacant(e) = rings.entry(b) {
                    e.insert(self.bucket(b).await?.1);
                }
                let opened = match rings.get(&b) {
                    Some(ring) if !is_tombstone(&row) => {
                        Keyring::open_under(ring, &row.envelope, &subject_context(&row.id))
                            .map(|(s, _, _)| s.with_provider(self.provider))
                            .map_err(CoreError::from)
                    }
                    _ => Err(CoreError::Erased),
                };
                let opened = match opened {
                    Ok(s) => Ok(s),
                    Err(_) if self.erased(&row.id).await? => continue,
                    Err(CoreError::Erased) => Err(self.dead(&row.id).await?),
                    Err(e) => Err(e),
                };
                out.push((row.id, opened));
            }
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// Gives bucket `b` a new key and destroys every older one: 1. a new
    /// primary; 2. every subject row of the bucket but `except` re-sealed
    /// under it; 3. checked again (a subject written meanwhile); 4. every
    /// older key destroyed. Returns the bucket keyset's version and
    /// keyring, the rows re-sealed and the keys destroyed. Each step leaves
    /// every live subject readable, so running it again after a crash
    /// finishes it.
    async fn replace_bucket_key(
        &self,
        b: u16,
        except: Option<&RowId>,
    ) -> Result<(u64, Keyring, usize, Vec<u32>), CoreError> {
        let (mut version, mut ring) = self.bucket(b).await?;
        // 1. A new primary key for the bucket; older ones still open.
        ring.rotate()?;
        version = self.store_bucket(b, version, &ring).await?;
        // 2. Every other live subject of the bucket under the new key.
        // 3. Checked again a moment later, before anything is destroyed:
        //    a subject written under the old key by a writer that read the
        //    bucket before step 1 (and then stalled, or died before
        //    settling its row) is caught here.
        let mut resealed = 0;
        for pass in 0..2 {
            if pass == 1 {
                tokio::time::sleep(self.ttl.min(WRITE_GRACE)).await;
            }
            for other in self.bucket_rows(b, except).await? {
                if self.reseal_to_primary(other, b, &ring).await? {
                    resealed += 1;
                }
            }
        }
        // 4. Every older key destroyed.
        let older: Vec<KeyId> = ring
            .keys()
            .filter(|k| k.id != ring.primary() && k.state != KeyState::Destroyed)
            .map(|k| k.id)
            .collect();
        for k in &older {
            if ring
                .key(*k)
                .is_some_and(|i| i.state != KeyState::Compromised)
            {
                ring.mark_compromised(*k)?;
            }
            ring.destroy(*k)?;
        }
        version = self.store_bucket(b, version, &ring).await?;
        Ok((
            version,
            ring,
            resealed,
            older.iter().map(|k| k.get()).collect(),
        ))
    }

    /// How many subject rows bucket `b` holds (erased ones included).
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub(crate) async fn bucket_size(&self, b: u16) -> Result<usize, CoreError> {
        Ok(self.bucket_rows(b, None).await?.len())
    }

    /// The bucket whose keyring holds `key`, not destroyed.
    ///
    /// # Errors
    ///
    /// KMS and storage failures.
    pub(crate) async fn bucket_holding(&self, key: u32) -> Result<Option<u16>, CoreError> {
        let Some(key) = KeyId::new(key) else {
            return Ok(None);
        };
        Ok(self
            .bucket_keyrings()
            .await?
            .into_iter()
            .find(|(_, ring)| {
                ring.key(key)
                    .is_some_and(|k| k.state != KeyState::Destroyed)
            })
            .map(|(b, _)| b))
    }

    /// Every bucket keyring made so far, by bucket.
    ///
    /// # Errors
    ///
    /// KMS and storage failures.
    pub(crate) async fn bucket_keyrings(&self) -> Result<Vec<(u16, Keyring)>, CoreError> {
        let mut out = Vec::new();
        for b in 0..self.buckets {
            let name = bucket_keyset_name(usize::from(b));
            match self.keystore.load(&name).await {
                Ok(_) => out.push((b, self.bucket(b).await?.1)),
                Err(StorageError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// A bucket keyring's key is compromised: bucket `b` gets a new key,
    /// every subject of the bucket is re-sealed under it, and every older
    /// key of the bucket is destroyed. Returns the subject rows re-sealed
    /// and the keys destroyed. Safe to run again after a crash.
    ///
    /// The bucket key seals subject keyrings, never data: a copy of the
    /// database taken while the key was exposed still yields those
    /// keyrings to whoever holds both (see `docs/key-rotation.md`).
    ///
    /// # Errors
    ///
    /// [`CoreError::Corrupt`] for a subject row of the bucket that does
    /// not open and is not erased (nothing is destroyed); KMS and storage
    /// failures.
    pub(crate) async fn replace_compromised_bucket_key(
        &self,
        b: u16,
    ) -> Result<(usize, Vec<u32>), CoreError> {
        let _one = self.erasing.lock().await;
        let (_, _, resealed, destroyed) = self.replace_bucket_key(b, None).await?;
        Ok((resealed, destroyed))
    }

    /// Erases `subject`: after it, nothing the clinic holds opens the
    /// subject's data, here or in any earlier copy of the database. Safe to
    /// run again after a crash (it finishes the job). It runs whatever the
    /// subject's row looks like (a subject never seen gets an erasure
    /// record and its bucket's keys are rotated all the same); `None` when
    /// the subject was erased already.
    ///
    /// # Errors
    ///
    /// KMS failures (including [`careconnect_crypto::KmsError::Unsupported`]
    /// for a KMS that cannot destroy versions), storage failures.
    pub async fn erase(&self, subject: &UserId) -> Result<Option<Erasure>, CoreError> {
        if !self.kms.can_destroy_versions() {
            // Refused before anything changes: an erasure that cannot
            // destroy the old KMS versions would leave earlier copies of
            // the database readable (see docs/erasure.md for AWS KMS).
            return Err(CoreError::Crypto(
                careconnect_crypto::KmsError::Unsupported(
                    "erasure needs a KMS that can destroy single key versions",
                )
                .into(),
            ));
        }
        let id = self.row_id(subject)?;
        self.forget(&id);
        let b = self.bucket_of(&id);
        // One erasure at a time here (see docs/erasure.md for several nodes).
        let _one = self.erasing.lock().await;
        let row = self.row(&id).await?;
        if self.erased(&id).await? && row.as_ref().is_none_or(is_tombstone) {
            return Ok(None);
        }
        // 0. The erasure record first: from here on, a subject row that no
        //    longer opens reads as erased, even if this is cut short. The
        //    rest runs whatever the subject's row says (the row is not
        //    authenticated until opened; a row hidden or blanked for the
        //    moment must not make the erasure a no-op).
        match self
            .store
            .insert(
                &self.erasures,
                &id,
                RowData {
                    key_id: 0,
                    envelope: self.erasure_token(&id),
                    indexes: Vec::new(),
                },
            )
            .await
        {
            Ok(_) | Err(StorageError::DuplicateId) => {}
            Err(e) => return Err(e.into()),
        }
        // 1-4. A new bucket key; every other subject under it; the older
        //      keys destroyed (the erased subject's keyring goes with them).
        let (version, ring, resealed, _) = self.replace_bucket_key(b, Some(&id)).await?;
        // 5. The keyring under a fresh KMS version, every older one destroyed:
        //    copies of the database hold the old keys under those.
        let kms_key = self.kms_key(b)?;
        let described = self.kms.rotate(&kms_key).await?;
        self.store_bucket(b, version, &ring).await?;
        let mut destroyed = 0;
        for v in described.enabled_versions {
            if v != described.current_version {
                self.kms.destroy_version(&kms_key, v).await?;
                destroyed += 1;
            }
        }
        self.forget(&id);
        // 6. The erased subject's row (dead already) becomes a tombstone, so
        //    the subject is not silently given a fresh keyring later.
        let mut tries = 0;
        while let Some(row) = self.row(&id).await? {
            if is_tombstone(&row) {
                break;
            }
            tries += 1;
            if tries > MAX_TRIES {
                return Err(kept_changing());
            }
            match self
                .store
                .update(&self.coll, &id, row.version, tombstone())
                .await
            {
                Ok(_) | Err(StorageError::NotFound) => break,
                Err(StorageError::VersionConflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(Erasure {
            bucket: b,
            resealed,
            kms_versions_destroyed: destroyed,
        }))
    }
}
