//! The clinic's domain layer.
//!
//! Every rule of St John's Clinic lives here, on the layers below it:
//! `careconnect-authz` decides who may do what, `careconnect-crypto` seals
//! every piece of patient data, `careconnect-storage` keeps the sealed rows.
//! The web demo and the rotation tool only translate HTTP and CLI into calls
//! of this crate.
//!
//! A [`Clinic`] is opened from a [`ClinicConfig`] (storage URL, KMS, key
//! names, role rules, hours) and hands out one service per subsystem:
//! [`Clinic::records`] (MedRecords), [`Clinic::patients`] (CareConnect),
//! [`Clinic::eps`] (prescriptions), [`Clinic::finance`] (FinCare) and
//! [`Clinic::admin`]. Every call takes the acting
//! [`Principal`](careconnect_authz::Principal), asks the policy, and writes
//! an event to the tamper-evident [`audit`] log before it returns. Each
//! piece of patient data is sealed under that patient's own keyring
//! ([`subjects`], for erasure by crypto-shredding) and bound to its
//! collection, row and field; lookups go through keyed blind indexes.
//!
//! # Example
//!
//! ```
//! # async fn demo() -> Result<(), careconnect_core::CoreError> {
//! use careconnect_authz::{Principal, Role, UserId};
//! use careconnect_core::eps::{PrescriptionInput, SignatureStatus};
//! use careconnect_core::records::PatientDetails;
//! use careconnect_core::{Clinic, ClinicConfig, CoreError};
//!
//! let dir = tempfile::tempdir()?;
//! // SQLite file, local KMS and audit anchor under `dir`.
//! let clinic = Clinic::open(ClinicConfig::embedded(dir.path())?).await?;
//! let user = |s: &str, r: Role| -> Result<Principal, CoreError> {
//!     Ok(Principal::new(UserId::new("https://idp.example", s)?, [r].into_iter().collect()))
//! };
//! let (admin, doctor, alice) = (
//!     user("adam", Role::Admin)?,
//!     user("grey", Role::Doctor)?,
//!     user("alice", Role::Patient)?,
//! );
//! let details = PatientDetails {
//!     name: "Alice Smith".into(),
//!     date_of_birth: "1984-03-12".into(),
//!     blood_type: "A+".into(),
//!     allergies: vec!["penicillin".into()],
//! };
//! clinic.records().register(&admin, &alice.user, &details).await?;
//!
//! // Not in Dr Grey's care yet: refused, and the refusal is audited.
//! assert!(matches!(
//!     clinic.records().record(&doctor, &alice.user).await,
//!     Err(CoreError::Denied(_))
//! ));
//! clinic.admin().assign_care(&admin, &doctor.user, &alice.user).await?;
//! clinic.records().add_note(&doctor, &alice.user, "Mild asthma.", None).await?;
//! let rx = PrescriptionInput {
//!     drug: "Salbutamol".into(),
//!     dosage: "100 micrograms".into(),
//!     frequency: "as needed".into(),
//!     notes: String::new(),
//! };
//! let p = clinic.eps().prescribe(&doctor, &alice.user, &rx).await?;
//! assert_eq!(p.signature, SignatureStatus::Valid);
//!
//! // Alice pays her prescription: one atomic step, one pseudonymous transaction.
//! let tx = clinic.patients().pay(&alice, &p.id).await?;
//! assert!(tx.pseudonym.starts_with("P-"));
//! assert_eq!(clinic.records().record(&alice, &alice.user).await?.notes.len(), 1);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

pub mod access;
pub mod admin;
pub mod audit;
pub mod clinic;
pub mod config;
pub mod disclosures;
pub mod eps;
mod error;
pub mod finance;
pub mod medicloud;
pub mod patients;
mod recent;
pub mod records;
pub mod rotation;
mod rows;
pub mod seed;
pub mod subjects;
#[cfg(feature = "udap")]
pub mod udap;

pub use clinic::{BlobConfig, Clinic, ClinicConfig, ClinicHours, KmsConfig};
pub use error::CoreError;
