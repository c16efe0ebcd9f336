//! A small, real OpenID provider for development (cargo feature
//! `dev-issuer`). **A development tool**: anyone who can reach it can log in
//! as any of its users by clicking a button. It refuses to listen on a
//! non-loopback address unless [`DevIssuerConfig::allow_non_loopback`] is set.
//!
//! It speaks the standard protocol, so the relying party treats it like any
//! other provider: discovery (`/.well-known/openid-configuration`), JWKS
//! (`/jwks`), an authorization endpoint (`/authorize`) showing a page to pick
//! one of the configured users, a token endpoint (`/token`, authorization
//! code grant only, PKCE S256 required, codes single use and valid 60 s,
//! client secrets compared in constant time) issuing ES256 (default) or
//! RS256 ID tokens, and userinfo (`/userinfo`). Signing keys can be rotated
//! ([`DevIssuer::rotate_key`]); the JWKS then lists the new and the old key.
//!
//! ```no_run
//! # async fn demo() -> Result<(), careconnect_authz::AuthzError> {
//! use careconnect_authz::dev_issuer::{DevClient, DevIssuer, DevIssuerConfig};
//! let mut config = DevIssuerConfig::clinic_demo("127.0.0.1:0".parse().unwrap());
//! config.clients.push(DevClient::confidential("web-demo", "dev-secret", "https://127.0.0.1:8443/callback"));
//! let issuer = DevIssuer::start(config).await?;
//! println!("issuer at {}", issuer.url());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use crate::error::AuthzError;

/// A user one can log in as.
#[derive(Debug, Clone, Serialize)]
pub struct DevUser {
    /// The `sub` claim.
    pub subject: String,
    /// Display name.
    pub name: String,
    /// E-mail address (always reported as verified).
    pub email: String,
    /// The `groups` claim.
    pub groups: Vec<String>,
    /// The `roles` claim.
    pub roles: Vec<String>,
}

impl DevUser {
    fn new(subject: &str, name: &str, email: &str, groups: &[&str]) -> Self {
        Self {
            subject: subject.into(),
            name: name.into(),
            email: email.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            roles: Vec::new(),
        }
    }
}

/// A registered client.
#[derive(Clone)]
pub struct DevClient {
    /// `client_id`.
    pub client_id: String,
    /// Secret for `client_secret_basic`/`client_secret_post`; `None` for a
    /// public client (PKCE only).
    pub client_secret: Option<String>,
    /// Exact redirect URIs accepted.
    pub redirect_uris: Vec<String>,
}

impl DevClient {
    /// A confidential client with one redirect URI.
    pub fn confidential(id: &str, secret: &str, redirect_uri: &str) -> Self {
        Self {
            client_id: id.into(),
            client_secret: Some(secret.into()),
            redirect_uris: vec![redirect_uri.into()],
        }
    }
}

impl std::fmt::Debug for DevClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevClient")
            .field("client_id", &self.client_id)
            .field("redirect_uris", &self.redirect_uris)
            .finish_non_exhaustive()
    }
}

/// The ID-token signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevAlg {
    /// ECDSA P-256 with SHA-256; keys are generated.
    Es256,
    /// RSA PKCS#1 v1.5 with SHA-256; give the key as PEM
    /// ([`DevIssuerConfig::signing_key_pem`]).
    Rs256,
}

/// How to run the development issuer.
#[derive(Debug, Clone)]
pub struct DevIssuerConfig {
    /// Where to listen (port 0 picks one).
    pub addr: SocketAddr,
    /// Listen on a non-loopback address anyway. Never in production.
    pub allow_non_loopback: bool,
    /// Registered clients.
    pub clients: Vec<DevClient>,
    /// Users offered on the login page.
    pub users: Vec<DevUser>,
    /// ID-token algorithm.
    pub alg: DevAlg,
    /// The signing key (PKCS#8 PEM for ES256, PKCS#1/PKCS#8 PEM for RS256);
    /// `None` generates an ES256 key.
    pub signing_key_pem: Option<String>,
    /// ID- and access-token lifetime. Default 5 minutes.
    pub token_ttl: Duration,
}

