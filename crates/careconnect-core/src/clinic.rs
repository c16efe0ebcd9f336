//! The clinic: one value, opened from a configuration, that holds the
//! stores, keys, audit trail and access gate every service shares, and
//! hands out one service per subsystem.
//!
//! ```text
//! Clinic ─┬─ records()   MedRecords   (doctor)          crate::records
//!         ├─ patients()  CareConnect  (patient)         crate::patients
//!         ├─ eps()       EPS          (doctor)          crate::eps
//!         ├─ finance()   FinCare      (finance)         crate::finance
//!         └─ admin()     administration (admin)         crate::admin
//! ```
//!
//! Keys: the **clinic keyring** (sealed under the KMS key
//! [`ClinicConfig::clinic_kms_key`], stored in the key store) seals the
//! clinic's own rows (directory, care, signing keys, finance) and keys the
//! audit chain. A second keyring under the same KMS key, never rotated
//! ([`INDEX_KEYSET`]), gives the blind-index and pseudonym MAC keys, so
//! lookups stay put when the clinic keyring rotates.
//! Every piece of patient data is sealed under that **patient's subject
//! keyring** ([`SubjectKeys`]), bound to collection, row id and field.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use careconnect_authz::mapper::{Claims, RoleAssignments, RoleMapper};
use careconnect_authz::oidc::{OidcConfig, RelyingParty};
use careconnect_authz::session::{Clock, SessionConfig, Sessions, SystemClock};
use careconnect_authz::{Principal, RoleSet, UserId};
use careconnect_crypto::mac::MacKey;
use careconnect_crypto::{
    CryptoProvider, EncryptionContext, Keyring, Kms, KmsKeyId, LocalKms, RootSecret, SharedKeyring,
    TrustedKeys,
};
use careconnect_storage::{
    AuditLog, Collection, IndexEntry, KeyStore, RecordStore, Row, RowData, RowId, StorageError,
    Store,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::access::{Gate, GateConfig};
use crate::audit::{Anchor, AuditEvent, AuditTrail, Outcome};
use crate::error::CoreError;
use crate::rows;
use crate::subjects::SubjectKeys;

/// The key-store entry holding the sealed clinic keyring.
pub const CLINIC_KEYSET: &str = "clinic-keyring";
/// The key-store entry holding the sealed keyring of the blind-index and
/// pseudonym MAC keys. It is never rotated: a new key would change every
/// index token and pseudonym (re-indexing is the rotation tool's job).
pub const INDEX_KEYSET: &str = "clinic-index-keyring";
/// The collection of the people directory (staff and patients by name).
pub const PEOPLE_COLLECTION: &str = "core_people";

/// Where Medicloud's blobs go: a directory, or a bucket and prefix, that
/// belongs to this clinic alone (collecting orphans deletes every blob there
/// that none of its documents references).
#[derive(Debug, Clone)]
pub enum BlobConfig {
    /// `file:///dir` or, with the storage crate's `s3` feature,
    /// `s3://bucket/prefix` (credentials and endpoint from the AWS
    /// environment).
    Url(String),
    /// A blob store the caller built (an `S3BlobStore` with explicit
    /// settings, say).
    Provided(Arc<dyn careconnect_storage::BlobStore>),
}

/// Where keys come from.
pub enum KmsConfig {
    /// The embedded local KMS: a file sealed under a root secret.
    Local {
        /// The KMS file (made on first use).
        path: PathBuf,
        /// Its root secret.
        root: RootSecret,
    },
    /// A KMS the caller built (AWS KMS, or a caching wrapper). The clinic
    /// key and the subject bucket keys must exist in it already.
    Provided(Arc<dyn Kms>),
}

impl std::fmt::Debug for KmsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local { path, .. } => f.debug_struct("Local").field("path", path).finish(),
            Self::Provided(k) => f.debug_tuple("Provided").field(k).finish(),
        }
    }
}

/// Opening hours and appointment slots, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClinicHours {
    /// First slot starts at this hour (0-23).
    pub opens: u8,
    /// Last slot ends by this hour (1-24).
    pub closes: u8,
    /// Slot length in minutes (divides 60 or is a multiple of it).
    pub slot_minutes: u16,
    /// How far ahead bookings are taken, in days.
    pub book_ahead_days: u16,
}

impl Default for ClinicHours {
    fn default() -> Self {
        Self {
            opens: 8,
            closes: 18,
            slot_minutes: 30,
            book_ahead_days: 90,
        }
    }
}

/// How long a node keeps a user's stored roles before reading them again
/// ([`Clinic::principal`]).
pub const ROLES_RECHECK: Duration = Duration::from_secs(2);

/// Most users whose stored roles a node remembers at once.
const ROLES_CACHE_ENTRIES: usize = 100_000;

/// How often a node re-reads the clinic keyset by default.
pub const DEFAULT_KEYRING_RECHECK: Duration = Duration::from_secs(5);

