//! The clinic's domain layer.
//!
//! Every rule of St John's Clinic lives here, on the layers below it:
//! `careconnect-authz` decides who may do what, `careconnect-crypto` seals
//! every piece of patient data, `careconnect-storage` keeps the sealed rows.
//! The web demo and the rotation tool only translate HTTP and CLI into calls
//! of this crate.
//!
//! So far: the tamper-evident audit log ([`audit`]) and the one door to a
//! patient's clinical data ([`access`]: care relationships, break-glass,
//! policy and audit in one call). The clinic's services follow.
//!
//! # Example
//!
//! ```
//! # async fn demo() -> Result<(), careconnect_core::CoreError> {
//! use std::sync::Arc;
//! use careconnect_core::audit::{Anchor, AuditEvent, AuditTrail, Verification};
//! use careconnect_crypto::Keyring;
//! use careconnect_storage::MemoryStore;
//!
//! let dir = tempfile::tempdir()?;
//! let trail = AuditTrail::new(
//!     Arc::new(MemoryStore::new()),
//!     Keyring::generate(),
//!     Anchor::at(dir.path().join("audit.anchor")),
//! );
//! trail.record(AuditEvent::system("seed", "clinic:st-johns")).await?;
//! assert_eq!(trail.verify().await?, Verification::Intact { entries: 1 });
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

pub mod access;
pub mod admin;
pub mod audit;
pub mod clinic;
pub mod eps;
mod error;
pub mod finance;
pub mod patients;
pub mod records;
mod rows;
pub mod seed;
pub mod subjects;

pub use clinic::{Clinic, ClinicConfig, ClinicHours, KmsConfig};
pub use error::CoreError;