impl DevIssuerConfig {
    /// The clinic's demo users, one per role, with no clients yet:
    /// a patient, a doctor (group `clinicians`), finance (group `finance`),
    /// an external partner (group `partners`) and an administrator (group
    /// `admins`). Map the groups to roles with the role mapper.
    pub fn clinic_demo(addr: SocketAddr) -> Self {
        Self {
            addr,
            allow_non_loopback: false,
            clients: Vec::new(),
            users: vec![
                DevUser::new(
                    "patient-alice",
                    "Alice Smith",
                    "alice@patients.stjohns.example",
                    &[],
                ),
                DevUser::new(
                    "doctor-grey",
                    "Dr Meredith Grey",
                    "grey@stjohns.example",
                    &["clinicians"],
                ),
                DevUser::new(
                    "finance-fiona",
                    "Fiona Banks",
                    "fiona@stjohns.example",
                    &["finance"],
                ),
                DevUser::new(
                    "partner-pat",
                    "Pat Lab (Northside Labs)",
                    "pat@northside-labs.example",
                    &["partners"],
                ),
                DevUser::new(
                    "admin-adam",
                    "Adam Admin",
                    "adam@stjohns.example",
                    &["admins"],
                ),
            ],
            alg: DevAlg::Es256,
            signing_key_pem: None,
            token_ttl: Duration::from_secs(300),
        }
    }
}

struct SigningKey {
    kid: String,
    key: EncodingKey,
    jwk: Jwk,
}

struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    user: usize,
    nonce: Option<String>,
    challenge: String,
    issued: u64,
    used: bool,
}

struct Inner {
    issuer: String,
    config: DevIssuerConfig,
    keys: Mutex<Vec<SigningKey>>,
    codes: Mutex<HashMap<String, CodeGrant>>,
    access: Mutex<HashMap<String, (usize, u64)>>,
    page: minijinja::Environment<'static>,
}

/// A running development issuer. Stops when dropped or on [`DevIssuer::stop`].
pub struct DevIssuer {
    inner: Arc<Inner>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.inner.issuer)
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_token() -> Result<String, AuthzError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|_| AuthzError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