/// What a clinic is opened from.
#[derive(Debug)]
pub struct ClinicConfig {
    /// `sqlite://path`, `postgres://...` or `memory:`.
    pub storage_url: String,
    /// Where the audit anchor lives (keep it away from the database's
    /// writers, see [`crate::audit`]).
    pub audit_anchor: PathBuf,
    /// The KMS.
    pub kms: KmsConfig,
    /// The KMS key wrapping the clinic keyring.
    pub clinic_kms_key: String,
    /// Subject-key buckets (see `docs/erasure.md`); fixed for a clinic's life.
    pub subject_buckets: u16,
    /// Bucket `b`'s KMS key is `{subject_key_prefix}{b:04}` (on AWS KMS an
    /// alias prefix such as `alias/clinic-subjects-`).
    pub subject_key_prefix: String,
    /// Claim rules (TOML, as [`RoleMapper::from_toml`]); stored assignments
    /// add to them.
    pub role_rules: String,
    /// Opening hours.
    pub hours: ClinicHours,
    /// How long a break-glass declaration lasts.
    pub break_glass_for: Duration,
    /// Break-glass declarations one doctor may make for one patient in any
    /// 24 hours (default 3).
    pub break_glass_per_day: u32,
    /// The prescription charge, in pence.
    pub prescription_charge_pence: u32,
    /// Where Medicloud's sealed documents go (default: `blobs` under the
    /// data directory).
    pub blobs: BlobConfig,
    /// Medicloud: allowed types, size limit, documents' KMS key.
    pub medicloud: crate::medicloud::MedicloudConfig,
    /// How long a node keeps a patient's opened notes in memory, and the
    /// sealed rows of a patient's own overview (appointments and
    /// prescriptions) as read (default 1 s;
    /// zero turns it off). What is written through this node shows at once;
    /// what another node sharing the database writes shows within this
    /// time.
    pub read_cache: Duration,
    /// The AEAD implementation for records and documents (default: the
    /// crypto crate's default; `ring`'s with its feature is faster on CPUs
    /// with AES instructions). The bytes are the same whichever it is.
    pub provider: &'static dyn CryptoProvider,
    /// How often a node re-reads the clinic keyset to pick up a data-key
    /// rotation stored by another process (default 5 s), and how long it
    /// keeps a patient's subject keyring before reading it again. A node
    /// that has not confirmed its keyring for this and half of it again (at
    /// least 500 ms) refuses requests ([`CoreError::KeyringStale`]) until it
    /// has. Every node and the rotation tool sharing a database must use
    /// the same value: a rotation waits [`Clinic::reload_window`] (that
    /// lease plus this) between its steps.
    pub keyring_recheck: Duration,
}

impl ClinicConfig {
    /// Embedded defaults under `dir`: a SQLite file, the local KMS with
    /// its root secret in a file beside it, the audit anchor there too.
    ///
    /// # Errors
    ///
    /// Reading or making the root secret file.
    pub fn embedded(dir: &std::path::Path) -> Result<Self, CoreError> {
        Ok(Self {
            storage_url: format!("sqlite://{}", dir.join("clinic.db").display()),
            audit_anchor: dir.join("audit.anchor"),
            kms: KmsConfig::Local {
                path: dir.join("kms.bin"),
                root: RootSecret::load_or_create_file(&dir.join("kms-root.key"))?,
            },
            clinic_kms_key: "careconnect-clinic".into(),
            subject_buckets: 16,
            subject_key_prefix: crate::subjects::DEFAULT_KEY_PREFIX.into(),
            role_rules: String::new(),
            hours: ClinicHours::default(),
            break_glass_for: Duration::from_secs(3600),
            break_glass_per_day: 3,
            prescription_charge_pence: 990,
            read_cache: Duration::from_secs(1),
            keyring_recheck: DEFAULT_KEYRING_RECHECK,
            blobs: BlobConfig::Url(format!("file://{}", dir.join("blobs").display())),
            medicloud: crate::medicloud::MedicloudConfig::default(),
            provider: careconnect_crypto::default_provider(),
        })
    }
}

/// Purposes of the clinic's MAC keys.
const INDEX_PURPOSE: &str = "careconnect/blind-index";
const PSEUDONYM_PURPOSE: &str = "careconnect/pseudonym";
const CARE_INDEX_PURPOSE: &str = "careconnect/care-index";
const SUBJECT_HANDLE_PURPOSE: &str = "careconnect/subject-handle";
/// Finance's pseudonyms have a key of their own: nothing else (the audit
/// log, which names patients by [`PSEUDONYM_PURPOSE`]) can link them.
const FINANCE_PSEUDONYM_PURPOSE: &str = "careconnect/finance-pseudonym";

/// The pseudonym of `patient` under `key`: `P-` and 20 hex digits of a
/// keyed MAC of the identity.
pub(crate) fn pseudonym_with(key: &MacKey, patient: &UserId) -> String {
    let tag = key.tag(&identity_bytes(patient));
    format!("P-{}", hex::encode(&tag[..10]))
}

/// Something per patient, remembered since an instant.
pub(crate) type PatientCache<T> =
    std::sync::Mutex<std::collections::HashMap<UserId, (std::time::Instant, T)>>;

