//! What every page shares: the application state, the one error type and
//! its mapping to HTTP, the signed-in user, CSRF-checked form posts,
//! templates, security headers and request ids.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequestParts, Request};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, request::Parts};
use axum::response::{Html, IntoResponse, Response};
use careconnect::authz::Principal;
use careconnect::authz::oidc::RelyingParty;
use careconnect::authz::session::{Session, SessionId, Sessions};
use careconnect::authz::{Role, UserId};
use careconnect::core::{Clinic, CoreError};
use careconnect::crypto::tls::Negotiated;
use serde::de::DeserializeOwned;

pub(crate) use crate::forms::Empty;
use crate::forms::{self, Token};
use serde::Serialize;

/// Largest form body (every form but uploads).
pub(crate) const FORM_LIMIT: usize = 16 * 1024;

/// What every handler shares.
pub(crate) struct App {
    /// The clinic: every rule is there.
    pub(crate) clinic: Clinic,
    /// Server-side sessions in the clinic's store.
    pub(crate) sessions: Sessions,
    /// The OpenID provider.
    pub(crate) rp: RelyingParty,
    /// Page templates.
    pub(crate) templates: minijinja::Environment<'static>,
    /// The origin browsers use (`https://host:port`).
    pub(crate) public_url: String,
    /// Largest upload, in bytes.
    pub(crate) upload_limit: u64,
    /// What the last readiness check found (`/readyz` only reads it).
    pub(crate) readiness: std::sync::Mutex<Readiness>,
    /// Uploads in progress at once.
    pub(crate) uploads: Arc<tokio::sync::Semaphore>,
    /// Uploads in progress per user, at most `limits.uploads_per_user`
    /// each ([`App::upload_slot`]).
    pub(crate) uploads_by_user: Arc<PerKey<UserId>>,
    /// Deadlines and per-client caps.
    pub(crate) limits: crate::settings::Limits,
    /// UDAP registration and tokens.
    pub(crate) udap: crate::udap::Udap,
}

/// Slots held per key (a user, a client address), at most `max` each; a
/// slot is given back when its [`Held`] is dropped.
#[derive(Debug)]
pub(crate) struct PerKey<K: Eq + std::hash::Hash> {
    max: usize,
    held: std::sync::Mutex<std::collections::HashMap<K, usize>>,
}

/// One slot of a [`PerKey`], held until dropped.
#[derive(Debug)]
pub(crate) struct Held<K: Eq + std::hash::Hash + Clone> {
    owner: Arc<PerKey<K>>,
    key: K,
}

impl<K: Eq + std::hash::Hash + Clone> PerKey<K> {
    /// At most `max` slots per key.
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: std::sync::Mutex::default(),
        })
    }

    /// A slot for `key`, unless it holds `max` already.
    pub(crate) fn take(self: &Arc<Self>, key: K) -> Option<Held<K>> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Held {
            owner: self.clone(),
            key,
        })
    }
}

