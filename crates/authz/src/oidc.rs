//! OpenID Connect login (relying party) on the `openidconnect` crate.
//!
//! Authorization-code flow with PKCE (S256), `state` and `nonce`. Nothing in
//! here is specific to one provider: Google, Keycloak, Entra ID, the npm
//! `oidc-provider` and the built-in development issuer are all configured the
//! same way, by issuer URL, client id/secret and redirect URI.
//!
//! 1. [`RelyingParty::discover`] fetches the discovery document and JWKS.
//! 2. [`RelyingParty::begin`] makes a PKCE verifier, a `state` and a `nonce`,
//!    keeps them server-side under the `state` (single use, 10 minutes; in
//!    memory, or in storage shared by several web nodes with
//!    [`RelyingParty::with_pending_logins`]), and returns the URL to send
//!    the browser to, with [`LoginStart::set_cookie`]: a short-lived
//!    `__Host-cc_login` cookie that binds the `state` to this browser.
//!    Finish with [`RelyingParty::complete_in_browser`], which compares it,
//!    so a callback cannot be completed from another browser (login CSRF:
//!    an attacker's own code fed to a victim's browser).
//! 3. [`RelyingParty::complete`] takes the callback's parameters: consumes
//!    the pending login (an unknown or already used `state` is refused before
//!    any network call), checks the RFC 9207 `iss` parameter when present,
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
//! let start = rp.begin().await?;           // redirect the browser to start.url
//! # let (state, code) = (String::new(), String::new());
//! let claims = rp.complete(&Callback { state, code: Some(code), iss: None, error: None }).await?;
//! println!("{} logged in", claims.user);
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, AuthenticationFlow, AuthorizationCode,
    ClaimsVerificationError, Client, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IdToken, IdTokenFields, IdTokenVerifier,
    IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    SignatureVerificationError, StandardErrorResponse, StandardTokenResponse, TokenResponse,
    UserInfoClaims,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use thiserror::Error;
use url::Url;
use zeroize::Zeroizing;

use crate::cookie;
use crate::error::AuthzError;
use crate::mapper::Claims;
use crate::pending::{MemoryPendingLogins, PendingLogin, PendingLogins};
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
    /// The RFC 9207 `iss` parameter names another issuer (mix-up attack).
    #[error("callback from another issuer")]
    IssuerMismatch,
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
    /// The claim holding groups. Default `groups`.
    pub groups_claim: String,
    /// The claim holding roles. Default `roles`.
    pub roles_claim: String,
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
            groups_claim: "groups".into(),
            roles_claim: "roles".into(),
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
#[derive(Debug, Clone)]
pub struct LoginStart {
    /// The provider's authorization URL with all parameters.
    pub url: Url,
    /// The `state` in that URL (bind it to the browser, see the module docs).
    pub state: String,
    max_age_secs: u64,
}

