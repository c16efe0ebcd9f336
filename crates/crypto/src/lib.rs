//! Envelope encryption for health data.
//!
//! `careconnect-crypto` seals records and documents so that storage only
//! ever sees ciphertext bound to its place:
//!
//! - **Suites**: AES-256-GCM and ChaCha20-Poly1305, behind a small
//!   [`CryptoProvider`] trait: RustCrypto, `ring` (feature `ring`) and
//!   `aws-lc-rs` (feature `aws-lc`); [`default_provider`] is the fastest of
//!   those compiled in, measured once at first use.
//! - **Per-message keys** from HKDF-SHA256 over the data key and a random
//!   256-bit salt, with a **key commitment** checked in constant time first.
//! - **Context binding**: an [`EncryptionContext`] (collection, record,
//!   field...) is authenticated, so a ciphertext moved elsewhere fails to open.
//! - **One versioned format** (`docs/envelope-format.md`) for records (one
//!   shot) and documents (chunked STREAM over `std::io`, constant memory).
//! - **Keys**: a [`Kms`] trait with the embedded [`LocalKms`], and a
//!   [`Keyring`] of versioned data keys persisted sealed under a KMS key.
//! - **TLS** (feature `tls`, default): rustls configurations that are TLS 1.3
//!   only with the seed's suites, the post-quantum hybrid X25519MLKEM768 first
//!   (feature `aws-lc`), mTLS, PEM loading, reload without restart and a
//!   development PKI; see the `tls` module.
//!
//! # Example
//!
//! ```
//! use careconnect_crypto::{EncryptionContext, Keyring, KmsKeyId, LocalKms, RootSecret};
//!
//! # async fn run() -> Result<(), careconnect_crypto::Error> {
//! let dir = tempfile::tempdir()?;
//! // The embedded KMS; in production the root secret comes from the
//! // environment (`RootSecret::from_env`) or a key file outside the data dir.
//! let kms = LocalKms::open_or_create(dir.path().join("kms.bin"), RootSecret::generate())?;
//! let kek = KmsKeyId::new("clinic-records")?;
//! kms.ensure_key(&kek)?;
//!
//! // A keyring of data keys, stored sealed under the KMS key.
//! let ring = Keyring::generate();
//! let stored = ring.seal_keyset(&kms, &kek).await?;
//!
//! // Seal a record bound to where it lives; open it with the same context.
//! let ring = Keyring::open_keyset(&kms, &(&kek).into(), &stored).await?;
//! let ctx = EncryptionContext::new().with("collection", "health_records").with("record", "42");
//! let sealed = ring.seal(&ctx, b"allergies: penicillin")?;
//! assert_eq!(ring.open(&sealed, &ctx)?.plaintext, b"allergies: penicillin");
//!
//! // Moved to another record, it does not open.
//! let elsewhere = EncryptionContext::new().with("collection", "health_records").with("record", "43");
//! assert!(ring.open(&sealed, &elsewhere).is_err());
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod context;
pub mod document;
pub mod envelope;
mod error;
pub mod format;
mod fsutil;
mod key;
mod keyring;
pub mod kms;
pub mod mac;
pub mod provider;
mod rng;
mod suite;
#[cfg(feature = "tls")]
pub mod tls;

pub use context::{
    EncryptionContext, MAX_CONTEXT_ENTRIES, MAX_CONTEXT_KEY_LEN, MAX_CONTEXT_VALUE_LEN,
};
pub use error::{Error, FormatError, KmsError, Misuse};
pub use key::{COMMITMENT_LEN, DataKey, KeyId, SALT_LEN};
pub use keyring::{
    KeyInfo, KeyState, Keyring, Opened, OpenedInPlace, RECORD_HEADER_LEN, SharedKeyring,
};
pub use kms::{
    KeyDescription, Kms, KmsKeyId, LocalKms, ROOT_SECRET_ENV, RootSecret, TrustedKeys, WrappedKey,
};
pub use provider::{CryptoProvider, default_provider};
pub use suite::{KEY_LEN, NONCE_LEN, Suite, TAG_LEN};
