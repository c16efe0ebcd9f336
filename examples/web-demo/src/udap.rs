//! UDAP at the clinic: `/.well-known/udap`, `POST /register` and
//! `POST /token`, translated to and from `careconnect_core::udap`; and the
//! communities, from the settings file or a development community under the
//! data directory.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use careconnect::authz::udap::dev::{DevCommunity, KeyKind};
use careconnect::authz::udap::{
    CrlFiles, MAX_REGISTRATION_BODY, ServerCommunity, TrustCommunity, UdapConfig, UdapError,
};
use careconnect::core::Clinic;
use careconnect::core::udap::ClinicUdap;
use serde::Deserialize;

use crate::settings::Settings;
use crate::web;

/// The development community's name.
pub const DEV_COMMUNITY: &str = "urn:careconnect:dev-community";
/// The identity (`iss`, URI SAN) of the development client certificate the
/// demo writes to `data_dir/udap/dev-client/` for `udap-register`.
pub const DEV_CLIENT_ISS: &str = "https://dev-app.stjohns.example/udap";
/// Scopes offered when the settings name none.
pub const DEFAULT_SCOPES: &[&str] = &[
    "system/Patient.read",
    "system/Appointment.read",
    "system/MedicationRequest.read",
];
/// Registrations and token requests verified at once (each checks an RSA
/// or ECDSA signature and a chain); more get a 503.
const MAX_IN_FLIGHT: usize = 32;
/// How long an access token lives (the IG allows at most an hour).
const TOKEN_LIFETIME: u64 = 900;

/// `[udap]` in the settings file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdapFile {
    /// Scopes clients may register for.
    pub scopes: Option<Vec<String>>,
    /// The communities, default first.
    #[serde(default)]
    pub community: Vec<CommunityFile>,
}

/// One `[[udap.community]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommunityFile {
    /// Its URI.
    pub name: String,
    /// Trust anchors (PEM).
    pub anchors: PathBuf,
    /// Intermediates clients may leave out (PEM).
    pub intermediates: Option<PathBuf>,
    /// Revocation lists (DER or PEM), re-read hourly.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Refuse certificates whose issuer has no list.
    #[serde(default)]
    pub require_crls: bool,
    /// This server's chain in the community (PEM, leaf first; URI SAN =
    /// `public_url`).
    pub cert: PathBuf,
    /// Its RSA key (PKCS#8 PEM).
    pub key: PathBuf,
}