/// A walk over a collection a page at a time ([`Inner::pages`]).
pub(crate) struct Pages<'a> {
    store: &'a dyn RecordStore,
    coll: Collection,
    limit: usize,
    after: Option<RowId>,
    done: bool,
}

impl Pages<'_> {
    /// The next page's rows, `None` after the last.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<Row>>, CoreError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .list(&self.coll, self.after.as_ref(), self.limit)
            .await?;
        match page.next {
            Some(n) => self.after = Some(n),
            None => self.done = true,
        }
        Ok(Some(page.rows))
    }
}

/// What every service shares.
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn RecordStore>,
    /// The same store, with recent reads kept for [`ClinicConfig::read_cache`].
    pub(crate) recent: Arc<crate::recent::Recent>,
    pub(crate) kms: Arc<dyn Kms>,
    pub(crate) kms_keys: Vec<KmsKeyId>,
    /// Every sealed keyset in the key store, with the KMS key wrapping it.
    pub(crate) keysets: Vec<(String, KmsKeyId)>,
    pub(crate) keystore: Arc<dyn KeyStore>,
    pub(crate) keys: SharedKeyring,
    /// The version of the clinic keyset `keys` was loaded from.
    pub(crate) keys_version: std::sync::Mutex<u64>,
    /// How often the clinic keyset is re-read.
    pub(crate) keyring_recheck: Duration,
    /// The KMS key wrapping the clinic keyset.
    pub(crate) clinic_key: KmsKeyId,
    pub(crate) index_key: MacKey,
    pub(crate) pseudonym_key: MacKey,
    pub(crate) audit_names: MacKey,
    pub(crate) audit: AuditTrail,
    pub(crate) gate: Gate,
    pub(crate) subjects: SubjectKeys,
    pub(crate) assignments: RoleAssignments,
    pub(crate) mapper: RoleMapper,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) hours: ClinicHours,
    pub(crate) charge_pence: u32,
    pub(crate) people: Collection,
    /// Registered details by patient: written once, never updated, so
    /// only an erasure (on this node at once, elsewhere within
    /// [`crate::subjects::SUBJECT_CACHE_TTL`]) makes an entry stale.
    pub(crate) details: PatientCache<crate::records::PatientDetails>,
    /// Stored roles by user, for [`Clinic::principal`].
    pub(crate) roles: PatientCache<RoleSet>,
    /// The doctors in the directory, read at most every [`ROLES_RECHECK`].
    pub(crate) doctors: std::sync::Mutex<Option<(std::time::Instant, Arc<Vec<Person>>)>>,
    /// Digests of prescription signatures verified on this node.
    pub(crate) signatures: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
    /// Prescribers' public keys found in storage, by row id: those rows
    /// never change, so a key found once stays found.
    pub(crate) public_keys:
        std::sync::Mutex<std::collections::HashMap<RowId, ed25519_dalek::VerifyingKey>>,
    /// Bumped by every change of stored roles on this node.
    pub(crate) roles_generation: std::sync::atomic::AtomicU64,
    /// Opened notes by patient, for [`ClinicConfig::read_cache`].
    pub(crate) notes: PatientCache<Arc<Vec<crate::records::Note>>>,
    /// Bumped by every forget of notes: a read that started before one is
    /// not cached.
    pub(crate) notes_generation: std::sync::atomic::AtomicU64,
    pub(crate) read_cache: Duration,
    pub(crate) blobs: Arc<dyn careconnect_storage::BlobStore>,
    pub(crate) medicloud: crate::medicloud::MedicloudConfig,
    pub(crate) provider: &'static dyn CryptoProvider,
}

/// St John's Clinic: the services of every subsystem over one set of
/// stores and keys. Cheap to clone.
#[derive(Clone)]
pub struct Clinic {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Clinic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clinic")
            .field("hours", &self.inner.hours)
            .finish_non_exhaustive()
    }
}

/// A person in the clinic's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Who.
    pub user: UserId,
    /// Display name.
    pub name: String,
    /// The roles the clinic gave them (stored assignments).
    pub roles: RoleSet,
}

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Checks free text: trimmed, 1 to `max` characters, no control characters
/// other than newlines where `multiline`, and no bidirectional embedding,
/// override or isolate controls (they make a name or note display as
/// something else; [`careconnect_authz::is_bidi_control`]).
pub(crate) fn text(
    value: &str,
    max: usize,
    what: &'static str,
    multiline: bool,
) -> Result<String, CoreError> {
    let v = value.trim();
    let bad = |c: char| {
        careconnect_authz::is_bidi_control(c)
            || (c.is_control() && !(multiline && (c == '\n' || c == '\r' || c == '\t')))
    };
    if v.is_empty() || v.chars().count() > max || v.chars().any(bad) {
        return Err(CoreError::Invalid(what));
    }
    Ok(v.to_owned())
}

/// A fresh random row id (128 bits, hex).
pub(crate) fn new_id() -> Result<RowId, CoreError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|_| CoreError::Corrupt("random source"))?;
    Ok(RowId::new(hex::encode(b))?)
}

