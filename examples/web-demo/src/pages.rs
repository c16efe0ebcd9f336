//! The routes: sign-in and sign-out, the start page, health probes and
//! static assets here; each subsystem's pages in its own module.

mod admin;
mod fincare;
mod medicloud;
mod medrecords;
mod patient;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use careconnect::authz::Principal;
use careconnect::authz::oidc::{Callback, LOGIN_COOKIE, LoginStart};
use careconnect::authz::session::{SessionId, Sessions};
use serde::Serialize;

use crate::web::{self, AppError, Empty, Post, User};

const STYLE: &str = include_str!("../static/style.css");
const ICON: &str = include_str!("../static/favicon.svg");
const TEMPLATES: [(&str, &str); 10] = [
    ("base.html", include_str!("../templates/base.html")),
    ("home.html", include_str!("../templates/home.html")),
    (
        "careconnect.html",
        include_str!("../templates/careconnect.html"),
    ),
    ("fincare.html", include_str!("../templates/fincare.html")),
    (
        "medrecords.html",
        include_str!("../templates/medrecords.html"),
    ),
    ("patient.html", include_str!("../templates/patient.html")),
    ("eps.html", include_str!("../templates/eps.html")),
    (
        "medicloud.html",
        include_str!("../templates/medicloud.html"),
    ),
    ("admin.html", include_str!("../templates/admin.html")),
    (
        "audit_broken.html",
        include_str!("../templates/audit_broken.html"),
    ),
];

/// The page templates (auto-escaped HTML), with the filters they use.
///
/// # Errors
///
/// A template that does not parse (a bug caught by every test).
pub(crate) fn templates() -> anyhow::Result<minijinja::Environment<'static>> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    for (name, text) in TEMPLATES {
        env.add_template(name, text)?;
    }
    env.add_filter("when", |secs: u64| when(secs));
    env.add_filter("day", |secs: u64| day(secs));
    env.add_filter("money", |pence: u32| {
        format!("£{}.{:02}", pence / 100, pence % 100)
    });
    Ok(env)
}

/// `Tue 1 Dec 2026, 14:30 UTC`.
pub(crate) fn when(secs: u64) -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short] [day padding:none] [month repr:short] [year], [hour]:[minute] UTC"
    );
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

/// `2026-12-01`.
pub(crate) fn day(secs: u64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

/// Every route but uploads (whose body limit is the upload limit).
pub(crate) fn routes(app: web::State) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/static/style.css", get(style))
        .route("/static/favicon.svg", get(icon))
        .route("/favicon.ico", get(icon))
        .merge(patient::routes())
        .merge(fincare::routes())
        .merge(medrecords::routes())
        .merge(medicloud::routes())
        .merge(admin::routes())
        .fallback(not_found)
        .with_state(app)
}

/// The upload route, with its own body limit.
pub(crate) fn upload_routes(app: web::State) -> Router {
    medicloud::upload_routes(app)
}

async fn not_found() -> AppError {
    AppError::NotFound
}

#[derive(Serialize)]
struct HomeView {
    me: Option<web::Me>,
    issuer: String,
    tls: Option<String>,
}

async fn home(
    State(app): State<web::State>,
    tls: Option<axum::Extension<web::ConnTls>>,
    user: Option<User>,
) -> Result<Response, AppError> {
    app.render(
        "home.html",
        HomeView {
            me: user.map(|u| u.view()),
            issuer: app.rp.issuer().to_owned(),
            tls: tls.map(|t| t.0.describe()),
        },
    )
}

async fn login(State(app): State<web::State>) -> Result<Response, AppError> {
    let start = app.rp.begin()?;
    let location = HeaderValue::from_str(start.url.as_str())
        .map_err(|_| AppError::Internal("authorization URL".into()))?;
    let cookie = HeaderValue::from_str(&start.set_cookie())
        .map_err(|_| AppError::Internal("login cookie".into()))?;
    Ok((
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location), (header::SET_COOKIE, cookie)],
    )
        .into_response())
}