impl<K: Eq + std::hash::Hash + Clone> Drop for Held<K> {
    fn drop(&mut self) {
        let mut held = self
            .owner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The outcome of the last readiness check: what did not answer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Readiness {
    /// `storage`, `kms`, `keys`, `issuer`; empty when ready.
    pub(crate) failing: Vec<&'static str>,
    /// Whether a check has run yet.
    pub(crate) checked: bool,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// The state handlers receive.
pub(crate) type State = Arc<App>;

impl App {
    /// The identity of subject `subject` at this clinic's provider, as a
    /// path parameter or form names it (an impossible one is a 404).
    /// Subjects that could be read as a path (`..`, slashes, control
    /// characters) are refused here, whatever the provider allows.
    pub(crate) fn user_id(&self, subject: &str) -> Result<UserId, AppError> {
        let pathlike = subject == "."
            || subject == ".."
            || subject
                .chars()
                .any(|c| c == '/' || c == '\\' || c.is_control());
        if pathlike {
            return Err(AppError::NotFound);
        }
        UserId::new(self.rp.issuer(), subject).map_err(|_| AppError::NotFound)
    }

    /// A slot for one more upload by `user`, unless they have
    /// `limits.uploads_per_user` in progress (then [`AppError::Busy`]); the
    /// slot is given back when dropped.
    pub(crate) fn upload_slot(&self, user: &UserId) -> Result<Held<UserId>, AppError> {
        self.uploads_by_user
            .take(user.clone())
            .ok_or(AppError::Busy)
    }

    /// Renders `template` with `ctx`.
    pub(crate) fn render(&self, template: &str, ctx: impl Serialize) -> Result<Response, AppError> {
        let page = self
            .templates
            .get_template(template)
            .and_then(|t| t.render(ctx))
            .map_err(|e| AppError::Internal(format!("template {template}: {e}")))?;
        Ok(Html(page).into_response())
    }
}

/// Everything a request can fail with; mapped to a status and a generic
/// page once, here. Causes go to the log, never into a response.
#[derive(Debug)]
pub(crate) enum AppError {
    /// A refusal or failure of the domain layer.
    Core(CoreError),
    /// No session: 401.
    SignedOut,
    /// A form without this session's CSRF token, or from another origin:
    /// 403.
    Forged,
    /// A malformed request: 400, naming what.
    BadRequest(&'static str),
    /// Unknown id or route: 404.
    NotFound,
    /// A body over its limit: 413.
    TooLarge,
    /// Too many uploads at once: 503, try again.
    Busy,
    /// Something broke: 500, the cause logged.
    Internal(String),
    /// A refusal made below the handlers (the framework's, a layer's): the
    /// status with a generic page, its text never shown.
    Status(StatusCode),
}

impl From<forms::FormError> for AppError {
    fn from(e: forms::FormError) -> Self {
        Self::BadRequest(e.0)
    }
}

impl From<CoreError> for AppError {
    fn from(e: CoreError) -> Self {
        Self::Core(e)
    }
}

impl From<careconnect::authz::AuthzError> for AppError {
    fn from(e: careconnect::authz::AuthzError) -> Self {
        Self::Core(CoreError::Authz(e))
    }
}

impl AppError {
    fn status_and_text(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::SignedOut => (
                StatusCode::UNAUTHORIZED,
                "Please sign in",
                "This page needs you to be signed in.",
            ),
            Self::Forged => (
                StatusCode::FORBIDDEN,
                "Request refused",
                "The form was stale or did not come from this site. Go back, reload the page and try again.",
            ),
            Self::BadRequest(what) => (StatusCode::BAD_REQUEST, "Bad request", what),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing here, or nothing you may see.",
            ),
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Too large",
                "The upload is larger than the clinic accepts.",
            ),
            Self::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Busy",
                "The clinic is taking many uploads just now. Nothing was stored. Please try again in a moment.",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The clinic could not do this just now. Nothing was changed. Please try again.",
            ),
            Self::Status(status) => (
                *status,
                status.canonical_reason().unwrap_or("Not accepted"),
                "The request was not accepted. Nothing was changed.",
            ),
            Self::Core(e) => match e {
                CoreError::Denied(_) => (
                    StatusCode::FORBIDDEN,
                    "Not allowed",
                    "Your role does not allow this. The attempt was recorded.",
                ),
                CoreError::NotFound | CoreError::Erased => (
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "There is nothing here, or nothing you may see.",
                ),
                CoreError::Invalid(what) => (StatusCode::BAD_REQUEST, "Not accepted", what),
                CoreError::ReasonRequired => (
                    StatusCode::BAD_REQUEST,
                    "A reason is required",
                    "State why you need access (at least ten characters).",
                ),
                CoreError::Conflict(what) => (StatusCode::CONFLICT, "Not possible now", what),
                CoreError::TooLarge { .. } => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Too large",
                    "The upload is larger than the clinic accepts.",
                ),
                CoreError::AuditTampered => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The audit log needs attention",
                    "The clinic's audit log failed its integrity check, so nothing that must be recorded can be done. Nothing was changed. An administrator's page says what was found and how to recover.",
                ),
                CoreError::KeyringStale => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again shortly",
                    "The clinic is refreshing its keys. Nothing was changed.",
                ),
                _ => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The clinic could not do this just now. Nothing was changed. Please try again.",
                ),
            },
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, title, detail) = self.status_and_text();
        match &self {
            Self::Internal(cause) => tracing::error!(%cause, "request failed"),
            Self::Core(e) if status.is_server_error() => {
                tracing::error!(error = %e, "request failed");
            }
            other => tracing::info!(status = status.as_u16(), kind = ?kind(other), "refused"),
        }
        let action = if status == StatusCode::UNAUTHORIZED {
            r#"<p><a class="button" href="/login">Sign in</a></p>"#
        } else {
            r#"<p><a href="/">Back to the start page</a></p>"#
        };
        let body = format!(
            r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{title} — St John's Clinic</title><link rel="stylesheet" href="/static/style.css"><link rel="icon" href="/static/favicon.svg" type="image/svg+xml"></head><body><header class="top"><a class="brand" href="/">St John's Clinic</a></header><main><section class="card error"><h1>{title}</h1><p>{detail}</p>{action}<p class="meta">Error {code}</p></section></main></body></html>"#,
            title = escape(title),
            detail = escape(detail),
            code = status.as_u16(),
        );
        (status, Html(body)).into_response()
    }
}

