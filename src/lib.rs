//! careconnect: secure building blocks for health-data applications.
//!
//! This facade re-exports the layer crates so embedders depend on one crate:
//!
//! - [`crypto`]: AEAD suites, HKDF, the envelope format, KMS, keyrings, TLS.
//! - [`storage`]: storage traits and backends for sealed rows, audit log, key material.
//! - [`authz`]: roles, the access policy, role mapping, sessions, OpenID Connect login.
//! - [`core`]: the clinic's domain layer: the `Clinic` and its services
//!   (MedRecords, CareConnect, EPS, FinCare, administration), the
//!   tamper-evident audit log, break-glass and erasure.
//!
//! ```
//! use careconnect::crypto::{EncryptionContext, Keyring};
//! # fn main() -> Result<(), careconnect::crypto::Error> {
//! let ring = Keyring::generate();
//! let ctx = EncryptionContext::new().with("record", "1");
//! let sealed = ring.seal(&ctx, b"note")?;
//! assert_eq!(ring.open(&sealed, &ctx)?.plaintext, b"note");
//! # Ok(()) }
//! ```

pub use careconnect_authz as authz;
pub use careconnect_core as core;
pub use careconnect_crypto as crypto;
pub use careconnect_storage as storage;
