//! The development issuer as a real OpenID provider for the relying party
//! (login end to end with ES256 and RS256, key rotation, PKCE and single-use
//! codes enforced), and every ID-token rejection the relying party must make,
//! each with its typed error, using tokens forged with the issuer's own key
//! (so only the one property under test is wrong); callbacks bound to the
//! browser that started the login.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

mod oidc_common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use careconnect::authz::AuthzError;
use careconnect::authz::dev_issuer::{DevAlg, DevClient, DevIssuer, DevIssuerConfig};
use careconnect::authz::mapper::{RoleAssignments, RoleMapper};
use careconnect::authz::oidc::{IdTokenError, OidcConfig, OidcError, RelyingParty};
use careconnect::crypto::Keyring;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oidc_common::{REDIRECT, callback_of, headless_login, rsa_pem, token_request};
use serde_json::json;
use sha2::Digest;

const CLIENT: (&str, &str) = ("careconnect-dev", "dev-secret");

async fn issuer(alg: DevAlg, pem: Option<String>) -> DevIssuer {
    let mut c = DevIssuerConfig::clinic_demo("127.0.0.1:0".parse().unwrap());
    c.clients
        .push(DevClient::confidential(CLIENT.0, CLIENT.1, REDIRECT));
    c.alg = alg;
    c.signing_key_pem = pem;
    DevIssuer::start(c).await.unwrap()
}

async fn rp(iss: &DevIssuer) -> RelyingParty {
    RelyingParty::discover(OidcConfig::new(iss.url(), CLIENT.0, REDIRECT).with_secret(CLIENT.1))
        .await
        .unwrap()
}

async fn login(rp: &RelyingParty, user: &str) -> careconnect::authz::mapper::Claims {
    let start = rp.begin().unwrap();
    let cb = headless_login(&start.url, user).await;
    rp.complete_in_browser(&callback_of(&cb), Some(&start.cookie_header()))
        .await
        .unwrap()
}

