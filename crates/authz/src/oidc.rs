//! OpenID Connect login (relying party) on the `openidconnect` crate.
//!
//! Authorization-code flow with PKCE (S256), `state` and `nonce`. Nothing in
//! here is specific to one provider: Google, Keycloak, Entra ID, the npm
//! `oidc-provider` and the built-in development issuer are all configured the
//! same way, by issuer URL, client id/secret and redirect URI.
//!
//! 1. [`RelyingParty::discover`] fetches the discovery document and JWKS.
//! 2. [`RelyingParty::begin`] makes a PKCE verifier, a `state` and a `nonce`
//!    and returns the URL to send the browser to, with
//!    [`LoginStart::set_cookie`]: a short-lived `__Host-cc_login` cookie
//!    holding all of it sealed (AEAD) with the relying party's login
//!    [`Keyring`], together with the issuer and the start time. Nothing is
//!    stored server-side, so a flood of login starts fills nothing and
//!    locks nobody out; several web nodes share the keyring
//!    ([`RelyingParty::with_login_keys`]) so the callback may land on any.
//! 3. [`RelyingParty::complete_in_browser`] takes the callback's parameters
//!    and the request's `Cookie` header: the cookie must open and hold the
//!    callback's `state` (so a callback cannot be completed in another
//!    browser: login CSRF), be this provider's (mix-up), not be expired, and
//!    not be used before (replay; refused before any network call). Then it
//!    checks the RFC 9207 `iss` parameter (required when the provider
//!    advertises `authorization_response_iss_parameter_supported`),
//!    exchanges the code with the PKCE verifier, and validates the ID token:
//!    signature against the JWKS (asymmetric algorithms only; on an unknown
//!    `kid` the JWKS is fetched again once, for key rotation), issuer,
//!    audience (no untrusted extra audiences), `azp`, expiry with bounded
//!    clock skew, issue time not in the future beyond the skew, and `nonce`;
//!    then `at_hash` when present, and userinfo when configured.
//!
//! ```no_run
//! # async fn demo() -> Result<(), careconnect_authz::AuthzError> {
//! use careconnect_authz::oidc::{Callback, OidcConfig, RelyingParty};
//! let rp = RelyingParty::discover(OidcConfig::new(
//!     "https://accounts.google.com", "my-client-id", "https://clinic.example/callback",
//! )).await?;
//! let start = rp.begin()?;                  // redirect to start.url with start.set_cookie()
//! # let (state, code, cookie_header) = (String::new(), String::new(), String::new());
//! // The callback request: its query parameters and its `Cookie` header.
//! let cb = Callback { state, code: Some(code), iss: None, error: None };
//! let claims = rp.complete_in_browser(&cb, Some(&cookie_header)).await?;
//! println!("{} logged in", claims.user);
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use careconnect_crypto::Keyring;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, AdditionalProviderMetadata, AuthenticationFlow,
    AuthorizationCode, ClaimsVerificationError, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdToken, IdTokenFields,
    IdTokenVerifier, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    ProviderMetadata, RedirectUrl, Scope, SignatureVerificationError, StandardErrorResponse,
    StandardTokenResponse, TokenResponse, UserInfoClaims,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use thiserror::Error;
use url::Url;
use zeroize::Zeroizing;

use crate::cookie;
use crate::error::AuthzError;
use crate::mapper::{ClaimNames, Claims};
use crate::pending::{self, ConsumedStates, PendingLogin};
use crate::principal::UserId;
use crate::session::{Clock, SystemClock};