async fn callback(
    State(app): State<web::State>,
    headers: HeaderMap,
    cb: Result<Query<Callback>, QueryRejection>,
) -> Result<Response, AppError> {
    let cookies = cookie_header(&headers);
    // Authentication first: a callback belongs to a sign-in this browser
    // started (its cookie); without one it is 401, whatever its query.
    let started = cookies.as_deref().is_some_and(|c| {
        c.split(';')
            .any(|kv| kv.trim_start().starts_with(&format!("{LOGIN_COOKIE}=")))
    });
    let anonymous = !started
        && cookies
            .as_deref()
            .and_then(SessionId::from_cookie_header)
            .is_none();
    if anonymous {
        return Err(AppError::SignedOut);
    }
    let Ok(Query(cb)) = cb else {
        return Err(AppError::BadRequest(
            "The sign-in could not be completed. Please sign in again.",
        ));
    };
    let clear_login = HeaderValue::from_str(&LoginStart::clear_cookie())
        .map_err(|_| AppError::Internal("cookie".into()))?;
    let claims = match app.rp.complete_in_browser(&cb, cookies.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "login refused");
            let mut r = AppError::BadRequest(
                "The sign-in could not be completed (expired, replayed or from another browser). Please sign in again.",
            )
            .into_response();
            r.headers_mut().append(header::SET_COOKIE, clear_login);
            return Ok(r);
        }
    };
    // Audited with every role the user holds now; the session keeps only
    // the roles the claims gave (stored roles are read again per request).
    let principal = app.clinic.sign_in(&claims).await?;
    let claimed = Principal::new(principal.user, app.clinic.claim_roles(&claims));
    let previous = cookies.as_deref().and_then(SessionId::from_cookie_header);
    let (id, _) = app.sessions.login(previous.as_ref(), claimed).await?;
    let session = HeaderValue::from_str(&app.sessions.set_cookie(&id))
        .map_err(|_| AppError::Internal("cookie".into()))?;
    let mut r = web::see_other("/");
    r.headers_mut().append(header::SET_COOKIE, clear_login);
    r.headers_mut().append(header::SET_COOKIE, session);
    Ok(r)
}

/// Every `Cookie` header of a request, joined (HTTP/2 may split them).
fn cookie_header(headers: &HeaderMap) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

async fn logout(
    State(app): State<web::State>,
    headers: HeaderMap,
    _: Post<Empty>,
) -> Result<Response, AppError> {
    if let Some(id) = cookie_header(&headers)
        .as_deref()
        .and_then(SessionId::from_cookie_header)
    {
        app.sessions.logout(&id).await?;
    }
    let mut r = web::see_other("/");
    let clear = HeaderValue::from_str(&Sessions::clear_cookie())
        .map_err(|_| AppError::Internal("cookie".into()))?;
    r.headers_mut().append(header::SET_COOKIE, clear);
    Ok(r)
}

/// Ends every session of the signed-in user, in every browser and on
/// every node (this one's cookie too).
async fn logout_everywhere(
    State(app): State<web::State>,
    post: Post<Empty>,
) -> Result<Response, AppError> {
    let ended = app
        .sessions
        .logout_everywhere(&post.user.principal.user)
        .await?;
    tracing::info!(ended, "signed out everywhere");
    let mut r = web::see_other("/");
    let clear = HeaderValue::from_str(&Sessions::clear_cookie())
        .map_err(|_| AppError::Internal("cookie".into()))?;
    r.headers_mut().append(header::SET_COOKIE, clear);
    Ok(r)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the store, the KMS and the OpenID provider answered the last
/// background check (every few seconds); 503 naming which did not.
async fn readyz(State(app): State<web::State>) -> Response {
    let r = app
        .readiness
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if r.checked && r.failing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else if !r.checked {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", r.failing.join(", ")),
        )
            .into_response()
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}
