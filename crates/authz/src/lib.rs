//! Who may do what in careconnect: roles, a deny-by-default policy, a role
//! mapper, server-side sessions and OpenID Connect login.
//!
//! ```
//! use careconnect_authz::{authorize, Action, Decision, Principal, Resource, Role, UserId};
//! let doctor = UserId::new("https://idp.example", "dr-grey").unwrap();
//! let patient = UserId::new("https://idp.example", "p-17").unwrap();
//! let p = Principal::new(doctor.clone(), [Role::Doctor].into_iter().collect());
//! let rx = Resource::Prescription { patient: &patient, prescriber: &doctor };
//! assert!(authorize(&p, Action::CancelPrescription, &rx).is_allowed());
//! // Finance never reaches clinical data.
//! let f = Principal::new(doctor, [Role::Finance].into_iter().collect());
//! assert!(!authorize(&f, Action::ReadHealthRecord, &Resource::patient(&patient)).is_allowed());
//! ```

mod cookie;
#[cfg(feature = "dev-issuer")]
pub mod dev_issuer;
mod error;
pub mod mapper;
#[cfg(feature = "oidc")]
pub mod oidc;
#[cfg(feature = "oidc")]
mod pending;
pub mod policy;
mod principal;
mod rows;
pub mod session;
mod text;
#[cfg(feature = "udap")]
pub mod udap;

pub use error::AuthzError;
pub use policy::{Action, Basis, Care, Decision, DenyReason, Resource, ResourceKind, authorize};
pub use principal::{Principal, Role, RoleSet, UserId};
pub use rows::row_context;
pub use text::{is_bidi_control, is_invisible};
