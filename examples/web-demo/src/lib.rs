//! St John's Clinic, the web demo: the five subsystems of
//! `careconnect-core` behind one OpenID Connect login, served over TLS 1.3
//! with HTTP/1.1 and HTTP/2.
//!
//! This crate is thin on purpose: it reads settings, wires the layers
//! together and translates HTTP into calls of the clinic (every rule,
//! every check, every audit entry is there) and the clinic's answers into
//! HTML.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use careconnect_web_demo::{Settings, start};
//! let settings = Settings::embedded("data".as_ref(), "127.0.0.1:8443".parse()?);
//! let running = start(settings).await?; // SQLite, local KMS, dev issuer, dev certificate
//! println!("open {}", running.url());
//! running.stop().await; // in-flight requests finish
//! # Ok(()) }
//! ```

pub mod forms;
mod maintain;
mod pages;
mod server;
pub mod settings;
pub mod udap;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderName, HeaderValue, Request, header};
use careconnect::authz::dev_issuer::{DevClient, DevIssuer, DevIssuerConfig, DevUser};
use careconnect::authz::oidc::OidcConfig;
use careconnect::authz::session::SessionConfig;
use careconnect::core::seed::DEMO_USERS;
use careconnect::core::{Clinic, KmsConfig};
use careconnect::crypto::tls::{DevPki, ServerTls};
use tokio::sync::watch;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;

pub use settings::Settings;

/// How long a node answers a session from memory, as it does stored roles
/// (`ROLES_RECHECK`): a sign-out on this node ends the session here at once,
/// one on another node (or a session row changed in the database) reaches
/// this node within this time, and a page costs no session read.
pub const SESSION_RECHECK: Duration = Duration::from_secs(2);

/// The client id the demo registers at its development issuer.
pub const DEV_CLIENT_ID: &str = "careconnect-web-demo";

/// The strict Content-Security-Policy of every response: nothing but this
/// origin's stylesheet and images; no scripts at all; no framing.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Uploads streaming at once (each holds a blob being written and a KMS
/// data key); more get a 503.
const MAX_UPLOADS: usize = 16;

/// A running demo.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    url: String,
    issuer: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    dev_issuer: Option<DevIssuer>,
}

impl Running {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL browsers use.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The OpenID issuer users sign in at.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Stops accepting, lets in-flight requests finish (bounded), stops the
    /// development issuer.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Some(i) = self.dev_issuer {
            i.stop().await;
        }
    }

    /// Waits for SIGINT or SIGTERM, then stops as [`Running::stop`].
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!("signal received: stopping");
        self.stop().await;
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn dev_users() -> Vec<DevUser> {
    DEMO_USERS
        .iter()
        .map(|u| {
            let first = u.subject.split('-').nth(1).unwrap_or(u.subject);
            DevUser {
                subject: u.subject.into(),
                name: u.name.into(),
                email: format!("{first}@stjohns.example"),
                groups: Vec::new(),
                roles: vec![u.role.as_str().into()],
            }
        })
        .collect()
}

fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    Ok(hex::encode(b))
}

