//! UDAP: apps identified by X.509 certificates inside trust communities
//! register themselves with signed software statements and authenticate
//! with signed JWTs: no shared secrets, no manual registration (HL7 UDAP
//! Security IG, STU 1.1; udap.org's DCR and JWT client authentication).
//!
//! - [`TrustCommunity`]: anchors, intermediates and CRLs; chains are
//!   validated with `rustls-webpki`.
//! - [`UdapServer`]: `/.well-known/udap` metadata with `signed_metadata`,
//!   trusted dynamic client registration, `client_credentials` with JWT
//!   client authentication and the `hl7-b2b` extension, access tokens.
//! - [`UdapClient`]: software statements and client assertions, to register
//!   an embedding app with any UDAP server.
//!
//! ```
//! # #[cfg(feature = "dev-issuer")] {
//! use std::sync::Arc;
//! use careconnect_authz::session::{Clock, ManualClock};
//! use careconnect_authz::udap::{
//!     dev::{DevCommunity, KeyKind}, B2bExtension, ClientRequest, ServerCommunity,
//!     TrustCommunity, UdapClient, UdapConfig, UdapServer,
//! };
//! use careconnect_crypto::Keyring;
//! use careconnect_storage::MemoryStore;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // A community, this server's certificate in it, and an app's.
//! let dev = DevCommunity::generate("urn:example:community").unwrap();
//! let server_cert = dev.issue("https://fhir.example", KeyKind::Rsa2048, 30).unwrap();
//! let app = dev.issue("https://app.example/udap", KeyKind::P256, 30).unwrap();
//!
//! let trust = Arc::new(TrustCommunity::new(dev.name(), dev.anchor_pem().as_bytes()).unwrap());
//! let ours = ServerCommunity::new(trust, &server_cert.chain_pem, server_cert.key_pem.as_bytes()).unwrap();
//! let config = UdapConfig {
//!     base_url: "https://fhir.example".into(),
//!     registration_endpoint: "https://fhir.example/register".into(),
//!     token_endpoint: "https://fhir.example/token".into(),
//!     scopes: vec!["system/Patient.read".into()],
//!     token_lifetime: 300,
//! };
//! let keys = Keyring::generate();
//! let clock = Arc::new(ManualClock::new(std::time::SystemTime::now()
//!     .duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()));
//! let server = UdapServer::new(config, vec![ours], Arc::new(MemoryStore::new()), keys, clock.clone()).unwrap();
//!
//! // The app registers itself, then gets a token with a signed assertion.
//! let client = UdapClient::from_pem(&app.chain_pem, app.key_pem.as_bytes(), "https://app.example/udap").unwrap();
//! let now = clock.now();
//! let req = client.registration_request("https://fhir.example/register",
//!     &ClientRequest::b2b("Lab sync", "mailto:ops@app.example", &["system/Patient.read"]), now).unwrap();
//! let reg = server.register(req.to_string().as_bytes()).await.unwrap();
//! assert_eq!(reg.status(), 201);
//!
//! let b2b = B2bExtension::new("https://app.example/org", vec!["urn:oid:2.16.840.1.113883.5.8#TREAT".into()]);
//! let form: Vec<(String, String)> = client
//!     .token_request(&reg.client.client_id, "https://fhir.example/token", &b2b, None, now).unwrap()
//!     .into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
//! let token = server.token(&form).await.unwrap();
//! assert!(server.introspect(token.secret()).await.unwrap().is_some());
//! // The same assertion again is a replay.
//! assert_eq!(server.token(&form).await.unwrap_err().code(), "invalid_client");
//! # });
//! # }
//! ```
//!
//! What is supported and what is not yet: `docs/udap.md`.

mod assertion;
mod client;
mod community;
#[cfg(feature = "dev-issuer")]
pub mod dev;
mod error;
mod jws;
mod registration;
mod server;

pub use crate::text::is_invisible;
pub use assertion::{B2bExtension, JWT_BEARER};
pub use client::{ClientRequest, SignedEndpoints, Signer, UdapClient, verify_signed_metadata};
pub use community::{CrlFiles, CrlSource, MAX_CHAIN, TrustCommunity};
pub use error::UdapError;
pub use jws::{ALGORITHMS, MAX_JWT_LEN, MAX_LIFETIME, MAX_SKEW};
pub use registration::{ClientMetadata, GrantType};
pub use server::{
    AccessGrant, CLIENTS_COLLECTION, IssuedToken, JTI_COLLECTION, MAX_REGISTRATION_BODY,
    MAX_TOKEN_LIFETIME, PendingRegistration, PendingToken, Refusal, RegisteredClient, Registration,
    RegistrationOutcome, ServerCommunity, TOKENS_COLLECTION, UdapConfig, UdapServer,
};

/// Checks one registration request body against `community` at `now`,
/// without storing anything: the parser and validator a fuzzer drives.
///
/// # Errors
/// The RFC 7591 error the body earns.
pub fn check_registration(
    body: &[u8],
    community: &TrustCommunity,
    registration_endpoint: &str,
    scopes: &[String],
    now: u64,
) -> Result<ClientMetadata, UdapError> {
    let req = registration::RegistrationRequest::parse(body)?;
    let v = jws::verify(&req.software_statement, community, now)
        .map_err(registration::registration_fault)?;
    Ok(registration::check_statement(v, registration_endpoint, scopes, false, now)?.metadata)
}

/// 128 random bits, hex: `jti`s and registration ids.
pub(crate) fn random_id() -> Result<String, UdapError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|_| UdapError::Random)?;
    Ok(hex::encode(b))
}
