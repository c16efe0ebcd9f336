//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong in authentication and authorization. No
/// variant carries a token, code, secret or session id.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AuthzError {
    /// A role name that is not one of the five.
    #[error("unknown role {0:?}")]
    UnknownRole(String),
    /// An issuer or subject that is empty, too long or has control characters.
    #[error("invalid {0} in user identity")]
    InvalidIdentity(&'static str),
    /// The role-mapper configuration could not be read.
    #[error("role mapping configuration: {0}")]
    Config(String),
    /// The storage layer failed.
    #[error("storage: {0}")]
    Storage(#[from] careconnect_storage::StorageError),
    /// A session cookie that is not 64 hex characters.
    #[error("malformed session id")]
    MalformedSessionId,
    /// Too much in progress (e.g. pending logins): try again later.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// The operating system's random generator failed.
    #[error("no randomness available")]
    Random,
    /// Login with the identity provider failed.
    #[cfg(feature = "oidc")]
    #[error(transparent)]
    Oidc(#[from] crate::oidc::OidcError),
    /// Sealing or opening a stored row or a login cookie failed for a
    /// reason other than a forgery (which reads as "no such row").
    #[error("crypto: {0}")]
    Crypto(#[from] careconnect_crypto::Error),
    /// A UDAP registration or client authentication failed.
    #[cfg(feature = "udap")]
    #[error(transparent)]
    Udap(#[from] crate::udap::UdapError),
    /// Stored data (a session, an assignment) did not decode.
    #[error("stored {0} is corrupt")]
    Corrupt(&'static str),
}
