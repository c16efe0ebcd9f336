//! The development issuer's sign-in page in a real browser (headless
//! Chromium driven by playwright-core; `scripts/browser.sh` installs both):
//! the page renders, a click logs the user in through the relying party, and
//! request parameters are escaped (a script in `state` neither runs nor gets
//! mangled). A screenshot lands in the target directory for people to look at.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

mod oidc_common;

use std::path::PathBuf;
use std::process::Command;

use careconnect::authz::dev_issuer::{DevClient, DevIssuer, DevIssuerConfig};
use careconnect::authz::oidc::{OidcConfig, RelyingParty};
use oidc_common::{REDIRECT, callback_of};

fn driver_dir() -> PathBuf {
    careconnect_testkit::browser_dir()
}

#[derive(serde::Deserialize, Debug)]
struct Outcome {
    title: String,
    banner: String,
    dialog: bool,
    callback: String,
}

/// Opens `url` in Chromium, screenshots it to `shot`, clicks `who`.
fn click_through(url: &str, who: &str, shot: &str) -> Outcome {
    let dir = driver_dir();
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(shot);
    let out = Command::new("node")
        .arg(dir.join("dev_login.mjs"))
        .args([url, who])
        .arg(&shot)
        .current_dir(&dir)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "browser driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "screenshot"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn issuer() -> DevIssuer {
    let mut c = DevIssuerConfig::clinic_demo("127.0.0.1:0".parse().unwrap());
    c.clients.push(DevClient::confidential(
        "careconnect-dev",
        "dev-secret",
        REDIRECT,
    ));
    DevIssuer::start(c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_in_by_clicking_in_chromium() {
    let iss = issuer().await;
    let rp = RelyingParty::discover(
        OidcConfig::new(iss.url(), "careconnect-dev", REDIRECT).with_secret("dev-secret"),
    )
    .await
    .unwrap();
    let start = rp.begin().unwrap();
    let url = start.url.to_string();
    let seen = tokio::task::spawn_blocking(move || {
        click_through(&url, "Dr Meredith Grey", "dev-issuer-login.png")
    })
    .await
    .unwrap();
    assert!(seen.title.contains("Sign in"), "{seen:?}");
    assert!(seen.banner.contains("Development issuer"), "{seen:?}");
    let cb = callback_of(&url::Url::parse(&seen.callback).unwrap());
    assert_eq!(cb.state, start.state);
    let claims = rp
        .complete_in_browser(&cb, Some(&start.cookie_header()))
        .await
        .unwrap();
    assert_eq!(claims.user.subject(), "doctor-grey");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_parameters_are_escaped_on_the_page() {
    let iss = issuer().await;
    let evil = r#""><script>alert(1)</script><img src=x onerror=alert(2)>'"#;
    let mut url = url::Url::parse(&format!("{}/authorize", iss.url())).unwrap();
    url.query_pairs_mut().extend_pairs([
        ("response_type", "code"),
        ("client_id", "careconnect-dev"),
        ("redirect_uri", REDIRECT),
        ("scope", "openid"),
        ("state", evil),
        ("nonce", evil),
        ("code_challenge", &"c".repeat(43)),
        ("code_challenge_method", "S256"),
    ]);
    let url = url.to_string();
    let seen = tokio::task::spawn_blocking(move || {
        click_through(&url, "Alice Smith", "dev-issuer-escaping.png")
    })
    .await
    .unwrap();
    assert!(!seen.dialog, "a script from the request ran");
    let cb = callback_of(&url::Url::parse(&seen.callback).unwrap());
    assert_eq!(cb.state, evil, "state must round-trip exactly");
    assert!(cb.code.is_some());
}
