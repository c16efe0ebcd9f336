//! What a UDAP request can be refused for, as the wire error it becomes.

use thiserror::Error;

/// Why a UDAP registration, client authentication or configuration failed.
///
/// Every variant that answers a request carries a fixed description written
/// for the client: it says which rule was broken, never a certificate, a key,
/// a token or an internal cause. [`UdapError::code`] gives the OAuth error
/// code (RFC 7591 for registration, RFC 6749 for the token endpoint) and
/// [`UdapError::status`] the HTTP status.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum UdapError {
    /// The software statement is not a valid, correctly signed JWT with the
    /// claims UDAP requires (RFC 7591 `invalid_software_statement`).
    #[error("invalid software statement: {0}")]
    InvalidSoftwareStatement(&'static str),
    /// The statement is well formed but not trusted here: its certificate
    /// does not chain to this community, has expired or was revoked
    /// (RFC 7591 `unapproved_software_statement`).
    #[error("unapproved software statement: {0}")]
    UnapprovedSoftwareStatement(&'static str),
    /// A metadata value is missing or not allowed (RFC 7591
    /// `invalid_client_metadata`).
    #[error("invalid client metadata: {0}")]
    InvalidClientMetadata(&'static str),
    /// A redirect URI is missing or not allowed (RFC 7591
    /// `invalid_redirect_uri`).
    #[error("invalid redirect uri: {0}")]
    InvalidRedirectUri(&'static str),
    /// A token request whose parameters are missing or repeated (RFC 6749
    /// `invalid_request`).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// Client authentication failed: unknown client, bad assertion, untrusted
    /// or revoked certificate, replay (RFC 6749 `invalid_client`).
    #[error("invalid client: {0}")]
    InvalidClient(&'static str),
    /// The client is not registered for this grant (RFC 6749
    /// `unauthorized_client`).
    #[error("unauthorized client: {0}")]
    UnauthorizedClient(&'static str),
    /// A grant type this server does not support (RFC 6749
    /// `unsupported_grant_type`).
    #[error("unsupported grant type")]
    UnsupportedGrantType,
    /// A requested scope that is not allowed (RFC 6749 `invalid_scope`).
    #[error("invalid scope: {0}")]
    InvalidScope(&'static str),
    /// A required authorization extension is missing or invalid (UDAP
    /// `invalid_grant` with the extension named).
    #[error("invalid grant: {0}")]
    InvalidGrant(&'static str),
    /// The `community` asked for is not one this server serves.
    #[error("unknown trust community")]
    UnknownCommunity,
    /// Configuration (certificates, keys, CRLs, URLs) that cannot be used.
    #[error("udap configuration: {0}")]
    Config(String),
    /// The storage layer failed.
    #[error("storage: {0}")]
    Storage(#[from] careconnect_storage::StorageError),
    /// Sealing or opening a stored row failed.
    #[error("crypto: {0}")]
    Crypto(#[from] careconnect_crypto::Error),
    /// Signing a JWT failed.
    #[error("signing failed")]
    Signing,
    /// The operating system's random generator failed.
    #[error("no randomness available")]
    Random,
}

impl UdapError {
    /// The OAuth error code for the `error` member of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidSoftwareStatement(_) => "invalid_software_statement",
            Self::UnapprovedSoftwareStatement(_) => "unapproved_software_statement",
            Self::InvalidClientMetadata(_) => "invalid_client_metadata",
            Self::InvalidRedirectUri(_) => "invalid_redirect_uri",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient(_) => "invalid_client",
            Self::UnauthorizedClient(_) => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope(_) => "invalid_scope",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::UnknownCommunity => "invalid_request",
            Self::Config(_) | Self::Storage(_) | Self::Crypto(_) | Self::Signing | Self::Random => {
                "server_error"
            }
        }
    }

    /// The `error_description`: which rule was broken, in words for the
    /// client's developer. Server-side failures say only that they happened.
    pub fn description(&self) -> &'static str {
        match self {
            Self::InvalidSoftwareStatement(d)
            | Self::UnapprovedSoftwareStatement(d)
            | Self::InvalidClientMetadata(d)
            | Self::InvalidRedirectUri(d)
            | Self::InvalidRequest(d)
            | Self::InvalidClient(d)
            | Self::UnauthorizedClient(d)
            | Self::InvalidScope(d)
            | Self::InvalidGrant(d) => d,
            Self::UnsupportedGrantType => "grant_type must be client_credentials",
            Self::UnknownCommunity => "this server is not a member of the requested community",
            Self::Config(_) | Self::Storage(_) | Self::Crypto(_) | Self::Signing | Self::Random => {
                "the server could not complete the request"
            }
        }
    }

    /// The HTTP status to answer with: 500 for a server-side failure, 400
    /// otherwise (a failed client authentication too, as in UDAP's example;
    /// no `WWW-Authenticate` scheme applies to a client assertion).
    pub fn status(&self) -> u16 {
        match self {
            Self::Config(_) | Self::Storage(_) | Self::Crypto(_) | Self::Signing | Self::Random => {
                500
            }
            _ => 400,
        }
    }

    /// The JSON error body (`error`, `error_description`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.code(), "error_description": self.description() })
    }
}

impl From<crate::AuthzError> for UdapError {
    fn from(e: crate::AuthzError) -> Self {
        match e {
            crate::AuthzError::Storage(s) => Self::Storage(s),
            crate::AuthzError::Crypto(c) => Self::Crypto(c),
            crate::AuthzError::Udap(u) => u,
            other => Self::Config(other.to_string()),
        }
    }
}
