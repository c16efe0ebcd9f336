//! What authentication and authorization cost, as rates and ratios measured
//! in one run (this machine is noisy; compare the ratios):
//! - full OpenID Connect logins per second against the development issuer on
//!   loopback (begin, authorize, token, ID-token validation), ES256 vs RS256;
//! - ID-token validation alone, ES256 vs RS256;
//! - session lookups per second, SQLite file vs memory;
//! - policy decisions per second.
//!
//! Bounded: 200 logins, 2000 validations and lookups per configuration.
//! `cargo bench --bench authz` (needs `openssl` for the RSA key).

#[path = "../tests/oidc_common/mod.rs"]
mod oidc_common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use careconnect::authz::dev_issuer::{DevAlg, DevClient, DevIssuer, DevIssuerConfig};
use careconnect::authz::oidc::{OidcConfig, RelyingParty};
use careconnect::authz::session::{SessionConfig, Sessions, SystemClock};
use careconnect::authz::{Action, Principal, Resource, Role, UserId, authorize};
use careconnect::storage::{MemoryStore, RecordStore, SqliteStore};
use oidc_common::{REDIRECT, callback_of, headless_login, rsa_pem};

const LOGINS: usize = 200;
const OPS: usize = 2000;

async fn issuer(alg: DevAlg, pem: Option<String>) -> Option<DevIssuer> {
    let mut c = DevIssuerConfig::clinic_demo("127.0.0.1:0".parse().ok()?);
    c.clients
        .push(DevClient::confidential("bench", "bench-secret", REDIRECT));
    c.alg = alg;
    c.signing_key_pem = pem;
    DevIssuer::start(c).await.ok()
}

/// Logins per second and ID-token validations per second.
async fn logins(iss: &DevIssuer) -> Option<(f64, f64)> {
    let rp = RelyingParty::discover(
        OidcConfig::new(iss.url(), "bench", REDIRECT).with_secret("bench-secret"),
    )
    .await
    .ok()?;
    let t = Instant::now();
    for _ in 0..LOGINS {
        let start = rp.begin().ok()?;
        let cb = headless_login(&start.url, "doctor-grey").await;
        rp.complete_in_browser(&callback_of(&cb), Some(&start.cookie_header()))
            .await
            .ok()?;
    }
    let login_rate = LOGINS as f64 / t.elapsed().as_secs_f64();
    // One real token, validated repeatedly (nonce from a raw request).
    let token = raw_token(iss).await?;
    let t = Instant::now();
    for _ in 0..OPS {
        black_box(rp.verify_id_token(&token, "bench-nonce").await.ok()?);
    }
    Some((login_rate, OPS as f64 / t.elapsed().as_secs_f64()))
}

async fn raw_token(iss: &DevIssuer) -> Option<String> {
    use base64::Engine;
    use sha2::Digest;
    let verifier = "b".repeat(64);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let mut url = url::Url::parse(&format!("{}/authorize", iss.url())).ok()?;
    url.query_pairs_mut().extend_pairs([
        ("response_type", "code"),
        ("client_id", "bench"),
        ("redirect_uri", REDIRECT),
        ("scope", "openid"),
        ("state", "s"),
        ("nonce", "bench-nonce"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ]);
    let code = callback_of(&headless_login(&url, "doctor-grey").await).code?;
    let resp: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/token", iss.url()))
        .basic_auth("bench", Some("bench-secret"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    resp["id_token"].as_str().map(str::to_owned)
}

async fn session_gets(store: Arc<dyn RecordStore>) -> Option<f64> {
    let sessions = Sessions::new(
        store,
        careconnect::crypto::Keyring::generate(),
        SessionConfig::default(),
        Arc::new(SystemClock),
    )
    .ok()?;
    let who = Principal::new(
        UserId::new("https://idp", "u").ok()?,
        [Role::Doctor].into_iter().collect(),
    );
    let (id, _) = sessions.login(None, who).await.ok()?;
    let t = Instant::now();
    for _ in 0..OPS {
        black_box(sessions.get(&id).await.ok()??);
    }
    Some(OPS as f64 / t.elapsed().as_secs_f64())
}

fn decisions() -> f64 {
    let (Ok(me), Ok(other)) = (
        UserId::new("https://idp", "me"),
        UserId::new("https://idp", "other"),
    ) else {
        return 0.0;
    };
    let p = Principal::new(
        me.clone(),
        [Role::Patient, Role::Doctor].into_iter().collect(),
    );
    let shared = [me.clone()];
    let n = 1_000_000;
    let t = Instant::now();
    for i in 0..n {
        let r = if i % 2 == 0 {
            Resource::Document {
                owner: &other,
                shared_with: &shared,
            }
        } else {
            Resource::patient(&other)
        };
        let a = if i % 2 == 0 {
            Action::DownloadDocument
        } else {
            Action::ReadHealthRecord
        };
        black_box(authorize(black_box(&p), a, &r));
    }
    n as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let es = issuer(DevAlg::Es256, None).await;
    let rs = issuer(DevAlg::Rs256, Some(rsa_pem())).await;
    let (Some(es), Some(rs)) = (es, rs) else {
        eprintln!("could not start the development issuers");
        return;
    };
    let (Some(e), Some(r)) = (logins(&es).await, logins(&rs).await) else {
        eprintln!("a login failed");
        return;
    };
    println!("{:32} {:>10} {:>10} {:>8}", "", "ES256", "RS256", "RS/ES");
    println!(
        "{:32} {:>10.0} {:>10.0} {:>8.2}",
        "logins/s (full flow, loopback)",
        e.0,
        r.0,
        r.0 / e.0
    );
    println!(
        "{:32} {:>10.0} {:>10.0} {:>8.2}",
        "ID-token validations/s",
        e.1,
        r.1,
        r.1 / e.1
    );

    let dir = tempfile::tempdir().ok();
    let sqlite = match &dir {
        Some(d) => SqliteStore::open(&d.path().join("s.db")).await.ok(),
        None => None,
    };
    let mem = session_gets(Arc::new(MemoryStore::new())).await;
    let file = match sqlite {
        Some(s) => session_gets(Arc::new(s)).await,
        None => None,
    };
    if let (Some(m), Some(f)) = (mem, file) {
        println!(
            "{:32} {:>10.0} {:>10.0} {:>8.2}",
            "session gets/s (memory, SQLite)",
            m,
            f,
            f / m
        );
    }
    println!("{:32} {:>10.0}", "policy decisions/s", decisions());
}