fn new_key(alg: DevAlg, pem: Option<&str>) -> Result<SigningKey, AuthzError> {
    let bad =
        |e: &dyn std::fmt::Display| AuthzError::Config(format!("dev issuer signing key: {e}"));
    let (key, jalg) = match (alg, pem) {
        (DevAlg::Es256, Some(p)) => (
            EncodingKey::from_ec_pem(p.as_bytes()).map_err(|e| bad(&e))?,
            Algorithm::ES256,
        ),
        (DevAlg::Es256, None) => {
            let kp = rcgen::KeyPair::generate().map_err(|e| bad(&e))?;
            (
                EncodingKey::from_ec_der(&kp.serialize_der()),
                Algorithm::ES256,
            )
        }
        (DevAlg::Rs256, Some(p)) => (
            EncodingKey::from_rsa_pem(p.as_bytes()).map_err(|e| bad(&e))?,
            Algorithm::RS256,
        ),
        (DevAlg::Rs256, None) => return Err(bad(&"RS256 needs signing_key_pem")),
    };
    let mut jwk = Jwk::from_encoding_key(&key, jalg).map_err(|e| bad(&e))?;
    let kid = random_token()?.chars().take(16).collect::<String>();
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    Ok(SigningKey { kid, key, jwk })
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in — development issuer</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;background:#f4f6f8;margin:0;color:#1d2733}
main{max-width:34rem;margin:3rem auto;background:#fff;border-radius:12px;box-shadow:0 2px 12px #0002;padding:2rem}
h1{font-size:1.3rem;margin:0 0 .3rem}.warn{background:#fff4d6;border:1px solid #f0c36d;padding:.6rem .8rem;border-radius:8px;font-size:.9rem}
form{margin:0}button{width:100%;text-align:left;margin:.4rem 0;padding:.8rem 1rem;border:1px solid #c9d3dd;border-radius:8px;background:#fafcff;cursor:pointer;font-size:1rem}
button:hover{border-color:#2f6fb3;background:#eef5fc}.who{font-weight:600}.meta{color:#5a6b7b;font-size:.85rem}
</style></head><body><main>
<h1>St John's Clinic — sign in</h1>
<p class="warn">Development issuer: pick a user. No password. Never expose this to a network.</p>
<p>Signing in to <strong>{{ client_id }}</strong>.</p>
<form method="post" action="/authorize">
{% for k, v in params %}<input type="hidden" name="{{ k }}" value="{{ v }}">
{% endfor %}{% for u in users %}<button type="submit" name="user" value="{{ u.subject }}"><span class="who">{{ u.name }}</span><br><span class="meta">{{ u.email }}{% if u.groups %} · {{ u.groups|join(", ") }}{% endif %}</span></button>
{% endfor %}</form></main></body></html>"#;

impl DevIssuer {
    /// Starts listening; the issuer URL is `http://<bound address>`.
    ///
    /// # Errors
    ///
    /// [`AuthzError::Config`] for a non-loopback address without
    /// `allow_non_loopback`, a bad key or a port that cannot be bound.
    pub async fn start(config: DevIssuerConfig) -> Result<Self, AuthzError> {
        if !config.addr.ip().is_loopback() && !config.allow_non_loopback {
            return Err(AuthzError::Config(format!(
                "the development issuer refuses to listen on {} (not loopback); it logs anyone in",
                config.addr
            )));
        }
        let key = new_key(config.alg, config.signing_key_pem.as_deref())?;
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|e| AuthzError::Config(format!("dev issuer bind {}: {e}", config.addr)))?;
        let local = listener
            .local_addr()
            .map_err(|e| AuthzError::Config(e.to_string()))?;
        let mut page = minijinja::Environment::new();
        page.add_template("login.html", PAGE)
            .map_err(|e| AuthzError::Config(e.to_string()))?;
        let inner = Arc::new(Inner {
            issuer: format!("http://{local}"),
            config,
            keys: Mutex::new(vec![key]),
            codes: Mutex::new(HashMap::new()),
            access: Mutex::new(HashMap::new()),
            page,
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize_page).post(authorize_submit))
            .route("/token", axum::routing::post(token))
            .route("/userinfo", get(userinfo))
            .with_state(inner.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self {
            inner,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The issuer URL.
    pub fn url(&self) -> &str {
        &self.inner.issuer
    }

    /// Signs new tokens with a fresh key; the JWKS keeps the previous one.
    ///
    /// # Errors
    ///
    /// Key generation failures; RS256 issuers cannot rotate (their key is
    /// given as PEM).
    pub fn rotate_key(&self) -> Result<(), AuthzError> {
        let key = new_key(self.inner.config.alg, None)?;
        let mut keys = lock(&self.inner.keys);
        keys.insert(0, key);
        keys.truncate(2);
        Ok(())
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for DevIssuer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn discovery(State(s): State<Arc<Inner>>) -> Response {
    let i = &s.issuer;
    let alg = match s.config.alg {
        DevAlg::Es256 => "ES256",
        DevAlg::Rs256 => "RS256",
    };
    axum::Json(serde_json::json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "userinfo_endpoint": format!("{i}/userinfo"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [alg],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "scopes_supported": ["openid", "email", "profile", "roles"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "email", "email_verified", "name", "groups", "roles"],
        "authorization_response_iss_parameter_supported": true,
    }))
    .into_response()
}

async fn jwks(State(s): State<Arc<Inner>>) -> Response {
    let keys = lock(&s.keys).iter().map(|k| k.jwk.clone()).collect();
    axum::Json(JwkSet { keys }).into_response()
}

/// The authorization request's parameters (query on GET, form on POST).
#[derive(Debug, Deserialize, Default)]
struct AuthRequest {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    user: Option<String>,
}

fn bad_request(msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<!doctype html><title>Bad request</title><p>{msg}</p>"
        )),
    )
        .into_response()
}

/// Checks the request; `Err` is the response to send (an error page when the
/// client or redirect URI is not trusted, else a redirect with `error`).
fn check(s: &Inner, r: &AuthRequest) -> Result<(DevClient, String), Box<Response>> {
    let client = r
        .client_id
        .as_deref()
        .and_then(|id| s.config.clients.iter().find(|c| c.client_id == id))
        .ok_or_else(|| Box::new(bad_request("unknown client")))?;
    let redirect = r
        .redirect_uri
        .clone()
        .filter(|u| client.redirect_uris.contains(u))
        .ok_or_else(|| {
            Box::new(bad_request(
                "redirect_uri is not registered for this client",
            ))
        })?;
    let fail = |error: &str| {
        Err(Box::new(error_redirect(
            &redirect,
            error,
            r.state.as_deref(),
            &s.issuer,
        )))
    };
    if r.response_type.as_deref() != Some("code") {
        return fail("unsupported_response_type");
    }
    if !r
        .scope
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .any(|x| x == "openid")
    {
        return fail("invalid_scope");
    }
    let challenge_ok = r
        .code_challenge
        .as_deref()
        .is_some_and(|c| (43..=128).contains(&c.len()));
    if !challenge_ok || r.code_challenge_method.as_deref() != Some("S256") {
        return fail("invalid_request");
    }
    Ok((client.clone(), redirect))
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    match url::Url::parse(base) {
        Ok(mut u) => {
            u.query_pairs_mut().extend_pairs(pairs);
            u.into()
        }
        Err(_) => base.to_owned(),
    }
}

fn error_redirect(redirect: &str, error: &str, state: Option<&str>, iss: &str) -> Response {
    let mut pairs = vec![("error", error), ("iss", iss)];
    if let Some(st) = state {
        pairs.push(("state", st));
    }
    Redirect::to(&with_query(redirect, &pairs)).into_response()
}

async fn authorize_page(State(s): State<Arc<Inner>>, Query(r): Query<AuthRequest>) -> Response {
    let (client, _) = match check(&s, &r) {
        Ok(x) => x,
        Err(resp) => return *resp,
    };
    let params: Vec<(&str, &str)> = [
        ("response_type", &r.response_type),
        ("client_id", &r.client_id),
        ("redirect_uri", &r.redirect_uri),
        ("scope", &r.scope),
        ("state", &r.state),
        ("nonce", &r.nonce),
        ("code_challenge", &r.code_challenge),
        ("code_challenge_method", &r.code_challenge_method),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    .collect();
    let html = s.page.get_template("login.html").and_then(|t| {
        t.render(minijinja::context! {
            client_id => client.client_id,
            params => params,
            users => s.config.users,
        })
    });
    match html {
        Ok(h) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::X_FRAME_OPTIONS, "DENY"),
                // No script at all on this page; styles are inline.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
                ),
            ],
            Html(h),
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn authorize_submit(State(s): State<Arc<Inner>>, Form(r): Form<AuthRequest>) -> Response {
    let (client, redirect) = match check(&s, &r) {
        Ok(x) => x,
        Err(resp) => return *resp,
    };
    let Some(user) = r
        .user
        .as_deref()
        .and_then(|u| s.config.users.iter().position(|x| x.subject == u))
    else {
        return bad_request("unknown user");
    };
    let Ok(code) = random_token() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    {
        let mut codes = lock(&s.codes);
        let t = now();
        codes.retain(|_, g| t < g.issued + 600);
        codes.insert(
            code.clone(),
            CodeGrant {
                client_id: client.client_id,
                redirect_uri: redirect.clone(),
                user,
                nonce: r.nonce.clone(),
                challenge: r.code_challenge.clone().unwrap_or_default(),
                issued: t,
                used: false,
            },
        );
    }
    let mut pairs = vec![("code", code.as_str()), ("iss", s.issuer.as_str())];
    if let Some(st) = r.state.as_deref() {
        pairs.push(("state", st));
    }
    Redirect::to(&with_query(&redirect, &pairs)).into_response()
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn token_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The client authenticated by Basic header or form fields.
fn client_auth(s: &Inner, headers: &HeaderMap, form: &TokenRequest) -> Option<DevClient> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (id, secret) = s.split_once(':')?;
            Some((
                url::form_urlencoded::parse(id.as_bytes())
                    .map(|(k, _)| k.into_owned())
                    .next()
                    .unwrap_or_default(),
                Some(
                    url::form_urlencoded::parse(secret.as_bytes())
                        .map(|(k, _)| k.into_owned())
                        .next()
                        .unwrap_or_default(),
                ),
            ))
        });
    let (id, secret) =
        basic.or_else(|| Some((form.client_id.clone()?, form.client_secret.clone())))?;
    let client = s.config.clients.iter().find(|c| c.client_id == id)?;
    match (&client.client_secret, secret) {
        (Some(want), Some(got)) if ct_eq(want, &got) => Some(client.clone()),
        (None, None) => Some(client.clone()),
        _ => None,
    }
}

#[derive(Serialize)]
struct IdClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    auth_time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    email: &'a str,
    email_verified: bool,
    name: &'a str,
    groups: &'a [String],
    roles: &'a [String],
}

async fn token(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Form(form): Form<TokenRequest>,
) -> Response {
    let Some(client) = client_auth(&s, &headers, &form) else {
        return token_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    if form.grant_type.as_deref() != Some("authorization_code") {
        return token_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let t = now();
    let (user, nonce) = {
        let mut codes = lock(&s.codes);
        let Some(grant) = form.code.as_deref().and_then(|c| codes.get_mut(c)) else {
            return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
        };
        // Single use: a second redemption fails, and so does the first
        // attempt that gets any detail wrong (the code is spent either way).
        let reused = grant.used;
        grant.used = true;
        let verifier_ok = form.code_verifier.as_deref().is_some_and(|v| {
            (43..=128).contains(&v.len())
                && ct_eq(
                    &URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())),
                    &grant.challenge,
                )
        });
        if reused
            || t >= grant.issued + 60
            || grant.client_id != client.client_id
            || form.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str())
            || !verifier_ok
        {
            return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
        }
        (grant.user, grant.nonce.clone())
    };
    let Some(u) = s.config.users.get(user) else {
        return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let ttl = s.config.token_ttl.as_secs();
    let claims = IdClaims {
        iss: &s.issuer,
        sub: &u.subject,
        aud: &client.client_id,
        exp: t + ttl,
        iat: t,
        auth_time: t,
        nonce: nonce.as_deref(),
        email: &u.email,
        email_verified: true,
        name: &u.name,
        groups: &u.groups,
        roles: &u.roles,
    };
    let signed = {
        let keys = lock(&s.keys);
        let Some(k) = keys.first() else {
            return token_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
        };
        let mut h = Header::new(match s.config.alg {
            DevAlg::Es256 => Algorithm::ES256,
            DevAlg::Rs256 => Algorithm::RS256,
        });
        h.kid = Some(k.kid.clone());
        jsonwebtoken::encode(&h, &claims, &k.key)
    };
    let (Ok(id_token), Ok(access)) = (signed, random_token()) else {
        return token_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    };
    {
        let mut a = lock(&s.access);
        a.retain(|_, (_, exp)| t < *exp);
        a.insert(access.clone(), (user, t + ttl));
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ttl,
            "id_token": id_token,
            "scope": "openid email profile roles",
        })),
    )
        .into_response()
}

async fn userinfo(State(s): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let user = token.and_then(|t| {
        let a = lock(&s.access);
        a.get(t).filter(|(_, exp)| now() < *exp).map(|(u, _)| *u)
    });
    match user.and_then(|u| s.config.users.get(u)) {
        Some(u) => axum::Json(serde_json::json!({
            "sub": u.subject, "email": u.email, "email_verified": true,
            "name": u.name, "groups": u.groups, "roles": u.roles,
        }))
        .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
        )
            .into_response(),
    }
}