/// An identity as MAC input: length-prefixed issuer and subject.
pub(crate) fn identity_bytes(user: &UserId) -> Vec<u8> {
    let mut v = Vec::with_capacity(user.issuer().len() + user.subject().len() + 8);
    for part in [user.issuer(), user.subject()] {
        v.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        v.extend_from_slice(part.as_bytes());
    }
    v
}

/// The encryption context of one field of one row of patient data.
pub(crate) fn field_context(coll: &Collection, id: &RowId, field: &str) -> EncryptionContext {
    EncryptionContext::new()
        .with("purpose", "careconnect/patient-data")
        .with("collection", coll.as_str())
        .with("row", id.as_str())
        .with("field", field)
}

impl Clinic {
    /// Opens the clinic `config` describes: connects the store, opens (or
    /// on first use makes) the local KMS keys and the clinic keyring.
    ///
    /// # Errors
    ///
    /// Storage, KMS and configuration errors.
    pub async fn open(config: ClinicConfig) -> Result<Self, CoreError> {
        let store = careconnect_storage::connect(&config.storage_url).await?;
        Self::open_with(config, store, Arc::new(SystemClock)).await
    }

    /// As [`Clinic::open`] over a store the caller connected, with a clock
    /// (tests move time).
    ///
    /// # Errors
    ///
    /// As [`Clinic::open`].
    pub async fn open_with(
        config: ClinicConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CoreError> {
        let clinic_key = KmsKeyId::new(config.clinic_kms_key.clone())?;
        let bucket_keys =
            SubjectKeys::kms_keys_named(&config.subject_key_prefix, config.subject_buckets)?;
        let documents_key = KmsKeyId::new(config.medicloud.kms_key.clone())?;
        let kms: Arc<dyn Kms> = match config.kms {
            KmsConfig::Local { path, root } => {
                let kms = LocalKms::open_or_create(path, root)?;
                kms.ensure_key(&clinic_key)?;
                kms.ensure_key(&documents_key)?;
                for k in &bucket_keys {
                    kms.ensure_key(k)?;
                }
                Arc::new(kms)
            }
            KmsConfig::Provided(kms) => kms,
        };
        let recent = Arc::new(crate::recent::Recent::new(store.clone()));
        let records: Arc<dyn RecordStore> = recent.clone();
        let keystore: Arc<dyn KeyStore> = store.clone();
        let log: Arc<dyn AuditLog> = store;
        let read_at = std::time::Instant::now();
        let (keys_version, keys) =
            stored_keyring(kms.as_ref(), keystore.as_ref(), &clinic_key, CLINIC_KEYSET).await?;
        let keys = SharedKeyring::new_as_of(keys.with_provider(config.provider), read_at);
        keys.set_lease(keyring_lease(config.keyring_recheck));
        let (_, macs) =
            stored_keyring(kms.as_ref(), keystore.as_ref(), &clinic_key, INDEX_KEYSET).await?;
        let mac = |purpose| macs.mac_key_for(macs.primary(), purpose);
        let index_key = mac(INDEX_PURPOSE)?;
        let pseudonym_key = mac(FINANCE_PSEUDONYM_PURPOSE)?;
        let audit = AuditTrail::new(log, keys.clone(), Anchor::at(config.audit_anchor))
            .with_pseudonyms(mac(PSEUDONYM_PURPOSE)?);
        let gate = Gate::new(
            records.clone(),
            keys.clone(),
            audit.clone(),
            clock.clone(),
            GateConfig {
                break_glass_for: config.break_glass_for,
                break_glass_per_day: config.break_glass_per_day,
            },
        )?
        .with_doctor_index(mac(CARE_INDEX_PURPOSE)?)
        .with_pseudonyms(mac(PSEUDONYM_PURPOSE)?);
        let subjects = SubjectKeys::new(
            records.clone(),
            keystore.clone(),
            kms.clone(),
            config.subject_buckets,
        )?
        .with_handle_key(mac(SUBJECT_HANDLE_PURPOSE)?)
        .with_key_prefix(config.subject_key_prefix.clone())
        .with_provider(config.provider)
        .with_cache_ttl(config.keyring_recheck);
        let hours = config.hours;
        if hours.opens >= hours.closes
            || hours.closes > 24
            || hours.slot_minutes == 0
            || !(60u16.is_multiple_of(hours.slot_minutes) || hours.slot_minutes.is_multiple_of(60))
        {
            return Err(CoreError::Invalid("clinic hours"));
        }
        let blobs = match &config.blobs {
            BlobConfig::Url(url) => careconnect_storage::connect_blobs(url).await?,
            BlobConfig::Provided(store) => store.clone(),
        };
        let mut keysets = vec![
            (CLINIC_KEYSET.to_owned(), clinic_key.clone()),
            (INDEX_KEYSET.to_owned(), clinic_key.clone()),
        ];
        keysets.extend(
            bucket_keys
                .iter()
                .enumerate()
                .map(|(b, k)| (crate::subjects::bucket_keyset_name(b), k.clone())),
        );
        let mut kms_keys = vec![clinic_key.clone(), documents_key];
        kms_keys.extend(bucket_keys);
        if config.keyring_recheck.is_zero() {
            return Err(CoreError::Invalid("keyring recheck interval"));
        }
        let inner = Arc::new(Inner {
            assignments: RoleAssignments::new(records.clone(), keys.clone())?,
            mapper: RoleMapper::from_toml(&config.role_rules)?,
            store: records,
            recent,
            kms,
            kms_keys,
            keysets,
            keystore,
            keys,
            keys_version: std::sync::Mutex::new(keys_version),
            keyring_recheck: config.keyring_recheck,
            clinic_key,
            index_key,
            pseudonym_key,
            audit_names: mac(PSEUDONYM_PURPOSE)?,
            audit,
            gate,
            subjects,
            clock,
            hours,
            charge_pence: config.prescription_charge_pence,
            people: Collection::new(PEOPLE_COLLECTION)?,
            details: std::sync::Mutex::default(),
            roles: std::sync::Mutex::default(),
            doctors: std::sync::Mutex::default(),
            signatures: std::sync::Mutex::default(),
            public_keys: std::sync::Mutex::default(),
            roles_generation: std::sync::atomic::AtomicU64::new(0),
            notes: std::sync::Mutex::default(),
            notes_generation: std::sync::atomic::AtomicU64::new(0),
            read_cache: config.read_cache,
            blobs,
            medicloud: config.medicloud,
            provider: config.provider,
        });
        tokio::spawn(watch_keyring(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// How long a data-key rotation waits between storing a change to the
    /// clinic keyset (or a subject keyring) and relying on every node having
    /// it: a node's keyring lease ([`ClinicConfig::keyring_recheck`] and
    /// half of it, at least 500 ms) plus the recheck interval.
    pub fn reload_window(&self) -> Duration {
        keyring_lease(self.inner.keyring_recheck) + self.inner.keyring_recheck
    }

    /// The audit trail itself, for trusted code of the embedding
    /// application (verifying it at start-up, recording its own events).
    /// Requests go through [`crate::admin::Admin::audit_log`], which is
    /// authorized and audited.
    pub fn audit(&self) -> &AuditTrail {
        &self.inner.audit
    }

    /// Server-side sessions in the clinic's store, sealed under the clinic
    /// keyring (so every node sharing the store shares them, and a data-key
    /// rotation re-seals them like every other clinic row), timed by the
    /// clinic's clock.
    ///
    /// # Errors
    ///
    /// [`CoreError::Authz`] for an impossible [`SessionConfig`].
    pub fn sessions(&self, config: SessionConfig) -> Result<Sessions, CoreError> {
        Ok(Sessions::new(
            self.inner.store.clone(),
            self.inner.keys.clone(),
            config,
            self.inner.clock.clone(),
        )?
        .with_user_index(self.inner.index_key.clone()))
    }

    /// An OpenID Connect relying party for `config`'s provider, whose login
    /// cookies are sealed under the clinic keyring: a login started on one
    /// node finishes on any other sharing the store. It reads groups and
    /// roles from the claims the role rules name, and the rules are checked
    /// against this provider first
    /// ([`RoleMapper::check_providers`](careconnect_authz::mapper::RoleMapper::check_providers)).
    /// Discovers the provider.
    ///
    /// # Errors
    ///
    /// [`CoreError::Authz`]: role rules that do not fit the provider; the
    /// provider unreachable or misconfigured.
    pub async fn relying_party(&self, config: OidcConfig) -> Result<RelyingParty, CoreError> {
        // Groups and roles come from the claims the role rules name, and
        // the rules must fit this provider.
        let config = config.with_claim_names(self.inner.mapper.claim_names().clone());
        self.inner.mapper.check_providers([config.provider()])?;
        Ok(
            RelyingParty::discover_with_clock(config, self.inner.clock.clone())
                .await?
                .with_login_keys(self.inner.keys.clone()),
        )
    }

    /// Whether this node can serve: its store answers, its KMS describes
    /// the clinic key, and its clinic keyring is within its lease. For a
    /// readiness probe; changes nothing and audits nothing.
    ///
    /// # Errors
    ///
    /// The first failure: [`CoreError::Storage`], [`CoreError::Crypto`] (the
    /// KMS), [`CoreError::KeyringStale`].
    pub async fn ready(&self) -> Result<(), CoreError> {
        let probe = RowId::new("readiness-probe")?;
        match self.inner.store.get(&self.inner.people, &probe).await {
            Ok(_) | Err(StorageError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        self.inner.kms.describe(&self.inner.clinic_key).await?;
        self.inner.keys.fresh().map_err(|_| CoreError::KeyringStale)
    }

    /// The roles the claim rules alone give `claims`: what a session keeps
    /// (stored roles are read again per request by [`Clinic::principal`], so
    /// an administrator's change reaches live sessions).
    pub fn claim_roles(&self, claims: &Claims) -> RoleSet {
        self.inner.mapper.claim_roles(claims)
    }

    /// Who `user` is now: `claimed` (the roles their claims gave at sign-in,
    /// [`Clinic::claim_roles`]) and the roles stored for them now. Stored
    /// roles are read at most every [`ROLES_RECHECK`] per node (this node's
    /// own changes show at once), so a role an administrator takes away
    /// stops working on every node within that time, mid-session.
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn principal(&self, user: &UserId, claimed: RoleSet) -> Result<Principal, CoreError> {
        let cached = self
            .inner
            .roles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user)
            .filter(|(at, _)| at.elapsed() < ROLES_RECHECK)
            .map(|(_, r)| *r);
        let stored = match cached {
            Some(r) => r,
            None => {
                let generation = self
                    .inner
                    .roles_generation
                    .load(std::sync::atomic::Ordering::SeqCst);
                let read_at = std::time::Instant::now();
                let r = self.inner.assignments.get(user).await?;
                let mut cache = self
                    .inner
                    .roles
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                // A change on this node since the read: do not keep the old roles.
                if generation
                    == self
                        .inner
                        .roles_generation
                        .load(std::sync::atomic::Ordering::SeqCst)
                {
                    if cache.len() >= ROLES_CACHE_ENTRIES {
                        cache.retain(|_, (at, _)| at.elapsed() < ROLES_RECHECK);
                    }
                    if cache.len() < ROLES_CACHE_ENTRIES {
                        cache.insert(user.clone(), (read_at, r));
                    }
                }
                r
            }
        };
        Ok(Principal::new(user.clone(), claimed.union(stored)))
    }

    /// The principal for a signed-in user: roles from the claim rules and
    /// the stored assignments. The login is audited.
    ///
    /// # Errors
    ///
    /// Storage failures; [`CoreError::AuditUnavailable`].
    pub async fn sign_in(&self, claims: &Claims) -> Result<Principal, CoreError> {
        let roles = self
            .inner
            .mapper
            .roles(claims, &self.inner.assignments)
            .await?;
        let who = Principal::new(claims.user.clone(), roles);
        self.inner
            .audit
            .record(AuditEvent::by(&who, "SignIn", "session", Outcome::Allowed))
            .await?;
        Ok(who)
    }

    /// A person in the directory (for the domain layer's own checks: it
    /// tells whether an identity is registered, so it is not offered to
    /// requests).
    pub(crate) async fn person(&self, user: &UserId) -> Result<Option<Person>, CoreError> {
        let id = self.inner.person_id(user)?;
        Ok(self
            .inner
            .get(&self.inner.people, &id)
            .await?
            .and_then(|row| {
                rows::open::<Person>(&self.inner.keys.current(), &self.inner.people, &row)
            })
            .filter(|p| p.user == *user))
    }

    /// The doctors in the directory (whom a patient can book), by name:
    /// read at most every [`ROLES_RECHECK`] per node, at once after this
    /// node changed the directory.
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn doctors(&self) -> Result<Vec<Person>, CoreError> {
        let cached = self
            .inner
            .doctors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < ROLES_RECHECK)
            .map(|(_, d)| d.clone());
        if let Some(d) = cached {
            return Ok(d.as_ref().clone());
        }
        let generation = self
            .inner
            .roles_generation
            .load(std::sync::atomic::Ordering::SeqCst);
        let read_at = std::time::Instant::now();
        let mut out: Vec<Person> = self
            .inner
            .all(&self.inner.people)
            .await?
            .iter()
            .filter_map(|r| rows::open::<Person>(&self.inner.keys.current(), &self.inner.people, r))
            .filter(|p| p.roles.contains(careconnect_authz::Role::Doctor))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        // Not kept when this node changed the directory meanwhile.
        if generation
            == self
                .inner
                .roles_generation
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            *self
                .inner
                .doctors
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some((read_at, Arc::new(out.clone())));
        }
        Ok(out)
    }
}

impl Inner {
    /// Forgets every remembered stored role (after this node changed some).
    pub(crate) fn forget_roles(&self) {
        self.roles_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.roles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        *self.doctors.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The directory row of `user`.
    pub(crate) fn person_id(&self, user: &UserId) -> Result<RowId, CoreError> {
        self.keyed_id(&[b"person", &identity_bytes(user)])
    }
}

/// A keyring from the key store, made and stored on first use.
async fn stored_keyring(
    kms: &dyn Kms,
    keystore: &dyn KeyStore,
    kms_key: &KmsKeyId,
    name: &str,
) -> Result<(u64, Keyring), CoreError> {
    loop {
        match keystore.load(name).await {
            Ok((version, sealed)) => {
                let ring = Keyring::open_keyset(kms, &TrustedKeys::from(kms_key), &sealed).await?;
                return Ok((version, ring));
            }
            Err(StorageError::NotFound) => {
                let ring = Keyring::generate();
                let sealed = ring.seal_keyset(kms, kms_key).await?;
                match keystore.store(name, None, sealed).await {
                    Ok(version) => return Ok((version, ring)),
                    Err(StorageError::DuplicateId) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How far a key is in its life: a keyset may only move keys forward.
fn life(state: careconnect_crypto::KeyState) -> u8 {
    use careconnect_crypto::KeyState;
    match state {
        KeyState::Primary | KeyState::Active => 0,
        KeyState::Retired => 1,
        KeyState::Compromised => 2,
        _ => 3,
    }
}

/// Whether `next` drops a key `loaded` holds or moves one back in its life
/// (a destroyed key alive again, a compromised one active again): what an
/// old copy of the keyset put back in the database would do, undoing a
/// compromise rotation. Such a keyset is never loaded over `loaded`.
pub(crate) fn rolls_back(loaded: &Keyring, next: &Keyring) -> bool {
    loaded
        .keys()
        .any(|k| next.key(k.id).is_none_or(|n| life(n.state) < life(k.state)))
}

/// How long a node goes on acting on its clinic keyring without having
/// confirmed it against the stored keyset: `recheck` plus half of it (at
/// least 500 ms) for the re-read itself. Past it, nothing is audited, so
/// nothing is done ([`CoreError::KeyringStale`]). A rotation waits longer
/// than this ([`Clinic::reload_window`]) after each change it stores, so a
/// node that cannot re-read the keyset (database or KMS unreachable,
/// process paused) has stopped before the rotation relies on it.
pub(crate) fn keyring_lease(recheck: Duration) -> Duration {
    recheck + (recheck / 2).max(Duration::from_millis(500))
}

/// Re-reads the clinic keyset every [`ClinicConfig::keyring_recheck`] while
/// the clinic is open, so a data-key rotation stored by another process
/// reaches this one.
/// Reads start every interval (however long the last one took), and a
/// failed read is tried again after a quarter of it, so a passing blip does
/// not outlast the lease.
async fn watch_keyring(inner: std::sync::Weak<Inner>) {
    let mut wait = None;
    loop {
        let Some(every) = inner.upgrade().map(|i| i.keyring_recheck) else {
            return;
        };
        tokio::time::sleep(wait.unwrap_or(every)).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let started = std::time::Instant::now();
        wait = match inner.reload_keys().await {
            Ok(()) => Some(every.saturating_sub(started.elapsed())),
            Err(e) => {
                tracing::warn!(error = %e, "clinic keyset not re-read; keeping the keyring loaded");
                Some(every / 4)
            }
        };
    }
}

impl Inner {
    /// Loads the clinic keyset again if its stored version moved; either
    /// way the keyring is confirmed as of the read (it extends the lease,
    /// [`keyring_lease`]). A stored keyset refused as a rollback confirms it
    /// too: everything in it is older than what is loaded here.
    pub(crate) async fn reload_keys(&self) -> Result<(), CoreError> {
        let started = std::time::Instant::now();
        let (version, sealed) = self.keystore.load(CLINIC_KEYSET).await?;
        let loaded = *self
            .keys_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if version > loaded {
            let ring = Keyring::open_keyset(
                self.kms.as_ref(),
                &TrustedKeys::from(self.clinic_kms_key()),
                &sealed,
            )
            .await?;
            self.install_keys(version, ring, started);
        }
        self.keys.confirm(started);
        Ok(())
    }

    /// Makes `ring`, stored as version `version` of the clinic keyset, the
    /// keyring every service uses, unless a later version is in already or
    /// it would take a key back in its life (see [`rolls_back`]).
    pub(crate) fn install_keys(&self, version: u64, ring: Keyring, read_at: std::time::Instant) {
        let mut loaded = self
            .keys_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if version <= *loaded {
            return;
        }
        if rolls_back(&self.keys.current(), &ring) {
            tracing::error!(
                version,
                "stored clinic keyset takes a key back in its life (an old copy put back?): not loaded"
            );
            return;
        }
        *loaded = version;
        self.keys
            .replace_as_of(ring.with_provider(self.provider), read_at);
    }

    /// The KMS key wrapping the clinic keyset.
    pub(crate) fn clinic_kms_key(&self) -> &KmsKeyId {
        &self.clinic_key
    }

    /// A row, or `None`.
    pub(crate) async fn get(
        &self,
        coll: &Collection,
        id: &RowId,
    ) -> Result<Option<Row>, CoreError> {
        match self.store.get(coll, id).await {
            Ok(r) => Ok(Some(r)),
            Err(StorageError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every row of a collection, page by page.
    pub(crate) async fn all(&self, coll: &Collection) -> Result<Vec<Row>, CoreError> {
        let mut out = Vec::new();
        let mut pages = self.pages(coll, 1000);
        while let Some(rows) = pages.next().await? {
            out.extend(rows);
        }
        Ok(out)
    }

    /// A walk over `coll`, `limit` rows at a time, in id order.
    pub(crate) fn pages(&self, coll: &Collection, limit: usize) -> Pages<'_> {
        Pages {
            store: self.store.as_ref(),
            coll: coll.clone(),
            limit,
            after: None,
            done: false,
        }
    }

    /// The blind-index entry `name` for `user`: a keyed MAC, so the database
    /// shows which rows share a patient, never who it is.
    pub(crate) fn index(&self, name: &str, user: &UserId) -> Result<IndexEntry, CoreError> {
        let mut msg = name.as_bytes().to_vec();
        msg.push(0);
        msg.extend_from_slice(&identity_bytes(user));
        Ok(IndexEntry::new(name, self.index_key.tag(&msg).to_vec())?)
    }

    /// A row id derived from `parts` under the index key: deterministic (a
    /// slot, a payment), unlinkable without the key.
    pub(crate) fn keyed_id(&self, parts: &[&[u8]]) -> Result<RowId, CoreError> {
        let mut msg = b"row-id".to_vec();
        for p in parts {
            msg.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_be_bytes());
            msg.extend_from_slice(p);
        }
        Ok(RowId::new(hex::encode(&self.index_key.tag(&msg)[..20]))?)
    }

    /// The patient's pseudonym in FinCare: a keyed MAC of the
    /// identity under a key only this function uses. Stable, not reversible.
    pub(crate) fn pseudonym(&self, patient: &UserId) -> String {
        pseudonym_with(&self.pseudonym_key, patient)
    }

    /// How the audit log names `patient` (as the access gate does).
    pub(crate) fn audit_name(&self, patient: &UserId) -> String {
        format!("patient:{}", pseudonym_with(&self.audit_names, patient))
    }

    /// `value` sealed as field `field` of row `id` under the patient's keys.
    pub(crate) fn seal_for<T: Serialize>(
        keys: &Keyring,
        coll: &Collection,
        id: &RowId,
        field: &str,
        value: &T,
    ) -> Result<Vec<u8>, CoreError> {
        rows::seal_json(keys, &field_context(coll, id, field), value)
    }

    /// The value of field `field` of row `id`, or `None` when it does not
    /// open (forged, moved, altered, a compromised key).
    pub(crate) fn open_for<T: DeserializeOwned>(
        keys: &Keyring,
        coll: &Collection,
        id: &RowId,
        field: &str,
        envelope: &[u8],
    ) -> Option<T> {
        rows::open_json(keys, &field_context(coll, id, field), envelope, coll, id)
    }

    /// Row data for a patient row: sealed under `keys`, key id from the
    /// keyring, with `indexes`.
    pub(crate) fn patient_row<T: Serialize>(
        keys: &Keyring,
        coll: &Collection,
        id: &RowId,
        field: &str,
        value: &T,
        indexes: Vec<IndexEntry>,
    ) -> Result<RowData, CoreError> {
        Ok(RowData {
            key_id: keys.primary().get(),
            envelope: Self::seal_for(keys, coll, id, field, value)?,
            indexes,
        })
    }

    /// [`Inner::decide`] on the system itself ([`careconnect_authz::Resource::System`]):
    /// audited either way; a denial is the error.
    pub(crate) async fn decide_system(
        &self,
        who: &Principal,
        action: careconnect_authz::Action,
        what: String,
    ) -> Result<(), CoreError> {
        self.decide(who, action, &careconnect_authz::Resource::System, what)
            .await
            .map(drop)
    }

    /// Audits a decision on something that is not one patient's data
    /// (finance, directory, administration) and turns a denial into an error.
    pub(crate) async fn decide(
        &self,
        who: &Principal,
        action: careconnect_authz::Action,
        resource: &careconnect_authz::Resource<'_>,
        audited_as: String,
    ) -> Result<careconnect_authz::Basis, CoreError> {
        let decision = careconnect_authz::authorize(who, action, resource);
        let mut event = AuditEvent::by(
            who,
            action.to_string(),
            audited_as,
            if decision.is_allowed() {
                Outcome::Allowed
            } else {
                Outcome::Denied
            },
        );
        if decision.is_admin_override() {
            event = event.flagged(crate::audit::Flag::AdminOverride);
        }
        self.audit.record(event).await?;
        match decision {
            careconnect_authz::Decision::Allow(b) => Ok(b),
            careconnect_authz::Decision::Deny(r) => Err(CoreError::Denied(r)),
        }
    }

    /// As [`Inner::decide`] for a thing named by an id from the request: a
    /// denial is audited as such but reported as [`CoreError::NotFound`],
    /// so an id the principal may not see looks like one that does not
    /// exist.
    pub(crate) async fn decide_hidden(
        &self,
        who: &Principal,
        action: careconnect_authz::Action,
        resource: &careconnect_authz::Resource<'_>,
        audited_as: String,
    ) -> Result<careconnect_authz::Basis, CoreError> {
        match self.decide(who, action, resource, audited_as).await {
            Err(CoreError::Denied(_)) => Err(CoreError::NotFound),
            other => other,
        }
    }

    /// Records a refusal that happened before the policy was asked (an id
    /// that names nothing the principal may see).
    pub(crate) async fn refuse(
        &self,
        who: &Principal,
        action: careconnect_authz::Action,
        resource: String,
    ) -> Result<(), CoreError> {
        self.audit
            .record(AuditEvent::by(
                who,
                action.to_string(),
                resource,
                Outcome::Denied,
            ))
            .await?;
        Ok(())
    }

    /// Now, Unix seconds.
    pub(crate) fn now(&self) -> u64 {
        self.clock.now()
    }
}