/// The clinic's UDAP server and where each community's CRLs come from.
pub(crate) struct Udap {
    pub(crate) server: ClinicUdap,
    pub(crate) crls: Vec<(Arc<TrustCommunity>, CrlFiles)>,
    busy: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Udap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Udap")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

fn read(p: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// Builds the UDAP server from the settings: the configured communities, or
/// the development community (created on first run, with a client
/// certificate for `udap-register` beside it).
pub(crate) async fn build(settings: &Settings, clinic: &Clinic) -> Result<Udap> {
    let file = settings.udap.clone().unwrap_or(UdapFile {
        scopes: None,
        community: vec![],
    });
    let mut communities = Vec::new();
    let mut crls = Vec::new();
    if file.community.is_empty() {
        let dir = settings.dev_udap_dir();
        let dev = DevCommunity::load_or_create(&dir, DEV_COMMUNITY)
            .context("development UDAP community")?;
        let client_dir = dir.join("dev-client");
        if !client_dir.join("chain.pem").exists() {
            dev.issue(DEV_CLIENT_ISS, KeyKind::P256, 365)?
                .save(&client_dir)?;
        }
        // The server's own certificate names the URL it serves at now.
        let ours = tokio::task::spawn_blocking({
            let url = settings.public_url.clone();
            move || dev.issue(&url, KeyKind::Rsa2048, 30).map(|c| (dev, c))
        })
        .await??;
        let (dev, cert) = ours;
        let trust = Arc::new(TrustCommunity::new(
            dev.name(),
            dev.anchor_pem().as_bytes(),
        )?);
        communities.push(ServerCommunity::new(
            trust,
            &cert.chain_pem,
            cert.key_pem.as_bytes(),
        )?);
    } else {
        for c in &file.community {
            let mut trust = TrustCommunity::new(&c.name, &read(&c.anchors)?)?
                .require_revocation_data(c.require_crls);
            if let Some(i) = &c.intermediates {
                trust = trust.with_intermediates(&read(i)?)?;
            }
            let trust = Arc::new(trust);
            if !c.crls.is_empty() {
                let source = CrlFiles(c.crls.clone());
                trust
                    .refresh_crls(&source)
                    .await
                    .with_context(|| format!("CRLs of community {}", c.name))?;
                crls.push((trust.clone(), source));
            }
            communities.push(
                ServerCommunity::new(trust, &read(&c.cert)?, &read(&c.key)?)
                    .with_context(|| format!("server certificate of community {}", c.name))?,
            );
        }
    }
    let scopes = file
        .scopes
        .unwrap_or_else(|| DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect());
    if scopes.is_empty() {
        bail!("[udap] scopes must not be empty");
    }
    let base = settings.public_url.clone();
    let config = UdapConfig {
        registration_endpoint: format!("{base}/register"),
        token_endpoint: format!("{base}/token"),
        base_url: base,
        scopes,
        token_lifetime: TOKEN_LIFETIME,
    };
    Ok(Udap {
        server: clinic.udap(config, communities)?,
        crls,
        busy: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
    })
}

/// The routes, with a body limit that fits a registration.
pub(crate) fn routes(app: web::State) -> Router {
    Router::new()
        .route("/.well-known/udap", get(metadata))
        .route("/register", post(register))
        .route("/token", post(token))
        .layer(DefaultBodyLimit::max(MAX_REGISTRATION_BODY))
        .with_state(app)
}

fn json(status: u16, body: &serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn refuse(e: &UdapError) -> Response {
    if e.status() >= 500 {
        tracing::warn!(error = %e, "udap request failed");
    }
    json(e.status(), &e.to_json())
}

/// A body that did not arrive: over the limit (413), or cut off or
/// stalled past the body deadline (408). JSON like every UDAP answer; the
/// framework's text never reaches the client.
fn unread(e: &BytesRejection) -> Response {
    let (status, why) = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        (413, "the request body is larger than 64 KiB")
    } else {
        (
            408,
            "the request body did not arrive in full, or not in time",
        )
    };
    json(
        status,
        &serde_json::json!({ "error": "invalid_request", "error_description": why }),
    )
}

fn busy() -> Response {
    let mut r = json(
        503,
        &serde_json::json!({
            "error": "temporarily_unavailable",
            "error_description": "too many requests at once; retry shortly",
        }),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

async fn metadata(State(app): State<web::State>, RawQuery(q): RawQuery) -> Response {
    let pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(q.as_deref().unwrap_or(""));
    let community = match pairs.as_deref() {
        Ok([]) => None,
        Ok([(k, v)]) if k == "community" => Some(v.as_str()),
        _ => {
            return refuse(&UdapError::InvalidRequest(
                "the only query parameter is one community",
            ));
        }
    };
    match app.udap.server.metadata(community) {
        Ok(m) => json(200, &m),
        // The IG (STU 1.1, 2.4): an unknown community may be answered with
        // 204 No Content.
        Err(UdapError::UnknownCommunity) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refuse(&e),
    }
}

async fn register(
    State(app): State<web::State>,
    client: Option<Extension<web::ClientAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !content_type_is(&headers, "application/json") {
        return refuse(&UdapError::InvalidClientMetadata(
            "Content-Type must be application/json",
        ));
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => return unread(&e),
    };
    let Ok(_permit) = app.udap.busy.try_acquire() else {
        return busy();
    };
    match app
        .udap
        .server
        .register(&body, web::ClientAddr::of(client))
        .await
    {
        Ok(reg) => json(reg.status(), &reg.body),
        Err(e) => refuse(&e),
    }
}

async fn token(
    State(app): State<web::State>,
    client: Option<Extension<web::ClientAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !content_type_is(&headers, "application/x-www-form-urlencoded") {
        return refuse(&UdapError::InvalidRequest(
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return refuse(&UdapError::InvalidRequest(
            "UDAP clients authenticate with client_assertion, not an Authorization header",
        ));
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => return unread(&e),
    };
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return refuse(&UdapError::InvalidRequest("the body is not a form"));
    };
    let Ok(_permit) = app.udap.busy.try_acquire() else {
        return busy();
    };
    match app
        .udap
        .server
        .token(&form, web::ClientAddr::of(client))
        .await
    {
        Ok(t) => json(200, &t.to_json()),
        Err(e) => refuse(&e),
    }
}