/// Why a login failed. Never carries a code, token or secret.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OidcError {
    /// Discovery, JWKS or token endpoint unreachable or answering nonsense.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
    /// The discovery document or configuration is unusable.
    #[error("identity provider configuration: {0}")]
    Configuration(String),
    /// The callback's `state` is unknown: forged, or already used (replay).
    #[error("unknown or already used login state")]
    UnknownState,
    /// The pending login is older than allowed.
    #[error("login took too long; start again")]
    StateExpired,
    /// The provider returned an error to the callback (e.g. access_denied).
    #[error("identity provider refused the login: {0}")]
    Provider(String),
    /// The callback's `state` is not the one this browser's login cookie
    /// holds (or it holds none): the callback was started elsewhere.
    #[error("login was not started in this browser")]
    BrowserMismatch,
    /// The callback has no code.
    #[error("callback without an authorization code")]
    MissingCode,
    /// The RFC 9207 `iss` parameter, or the login cookie, names another
    /// issuer (mix-up attack).
    #[error("callback from another issuer")]
    IssuerMismatch,
    /// The provider advertises `authorization_response_iss_parameter_supported`
    /// but the callback has no `iss` (RFC 9207 §2.4: refuse it).
    #[error("callback without the iss parameter its provider sends")]
    IssuerMissing,
    /// The token endpoint refused the code (used, expired, PKCE mismatch...).
    #[error("code exchange refused: {0}")]
    CodeRejected(String),
    /// The token response has no ID token.
    #[error("token response without an ID token")]
    MissingIdToken,
    /// The ID token is invalid.
    #[error("invalid ID token: {0}")]
    IdToken(#[from] IdTokenError),
}

/// What is wrong with an ID token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdTokenError {
    /// Not a JWT of the expected shape.
    #[error("malformed")]
    Malformed,
    /// Unsigned (`alg: none`) or signed with an algorithm not accepted here
    /// (HMAC algorithms are never accepted).
    #[error("algorithm not accepted")]
    Algorithm,
    /// No key in the provider's JWKS has this `kid`, even after a refresh.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not name this client, names untrusted others, or `azp`
    /// names another client.
    #[error("wrong audience")]
    WrongAudience,
    /// `exp` has passed (beyond the allowed clock skew).
    #[error("expired")]
    Expired,
    /// `iat` is in the future beyond the skew, or too long ago.
    #[error("issue time out of range")]
    IssueTime,
    /// `nonce` is not the one sent with this login.
    #[error("nonce mismatch")]
    NonceMismatch,
    /// `at_hash` does not match the access token.
    #[error("access token hash mismatch")]
    AccessTokenHash,
    /// Any other claim check failed.
    #[error("claims rejected: {0}")]
    Claims(String),
}

/// The custom claims this crate reads: everything beyond the standard ones,
/// by name (the groups and roles claims are configurable).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ExtraClaims {
    /// Every claim of the token, by name.
    #[serde(flatten)]
    pub all: serde_json::Map<String, serde_json::Value>,
}
impl AdditionalClaims for ExtraClaims {}

type TokenFields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<TokenFields, CoreTokenType>;
type RawIdToken = IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type OidcClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Signing algorithms accepted for ID tokens: asymmetric only.
const ACCEPTED_ALGS: [CoreJwsSigningAlgorithm; 6] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// How to reach and trust an identity provider.
#[derive(Clone)]
pub struct OidcConfig {
    /// The issuer URL, exactly as the provider names itself.
    pub issuer: String,
    /// This application's client id.
    pub client_id: String,
    /// The client secret, for confidential clients.
    pub client_secret: Option<SecretString>,
    /// Where the provider sends the browser back; registered with it.
    pub redirect_uri: String,
    /// Scopes beyond `openid` (default `email`, `profile`).
    pub scopes: Vec<String>,
    /// Clock skew tolerated on `exp` and `iat`. Default 60 s.
    pub clock_skew: Duration,
    /// Oldest `iat` accepted. Default 10 minutes.
    pub max_token_age: Duration,
    /// How long a started login may take. Default 10 minutes.
    pub login_timeout: Duration,
    /// Also fetch userinfo and merge its e-mail, groups and roles.
    pub use_userinfo: bool,
    /// The claims holding groups and roles: the role mapper's setting
    /// ([`OidcConfig::with_claim_names`]). Default `groups` and `roles`.
    pub claim_names: ClaimNames,
    /// Extra trust anchors (PEM) for an issuer with a private CA.
    pub extra_roots_pem: Option<Vec<u8>>,
    /// Timeout for each HTTP call to the provider. Default 10 s.
    pub http_timeout: Duration,
}

