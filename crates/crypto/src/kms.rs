//! Key management: the [`Kms`] trait and the embedded [`LocalKms`].
//!
//! A KMS holds key-encryption keys (KEKs) that never leave it. It hands out
//! data keys (DEKs) twice: once in the clear, to use and drop, and once
//! wrapped under a KEK, to store beside the data.

use std::fmt;

use async_trait::async_trait;

use crate::context::EncryptionContext;
use crate::error::{Error, Misuse};
use crate::format::{MAX_WRAPPED_LEN, check_kms_key};
use crate::key::DataKey;

#[cfg(feature = "aws-kms")]
mod aws;
mod cache;
mod local;

#[cfg(feature = "aws-kms")]
pub use aws::{AwsKms, AwsKmsConfig, ROTATION_PERIOD_DAYS};
pub use cache::{CacheLimits, CacheStats, CachingKms};
#[doc(hidden)]
pub use local::decode_table_for_fuzzing;
pub use local::{LocalKms, ROOT_SECRET_ENV, RootSecret};

/// The name of a KMS key: a key id, ARN or alias; 1 to 255 printable ASCII bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KmsKeyId(String);

impl KmsKeyId {
    /// Validates and wraps a key name.
    ///
    /// # Errors
    ///
    /// [`Misuse::KmsKeyName`] when empty, longer than 255 bytes or not printable ASCII.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        check_kms_key(name.as_bytes()).map_err(|_| Misuse::KmsKeyName)?;
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KmsKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KmsKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KmsKeyId({})", self.0)
    }
}

/// The KMS keys a reader trusts to have wrapped the data keys it opens.
///
/// The KMS key named in an envelope header was chosen by whoever wrote the
/// bytes. Someone who can write to storage could point a header at a KMS key
/// they control that the reader's credentials may also call, wrap a data key
/// of their own choosing, and forge an envelope for any row. Opening a
/// document or a sealed keyset therefore takes the set of keys the caller
/// trusts and refuses any other with [`crate::KmsError::UntrustedKey`] before
/// the KMS is called (the AWS Encryption SDK's "strict mode").
///
/// Names are compared byte for byte, exactly as written in the header: an
/// alias and the ARN of the same key are different names. List every name
/// your writers use. An empty set trusts nothing.
///
/// ```
/// use careconnect_crypto::kms::{KmsKeyId, TrustedKeys};
/// let kek = KmsKeyId::new("alias/clinic-documents")?;
/// let trusted = TrustedKeys::from(kek.clone());
/// assert!(trusted.contains("alias/clinic-documents"));
/// assert!(!trusted.contains("alias/Clinic-Documents"));
/// # Ok::<(), careconnect_crypto::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys(Vec<KmsKeyId>);

impl TrustedKeys {
    /// Trusts exactly `keys`.
    pub fn new(keys: impl IntoIterator<Item = KmsKeyId>) -> Self {
        let mut v: Vec<KmsKeyId> = keys.into_iter().collect();
        v.sort();
        v.dedup();
        Self(v)
    }

    /// Whether `name` is trusted (exact, byte-for-byte comparison).
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|k| k.as_str() == name)
    }

    /// The trusted keys, in byte order.
    pub fn iter(&self) -> impl Iterator<Item = &KmsKeyId> {
        self.0.iter()
    }

    /// The trusted key called `name`, or [`crate::KmsError::UntrustedKey`].
    pub(crate) fn check(&self, name: &str) -> Result<KmsKeyId, Error> {
        match self.0.iter().find(|k| k.as_str() == name) {
            Some(k) => Ok(k.clone()),
            None => {
                tracing::warn!(key = name, "envelope names an untrusted kms key");
                Err(crate::KmsError::UntrustedKey {
                    key: name.to_owned(),
                }
                .into())
            }
        }
    }
}

impl From<KmsKeyId> for TrustedKeys {
    fn from(key: KmsKeyId) -> Self {
        Self(vec![key])
    }
}

impl From<&KmsKeyId> for TrustedKeys {
    fn from(key: &KmsKeyId) -> Self {
        Self(vec![key.clone()])
    }
}

impl FromIterator<KmsKeyId> for TrustedKeys {
    fn from_iter<I: IntoIterator<Item = KmsKeyId>>(iter: I) -> Self {
        Self::new(iter)
    }
}

/// A data key wrapped by a KMS key: opaque bytes that only the KMS can open.
/// Not secret; at most 1024 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(Vec<u8>);

impl WrappedKey {
    /// Wraps bytes a KMS returned.
    ///
    /// # Errors
    ///
    /// [`Misuse::TooLong`] when empty or longer than 1024 bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Self, Error> {
        if bytes.is_empty() || bytes.len() > MAX_WRAPPED_LEN {
            return Err(Misuse::TooLong.into());
        }
        Ok(Self(bytes))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

/// What a KMS says about one of its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyDescription {
    /// The key's name.
    pub key: KmsKeyId,
    /// The version new data keys are wrapped under.
    pub current_version: u32,
    /// Versions that can still unwrap.
    pub enabled_versions: Vec<u32>,
    /// Versions destroyed for good.
    pub destroyed_versions: Vec<u32>,
    /// When the current version was made, Unix seconds, where the KMS says
    /// (the local KMS does; AWS KMS rotates on its own schedule).
    pub current_since: Option<u64>,
}