/// Starts the demo: opens (on first run makes) the clinic, seeds it if
/// asked, starts the development issuer unless a real one is configured,
/// and serves. Returns once it listens.
///
/// # Errors
///
/// Settings that cannot work; the database, KMS or issuer unreachable; the
/// port taken.
pub async fn start(mut settings: Settings) -> Result<Running> {
    settings.validate()?;
    let templates = pages::templates()?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    if settings.listen.port() == 0 {
        // A port picked now (tests): the public URL follows it.
        settings.public_url = format!("https://{addr}");
    }
    std::fs::create_dir_all(&settings.clinic.data_dir)
        .with_context(|| format!("creating {}", settings.clinic.data_dir.display()))?;
    let kms = settings
        .clinic
        .connect_kms()
        .await?
        .map(KmsConfig::Provided);
    let mut config = settings.clinic.clone().into_config(kms)?;
    config.role_rules = settings.role_rules.clone();
    if let Some(n) = settings.max_upload_bytes {
        config.medicloud.max_bytes = n;
    }
    let upload_limit = config.medicloud.max_bytes;
    let clinic = Clinic::open(config).await.context("opening the clinic")?;
    let redirect = format!("{}/auth/callback", settings.public_url);
    let (dev_issuer, oidc) = match &settings.oidc {
        Some((file, secret)) => {
            let mut c = OidcConfig::new(file.issuer.clone(), file.client_id.clone(), redirect);
            if let Some(s) = secret {
                c = c.with_secret(s.clone());
            }
            if let Some(ca) = &file.ca_pem {
                c.extra_roots_pem =
                    Some(std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?);
            }
            (None, c)
        }
        None => {
            let secret = random_hex(32)?;
            let mut dev = DevIssuerConfig::clinic_demo(settings.dev_issuer);
            dev.users = dev_users();
            dev.clients = vec![DevClient::confidential(DEV_CLIENT_ID, &secret, &redirect)];
            let issuer = DevIssuer::start(dev)
                .await
                .context("starting the development OpenID issuer")?;
            let c = OidcConfig::new(issuer.url(), DEV_CLIENT_ID, redirect).with_secret(secret);
            (Some(issuer), c)
        }
    };
    let issuer_url = oidc.issuer.clone();
    let extra_roots = oidc.extra_roots_pem.clone();
    if settings.seed {
        let seeded = careconnect::core::seed::demo(&clinic, &issuer_url)
            .await
            .context("seeding the demo clinic")?;
        tracing::info!(?seeded, "demo data");
    }
    let rp = clinic
        .relying_party(oidc)
        .await
        .with_context(|| format!("reaching the OpenID provider {issuer_url}"))?;
    let sessions = clinic.sessions(SessionConfig {
        recheck: SESSION_RECHECK,
        ..SessionConfig::default()
    })?;
    let tls = match &settings.tls {
        Some(t) => careconnect::crypto::tls::CertPaths {
            cert: t.cert.clone(),
            key: t.key.clone(),
        },
        None => {
            let loopback = reqwest::Url::parse(&settings.public_url)
                .ok()
                .is_some_and(|u| match u.host() {
                    Some(url::Host::Domain(d)) => d == "localhost",
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    None => false,
                });
            if !loopback {
                tracing::warn!(
                    public_url = %settings.public_url,
                    "no [tls] section: serving the development certificate, which names loopback \
                     only; browsers will refuse it at this address. Configure [tls] with a real certificate."
                );
            }
            DevPki::load_or_create(settings.dev_tls_dir())
                .context("development certificate")?
                .server
        }
    };
    let (tls_config, resolver) = ServerTls::new()
        .alpn(server::ALPN)
        .build_reloading(tls)
        .context("TLS configuration")?;
    // Replaced certificate files are picked up without a restart.
    let _watcher = resolver.spawn_watcher(Duration::from_secs(5));
    let mut http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = &extra_roots {
        for cert in reqwest::Certificate::from_pem_bundle(pem)? {
            http = http.add_root_certificate(cert);
        }
    }
    let discovery = format!(
        "{}/.well-known/openid-configuration",
        issuer_url.trim_end_matches('/')
    );
    let udap = udap::build(&settings, &clinic).await.context("UDAP")?;
    let app = Arc::new(web::App {
        templates,
        clinic,
        sessions,
        rp,
        public_url: settings.public_url.clone(),
        upload_limit,
        readiness: std::sync::Mutex::default(),
        uploads: Arc::new(tokio::sync::Semaphore::new(MAX_UPLOADS)),
        uploads_by_user: web::PerKey::new(settings.limits.uploads_per_user),
        limits: settings.limits,
        udap,
    });
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(maintain::run(
        Arc::downgrade(&app),
        http.build()?,
        discovery,
        stopped.clone(),
    ));
    let router = router(app);
    let url = settings.public_url.clone();
    let task = tokio::spawn(server::serve(
        listener,
        tls_config,
        router,
        stopped,
        settings.limits,
    ));
    Ok(Running {
        addr,
        url,
        issuer: issuer_url,
        stop,
        task,
        dev_issuer,
    })
}

/// Request ids: 16 random hex digits.
#[derive(Clone, Copy, Debug)]
struct RandomId;

impl MakeRequestId for RandomId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        random_hex(8)
            .ok()
            .and_then(|s| HeaderValue::from_str(&s).ok())
            .map(RequestId::new)
    }
}

fn router(app: web::State) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let headers: [(HeaderName, &'static str); 8] = [
        (
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=63072000; includeSubDomains",
        ),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: browsers would then send `Origin: null` with
        // same-origin form posts, which the origin check refuses.
        (header::REFERRER_POLICY, "same-origin"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=()",
        ),
    ];
    // Every response head within the request deadline but uploads' (which
    // stream as long as data keeps coming), UDAP's included; bodies
    // (downloads) stream on after it. Every request body, uploads' too,
    // must keep coming: a pause past the body deadline ends it.
    let limits = app.limits;
    let mut r = pages::routes(app.clone())
        .layer(DefaultBodyLimit::max(web::FORM_LIMIT))
        .merge(udap::routes(app.clone()))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(limits.request_secs),
        ))
        .merge(pages::upload_routes(app))
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(
            limits.body_idle_secs,
        )));
    for (name, value) in headers {
        r = r.layer(SetResponseHeaderLayer::overriding(
            name,
            HeaderValue::from_static(value),
        ));
    }
    r.layer(SetResponseHeaderLayer::if_not_present(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    ))
    .layer(PropagateRequestIdLayer::new(request_id.clone()))
    .layer(
        TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            // The route's pattern, never the path itself: paths hold ids.
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("-", MatchedPath::as_str);
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), route, id)
        }),
    )
    .layer(SetRequestIdLayer::new(request_id, RandomId))
    .layer(axum::middleware::from_fn(web::first_checks))
}