impl OidcConfig {
    /// A configuration with the defaults above.
    pub fn new(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret: None,
            redirect_uri: redirect_uri.into(),
            scopes: vec!["email".into(), "profile".into()],
            clock_skew: Duration::from_secs(60),
            max_token_age: Duration::from_secs(600),
            login_timeout: Duration::from_secs(600),
            use_userinfo: false,
            claim_names: ClaimNames::default(),
            extra_roots_pem: None,
            http_timeout: Duration::from_secs(10),
        }
    }

    /// With a client secret (confidential client).
    #[must_use]
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(SecretString::from(secret.into()));
        self
    }

    /// Reads groups and roles from the claims the role mapper names (pass
    /// [`RoleMapper::claim_names`](crate::mapper::RoleMapper::claim_names)):
    /// the names are set once, in the role mapping.
    #[must_use]
    pub fn with_claim_names(mut self, names: ClaimNames) -> Self {
        self.claim_names = names;
        self
    }

    /// This provider's issuer and claim names, for
    /// [`RoleMapper::check_providers`](crate::mapper::RoleMapper::check_providers).
    pub fn provider(&self) -> (&str, &ClaimNames) {
        (&self.issuer, &self.claim_names)
    }
}

impl fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// The cookie that binds a pending login's `state` to the browser that
/// started it (`__Host-`: HTTPS, this host, `Path=/` only).
pub const LOGIN_COOKIE: &str = "__Host-cc_login";

/// Where to send the browser to log in.
#[derive(Clone)]
pub struct LoginStart {
    /// The provider's authorization URL with all parameters.
    pub url: Url,
    /// The `state` in that URL.
    pub state: String,
    /// The sealed pending login (PKCE verifier, nonce, state, issuer, time).
    sealed: Zeroizing<String>,
    max_age_secs: u64,
}

impl fmt::Debug for LoginStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginStart")
            .field("url", &self.url.origin().ascii_serialization())
            .finish_non_exhaustive()
    }
}

impl LoginStart {
    /// The `Set-Cookie` value to send with the redirect to [`LoginStart::url`]:
    /// [`LOGIN_COOKIE`] holding the sealed pending login, `Secure; HttpOnly;
    /// SameSite=Lax` (sent on the provider's top-level redirect back), living
    /// as long as the login may take. Treat it as a secret; never log it.
    pub fn set_cookie(&self) -> Zeroizing<String> {
        Zeroizing::new(cookie::set(LOGIN_COOKIE, &self.sealed, self.max_age_secs))
    }

    /// The `Cookie` request header a browser sends back after
    /// [`LoginStart::set_cookie`], for clients that are not browsers
    /// (tests, command-line logins).
    pub fn cookie_header(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{LOGIN_COOKIE}={}", self.sealed.as_str()))
    }

    /// The `Set-Cookie` value that removes the login cookie (send it with the
    /// callback's response, whatever its outcome).
    pub fn clear_cookie() -> String {
        cookie::clear(LOGIN_COOKIE)
    }
}

/// The query parameters of the redirect back.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Callback {
    /// `state`.
    pub state: String,
    /// `code`, absent on errors.
    pub code: Option<String>,
    /// RFC 9207 `iss`, when the provider sends it.
    pub iss: Option<String>,
    /// `error`, when the provider refused.
    pub error: Option<String>,
}

/// The provider metadata this crate reads beyond the core fields.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
struct MoreMetadata {
    /// RFC 9207: the provider sends `iss` with every authorization response.
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}
impl AdditionalProviderMetadata for MoreMetadata {}

type Metadata = ProviderMetadata<
    MoreMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// The provider's keys, and the state of re-fetching them for an unknown `kid`.
struct Jwks {
    set: CoreJsonWebKeySet,
    /// When a re-fetch was last attempted (recorded before fetching, so a
    /// failing endpoint is also asked at most once per interval).
    last_attempt: Option<u64>,
    /// Bumped by every successful re-fetch, so a caller that waited for
    /// another's fetch knows to retry with the new keys.
    generation: u64,
}

/// Seconds between two JWKS re-fetches for unknown `kid`s.
const JWKS_REFETCH_INTERVAL: u64 = 10;