/// A key's rotation schedule, where the KMS keeps one and rotates the key by
/// itself (AWS KMS: `GetKeyRotationStatus`). Rotation never stops old
/// wrapped keys from opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationSchedule {
    /// Whether the KMS rotates the key on a schedule.
    pub enabled: bool,
    /// Days between rotations, when the server reports it.
    pub period_days: Option<u32>,
    /// The next scheduled rotation, seconds since the Unix epoch, when known.
    pub next_rotation_unix: Option<i64>,
}

/// A key management service. Implementations: [`LocalKms`] here, AWS KMS in
/// its own feature.
///
/// `ctx` is bound to every wrapped key: unwrapping with another context fails.
#[async_trait]
pub trait Kms: Send + Sync + fmt::Debug {
    /// A fresh data key, in the clear and wrapped under `key`'s current version.
    ///
    /// # Errors
    ///
    /// [`crate::KmsError`] variants: unknown key, unusable key, KMS unreachable.
    async fn generate_data_key(
        &self,
        key: &KmsKeyId,
        ctx: &EncryptionContext,
    ) -> Result<(DataKey, WrappedKey), Error>;

    /// Unwraps a data key wrapped under `key` (any still-enabled version).
    ///
    /// # Errors
    ///
    /// [`crate::KmsError::UnwrapFailed`] for a wrong context or tampered
    /// bytes; [`crate::KmsError::KeyUnusable`] for a destroyed version.
    async fn decrypt(
        &self,
        key: &KmsKeyId,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, Error>;

    /// Re-wraps a data key from `from` to the current version of `to`,
    /// without the data key leaving the KMS (where the KMS allows it).
    ///
    /// # Errors
    ///
    /// As [`Kms::decrypt`] and [`Kms::generate_data_key`].
    async fn re_encrypt(
        &self,
        from: &KmsKeyId,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
        to: &KmsKeyId,
    ) -> Result<WrappedKey, Error>;

    /// Adds a new version of `key`; new data keys are wrapped under it, old
    /// versions keep unwrapping.
    ///
    /// # Errors
    ///
    /// Unknown key or KMS failure.
    async fn rotate(&self, key: &KmsKeyId) -> Result<KeyDescription, Error>;

    /// Describes `key`.
    ///
    /// # Errors
    ///
    /// Unknown key or KMS failure.
    async fn describe(&self, key: &KmsKeyId) -> Result<KeyDescription, Error>;

    /// Destroys one version of `key` for good: what it wrapped never unwraps
    /// again (crypto-shredding). The current version cannot be destroyed.
    /// Not every KMS can: AWS KMS keeps every backing key of a key until the
    /// whole key is deleted.
    ///
    /// # Errors
    ///
    /// [`crate::KmsError::Unsupported`] by default; unknown key or version,
    /// the current version, KMS failure.
    async fn destroy_version(&self, key: &KmsKeyId, version: u32) -> Result<KeyDescription, Error> {
        let _ = (key, version);
        Err(crate::KmsError::Unsupported("destroying a single key version").into())
    }

    /// The schedule on which the KMS rotates `key` by itself, for a KMS
    /// that keeps one (AWS KMS); `None` (the default) for a KMS whose keys
    /// get a new version only when asked ([`Kms::rotate`]), such as
    /// [`LocalKms`]: there the caller keeps the schedule.
    ///
    /// # Errors
    ///
    /// Unknown key or KMS failure.
    async fn rotation_schedule(&self, key: &KmsKeyId) -> Result<Option<RotationSchedule>, Error> {
        let _ = key;
        Ok(None)
    }

    /// Asks the KMS to rotate `key` by itself every `period_days`, and
    /// returns the schedule it then reports.
    ///
    /// # Errors
    ///
    /// [`crate::KmsError::Unsupported`] by default (the caller rotates, see
    /// [`Kms::rotation_schedule`]); [`Misuse::RotationPeriod`] for a period
    /// the KMS refuses; unknown key, KMS failure.
    async fn schedule_rotation(
        &self,
        key: &KmsKeyId,
        period_days: u32,
    ) -> Result<RotationSchedule, Error> {
        let _ = (key, period_days);
        Err(crate::KmsError::Unsupported("a rotation schedule kept by the KMS").into())
    }

    /// Whether [`Kms::destroy_version`] works here, so a caller can refuse
    /// up front, before it changes anything, a job that ends by destroying
    /// a version (an erasure). Default `false`.
    fn can_destroy_versions(&self) -> bool {
        false
    }

    /// The version of the KMS key that wrapped `wrapped`, where the KMS's
    /// wrapped form says (the local KMS's does; AWS KMS keeps it inside
    /// its opaque ciphertext). A caller about to destroy a version checks
    /// with this that nothing it keeps is still wrapped under it. Default
    /// `None`: unknown.
    fn version_of(&self, wrapped: &WrappedKey) -> Option<u32> {
        let _ = wrapped;
        None
    }
}