impl LoginStart {
    /// The `Set-Cookie` value to send with the redirect to [`LoginStart::url`]:
    /// [`LOGIN_COOKIE`] holding the `state`, `Secure; HttpOnly;
    /// SameSite=Lax` (sent on the provider's top-level redirect back), living
    /// as long as the pending login.
    pub fn set_cookie(&self) -> String {
        cookie::set(LOGIN_COOKIE, &self.state, self.max_age_secs)
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

/// An OpenID Connect relying party for one provider.
pub struct RelyingParty {
    config: OidcConfig,
    client: OidcClient,
    http: reqwest::Client,
    metadata: CoreProviderMetadata,
    /// The JWKS and when it was last re-fetched for an unknown `kid`.
    jwks: RwLock<(CoreJsonWebKeySet, Option<u64>)>,
    pending: Arc<dyn PendingLogins>,
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
        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
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
        let pending = Arc::new(MemoryPendingLogins::new(
            10_000,
            config.login_timeout.as_secs(),
        ));
        Ok(Self {
            config,
            client,
            http,
            metadata,
            jwks: RwLock::new((jwks, None)),
            pending,
            clock,
        })
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Keeps pending logins in `pending` instead of this process's memory:
    /// give every web node the same
    /// [`StoredPendingLogins`](crate::pending::StoredPendingLogins) so a callback may
    /// land on any of them.
    #[must_use]
    pub fn with_pending_logins(mut self, pending: Arc<dyn PendingLogins>) -> Self {
        self.pending = pending;
        self
    }

    /// Starts a login: returns the URL to redirect the browser to.
    ///
    /// # Errors
    ///
    /// [`AuthzError::Busy`] when too many logins are pending (a flood);
    /// storage failures of a stored [`PendingLogins`].
    pub async fn begin(&self) -> Result<LoginStart, AuthzError> {
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
            verifier: Zeroizing::new(verifier.secret().clone()),
            nonce: Zeroizing::new(nonce.secret().clone()),
            started: self.clock.now(),
        };
        self.pending.put(state.secret(), login).await?;
        Ok(LoginStart {
            url,
            state: state.secret().clone(),
            max_age_secs: self.config.login_timeout.as_secs(),
        })
    }

    /// [`RelyingParty::complete`] for a browser: first checks that the
    /// callback's `state` is the one in this browser's [`LOGIN_COOKIE`]
    /// (`cookie_header` is the request's `Cookie` header; constant-time
    /// comparison). A mismatch consumes nothing, so a forged callback cannot
    /// spoil the real login.
    ///
    /// # Errors
    ///
    /// [`OidcError::BrowserMismatch`], then as [`RelyingParty::complete`].
    pub async fn complete_in_browser(
        &self,
        cb: &Callback,
        cookie_header: Option<&str>,
    ) -> Result<Claims, AuthzError> {
        let bound = cookie_header
            .and_then(|h| cookie::find(h, LOGIN_COOKIE))
            .is_some_and(|v| {
                v.len() == cb.state.len() && bool::from(v.as_bytes().ct_eq(cb.state.as_bytes()))
            });
        if !bound {
            return Err(OidcError::BrowserMismatch.into());
        }
        self.complete(cb).await
    }

    /// Finishes a login from the callback's parameters and returns the
    /// validated claims (map them to roles with the role mapper).
    ///
    /// # Errors
    ///
    /// [`OidcError`] variants: state unknown, reused or expired; provider
    /// error; issuer mix-up; code refused; ID token invalid
    /// ([`IdTokenError`]); provider unreachable.
    pub async fn complete(&self, cb: &Callback) -> Result<Claims, AuthzError> {
        // Single use: removed before anything else can fail.
        let pending = self
            .pending
            .take(&cb.state)
            .await?
            .ok_or(OidcError::UnknownState)?;
        let now = self.clock.now();
        if now
            >= pending
                .started
                .saturating_add(self.config.login_timeout.as_secs())
        {
            return Err(OidcError::StateExpired.into());
        }
        if let Some(err) = &cb.error {
            return Err(OidcError::Provider(err.chars().take(64).collect()).into());
        }
        if cb.iss.as_deref().is_some_and(|i| i != self.config.issuer) {
            return Err(OidcError::IssuerMismatch.into());
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
            let jwks = self
                .jwks
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0
                .clone();
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
                    if !self.refresh_jwks().await? {
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

    /// Fetches the JWKS again unless it was fetched in the last 10 seconds
    /// (a stream of tokens with made-up `kid`s must not hammer the provider).
    /// Returns whether it fetched.
    async fn refresh_jwks(&self) -> Result<bool, AuthzError> {
        let now = self.clock.now();
        let last = self
            .jwks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1;
        if last.is_some_and(|t| now < t.saturating_add(10)) {
            return Ok(false);
        }
        let set = CoreJsonWebKeySet::fetch_async(self.metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| unavailable(error_chain(&e)))?;
        *self
            .jwks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (set, Some(now));
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
        claims.groups = strings(extra.all.get(&self.config.groups_claim));
        claims.roles = strings(extra.all.get(&self.config.roles_claim));
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
            (&self.config.groups_claim, &mut claims.groups),
            (&self.config.roles_claim, &mut claims.roles),
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