/// How many used login states are remembered (about 100 bytes each).
const CONSUMED_STATES: usize = 100_000;

/// An OpenID Connect relying party for one provider.
pub struct RelyingParty {
    config: OidcConfig,
    client: OidcClient,
    http: reqwest::Client,
    metadata: Metadata,
    jwks: RwLock<Jwks>,
    /// One JWKS re-fetch at a time; others wait for its result.
    refetch: tokio::sync::Mutex<()>,
    login_keys: careconnect_crypto::SharedKeyring,
    consumed: ConsumedStates,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelyingParty")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn http_client(config: &OidcConfig) -> Result<reqwest::Client, AuthzError> {
    // No redirects: the crate's own advice against SSRF through discovery.
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.http_timeout);
    if let Some(pem) = &config.extra_roots_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| OidcError::Configuration(format!("extra roots: {e}")))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    b.build()
        .map_err(|e| OidcError::Configuration(e.to_string()).into())
}

fn unavailable(e: impl fmt::Display) -> AuthzError {
    OidcError::Unavailable(e.to_string()).into()
}

impl RelyingParty {
    /// Discovers the provider (discovery document + JWKS) and builds the
    /// client, on the system clock.
    ///
    /// # Errors
    ///
    /// [`OidcError::Unavailable`] or [`OidcError::Configuration`].
    pub async fn discover(config: OidcConfig) -> Result<Self, AuthzError> {
        Self::discover_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`RelyingParty::discover`], with an injected clock (tests).
    ///
    /// # Errors
    ///
    /// As [`RelyingParty::discover`].
    pub async fn discover_with_clock(
        config: OidcConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuthzError> {
        let http = http_client(&config)?;
        let issuer = IssuerUrl::new(config.issuer.clone())
            .map_err(|e| OidcError::Configuration(format!("issuer URL: {e}")))?;
        let metadata = Metadata::discover_async(issuer, &http)
            .await
            .map_err(|e| unavailable(error_chain(&e)))?;
        let redirect = RedirectUrl::new(config.redirect_uri.clone())
            .map_err(|e| OidcError::Configuration(format!("redirect URI: {e}")))?;
        let client = OidcClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(config.client_id.clone()),
            config
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose_secret().to_owned())),
        )
        .set_redirect_uri(redirect);
        let jwks = metadata.jwks().clone();
        Ok(Self {
            config,
            client,
            http,
            metadata,
            jwks: RwLock::new(Jwks {
                set: jwks,
                last_attempt: None,
                generation: 0,
            }),
            refetch: tokio::sync::Mutex::new(()),
            login_keys: Keyring::generate().into(),
            consumed: ConsumedStates::new(CONSUMED_STATES),
            clock,
        })
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Seals login cookies with `keys` instead of a keyring made for this
    /// process: give every web node the same keyring (e.g. the clinic's,
    /// loaded from storage) so a callback may land on any of them. A
    /// [`SharedKeyring`](careconnect_crypto::SharedKeyring) is followed
    /// through its replacements (a key rotation elsewhere).
    #[must_use]
    pub fn with_login_keys(mut self, keys: impl Into<careconnect_crypto::SharedKeyring>) -> Self {
        self.login_keys = keys.into();
        self
    }

    /// Starts a login: returns the URL to redirect the browser to and the
    /// cookie to set. Keeps nothing server-side.
    ///
    /// # Errors
    ///
    /// [`AuthzError::Crypto`] if the operating system's random generator fails.
    pub fn begin(&self) -> Result<LoginStart, AuthzError> {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = self.client.authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in &self.config.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        let login = PendingLogin {
            state: Zeroizing::new(state.secret().clone()),
            verifier: Zeroizing::new(verifier.secret().clone()),
            nonce: Zeroizing::new(nonce.secret().clone()),
            issuer: self.config.issuer.clone(),
            started: self.clock.now(),
        };
        Ok(LoginStart {
            url,
            state: state.secret().clone(),
            sealed: Zeroizing::new(pending::seal(&self.login_keys.current(), &login)?),
            max_age_secs: self.config.login_timeout.as_secs(),
        })
    }

    /// Finishes a login from the callback's parameters and the request's
    /// `Cookie` header, and returns the validated claims (map them to roles
    /// with the role mapper). Send [`LoginStart::clear_cookie`] with the
    /// response, whatever the outcome.
    ///
    /// Checked in this order, each before any network call: the login
    /// cookie is present and opens with the login keys; it holds the
    /// callback's `state` (constant time); it was made for this provider;
    /// it is not expired; its `state` was not used before; the provider
    /// reported no error; the `iss` parameter names this provider (and is
    /// present when the provider promises it). The state is used up once
    /// its code has been exchanged.
    ///
    /// # Errors
    ///
    /// [`OidcError`] variants: [`OidcError::BrowserMismatch`] (no cookie,
    /// or another login's); [`OidcError::UnknownState`] (a cookie that does
    /// not open, or a replay); [`OidcError::IssuerMismatch`],
    /// [`OidcError::IssuerMissing`]; [`OidcError::StateExpired`]; provider
    /// error; code refused; ID token invalid ([`IdTokenError`]); provider
    /// unreachable.
    pub async fn complete_in_browser(
        &self,
        cb: &Callback,
        cookie_header: Option<&str>,
    ) -> Result<Claims, AuthzError> {
        let cookie = cookie_header
            .and_then(|h| cookie::find(h, LOGIN_COOKIE))
            .ok_or(OidcError::BrowserMismatch)?;
        let pending =
            pending::open(&self.login_keys.current(), cookie).ok_or(OidcError::UnknownState)?;
        let bound = pending.state.len() == cb.state.len()
            && bool::from(pending.state.as_bytes().ct_eq(cb.state.as_bytes()));
        if !bound {
            return Err(OidcError::BrowserMismatch.into());
        }
        if pending.issuer != self.config.issuer {
            return Err(OidcError::IssuerMismatch.into());
        }
        let now = self.clock.now();
        let expires = pending
            .started
            .saturating_add(self.config.login_timeout.as_secs());
        if now >= expires || pending.started > now.saturating_add(self.config.clock_skew.as_secs())
        {
            return Err(OidcError::StateExpired.into());
        }
        // Single use: a state whose code was exchanged before is refused here,
        // before any network call (it is recorded below, once exchanged).
        if self.consumed.is_used(&pending.state) {
            return Err(OidcError::UnknownState.into());
        }
        if let Some(err) = &cb.error {
            return Err(OidcError::Provider(err.chars().take(64).collect()).into());
        }
        match cb.iss.as_deref() {
            Some(i) if i != self.config.issuer => return Err(OidcError::IssuerMismatch.into()),
            None if self
                .metadata
                .additional_metadata()
                .authorization_response_iss_parameter_supported =>
            {
                return Err(OidcError::IssuerMissing.into());
            }
            _ => {}
        }
        let code = cb.code.clone().ok_or(OidcError::MissingCode)?;
        let tokens = self
            .client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| OidcError::Configuration(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.to_string()))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::CodeRejected(error_chain(&e)))?;
        // Recorded only after a successful exchange: failed callbacks cannot
        // fill the set. Two concurrent uses of one callback both got here
        // only if the provider honoured the code twice; the second loses.
        if !self.consumed.consume(&pending.state, now, expires) {
            return Err(OidcError::UnknownState.into());
        }
        let id_token = tokens.id_token().ok_or(OidcError::MissingIdToken)?;
        let mut claims = self
            .verify_parsed(
                id_token,
                &Nonce::new(pending.nonce.to_string()),
                Some(tokens.access_token()),
            )
            .await?;
        if self.config.use_userinfo {
            self.merge_userinfo(&mut claims, tokens.access_token().clone())
                .await?;
        }
        Ok(claims)
    }

    /// Validates a compact ID token against this provider and `nonce`
    /// (also usable outside the code flow, e.g. tokens relayed by a
    /// trusted front end).
    ///
    /// # Errors
    ///
    /// [`OidcError::IdToken`] with the reason.
    pub async fn verify_id_token(&self, jwt: &str, nonce: &str) -> Result<Claims, AuthzError> {
        let token: RawIdToken = serde_json::from_value(serde_json::Value::String(jwt.to_owned()))
            .map_err(|_| OidcError::IdToken(IdTokenError::Malformed))?;
        self.verify_parsed(&token, &Nonce::new(nonce.to_owned()), None)
            .await
    }

    fn verifier(
        &self,
        jwks: CoreJsonWebKeySet,
        future_iat: Arc<AtomicBool>,
    ) -> IdTokenVerifier<'static, CoreJsonWebKey> {
        let now = self.clock.now();
        let skew = self.config.clock_skew.as_secs();
        let max_age = self.config.max_token_age.as_secs();
        let lenient_now = i64::try_from(now.saturating_sub(skew)).unwrap_or(i64::MAX);
        let strict_now = i64::try_from(now).unwrap_or(i64::MAX);
        IdTokenVerifier::new_public_client(
            ClientId::new(self.config.client_id.clone()),
            self.metadata.issuer().clone(),
            jwks,
        )
        .set_allowed_algs(ACCEPTED_ALGS)
        // exp is compared with now - skew: a token expired by less than the
        // skew still passes, one expired longer does not.
        .set_time_fn(move || chrono::DateTime::from_timestamp(lenient_now, 0).unwrap_or_default())
        .set_issue_time_verifier_fn(move |iat| {
            let iat = iat.timestamp();
            if iat > strict_now.saturating_add(i64::try_from(skew).unwrap_or(0)) {
                future_iat.store(true, Ordering::SeqCst);
                return Err("issued in the future".into());
            }
            if iat < strict_now.saturating_sub(i64::try_from(max_age).unwrap_or(0)) {
                return Err("issued too long ago".into());
            }
            Ok(())
        })
    }

    async fn verify_parsed(
        &self,
        token: &RawIdToken,
        nonce: &Nonce,
        access_token: Option<&openidconnect::AccessToken>,
    ) -> Result<Claims, AuthzError> {
        let mut refreshed = false;
        loop {
            let (jwks, generation) = {
                let j = self
                    .jwks
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (j.set.clone(), j.generation)
            };
            let future = Arc::new(AtomicBool::new(false));
            let verifier = self.verifier(jwks, future.clone());
            match token.claims(&verifier, nonce) {
                Ok(c) => {
                    // azp: when present it must be us (the crate leaves this
                    // to the client).
                    if c.authorized_party()
                        .is_some_and(|azp| azp.as_str() != self.config.client_id)
                    {
                        return Err(OidcError::IdToken(IdTokenError::WrongAudience).into());
                    }
                    if let (Some(expected), Some(at)) = (c.access_token_hash(), access_token) {
                        let alg = token
                            .signing_alg()
                            .map_err(|_| OidcError::IdToken(IdTokenError::Algorithm))?;
                        let key = token
                            .signing_key(&verifier)
                            .map_err(|_| OidcError::IdToken(IdTokenError::UnknownKey))?;
                        let actual = AccessTokenHash::from_token(at, alg, key)
                            .map_err(|_| OidcError::IdToken(IdTokenError::AccessTokenHash))?;
                        if actual != *expected {
                            return Err(OidcError::IdToken(IdTokenError::AccessTokenHash).into());
                        }
                    }
                    return self.claims_from(
                        c.subject().as_str(),
                        c.email().map(|e| e.as_str().to_owned()),
                        c.email_verified(),
                        c.name()
                            .and_then(|n| n.get(None))
                            .map(|n| n.as_str().to_owned()),
                        c.additional_claims(),
                    );
                }
                Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                )) if !refreshed => {
                    refreshed = true;
                    if !self.refresh_jwks(generation).await? {
                        return Err(OidcError::IdToken(IdTokenError::UnknownKey).into());
                    }
                }
                Err(e) => {
                    return Err(
                        OidcError::IdToken(classify(&e, future.load(Ordering::SeqCst))).into(),
                    );
                }
            }
        }
    }

    /// Fetches the JWKS again for a token whose `kid` was not in the keys of
    /// `seen` (a generation), at most once per [`JWKS_REFETCH_INTERVAL`]
    /// seconds however many tokens ask at once, and however the fetch ends:
    /// a stream of tokens with made-up `kid`s, or a failing endpoint, must
    /// not hammer the provider. One fetch at a time; callers that waited
    /// for another's successful fetch retry with its keys. Returns whether
    /// keys newer than `seen` are there to retry with.
    async fn refresh_jwks(&self, seen: u64) -> Result<bool, AuthzError> {
        let _one_at_a_time = self.refetch.lock().await;
        let now = self.clock.now();
        {
            let mut j = self
                .jwks
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if j.generation != seen {
                return Ok(true);
            }
            if j.last_attempt
                .is_some_and(|t| now < t.saturating_add(JWKS_REFETCH_INTERVAL))
            {
                return Ok(false);
            }
            j.last_attempt = Some(now);
        }
        let set = CoreJsonWebKeySet::fetch_async(self.metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| unavailable(error_chain(&e)))?;
        let mut j = self
            .jwks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        j.set = set;
        j.generation = j.generation.wrapping_add(1);
        Ok(true)
    }

    fn claims_from(
        &self,
        subject: &str,
        email: Option<String>,
        email_verified: Option<bool>,
        name: Option<String>,
        extra: &ExtraClaims,
    ) -> Result<Claims, AuthzError> {
        let mut claims = Claims::new(UserId::new(self.config.issuer.clone(), subject)?);
        claims.email = email;
        claims.email_verified = email_verified.unwrap_or(false);
        claims.name = name;
        claims.groups = strings(extra.all.get(&self.config.claim_names.groups));
        claims.roles = strings(extra.all.get(&self.config.claim_names.roles));
        Ok(claims)
    }

    async fn merge_userinfo(
        &self,
        claims: &mut Claims,
        token: openidconnect::AccessToken,
    ) -> Result<(), AuthzError> {
        let subject = openidconnect::SubjectIdentifier::new(claims.user.subject().to_owned());
        let info: UserInfoClaims<ExtraClaims, CoreGenderClaim> = self
            .client
            .user_info(token, Some(subject))
            .map_err(|e| OidcError::Configuration(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(|e| unavailable(error_chain(&e)))?;
        if claims.email.is_none() {
            claims.email = info.email().map(|e| e.as_str().to_owned());
            claims.email_verified = info.email_verified().unwrap_or(false);
        }
        for (name, into) in [
            (&self.config.claim_names.groups, &mut claims.groups),
            (&self.config.claim_names.roles, &mut claims.roles),
        ] {
            for v in strings(info.additional_claims().all.get(name)) {
                if !into.contains(&v) {
                    into.push(v);
                }
            }
        }
        Ok(())
    }
}

/// A claim that is a string or a list of strings, as a list (other shapes
/// are ignored, never an error: the claim is optional).
fn strings(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .take(256)
            .collect(),
        _ => Vec::new(),
    }
}