#[tokio::test]
async fn login_through_the_development_issuer_es256_and_rs256() {
    let es = issuer(DevAlg::Es256, None).await;
    let rp_es = rp(&es).await;
    let mapper =
        RoleMapper::from_toml("[[rule]]\ngroup = \"clinicians\"\nroles = [\"doctor\"]").unwrap();
    let store = std::sync::Arc::new(careconnect::storage::MemoryStore::new());
    let assignments = RoleAssignments::new(store, Keyring::generate()).unwrap();
    let grey = login(&rp_es, "doctor-grey").await;
    assert_eq!(grey.user.issuer(), es.url());
    assert!(grey.email_verified);
    assert_eq!(
        mapper.roles(&grey, &assignments).await.unwrap().to_string(),
        "doctor"
    );
    let alice = login(&rp_es, "patient-alice").await;
    assert!(mapper.roles(&alice, &assignments).await.unwrap().is_empty());

    // RS256 with a key made by openssl.
    let rs = issuer(DevAlg::Rs256, Some(rsa_pem())).await;
    let jwks: serde_json::Value = reqwest::get(format!("{}/jwks", rs.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert_eq!(
        login(&rp(&rs).await, "finance-fiona").await.groups,
        vec!["finance"]
    );
    es.stop().await;
    rs.stop().await;
}

#[tokio::test]
async fn a_rotated_signing_key_is_picked_up_from_the_jwks() {
    let iss = issuer(DevAlg::Es256, None).await;
    let rp = rp(&iss).await; // JWKS fetched now: old key only
    login(&rp, "doctor-grey").await;
    iss.rotate_key().unwrap();
    login(&rp, "doctor-grey").await; // new kid: the RP refetches once
}

/// A raw authorization request with our own PKCE pair; returns the code.
async fn raw_code(iss: &DevIssuer, verifier: &str) -> String {
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let mut url = url::Url::parse(&format!("{}/authorize", iss.url())).unwrap();
    url.query_pairs_mut().extend_pairs([
        ("response_type", "code"),
        ("client_id", CLIENT.0),
        ("redirect_uri", REDIRECT),
        ("scope", "openid email"),
        ("state", "s"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ]);
    callback_of(&headless_login(&url, "patient-alice").await)
        .code
        .unwrap()
}

#[tokio::test]
async fn pkce_is_required_and_codes_are_single_use() {
    let iss = issuer(DevAlg::Es256, None).await;
    let token = format!("{}/token", iss.url());
    let verifier = "v".repeat(64);
    let code = raw_code(&iss, &verifier).await;
    assert_eq!(
        token_request(&token, &code, None, CLIENT).await,
        400,
        "no verifier"
    );
    let code = raw_code(&iss, &verifier).await;
    assert_eq!(
        token_request(&token, &code, Some(&"w".repeat(64)), CLIENT).await,
        400,
        "wrong verifier"
    );
    let code = raw_code(&iss, &verifier).await;
    assert_eq!(
        token_request(&token, &code, Some(&verifier), ("careconnect-dev", "wrong")).await,
        401,
        "wrong client secret"
    );
    let code = raw_code(&iss, &verifier).await;
    assert_eq!(
        token_request(&token, &code, Some(&verifier), CLIENT).await,
        200
    );
    assert_eq!(
        token_request(&token, &code, Some(&verifier), CLIENT).await,
        400,
        "code reused"
    );

    // No challenge: refused with a redirect carrying the error. An
    // unregistered redirect URI: an error page, never a redirect.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!(
        "{}/authorize?response_type=code&client_id={}&scope=openid&state=s",
        iss.url(),
        CLIENT.0
    );
    let r = http
        .get(format!("{base}&redirect_uri={REDIRECT}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .contains("error=invalid_request")
    );
    let r = http
        .get(format!("{base}&redirect_uri=https://evil.example/cb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
}

#[tokio::test]
async fn refuses_a_non_loopback_address_unless_forced() {
    let c = DevIssuerConfig::clinic_demo("0.0.0.0:0".parse().unwrap());
    let err = DevIssuer::start(c).await.unwrap_err();
    assert!(
        matches!(err, AuthzError::Config(ref m) if m.contains("not loopback")),
        "{err}"
    );
}

// --- ID-token rejections -------------------------------------------------

struct Forge {
    iss: DevIssuer,
    rp: RelyingParty,
    key: EncodingKey,
    kid: String,
    public_pem: String,
}

async fn forge() -> Forge {
    let kp = rcgen::KeyPair::generate().unwrap();
    let iss = issuer(DevAlg::Es256, Some(kp.serialize_pem())).await;
    let rp = rp(&iss).await;
    let jwks: serde_json::Value = reqwest::get(format!("{}/jwks", iss.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Forge {
        kid: jwks["keys"][0]["kid"].as_str().unwrap().to_owned(),
        key: EncodingKey::from_ec_der(&kp.serialize_der()),
        public_pem: kp.public_key_pem(),
        iss,
        rp,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Forge {
    fn claims(&self) -> serde_json::Value {
        json!({
            "iss": self.iss.url(), "sub": "u1", "aud": CLIENT.0,
            "exp": now() + 300, "iat": now(), "nonce": "n1",
            "email": "u1@example.test", "email_verified": true,
        })
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }

    fn with(&self, key: &str, value: serde_json::Value) -> String {
        let mut c = self.claims();
        c[key] = value;
        self.sign(&c)
    }

    async fn rejects(&self, token: &str, nonce: &str) -> IdTokenError {
        match self.rp.verify_id_token(token, nonce).await.unwrap_err() {
            AuthzError::Oidc(OidcError::IdToken(e)) => e,
            other => panic!("expected an ID-token error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_bad_id_token_is_refused_with_its_reason() {
    let f = forge().await;
    // The harness is sound: a correct token passes.
    let good = f.sign(&f.claims());
    assert_eq!(
        f.rp.verify_id_token(&good, "n1")
            .await
            .unwrap()
            .user
            .subject(),
        "u1"
    );

    // Bad signature: one signature byte changed.
    let (head, sig) = good.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[10] ^= 1;
    let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&sig));
    assert_eq!(f.rejects(&tampered, "n1").await, IdTokenError::BadSignature);

    // Unknown kid: signed by a key the issuer never published.
    let other = rcgen::KeyPair::generate().unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("not-a-published-key".into());
    let stranger = jsonwebtoken::encode(
        &h,
        &f.claims(),
        &EncodingKey::from_ec_der(&other.serialize_der()),
    )
    .unwrap();
    assert_eq!(f.rejects(&stranger, "n1").await, IdTokenError::UnknownKey);

    // alg none.
    let enc = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        enc(json!({"alg": "none", "kid": f.kid})),
        enc(f.claims())
    );
    assert_eq!(f.rejects(&unsigned, "n1").await, IdTokenError::Algorithm);

    // HS256 keyed with the issuer's public key (the classic confusion).
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(f.kid.clone());
    let confused = jsonwebtoken::encode(
        &h,
        &f.claims(),
        &EncodingKey::from_secret(f.public_pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(f.rejects(&confused, "n1").await, IdTokenError::Algorithm);

    // Claims, one at a time.
    let bad_iss = f.with("iss", json!("https://evil.example"));
    assert_eq!(f.rejects(&bad_iss, "n1").await, IdTokenError::WrongIssuer);
    let bad_aud = f.with("aud", json!("someone-else"));
    assert_eq!(f.rejects(&bad_aud, "n1").await, IdTokenError::WrongAudience);
    let extra_aud = f.with("aud", json!([CLIENT.0, "someone-else"]));
    assert_eq!(
        f.rejects(&extra_aud, "n1").await,
        IdTokenError::WrongAudience
    );
    let bad_azp = f.with("azp", json!("someone-else"));
    assert_eq!(f.rejects(&bad_azp, "n1").await, IdTokenError::WrongAudience);
    let expired = f.with("exp", json!(now() - 120)); // skew is 60 s
    assert_eq!(f.rejects(&expired, "n1").await, IdTokenError::Expired);
    let just_expired = f.with("exp", json!(now() - 20)); // within the skew
    f.rp.verify_id_token(&just_expired, "n1").await.unwrap();
    let future = f.with("iat", json!(now() + 300));
    assert_eq!(f.rejects(&future, "n1").await, IdTokenError::IssueTime);
    let ancient = f.with("iat", json!(now() - 3600));
    assert_eq!(f.rejects(&ancient, "n1").await, IdTokenError::IssueTime);
    assert_eq!(
        f.rejects(&good, "other-nonce").await,
        IdTokenError::NonceMismatch
    );
    assert_eq!(f.rejects("not.a.jwt", "n1").await, IdTokenError::Malformed);
}

#[tokio::test]
async fn userinfo_is_merged_and_slow_logins_expire() {
    let iss = issuer(DevAlg::Es256, None).await;
    let mut config = OidcConfig::new(iss.url(), CLIENT.0, REDIRECT).with_secret(CLIENT.1);
    config.use_userinfo = true;
    let clock = std::sync::Arc::new(careconnect::authz::session::ManualClock::new(now() as u64));
    let rp = RelyingParty::discover_with_clock(config, clock.clone())
        .await
        .unwrap();
    let pat = login(&rp, "partner-pat").await;
    assert_eq!(pat.groups, vec!["partners"]);
    assert_eq!(pat.email.as_deref(), Some("pat@northside-labs.example"));

    // A login left pending for longer than the timeout cannot complete.
    let start = rp.begin().unwrap();
    let cb = callback_of(&headless_login(&start.url, "patient-alice").await);
    clock.advance(std::time::Duration::from_secs(11 * 60));
    match rp
        .complete_in_browser(&cb, Some(&start.cookie_header()))
        .await
        .unwrap_err()
    {
        AuthzError::Oidc(OidcError::StateExpired) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_login_started_on_one_node_completes_on_another() {
    let iss = issuer(DevAlg::Es256, None).await;
    // Two nodes sharing the login keyring (as they share the database).
    let keys = Keyring::generate();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(rp(&iss).await.with_login_keys(keys.clone()));
    }
    let start = nodes[0].begin().unwrap();
    let cb = callback_of(&headless_login(&start.url, "doctor-grey").await);
    let cookie = start.cookie_header();
    let claims = nodes[1]
        .complete_in_browser(&cb, Some(&cookie))
        .await
        .unwrap();
    assert_eq!(claims.user.subject(), "doctor-grey");
    // Used: the node that completed refuses a replay before any network
    // call; the other one has not seen it, and the provider refuses the
    // spent code.
    match nodes[1]
        .complete_in_browser(&cb, Some(&cookie))
        .await
        .unwrap_err()
    {
        AuthzError::Oidc(OidcError::UnknownState) => {}
        other => panic!("{other:?}"),
    }
    match nodes[0]
        .complete_in_browser(&cb, Some(&cookie))
        .await
        .unwrap_err()
    {
        AuthzError::Oidc(OidcError::CodeRejected(_)) => {}
        other => panic!("{other:?}"),
    }
    // A node with other login keys cannot open the cookie at all.
    let stranger = rp(&iss).await;
    match stranger
        .complete_in_browser(&cb, Some(&cookie))
        .await
        .unwrap_err()
    {
        AuthzError::Oidc(OidcError::UnknownState) => {}
        other => panic!("{other:?}"),
    }
}

// Login starts are unauthenticated: a flood of them must not lock real users
// out. Nothing is kept server-side between begin and the callback, so there
// is nothing to fill.
#[tokio::test]
async fn a_flood_of_login_starts_locks_nobody_out() {
    let iss = issuer(DevAlg::Es256, None).await;
    let rp = rp(&iss).await;
    let real = rp.begin().unwrap();
    for _ in 0..30_000 {
        // Three times the old in-memory limit, abandoned.
        rp.begin().unwrap();
    }
    let cb = callback_of(&headless_login(&real.url, "patient-alice").await);
    let claims = rp
        .complete_in_browser(&cb, Some(&real.cookie_header()))
        .await
        .unwrap();
    assert_eq!(claims.user.subject(), "patient-alice");
    // And a login started after the flood works as well.
    login(&rp, "doctor-grey").await;
}

// Mix-up (RFC 9207): a login started with one provider cannot be completed
// as another's, and a provider that promises `iss` must send it.
#[tokio::test]
async fn a_callback_for_another_issuer_is_refused() {
    let a = issuer(DevAlg::Es256, None).await;
    let b = issuer(DevAlg::Es256, None).await;
    let keys = Keyring::generate();
    let rp_a = rp(&a).await.with_login_keys(keys.clone());
    let rp_b = rp(&b).await.with_login_keys(keys);
    let start = rp_a.begin().unwrap();
    let cb = callback_of(&headless_login(&start.url, "doctor-grey").await);
    let cookie = start.cookie_header();
    // The callback routed to provider B's relying party: its cookie names A.
    match rp_b
        .complete_in_browser(&cb, Some(&cookie))
        .await
        .unwrap_err()
    {
        AuthzError::Oidc(OidcError::IssuerMismatch) => {}
        other => panic!("{other:?}"),
    }
    // The dev issuer advertises authorization_response_iss_parameter_supported:
    // a callback without `iss` is refused, and one naming B as well.
    let mut stripped = cb.clone();
    stripped.iss = None;
    match rp_a
        .complete_in_browser(&stripped, Some(&cookie))
        .await
        .unwrap_err()
    {
        AuthzError::Oidc(OidcError::IssuerMissing) => {}
        other => panic!("{other:?}"),
    }
    let start = rp_a.begin().unwrap();
    let mut wrong = callback_of(&headless_login(&start.url, "doctor-grey").await);
    wrong.iss = Some(b.url().to_owned());
    match rp_a
        .complete_in_browser(&wrong, Some(&start.cookie_header()))
        .await
        .unwrap_err()
    {
        AuthzError::Oidc(OidcError::IssuerMismatch) => {}
        other => panic!("{other:?}"),
    }
}

// Login CSRF: an attacker completes a login at the provider and feeds its
// callback to a victim's browser, which would then be signed in as the
// attacker. The login cookie binds the state to the browser that started it.
#[tokio::test]
async fn a_callback_completes_only_in_the_browser_that_started_it() {
    use careconnect::authz::oidc::{LOGIN_COOKIE, LoginStart};
    let iss = issuer(DevAlg::Es256, None).await;
    let rp = rp(&iss).await;
    let victim = rp.begin().unwrap();
    let attacker = rp.begin().unwrap();
    let set = victim.set_cookie();
    assert!(
        set.starts_with(&format!("{LOGIN_COOKIE}="))
            && set.ends_with("; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600"),
        "{set:?}"
    );
    // The cookie is sealed: it shows neither the state nor the PKCE verifier.
    assert!(!set.contains(&victim.state));
    let victim_cookie = format!("theme=dark; {}", set.split(';').next().unwrap());
    let attacker_cb = callback_of(&headless_login(&attacker.url, "patient-alice").await);
    let victim_cb = callback_of(&headless_login(&victim.url, "doctor-grey").await);

    for (cb, header) in [
        (&attacker_cb, Some(victim_cookie.as_str())), // the attack
        (&victim_cb, None),                           // no cookie at all
        (&victim_cb, Some("theme=dark")),
        (&victim_cb, Some(attacker.cookie_header().as_str())), // another login's cookie
    ] {
        match rp.complete_in_browser(cb, header).await.unwrap_err() {
            AuthzError::Oidc(OidcError::BrowserMismatch) => {}
            other => panic!("{header:?}: {other:?}"),
        }
    }
    // Cookies that are not ours (forged, altered) do not open.
    let sealed = victim.cookie_header();
    let altered = format!("{}A", sealed.as_str());
    let forged = format!("{LOGIN_COOKIE}={}", victim.state);
    for header in [altered.as_str(), forged.as_str()] {
        match rp
            .complete_in_browser(&victim_cb, Some(header))
            .await
            .unwrap_err()
        {
            AuthzError::Oidc(OidcError::UnknownState) => {}
            other => panic!("{header:?}: {other:?}"),
        }
    }
    // The refusals consumed nothing: the real login still completes, once.
    let claims = rp
        .complete_in_browser(&victim_cb, Some(&victim_cookie))
        .await
        .unwrap();
    assert_eq!(claims.user.subject(), "doctor-grey");
    match rp
        .complete_in_browser(&victim_cb, Some(&victim_cookie))
        .await
        .unwrap_err()
    {
        AuthzError::Oidc(OidcError::UnknownState) => {}
        other => panic!("{other:?}"),
    }
    assert!(LoginStart::clear_cookie().ends_with("Max-Age=0"));
}

/// A provider whose JWKS endpoint counts its requests and can be made to fail.
struct CountingJwks {
    hits: std::sync::atomic::AtomicUsize,
    fail: std::sync::atomic::AtomicBool,
}

async fn counting_provider() -> (String, std::sync::Arc<CountingJwks>) {
    use axum::routing::get;
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = std::sync::Arc::new(CountingJwks {
        hits: 0.into(),
        fail: false.into(),
    });
    let discovery = json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    });
    let s = state.clone();
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::Json(discovery) }),
        )
        .route(
            "/jwks",
            get(move || {
                let s = s.clone();
                async move {
                    s.hits.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that concurrent callers overlap.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    if s.fail.load(Ordering::SeqCst) {
                        Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                    } else {
                        Ok(axum::Json(json!({ "keys": [] })))
                    }
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, state)
}

// Tokens with made-up `kid`s, arriving together, or a failing JWKS endpoint:
// one re-fetch at a time, at most one per 10 seconds, however it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwks_refetches_are_single_flight_and_throttled_even_when_failing() {
    use std::sync::atomic::Ordering;
    let (base, jwks) = counting_provider().await;
    let clock = std::sync::Arc::new(careconnect::authz::session::ManualClock::new(now() as u64));
    let rp = std::sync::Arc::new(
        RelyingParty::discover_with_clock(OidcConfig::new(&base, "c", REDIRECT), clock.clone())
            .await
            .unwrap(),
    );
    assert_eq!(
        jwks.hits.load(Ordering::SeqCst),
        1,
        "discovery fetches the JWKS"
    );
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"made-up","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(
            json!({"iss": base, "sub": "s", "aud": "c", "exp": now() + 60, "iat": now()})
                .to_string()
        ),
        URL_SAFE_NO_PAD.encode([7u8; 64]),
    );
    let burst = |rp: std::sync::Arc<RelyingParty>| {
        let token = token.clone();
        async move {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..32 {
                let (rp, token) = (rp.clone(), token.clone());
                set.spawn(async move { rp.verify_id_token(&token, "n").await });
            }
            let mut errors = Vec::new();
            while let Some(r) = set.join_next().await {
                errors.push(r.unwrap().unwrap_err());
            }
            errors
        }
    };
    // 32 at once: one fetch between them.
    for e in burst(rp.clone()).await {
        assert!(
            matches!(
                e,
                AuthzError::Oidc(OidcError::IdToken(IdTokenError::UnknownKey))
            ),
            "{e:?}"
        );
    }
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 2);
    // Within the interval: none.
    burst(rp.clone()).await;
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 2);
    // A failing endpoint after the interval: one attempt, recorded, so the
    // next burst inside the interval asks nothing either.
    jwks.fail.store(true, Ordering::SeqCst);
    clock.advance(std::time::Duration::from_secs(11));
    let errors = burst(rp.clone()).await;
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 3);
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, AuthzError::Oidc(OidcError::Unavailable(_)))),
        "the caller that fetched sees the failure"
    );
    burst(rp.clone()).await;
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 3);
}