/// The variant name only (no payload) for the log.
fn kind(e: &AppError) -> &'static str {
    match e {
        AppError::Core(CoreError::Denied(_)) => "denied",
        AppError::Core(CoreError::NotFound) => "not-found",
        AppError::Core(CoreError::Invalid(_)) => "invalid",
        AppError::Core(CoreError::Conflict(_)) => "conflict",
        AppError::Core(_) => "core",
        AppError::SignedOut => "signed-out",
        AppError::Forged => "forged",
        AppError::BadRequest(_) => "bad-request",
        AppError::NotFound => "not-found",
        AppError::TooLarge => "too-large",
        AppError::Busy => "busy",
        AppError::Internal(_) => "internal",
        AppError::Status(_) => "status",
    }
}

/// HTML-escapes `s`.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// What the request's TLS connection negotiated (version, key exchange,
/// suite): put in every request's extensions by the server, shown in the
/// page footer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnTls(pub(crate) Negotiated);

/// The address the connection came from: put in every request's
/// extensions by the server (UDAP refusals are throttled per address).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) std::net::IpAddr);

impl ClientAddr {
    /// The client's address; unspecified when the server did not say
    /// (never, when served by `server::serve`).
    pub(crate) fn of(ext: Option<axum::Extension<Self>>) -> std::net::IpAddr {
        ext.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |e| e.0.0)
    }
}

impl ConnTls {
    /// The footer's words, e.g. `TLS 1.3, X25519MLKEM768, TLS13_AES_256_GCM_SHA384
    /// (post-quantum key exchange)`.
    pub(crate) fn describe(&self) -> String {
        if self.0.is_post_quantum() {
            format!("{} (post-quantum key exchange)", self.0)
        } else {
            self.0.to_string()
        }
    }
}

/// The signed-in user of a request.
#[derive(Debug, Clone)]
pub(crate) struct User {
    /// Who they are and their roles.
    pub(crate) principal: Principal,
    /// Their session (for its CSRF token; its roles are only those the
    /// claims gave).
    pub(crate) session: Session,
    /// The connection this request came on.
    pub(crate) tls: Option<ConnTls>,
}

impl User {
    /// What every page's header shows.
    pub(crate) fn view(&self) -> Me {
        let roles: Vec<&'static str> = self.principal.roles.iter().map(Role::as_str).collect();
        let has = |r| self.principal.roles.contains(r);
        let admin = has(Role::Admin);
        Me {
            subject: self.principal.user.subject().to_owned(),
            roles,
            csrf: self.session.csrf_token().to_owned(),
            patient: has(Role::Patient),
            doctor: has(Role::Doctor) || admin,
            finance: has(Role::Finance) || admin,
            medicloud: has(Role::Doctor) || has(Role::External) || admin,
            admin,
            tls: self.tls.map(|t| t.describe()),
        }
    }
}

/// The signed-in user as templates see them. The subsystem flags only
/// choose which links to show; every request is still decided by the
/// clinic.
#[derive(Debug, Serialize)]
pub(crate) struct Me {
    subject: String,
    roles: Vec<&'static str>,
    csrf: String,
    patient: bool,
    doctor: bool,
    finance: bool,
    medicloud: bool,
    admin: bool,
    tls: Option<String>,
}

async fn session_of(parts: &Parts, app: &App) -> Result<Option<User>, AppError> {
    let Some(id) = parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(SessionId::from_cookie_header)
    else {
        return Ok(None);
    };
    let Some(session) = app.sessions.get(&id).await? else {
        return Ok(None);
    };
    // The roles the claims gave at sign-in and those stored now: an
    // administrator's change reaches this session within seconds.
    let principal = app.clinic.principal(&session.user, session.roles).await?;
    let tls = parts.extensions.get::<ConnTls>().copied();
    Ok(Some(User {
        principal,
        session,
        tls,
    }))
}

impl FromRequestParts<State> for User {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &State) -> Result<Self, AppError> {
        session_of(parts, app).await?.ok_or(AppError::SignedOut)
    }
}

impl OptionalFromRequestParts<State> for User {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &State) -> Result<Option<Self>, AppError> {
        session_of(parts, app).await
    }
}

/// Whether the request has a session: [`AppError::SignedOut`] if not.
/// Decides authentication before a malformed parameter is judged, so
/// someone signed out learns only that they must sign in.
async fn signed_in(parts: &mut Parts, app: &State) -> Result<(), AppError> {
    session_of(parts, app)
        .await?
        .map(drop)
        .ok_or(AppError::SignedOut)
}