fn classify(e: &ClaimsVerificationError, future_iat: bool) -> IdTokenError {
    use ClaimsVerificationError as C;
    use SignatureVerificationError as S;
    match e {
        C::Expired(_) if future_iat => IdTokenError::IssueTime,
        C::Expired(m) if m.contains("issued") => IdTokenError::IssueTime,
        C::Expired(_) => IdTokenError::Expired,
        C::InvalidAudience(_) => IdTokenError::WrongAudience,
        C::InvalidIssuer(_) => IdTokenError::WrongIssuer,
        C::InvalidNonce(_) => IdTokenError::NonceMismatch,
        C::SignatureVerification(s) => match s {
            S::NoMatchingKey | S::AmbiguousKeyId(_) => IdTokenError::UnknownKey,
            S::DisallowedAlg(_) | S::UnsupportedAlg(_) | S::NoSignature => IdTokenError::Algorithm,
            S::CryptoError(_) => IdTokenError::BadSignature,
            _ => IdTokenError::BadSignature,
        },
        C::Unsupported(_) => IdTokenError::Malformed,
        other => IdTokenError::Claims(other.to_string().chars().take(120).collect()),
    }
}

/// An error and its sources on one line, for messages that must say why a
/// provider could not be reached.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s.chars().take(300).collect()
}
