//! The crate's error type.

use std::fmt;

/// Everything that can go wrong in `careconnect-crypto`.
///
/// Two variants cover a ciphertext that does not open:
/// [`Error::CommitmentMismatch`] (the data key is not the one the envelope was
/// sealed under; checked before any decryption, from public header bytes and
/// the key alone) and [`Error::DecryptionFailed`] (authentication failed:
/// wrong context or tampered bytes). Neither says more than that.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a well-formed envelope, keyset or KMS file.
    #[error("malformed input: {0}")]
    Format(#[from] FormatError),
    /// The key commitment in the header does not match the data key: the
    /// envelope was sealed under another key, or its header was altered.
    #[error("key commitment mismatch")]
    CommitmentMismatch,
    /// Authentication failed: wrong encryption context, or tampered,
    /// truncated, reordered or extended ciphertext.
    #[error("decryption failed")]
    DecryptionFailed,
    /// The envelope names a data key that the keyring does not hold.
    #[error("unknown data key {0}")]
    UnknownKey(crate::KeyId),
    /// The data key was destroyed; nothing sealed under it can be opened again.
    #[error("data key {0} was destroyed")]
    KeyDestroyed(crate::KeyId),
    /// A KMS operation failed, or the envelope names a KMS key the caller does not trust.
    #[error("kms: {0}")]
    Kms(#[from] KmsError),
    /// The envelope asks for more than this reader agreed to allocate (a
    /// larger chunk or longer associated data than its
    /// [`crate::document::OpenOptions`] allow). Refused before allocating.
    #[error("{what} of {len} bytes exceeds this reader's limit of {max}")]
    LimitExceeded {
        /// What was too large: `"chunk size"` or `"associated data"`.
        what: &'static str,
        /// The size the envelope or context asked for.
        len: usize,
        /// The reader's limit.
        max: usize,
    },
    /// A shared keyring has gone unconfirmed against its stored keyset for
    /// longer than its lease ([`crate::SharedKeyring::set_lease`]): nothing
    /// is sealed with it until it is confirmed again, as another process
    /// may have replaced the key it would seal under.
    #[error("keyring not confirmed within its lease")]
    KeyringStale,
    /// The API was used in a way that cannot be right (see the message).
    #[error("misuse: {0}")]
    Misuse(Misuse),
    /// Reading or writing the underlying stream or file failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration or certificate handling failed.
    #[cfg(feature = "tls")]
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// A malformed envelope, keyset or key file. Returned by every parser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The magic bytes do not match.
    #[error("bad magic bytes")]
    BadMagic,
    /// The format version is not one this build understands.
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    /// The suite id is not one this build understands.
    #[error("unknown suite id {0:#04x}")]
    UnknownSuite(u8),
    /// A field has a value outside its allowed set.
    #[error("invalid {field}: {value}")]
    InvalidField {
        /// The field's name in the specification.
        field: &'static str,
        /// The offending value.
        value: u64,
    },
    /// A length field is larger than the specification allows.
    #[error("{field} too long: {len} bytes, at most {max}")]
    FieldTooLong {
        /// The field's name in the specification.
        field: &'static str,
        /// The length found.
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// The input ended before the structure was complete.
    #[error("truncated input")]
    Truncated,
    /// Bytes remained after a complete structure.
    #[error("trailing bytes after a complete structure")]
    TrailingBytes,
}

/// A KMS operation failed. A remote KMS's own answer is kept as the `source()`
/// (`None` for the local KMS, whose errors say everything themselves); it
/// never holds key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The KMS has no key with that id.
    #[error("key not found: {key}")]
    KeyNotFound {
        /// The key id, ARN or alias asked for.
        key: String,
        /// What the KMS answered, when it is a remote service.
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The key (or the key version a wrapped key names) is disabled, pending
    /// deletion or destroyed.
    #[error("key unusable: {reason}")]
    KeyUnusable {
        /// Which key and why, without key material.
        reason: String,
        /// What the KMS answered, when it is a remote service.
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The wrapped data key did not unwrap under this key and context.
    #[error("wrapped key did not unwrap")]
    UnwrapFailed {
        /// What the KMS answered, when it is a remote service.
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The envelope names a KMS key that is not among the keys the caller
    /// trusts ([`crate::kms::TrustedKeys`]). Refused before any KMS call.
    #[error("kms key not trusted: {key}")]
    UntrustedKey {
        /// The key name found in the envelope (printable ASCII, at most 255 bytes).
        key: String,
    },
    /// The caller is not allowed to use the key.
    #[error("access denied")]
    AccessDenied {
        /// What the KMS answered.
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The KMS asked us to slow down.
    #[error("throttled")]
    Throttled {
        /// What the KMS answered.
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The KMS could not be reached or did not answer in time.
    #[error("kms unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A local KMS holds as many keys, or a key as many versions, as its
    /// file format can carry; nothing was changed.
    #[error("local kms full: at most {max} {what}")]
    LimitReached {
        /// `"keys"` or `"versions per key"`.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// This KMS cannot do what was asked (see the message).
    #[error("not supported by this kms: {0}")]
    Unsupported(&'static str),
    /// The root secret that protects a local KMS is missing or malformed.
    #[error("root secret: {0}")]
    RootSecret(&'static str),
    /// Any other failure reported by the KMS.
    #[error("kms failure")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl KmsError {
    /// `KeyNotFound` for `key`, with no further cause.
    pub(crate) fn key_not_found(key: impl ToString) -> Self {
        Self::KeyNotFound {
            key: key.to_string(),
            cause: None,
        }
    }

    /// `KeyUnusable` for `reason`, with no further cause.
    pub(crate) fn key_unusable(reason: impl Into<String>) -> Self {
        Self::KeyUnusable {
            reason: reason.into(),
            cause: None,
        }
    }

    /// `UnwrapFailed`, with no further cause.
    pub(crate) const fn unwrap_failed() -> Self {
        Self::UnwrapFailed { cause: None }
    }
}

/// A way of using the API that cannot be right.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Misuse {
    /// The primary key cannot be marked compromised or destroyed; rotate first.
    PrimaryKey(crate::KeyId),
    /// A destroyed key cannot change state again.
    AlreadyDestroyed(crate::KeyId),
    /// A compromised key can only be destroyed.
    Compromised(crate::KeyId),
    /// A keyring holds as many keys as its format allows (destroyed keys
    /// count too); nothing was changed.
    KeyringFull(usize),
    /// An earlier call on this document writer or reader failed; it stays
    /// failed, because continuing could reuse a nonce or pass off a partial
    /// document as whole.
    StreamFailed,
    /// A chunk size outside the allowed range was requested.
    ChunkSize(usize),
    /// A KMS key name that is empty, too long or not printable ASCII.
    KmsKeyName,
    /// The encryption context has an empty key, too many entries or a too long value.
    Context(&'static str),
    /// A record or field longer than the format can carry.
    TooLong,
    /// The envelope was sealed for the other form (record vs document).
    WrongForm,
    /// The envelope's key reference is not the kind this opener handles.
    WrongKeyReference,
    /// A key shorter than the minimum was supplied.
    WeakKey,
    /// A MAC tag of a length that cannot be verified safely.
    TagLength(usize),
    /// A KMS rotation period outside the range the service accepts.
    RotationPeriod,
    /// Only an `Active` key can become the primary.
    NotActive(crate::KeyId),
}

impl fmt::Display for Misuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PrimaryKey(id) => write!(f, "data key {id} is the primary; rotate first"),
            Self::AlreadyDestroyed(id) => write!(f, "data key {id} is already destroyed"),
            Self::Compromised(id) => {
                write!(f, "data key {id} is compromised; it can only be destroyed")
            }
            Self::KeyringFull(max) => write!(f, "a keyring holds at most {max} keys"),
            Self::StreamFailed => {
                f.write_str("an earlier call on this stream failed; it cannot be used again")
            }
            Self::ChunkSize(n) => {
                write!(f, "chunk size {n} is not a power of two in 4 KiB..=16 MiB")
            }
            Self::KmsKeyName => f.write_str("kms key names are 1 to 255 printable ascii bytes"),
            Self::Context(why) => write!(f, "encryption context: {why}"),
            Self::TooLong => f.write_str("input longer than the format allows"),
            Self::WrongForm => f.write_str("envelope is of the other form (record vs document)"),
            Self::WrongKeyReference => f.write_str("envelope key reference is of another kind"),
            Self::WeakKey => f.write_str("key shorter than 128 bits"),
            Self::TagLength(n) => write!(f, "mac tag of {n} bytes; 16 to 32 are accepted"),
            Self::RotationPeriod => write!(f, "kms rotation period outside 90 to 2560 days"),
            Self::NotActive(id) => {
                write!(
                    f,
                    "data key {id} is not active; only an active key can become primary"
                )
            }
        }
    }
}

impl From<Misuse> for Error {
    fn from(m: Misuse) -> Self {
        Self::Misuse(m)
    }
}