/// A path parameter, through the one error type: one that does not parse
/// (not UTF-8, say) names nothing, 404; someone signed out gets 401 first.
/// The framework's text never reaches the client.
#[derive(Debug)]
pub(crate) struct Path<T>(pub(crate) T);

impl<T: DeserializeOwned + Send> FromRequestParts<State> for Path<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &State) -> Result<Self, AppError> {
        match <axum::extract::Path<T> as FromRequestParts<State>>::from_request_parts(parts, app)
            .await
        {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(_) => {
                signed_in(parts, app).await?;
                Err(AppError::NotFound)
            }
        }
    }
}

/// A query string, through the one error type: one that does not parse is
/// a generic 400; someone signed out gets 401 first.
#[derive(Debug)]
pub(crate) struct Query<T>(pub(crate) T);

impl<T: DeserializeOwned + Send> FromRequestParts<State> for Query<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &State) -> Result<Self, AppError> {
        match <axum::extract::Query<T> as FromRequestParts<State>>::from_request_parts(parts, app)
            .await
        {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(_) => {
                signed_in(parts, app).await?;
                Err(AppError::BadRequest(
                    "The address has a parameter this page does not understand.",
                ))
            }
        }
    }
}

/// Refuses a state-changing request that a browser says came from another
/// site (`Origin` or `Sec-Fetch-Site`): defence in depth beside the CSRF
/// token.
pub(crate) fn same_origin(headers: &HeaderMap, public_url: &str) -> Result<(), AppError> {
    if let Some(origin) = headers.get(header::ORIGIN)
        && origin.as_bytes() != public_url.as_bytes()
    {
        return Err(AppError::Forged);
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return Err(AppError::Forged);
    }
    Ok(())
}

/// A form post by a signed-in user, its CSRF token checked before the form
/// is read: 401 without a session, 403 for a missing or wrong token or a
/// cross-site origin, 413 over [`FORM_LIMIT`], 400 for a malformed form.
#[derive(Debug)]
pub(crate) struct Post<T> {
    /// Who posted.
    pub(crate) user: User,
    /// What.
    pub(crate) form: T,
}

impl<T: DeserializeOwned> FromRequest<State> for Post<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, app: &State) -> Result<Self, AppError> {
        let (mut parts, body) = req.into_parts();
        let user = <User as FromRequestParts<State>>::from_request_parts(&mut parts, app).await?;
        same_origin(&parts.headers, &app.public_url)?;
        let bytes = axum::body::to_bytes(body, FORM_LIMIT)
            .await
            .map_err(|_| AppError::TooLarge)?;
        let token: Token = forms::decode(&bytes).map_err(|_| AppError::Forged)?;
        if !user.session.csrf_matches(&token.csrf) {
            return Err(AppError::Forged);
        }
        let is_form = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return Err(AppError::BadRequest("expected a form"));
        }
        let form = forms::decode(&bytes)?;
        Ok(Self { user, form })
    }
}

/// A redirect after a successful post (303: the browser follows with GET).
pub(crate) fn see_other(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/")),
        )],
    )
        .into_response()
}

/// Paths another site may link to: the start page, sign-in and its
/// callback (the provider sends the browser there), assets and probes.
fn linkable(path: &str) -> bool {
    matches!(
        path,
        "/" | "/login" | "/auth/callback" | "/healthz" | "/readyz" | "/favicon.ico"
    ) || path.starts_with("/static/")
}

/// The first thing every request meets: request ids are ours alone (an
/// incoming `X-Request-Id` is dropped), and a request a browser says came
/// from another site reaches nothing but [`linkable`] paths: a link
/// elsewhere cannot make a signed-in user open a record or download a
/// document (each an audited access) without meaning to.
pub(crate) async fn first_checks(mut req: Request, next: axum::middleware::Next) -> Response {
    req.headers_mut().remove("x-request-id");
    let cross_site = req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site");
    if cross_site && !linkable(req.uri().path()) {
        return AppError::Forged.into_response();
    }
    generic_errors(next.run(req).await)
}

/// A refusal whose body is the framework's plain text (a rejection no
/// handler saw: a method not allowed, a body that stalled) gets the generic
/// page for its status instead: error text never reaches users. JSON (the
/// UDAP endpoints') and pages are left as they are.
fn generic_errors(r: Response) -> Response {
    let plain = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return r;
    }
    let mut page = AppError::Status(status).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = r.headers().get(&name) {
            page.headers_mut().insert(name, v.clone());
        }
    }
    page
}
