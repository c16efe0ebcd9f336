//! UDAP against a generated community (root -> intermediate -> leaves, with
//! rcgen) and a second, untrusted one: every rule of registration and JWT
//! client authentication, each refusal with its RFC 7591 / 6749 code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use careconnect::authz::session::{Clock, ManualClock};
use careconnect::authz::udap::dev::{DevCommunity, Flaw, IssuedCert, KeyKind, self_made};
use careconnect::authz::udap::{
    B2bExtension, ClientRequest, GrantType, Registration, RegistrationOutcome, ServerCommunity,
    Signer, TrustCommunity, UdapClient, UdapConfig, UdapError, UdapServer, verify_signed_metadata,
};
use careconnect::crypto::Keyring;
use careconnect::storage::{MemoryStore, RecordStore, SqliteStore};
use serde_json::{Value, json};

const BASE: &str = "https://fhir.clinic.test";
const REG: &str = "https://fhir.clinic.test/register";
const TOKEN: &str = "https://fhir.clinic.test/token";
const APP: &str = "https://lab.example/udap";
const SCOPES: &[&str] = &["system/Patient.read", "system/Observation.read"];

/// The communities and certificates, generated once (RSA keys take time).
struct Fixtures {
    trusted: DevCommunity,
    untrusted: DevCommunity,
    server: IssuedCert,
    app_rsa: IssuedCert,
    app_ec: IssuedCert,
    other_app: IssuedCert,
    expired: IssuedCert,
    revoked: IssuedCert,
    stranger: IssuedCert,
}

fn fx() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let trusted = DevCommunity::generate("urn:clinic:community").unwrap();
        let untrusted = DevCommunity::generate("urn:elsewhere:community").unwrap();
        Fixtures {
            server: trusted.issue(BASE, KeyKind::Rsa2048, 30).unwrap(),
            app_rsa: trusted.issue(APP, KeyKind::Rsa2048, 30).unwrap(),
            app_ec: trusted.issue(APP, KeyKind::P256, 30).unwrap(),
            other_app: trusted
                .issue("https://other.example/udap", KeyKind::P256, 30)
                .unwrap(),
            expired: trusted.issue(APP, KeyKind::P256, 0).unwrap(),
            revoked: trusted.issue(APP, KeyKind::P256, 30).unwrap(),
            stranger: untrusted.issue(APP, KeyKind::P256, 30).unwrap(),
            trusted,
            untrusted,
        }
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn trust() -> Arc<TrustCommunity> {
    let f = fx();
    Arc::new(community_of(&f.trusted, f.trusted.name()))
}

/// The community `dev` as a server configures it: its anchor and its
/// intermediate (which signs its revocation lists).
fn community_of(dev: &DevCommunity, name: &str) -> TrustCommunity {
    TrustCommunity::new(name, dev.anchor_pem().as_bytes())
        .unwrap()
        .with_intermediates(dev.intermediate_pem().as_bytes())
        .unwrap()
}

fn config() -> UdapConfig {
    UdapConfig {
        base_url: BASE.into(),
        registration_endpoint: REG.into(),
        token_endpoint: TOKEN.into(),
        scopes: SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        token_lifetime: 600,
    }
}

struct Env {
    server: UdapServer,
    trust: Arc<TrustCommunity>,
    store: Arc<dyn RecordStore>,
    clock: Arc<ManualClock>,
    _dir: Option<tempfile::TempDir>,
}

fn server_on(
    store: Arc<dyn RecordStore>,
    keys: Keyring,
    clock: Arc<ManualClock>,
) -> (UdapServer, Arc<TrustCommunity>) {
    let f = fx();
    let trust = trust();
    let ours = ServerCommunity::new(
        trust.clone(),
        &f.server.chain_pem,
        f.server.key_pem.as_bytes(),
    )
    .unwrap();
    (
        UdapServer::new(config(), vec![ours], store, keys, clock).unwrap(),
        trust,
    )
}

/// A server on a real SQLite database.
async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RecordStore> = Arc::new(
        SqliteStore::open(&dir.path().join("udap.db"))
            .await
            .unwrap(),
    );
    let clock = Arc::new(ManualClock::new(now()));
    let (server, trust) = server_on(store.clone(), Keyring::generate(), clock.clone());
    Env {
        server,
        trust,
        store,
        clock,
        _dir: Some(dir),
    }
}

/// A registration request body from `cert` (as `APP`).
fn reg_body(cert: &IssuedCert, req: &ClientRequest, t: u64) -> String {
    client(cert)
        .registration_request(REG, req, t)
        .unwrap()
        .to_string()
}

fn client(cert: &IssuedCert) -> UdapClient {
    UdapClient::from_pem(&cert.chain_pem, cert.key_pem.as_bytes(), APP).unwrap()
}

fn b2b_request() -> ClientRequest {
    ClientRequest::b2b("Lab results sync", "mailto:ops@lab.example", SCOPES)
}

/// Standard claims of a statement from `APP`, to be altered by a test.
fn claims(now: u64) -> Value {
    json!({
        "iss": APP, "sub": APP, "aud": REG, "iat": now, "exp": now + 300,
        "jti": format!("jti-{}", rand::random::<u64>()),
        "client_name": "Lab results sync", "contacts": ["mailto:ops@lab.example"],
        "grant_types": ["client_credentials"], "token_endpoint_auth_method": "private_key_jwt",
        "scope": "system/Patient.read",
    })
}

fn signer(cert: &IssuedCert) -> Signer {
    Signer::from_pem(&cert.chain_pem, cert.key_pem.as_bytes()).unwrap()
}

fn body(statement: &str) -> Vec<u8> {
    json!({ "software_statement": statement, "udap": "1" })
        .to_string()
        .into_bytes()
}

async fn refused(e: &Env, body: &[u8]) -> UdapError {
    e.server
        .register(body)
        .await
        .expect_err("registration must be refused")
}

async fn assert_refused(e: &Env, claims: &Value, code: &str) {
    let jwt = signer(&fx().app_ec).sign(claims).unwrap();
    let err = refused(e, &body(&jwt)).await;
    assert_eq!(err.code(), code, "{claims}: {err}");
    assert_eq!(err.status(), 400);
    assert!(
        e.server.clients(100).await.unwrap().is_empty(),
        "a refusal stored a client"
    );
}

#[tokio::test]
async fn registers_with_rs256_and_es256_updates_and_cancels() {
    let e = env().await;
    let t = e.clock.now();
    // RS256 (the IG's required algorithm).
    let rs = client(&fx().app_rsa);
    let reg = register_b2b(&e.server, &rs, t).await;
    assert_eq!(reg.outcome, RegistrationOutcome::Created);
    assert_eq!(reg.status(), 201);
    assert_eq!(reg.body["grant_types"], json!(["client_credentials"]));
    assert_eq!(reg.body["token_endpoint_auth_method"], "private_key_jwt");
    assert_eq!(reg.body["scope"], SCOPES.join(" "));
    assert!(
        reg.body["software_statement"]
            .as_str()
            .unwrap()
            .starts_with("ey")
    );
    let id = reg.client.client_id.clone();
    assert_eq!(reg.body["client_id"], id.as_str());
    // ES256, same iss, same community: the same client, updated.
    let es = client(&fx().app_ec);
    let mut narrower = b2b_request();
    narrower.scopes = vec!["system/Patient.read".into()];
    let reg2 = e
        .server
        .register(
            es.registration_request(REG, &narrower, t)
                .unwrap()
                .to_string()
                .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(reg2.outcome, RegistrationOutcome::Updated);
    assert_eq!(reg2.status(), 200);
    assert_eq!(reg2.client.client_id, id);
    assert_eq!(
        reg2.client.metadata.scopes,
        vec!["system/Patient.read".to_owned()]
    );
    assert_eq!(reg2.client.registered_at, reg.client.registered_at);
    let listed = e.server.clients(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].certificate_sha256.len(), 64);
    // Empty grant_types cancels.
    let mut cancel = b2b_request();
    cancel.grant_types = vec![];
    let reg3 = e
        .server
        .register(
            es.registration_request(REG, &cancel, t)
                .unwrap()
                .to_string()
                .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(reg3.outcome, RegistrationOutcome::Cancelled);
    assert_eq!(reg3.body["grant_types"], json!([]));
    assert!(e.server.client(&id).await.unwrap().is_none());
    // Cancelling again: nothing to cancel.
    let err = e
        .server
        .register(
            es.registration_request(REG, &cancel, t)
                .unwrap()
                .to_string()
                .as_bytes(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_client_metadata");
}

#[tokio::test]
async fn untrusted_expired_and_revoked_certificates_are_unapproved() {
    let e = env().await;
    let f = fx();
    let t = e.clock.now();
    let req = b2b_request();
    for (what, cert) in [("untrusted anchor", &f.stranger), ("expired", &f.expired)] {
        let c = client(cert);
        let err = refused(
            &e,
            c.registration_request(REG, &req, t)
                .unwrap()
                .to_string()
                .as_bytes(),
        )
        .await;
        assert_eq!(err.code(), "unapproved_software_statement", "{what}: {err}");
    }
    let err = refused(&e, reg_body(&f.stranger, &req, t).as_bytes()).await;
    assert!(err.description().contains("does not chain"), "{err}");
    let err = refused(&e, reg_body(&f.expired, &req, t).as_bytes()).await;
    assert!(err.description().contains("expired"), "{err}");

    // Revoked by the intermediate's CRL; another certificate still passes.
    e.trust
        .set_crls(&[f.trusted.crl(&[f.revoked.serial]).unwrap().into_bytes()])
        .unwrap();
    let err = refused(&e, reg_body(&f.revoked, &req, t).as_bytes()).await;
    assert_eq!(err.code(), "unapproved_software_statement");
    assert!(err.description().contains("revoked"), "{err}");
    e.server
        .register(reg_body(&f.app_ec, &req, t).as_bytes())
        .await
        .unwrap();

    // A stale list fails closed, for every certificate it covers.
    let fresh = community_of(&f.trusted, f.trusted.name());
    fresh
        .set_crls(&[f
            .trusted
            .crl_valid(&[], time::Duration::hours(-1))
            .unwrap()
            .into_bytes()])
        .unwrap();
    let scopes: Vec<String> = SCOPES.iter().map(|s| (*s).to_owned()).collect();
    let good = reg_body(&f.app_ec, &req, t);
    let check = |c: &TrustCommunity| {
        careconnect::authz::udap::check_registration(good.as_bytes(), c, REG, &scopes, t)
    };
    let err = check(&fresh).unwrap_err();
    assert_eq!(err.code(), "unapproved_software_statement");
    assert!(err.description().contains("out of date"), "{err}");
    // A list that does not parse changes nothing.
    assert!(fresh.set_crls(&[b"not a crl".to_vec()]).is_err());
    assert!(
        check(&fresh)
            .unwrap_err()
            .description()
            .contains("out of date")
    );
}

#[tokio::test]
async fn revocation_data_can_be_required() {
    let f = fx();
    let strict = community_of(&f.trusted, f.trusted.name()).require_revocation_data(true);
    let body = reg_body(&f.app_ec, &b2b_request(), now());
    let scopes: Vec<String> = SCOPES.iter().map(|s| (*s).to_owned()).collect();
    let err =
        careconnect::authz::udap::check_registration(body.as_bytes(), &strict, REG, &scopes, now())
            .unwrap_err();
    assert_eq!(err.code(), "unapproved_software_statement");
    // The intermediate's list covers the leaf, not the intermediate: the
    // root must publish one too. Here the leaf's issuer alone is not enough.
    strict
        .set_crls(&[f.trusted.crl(&[]).unwrap().into_bytes()])
        .unwrap();
    let err =
        careconnect::authz::udap::check_registration(body.as_bytes(), &strict, REG, &scopes, now())
            .unwrap_err();
    assert!(err.description().contains("revocation"), "{err}");
    // With the root's list for the intermediate too, the chain passes.
    strict
        .set_crls(&[f.trusted.root_crl().unwrap().into_bytes()])
        .unwrap();
    careconnect::authz::udap::check_registration(body.as_bytes(), &strict, REG, &scopes, now())
        .unwrap();
}

#[tokio::test]
async fn an_older_revocation_list_cannot_undo_a_revocation() {
    let e = env().await;
    let f = fx();
    let t = e.clock.now();
    e.trust
        .set_crls(&[f.trusted.crl(&[f.revoked.serial]).unwrap().into_bytes()])
        .unwrap();
    // Replayed: a list from before the revocation.
    assert_eq!(
        e.trust
            .set_crls(&[f.trusted.crl_older(&[], 3600).unwrap().into_bytes()])
            .unwrap(),
        1
    );
    // Or a source that drops the issuer altogether.
    e.trust.set_crls(&[]).unwrap();
    let body = reg_body(&f.revoked, &b2b_request(), t);
    let err = refused(&e, body.as_bytes()).await;
    assert!(err.description().contains("revoked"), "{err}");
}

#[tokio::test]
async fn a_certificate_revoked_in_one_community_is_refused_whatever_the_order() {
    // Two communities trusting the same root; only one has the list.
    let f = fx();
    let a = trust();
    a.set_crls(&[f.trusted.crl(&[f.revoked.serial]).unwrap().into_bytes()])
        .unwrap();
    let b = Arc::new(community_of(&f.trusted, "urn:clinic:other-view"));
    let ours = |t: &Arc<TrustCommunity>| {
        ServerCommunity::new(t.clone(), &f.server.chain_pem, f.server.key_pem.as_bytes()).unwrap()
    };
    for order in [[&a, &b], [&b, &a]] {
        let clock = Arc::new(ManualClock::new(now()));
        let communities = order.iter().map(|t| ours(t)).collect();
        let store = Arc::new(MemoryStore::new());
        let server =
            UdapServer::new(config(), communities, store, Keyring::generate(), clock).unwrap();
        let revoked = reg_body(&f.revoked, &b2b_request(), now());
        let err = server.register(revoked.as_bytes()).await.unwrap_err();
        assert!(err.description().contains("revoked"), "{err}");
        // A stranger's chain is tried in both and refused as not chaining.
        let stranger = reg_body(&f.stranger, &b2b_request(), now());
        let err = server.register(stranger.as_bytes()).await.unwrap_err();
        assert!(err.description().contains("does not chain"), "{err}");
        // A member in good standing registers in the first community.
        let good = reg_body(&f.app_ec, &b2b_request(), now());
        let reg = server.register(good.as_bytes()).await.unwrap();
        assert_eq!(reg.client.community, order[0].name());
    }
}

#[test]
fn forged_future_and_partial_revocation_lists_are_refused_at_load() {
    let f = fx();
    let c = community_of(&f.trusted, f.trusted.name());
    // The same issuer name, another key: a forgery.
    let lookalike = DevCommunity::generate(f.trusted.name()).unwrap();
    let err = c
        .set_crls(&[lookalike.crl(&[]).unwrap().into_bytes()])
        .unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");
    // Dated in the future: it would pin itself over every genuine list.
    let err = c
        .set_crls(&[f.trusted.crl_older(&[], -10 * 86_400).unwrap().into_bytes()])
        .unwrap_err();
    assert!(err.to_string().contains("future"), "{err}");
    // Another community's genuine list: not signed by this one.
    assert!(
        c.set_crls(&[f.untrusted.crl(&[]).unwrap().into_bytes()])
            .is_err()
    );
    // Nothing was loaded by any of them; a genuine list still is.
    assert_eq!(
        c.set_crls(&[f.trusted.crl(&[]).unwrap().into_bytes()])
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_client_cancelled_and_registered_again_does_not_revive_its_old_tokens() {
    let e = env().await;
    let c = client(&fx().app_ec);
    let t = e.clock.now();
    let id = registered(&e, &fx().app_ec).await;
    let old = e
        .server
        .token(&form(c.token_request(&id, TOKEN, &b2b(), None, t).unwrap()))
        .await
        .unwrap();
    let mut cancel = b2b_request();
    cancel.grant_types.clear();
    e.server
        .register(
            c.registration_request(REG, &cancel, t)
                .unwrap()
                .to_string()
                .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        registered(&e, &fx().app_ec).await,
        id,
        "same client id again"
    );
    assert!(e.server.introspect(old.secret()).await.unwrap().is_none());
    // An update (not a cancellation) keeps the tokens.
    let new = e
        .server
        .token(&form(c.token_request(&id, TOKEN, &b2b(), None, t).unwrap()))
        .await
        .unwrap();
    registered(&e, &fx().app_ec).await;
    assert!(e.server.introspect(new.secret()).await.unwrap().is_some());
}

#[tokio::test]
async fn es384_registers_and_authenticates() {
    let e = env().await;
    let cert = fx().trusted.issue(APP, KeyKind::P384, 30).unwrap();
    assert_eq!(signer(&cert).algorithm(), "ES384");
    let id = registered(&e, &cert).await;
    let f = form(
        client(&cert)
            .token_request(&id, TOKEN, &b2b(), None, e.clock.now())
            .unwrap(),
    );
    e.server.token(&f).await.unwrap();
}

#[tokio::test]
async fn every_bad_claim_is_refused_with_its_code() {
    let e = env().await;
    let t = e.clock.now();
    let with = |k: &str, v: Value| {
        let mut c = claims(t);
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = claims(t);
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let s = "invalid_software_statement";
    let m = "invalid_client_metadata";
    let r = "invalid_redirect_uri";
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "iss not a SAN",
            with("iss", json!("https://lab.example/other")),
            s,
        ),
        (
            "iss with a trailing slash (no normalisation)",
            with("iss", json!(format!("{APP}/"))),
            s,
        ),
        (
            "sub != iss",
            with("sub", json!("https://lab.example/other")),
            s,
        ),
        (
            "wrong aud",
            with("aud", json!("https://elsewhere.test/register")),
            s,
        ),
        (
            "aud with two entries",
            with("aud", json!([REG, "https://x.test"])),
            s,
        ),
        (
            "expired",
            {
                let mut c = claims(t - 400);
                c["jti"] = json!("old");
                c
            },
            s,
        ),
        ("exp too long", with("exp", json!(t + 301)), s),
        (
            "iat in the future",
            {
                let mut c = with("iat", json!(t + 3600));
                c["exp"] = json!(t + 3900);
                c
            },
            s,
        ),
        ("no jti", without("jti"), s),
        ("empty jti", with("jti", json!("")), s),
        ("no client_name", without("client_name"), m),
        (
            "no mailto contact",
            with("contacts", json!(["https://lab.example/contact"])),
            m,
        ),
        (
            "both grants",
            with(
                "grant_types",
                json!(["client_credentials", "authorization_code"]),
            ),
            m,
        ),
        (
            "refresh_token alone",
            with("grant_types", json!(["refresh_token"])),
            m,
        ),
        ("unknown grant", with("grant_types", json!(["password"])), m),
        (
            "client_secret auth",
            with("token_endpoint_auth_method", json!("client_secret_basic")),
            m,
        ),
        (
            "scope not offered",
            with("scope", json!("system/*.write")),
            m,
        ),
        ("no scope", without("scope"), m),
        (
            "redirect with client_credentials",
            with("redirect_uris", json!(["https://lab.example/cb"])),
            r,
        ),
        (
            "authorization_code without redirect URIs",
            {
                let mut c = with("grant_types", json!(["authorization_code"]));
                c["response_types"] = json!(["code"]);
                c["logo_uri"] = json!("https://lab.example/logo.png");
                c
            },
            r,
        ),
        (
            "authorization_code with an http redirect URI",
            {
                let mut c = with("grant_types", json!(["authorization_code"]));
                c["redirect_uris"] = json!(["http://lab.example/cb"]);
                c["response_types"] = json!(["code"]);
                c["logo_uri"] = json!("https://lab.example/logo.png");
                c
            },
            r,
        ),
        (
            "authorization_code without logo_uri",
            {
                let mut c = with("grant_types", json!(["authorization_code"]));
                c["redirect_uris"] = json!(["https://lab.example/cb"]);
                c["response_types"] = json!(["code"]);
                c
            },
            m,
        ),
    ];
    for (what, c, code) in &cases {
        let jwt = signer(&fx().app_ec).sign(c).unwrap();
        let err = refused(&e, &body(&jwt)).await;
        assert_eq!(err.code(), *code, "{what}: {err}");
    }
    // A valid authorization_code statement reaches the server's own rule.
    let mut c = with("grant_types", json!(["authorization_code"]));
    c["redirect_uris"] = json!(["https://lab.example/cb"]);
    c["response_types"] = json!(["code"]);
    c["logo_uri"] = json!("https://lab.example/logo.png");
    assert_refused(&e, &c, m).await;
    assert!(e.server.clients(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn forged_signatures_algorithms_and_bodies_are_refused() {
    let e = env().await;
    let f = fx();
    let t = e.clock.now();
    let x5c: Vec<String> = pem_chain(&f.app_ec.chain_pem)
        .iter()
        .map(|d| STANDARD.encode(d))
        .collect();
    // Signed by another key (another member's), presenting app_ec's chain.
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.x5c = Some(x5c.clone());
    let other = jsonwebtoken::EncodingKey::from_ec_pem(f.other_app.key_pem.as_bytes()).unwrap();
    let forged = jsonwebtoken::encode(&h, &claims(t), &other).unwrap();
    let err = refused(&e, &body(&forged)).await;
    assert_eq!(err.code(), "invalid_software_statement");
    assert!(err.description().contains("signature"), "{err}");
    // alg none, and HS256 keyed with the certificate (algorithm confusion).
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "x5c": x5c})),
        b64(&claims(t))
    );
    assert_eq!(
        refused(&e, &body(&none)).await.code(),
        "invalid_software_statement"
    );
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.x5c = Some(x5c.clone());
    let hs = jsonwebtoken::encode(
        &h,
        &claims(t),
        &jsonwebtoken::EncodingKey::from_secret(&pem_chain(&f.app_ec.chain_pem)[0]),
    )
    .unwrap();
    let err = refused(&e, &body(&hs)).await;
    assert_eq!(err.code(), "invalid_software_statement");
    // RS256 claimed over an EC key.
    let rs_hdr = format!(
        "{}.{}.AAAA",
        b64(&json!({"alg": "RS256", "x5c": x5c})),
        b64(&claims(t))
    );
    assert_eq!(
        refused(&e, &body(&rs_hdr)).await.code(),
        "invalid_software_statement"
    );
    // No x5c; an x5c that is not base64; a chain too long.
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    let key = jsonwebtoken::EncodingKey::from_ec_pem(f.app_ec.key_pem.as_bytes()).unwrap();
    assert!(
        refused(
            &e,
            &body(&jsonwebtoken::encode(&h, &claims(t), &key).unwrap())
        )
        .await
        .description()
        .contains("x5c")
    );
    h.x5c = Some(vec!["***".into()]);
    assert_eq!(
        refused(
            &e,
            &body(&jsonwebtoken::encode(&h, &claims(t), &key).unwrap())
        )
        .await
        .code(),
        "invalid_software_statement"
    );
    h.x5c = Some(std::iter::repeat_n(x5c[0].clone(), 6).collect());
    assert_eq!(
        refused(
            &e,
            &body(&jsonwebtoken::encode(&h, &claims(t), &key).unwrap())
        )
        .await
        .code(),
        "invalid_software_statement"
    );
    // Malformed JSON bodies, a wrong udap value, a garbage statement.
    for b in [
        &b"{"[..],
        b"[]",
        b"{\"software_statement\": 5, \"udap\": \"1\"}",
        b"{\"software_statement\": \"a.b.c\"}",
    ] {
        assert_eq!(refused(&e, b).await.code(), "invalid_client_metadata");
    }
    let wrong_udap = json!({"software_statement": "a.b.c", "udap": "2"}).to_string();
    assert_eq!(
        refused(&e, wrong_udap.as_bytes()).await.code(),
        "invalid_client_metadata"
    );
    assert_eq!(
        refused(&e, &body("a.b.c")).await.code(),
        "invalid_software_statement"
    );
    assert_eq!(
        refused(&e, &body("not a jwt")).await.code(),
        "invalid_software_statement"
    );
    // Oversized: a statement over 32 KiB, a body over 64 KiB.
    let mut big = claims(t);
    big["client_name"] = json!("x".repeat(40 * 1024));
    let err = refused(&e, &body(&signer(&f.app_ec).sign(&big).unwrap())).await;
    assert_eq!(err.code(), "invalid_software_statement");
    assert!(err.description().contains("32 KiB"), "{err}");
    let err = refused(&e, &vec![b' '; 65 * 1024]).await;
    assert_eq!(err.code(), "invalid_client_metadata");
    assert!(e.server.clients(10).await.unwrap().is_empty());
}

fn pem_chain(pem: &[u8]) -> Vec<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap().to_vec())
        .collect()
}

#[tokio::test]
async fn a_replayed_statement_is_refused_on_every_node() {
    let e = env().await;
    let t = e.clock.now();
    let jwt = signer(&fx().app_ec).sign(&claims(t)).unwrap();
    e.server.register(&body(&jwt)).await.unwrap();
    let err = refused(&e, &body(&jwt)).await;
    assert_eq!(err.code(), "invalid_software_statement");
    assert!(err.description().contains("replay"), "{err}");
    // A second node on the same store (same keyring file in production).
    let keys = Keyring::generate();
    let store: Arc<dyn RecordStore> = Arc::new(MemoryStore::new());
    let (a, _) = server_on(store.clone(), keys.clone(), e.clock.clone());
    let (b, _) = server_on(store, keys, e.clock.clone());
    let jwt = signer(&fx().app_ec).sign(&claims(t)).unwrap();
    a.register(&body(&jwt)).await.unwrap();
    assert!(
        b.register(&body(&jwt))
            .await
            .unwrap_err()
            .description()
            .contains("replay")
    );
}

fn b2b() -> B2bExtension {
    B2bExtension::new(
        "https://lab.example/org",
        vec!["urn:oid:2.16.840.1.113883.5.8#TREAT".into()],
    )
}

/// A token request's form fields.
type Form = Vec<(String, String)>;

fn form(pairs: Vec<(&'static str, String)>) -> Form {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Registers `c` for [`b2b_request`] on `server`, at `t`.
async fn register_b2b(server: &UdapServer, c: &UdapClient, t: u64) -> Registration {
    server
        .register(
            c.registration_request(REG, &b2b_request(), t)
                .unwrap()
                .to_string()
                .as_bytes(),
        )
        .await
        .unwrap()
}

async fn registered(e: &Env, cert: &IssuedCert) -> String {
    registered_as(e, cert, APP).await
}

async fn registered_as(e: &Env, cert: &IssuedCert, iss: &str) -> String {
    register_b2b(&e.server, &client_of(cert, iss), e.clock.now())
        .await
        .client
        .client_id
}

#[tokio::test]
async fn client_credentials_with_a_jwt_assertion_issues_a_token_once() {
    let e = env().await;
    let id = registered(&e, &fx().app_rsa).await;
    let c = client(&fx().app_rsa);
    let t = e.clock.now();
    let f = form(
        c.token_request(&id, TOKEN, &b2b(), Some("system/Patient.read"), t)
            .unwrap(),
    );
    let tok = e.server.token(&f).await.unwrap();
    let json = tok.to_json();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 600);
    assert_eq!(json["scope"], "system/Patient.read");
    assert!(json.get("refresh_token").is_none());
    assert!(
        !format!("{tok:?}").contains(tok.secret()),
        "the token leaks in Debug"
    );
    let grant = e.server.introspect(tok.secret()).await.unwrap().unwrap();
    assert_eq!(grant.client_id, id);
    assert_eq!(grant.b2b.purpose_of_use, b2b().purpose_of_use);
    // Replay of the same assertion.
    let err = e.server.token(&f).await.unwrap_err();
    assert_eq!((err.code(), err.status()), ("invalid_client", 400));
    assert!(err.description().contains("replay"));
    // Only the token's hash is stored: no row holds the token.
    let rows = e
        .store
        .list(
            &careconnect::storage::Collection::new("udap_tokens").unwrap(),
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(rows.rows.len(), 1);
    assert!(!rows.rows[0].id.as_str().contains(tok.secret()));
    assert!(
        !rows.rows[0]
            .envelope
            .windows(10)
            .any(|w| w == &tok.secret().as_bytes()[..10])
    );
    // Without a scope: everything registered. Expired: nothing.
    let all = e
        .server
        .token(&form(c.token_request(&id, TOKEN, &b2b(), None, t).unwrap()))
        .await
        .unwrap();
    assert_eq!(all.grant.scopes.len(), 2);
    e.clock.advance(std::time::Duration::from_secs(601));
    assert!(e.server.introspect(all.secret()).await.unwrap().is_none());
    assert!(e.server.introspect("x").await.unwrap().is_none());
    assert!(e.server.purge().await.unwrap() >= 2);
}

#[tokio::test]
async fn an_assertion_replayed_on_another_node_and_tokens_of_a_cancelled_client_fail() {
    let keys = Keyring::generate();
    let store: Arc<dyn RecordStore> = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(now()));
    let (a, _) = server_on(store.clone(), keys.clone(), clock.clone());
    let (b, _) = server_on(store, keys, clock.clone());
    let c = client(&fx().app_ec);
    let t = clock.now();
    let id = register_b2b(&a, &c, t).await.client.client_id;
    let f = form(c.token_request(&id, TOKEN, &b2b(), None, t).unwrap());
    let tok = a.token(&f).await.unwrap();
    let err = b.token(&f).await.unwrap_err();
    assert!(err.description().contains("replay"), "{err}");
    assert!(b.introspect(tok.secret()).await.unwrap().is_some());
    // Cancelled on node B: the token node A issued ends at once.
    let mut cancel = b2b_request();
    cancel.grant_types.clear();
    b.register(
        c.registration_request(REG, &cancel, t)
            .unwrap()
            .to_string()
            .as_bytes(),
    )
    .await
    .unwrap();
    assert!(a.introspect(tok.secret()).await.unwrap().is_none());
}

#[tokio::test]
async fn token_requests_that_must_fail() {
    let e = env().await;
    let f = fx();
    let id = registered(&e, &f.app_ec).await;
    let other_id = registered_as(&e, &f.other_app, "https://other.example/udap").await;
    let c = client(&f.app_ec);
    let t = e.clock.now();
    let good = || form(c.token_request(&id, TOKEN, &b2b(), None, t).unwrap());
    let set = |mut fm: Vec<(String, String)>, k: &str, v: &str| {
        fm.retain(|(n, _)| n != k);
        fm.push((k.to_owned(), v.to_owned()));
        fm
    };
    let drop = |mut fm: Vec<(String, String)>, k: &str| {
        fm.retain(|(n, _)| n != k);
        fm
    };
    let cases: Vec<(&str, Form, &str)> = vec![
        (
            "password grant",
            set(good(), "grant_type", "password"),
            "unsupported_grant_type",
        ),
        ("no udap=1", drop(good(), "udap"), "invalid_request"),
        (
            "no assertion type",
            drop(good(), "client_assertion_type"),
            "invalid_client",
        ),
        (
            "no assertion",
            drop(good(), "client_assertion"),
            "invalid_client",
        ),
        (
            "client secret",
            set(good(), "client_secret", "s3cret"),
            "invalid_request",
        ),
        (
            "repeated parameter",
            {
                let mut g = good();
                g.push(("udap".into(), "1".into()));
                g
            },
            "invalid_request",
        ),
        (
            "client_id mismatch",
            set(good(), "client_id", &other_id),
            "invalid_client",
        ),
        (
            "more scope than registered",
            set(good(), "scope", "system/*.write"),
            "invalid_scope",
        ),
        // Another member asserting this client's id: its certificate does
        // not name this client.
        (
            "another member's id",
            form(
                client_of(&f.other_app, "https://other.example/udap")
                    .token_request(&id, TOKEN, &b2b(), None, t)
                    .unwrap(),
            ),
            "invalid_client",
        ),
        (
            "unknown client",
            form(c.token_request("nobody", TOKEN, &b2b(), None, t).unwrap()),
            "invalid_client",
        ),
        (
            "wrong aud",
            form(
                c.token_request(&id, "https://elsewhere.test/token", &b2b(), None, t)
                    .unwrap(),
            ),
            "invalid_client",
        ),
        (
            "expired assertion",
            form(c.token_request(&id, TOKEN, &b2b(), None, t - 400).unwrap()),
            "invalid_client",
        ),
        (
            "stranger's certificate",
            form(
                client(&f.stranger)
                    .token_request(&id, TOKEN, &b2b(), None, t)
                    .unwrap(),
            ),
            "invalid_client",
        ),
        (
            "no hl7-b2b",
            set(
                good(),
                "client_assertion",
                &c.client_assertion(&id, TOKEN, None, t).unwrap(),
            ),
            "invalid_grant",
        ),
        (
            "b2b without purpose",
            form(
                c.token_request(
                    &id,
                    TOKEN,
                    &B2bExtension::new("https://lab.example/org", vec![]),
                    None,
                    t,
                )
                .unwrap(),
            ),
            "invalid_grant",
        ),
        (
            "b2b organization not a URI",
            form(
                c.token_request(
                    &id,
                    TOKEN,
                    &B2bExtension::new("Lab", vec!["TREAT".into()]),
                    None,
                    t,
                )
                .unwrap(),
            ),
            "invalid_grant",
        ),
    ];
    for (what, fm, code) in cases {
        let err = e.server.token(&fm).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err}");
    }
    // Invisible characters in the extension (a bidi override).
    let sneaky = B2bExtension::new("urn:org:\u{202e}evil", vec!["TREAT".into()]);
    let err = e
        .server
        .token(&form(
            c.token_request(&id, TOKEN, &sneaky, None, t).unwrap(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_grant");
    // Revoked after registration: the next token request fails.
    let revoked_id = registered(&e, &f.revoked).await;
    e.trust
        .set_crls(&[f.trusted.crl(&[f.revoked.serial]).unwrap().into_bytes()])
        .unwrap();
    let err = e
        .server
        .token(&form(
            client(&f.revoked)
                .token_request(&revoked_id, TOKEN, &b2b(), None, t)
                .unwrap(),
        ))
        .await
        .unwrap_err();
    assert!(err.description().contains("revoked"), "{err}");
    // And after all that, the genuine request still works.
    e.server.token(&good()).await.unwrap();
}

/// The row id a token is stored under (as the server derives it).
fn token_row_id(token: &str) -> careconnect::storage::RowId {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"careconnect/udap-token\0");
    h.update((token.len() as u64).to_be_bytes());
    h.update(token.as_bytes());
    careconnect::storage::RowId::new(hex::encode(h.finalize())).unwrap()
}

fn client_of(cert: &IssuedCert, iss: &str) -> UdapClient {
    UdapClient::from_pem(&cert.chain_pem, cert.key_pem.as_bytes(), iss).unwrap()
}

#[tokio::test]
async fn forged_rows_in_the_database_grant_nothing() {
    let e = env().await;
    let id = registered(&e, &fx().app_ec).await;
    let t = e.clock.now();
    let tok = e
        .server
        .token(&form(
            client(&fx().app_ec)
                .token_request(&id, TOKEN, &b2b(), None, t)
                .unwrap(),
        ))
        .await
        .unwrap();
    // Someone with database access copies the token row to a token id of
    // their own making, and rewrites the client row.
    let tokens = careconnect::storage::Collection::new("udap_tokens").unwrap();
    let row = e
        .store
        .list(&tokens, None, 10)
        .await
        .unwrap()
        .rows
        .remove(0);
    let fake = "A".repeat(43);
    let fake_id = token_row_id(&fake);
    e.store
        .insert(
            &tokens,
            &fake_id,
            careconnect::storage::RowData {
                key_id: row.key_id,
                envelope: row.envelope.clone(),
                indexes: vec![],
            },
        )
        .await
        .unwrap();
    assert!(
        e.server.introspect(&fake).await.unwrap().is_none(),
        "a moved token row opened"
    );
    assert!(e.server.introspect(tok.secret()).await.unwrap().is_some());
    let clients = careconnect::storage::Collection::new("udap_clients").unwrap();
    let crow = e
        .store
        .list(&clients, None, 10)
        .await
        .unwrap()
        .rows
        .remove(0);
    e.store
        .update(
            &clients,
            &crow.id,
            crow.version,
            careconnect::storage::RowData {
                key_id: crow.key_id,
                envelope: vec![1; 80],
                indexes: vec![],
            },
        )
        .await
        .unwrap();
    assert!(e.server.client(&id).await.unwrap().is_none());
    let err = e
        .server
        .token(&form(
            client(&fx().app_ec)
                .token_request(&id, TOKEN, &b2b(), None, t)
                .unwrap(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_client");
    // The genuine client registers again over the forged row.
    let reg = register_b2b(&e.server, &client(&fx().app_ec), t).await;
    assert_eq!(reg.client.client_id, id);
    assert_eq!(reg.outcome, RegistrationOutcome::Created);
    // A new registration: the token issued under the one the forgery
    // destroyed does not come back.
    assert!(e.server.introspect(tok.secret()).await.unwrap().is_none());
    // Purge drops the forged token row.
    assert!(e.server.purge().await.unwrap() >= 1);
}

#[tokio::test]
async fn metadata_is_signed_by_the_server_and_verifies_as_a_client_must() {
    let e = env().await;
    let m = e.server.metadata(None).unwrap();
    assert_eq!(m["udap_versions_supported"], json!(["1"]));
    assert_eq!(
        m["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    assert_eq!(
        m["udap_authorization_extensions_required"],
        json!(["hl7-b2b"])
    );
    assert_eq!(m["grant_types_supported"], json!(["client_credentials"]));
    assert!(
        m["token_endpoint_auth_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("RS256"))
    );
    assert_eq!(m["registration_endpoint"], REG);
    let jwt = m["signed_metadata"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(header.x5c.unwrap().len(), 2);
    let ep = verify_signed_metadata(jwt, &e.trust, BASE, e.clock.now()).unwrap();
    assert_eq!(
        (
            ep.token_endpoint.as_str(),
            ep.registration_endpoint.as_str()
        ),
        (TOKEN, REG)
    );
    // Another base URL, another community, or a year later: refused.
    assert!(verify_signed_metadata(jwt, &e.trust, "https://evil.test", e.clock.now()).is_err());
    let other = TrustCommunity::new("urn:x", fx().untrusted.anchor_pem().as_bytes()).unwrap();
    assert_eq!(
        verify_signed_metadata(jwt, &other, BASE, e.clock.now())
            .unwrap_err()
            .code(),
        "unapproved_software_statement"
    );
    assert!(verify_signed_metadata(jwt, &e.trust, BASE, e.clock.now() + 2 * 86_400).is_err());
    // The named community, and an unknown one.
    assert!(e.server.metadata(Some("urn:clinic:community")).is_ok());
    assert!(matches!(
        e.server.metadata(Some("urn:nope")),
        Err(UdapError::UnknownCommunity)
    ));
    // Cached: the same JWT until half its life has passed.
    assert_eq!(
        e.server.metadata(None).unwrap()["signed_metadata"],
        m["signed_metadata"]
    );
    e.clock.advance(std::time::Duration::from_secs(13 * 3600));
    assert_ne!(
        e.server.metadata(None).unwrap()["signed_metadata"],
        m["signed_metadata"]
    );
}

#[test]
fn configuration_mistakes_are_refused() {
    let f = fx();
    // A key that is not the certificate's.
    assert!(Signer::from_pem(&f.app_ec.chain_pem, f.other_app.key_pem.as_bytes()).is_err());
    // An iss the certificate does not name.
    assert!(
        UdapClient::from_pem(
            &f.app_ec.chain_pem,
            f.app_ec.key_pem.as_bytes(),
            "https://lab.example"
        )
        .is_err()
    );
    // The server's metadata key must be RSA.
    assert!(
        ServerCommunity::new(trust(), &f.app_ec.chain_pem, f.app_ec.key_pem.as_bytes()).is_err()
    );
    // A server certificate that does not name the base URL.
    let ours =
        ServerCommunity::new(trust(), &f.app_rsa.chain_pem, f.app_rsa.key_pem.as_bytes()).unwrap();
    let store: Arc<dyn RecordStore> = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(now()));
    assert!(
        UdapServer::new(
            config(),
            vec![ours],
            store.clone(),
            Keyring::generate(),
            clock.clone()
        )
        .is_err()
    );
    // Token lifetime over an hour.
    let ours =
        ServerCommunity::new(trust(), &f.server.chain_pem, f.server.key_pem.as_bytes()).unwrap();
    let mut long = config();
    long.token_lifetime = 3601;
    assert!(UdapServer::new(long, vec![ours], store, Keyring::generate(), clock).is_err());
    assert!(TrustCommunity::new("urn:x", b"no pem here").is_err());
    assert!(TrustCommunity::new("", f.trusted.anchor_pem().as_bytes()).is_err());
    let _ = GrantType::ClientCredentials.as_str();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// A statement the client builder signs is accepted with exactly the
    /// metadata it carries; one changed byte anywhere in it is refused.
    #[test]
    fn statements_round_trip_and_any_changed_byte_is_refused(
        name in "[A-Za-z0-9 ._-]{1,60}",
        user in "[a-z0-9._-]{1,20}",
        pick in proptest::collection::vec(proptest::bool::ANY, 2),
        flip in proptest::prelude::any::<proptest::sample::Index>(),
    ) {
        let f = fx();
        let mut scopes: Vec<&str> = SCOPES.iter().zip(&pick).filter(|(_, p)| **p).map(|(s, _)| *s).collect();
        if scopes.is_empty() {
            scopes.push(SCOPES[0]);
        }
        let req = ClientRequest::b2b(name.clone(), format!("mailto:{user}@lab.example"), &scopes);
        let t = now();
        let body = client(&f.app_ec)
            .registration_request(REG, &req, t)
            .unwrap();
        let allowed: Vec<String> = SCOPES.iter().map(|s| (*s).to_owned()).collect();
        let community = trust();
        let m = careconnect::authz::udap::check_registration(body.to_string().as_bytes(), &community, REG, &allowed, t).unwrap();
        proptest::prop_assert_eq!(&m.client_name, &name);
        proptest::prop_assert_eq!(m.scopes, scopes.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        proptest::prop_assert_eq!(m.grant_types, vec![GrantType::ClientCredentials]);
        // Change one character of the JWS (header, claims or signature).
        let jws = body["software_statement"].as_str().unwrap().to_owned();
        let mut bytes = jws.into_bytes();
        let i = flip.index(bytes.len());
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(bytes).unwrap();
        let forged_body = serde_json::json!({ "software_statement": forged, "udap": "1" }).to_string();
        let r = careconnect::authz::udap::check_registration(forged_body.as_bytes(), &community, REG, &allowed, t);
        // The only change allowed to pass is one that decodes to the same
        // bytes (base64url's spare bits); the decoder refuses those too,
        // so every change must be refused.
        proptest::prop_assert!(r.is_err(), "a changed byte at {} was accepted", i);
    }
}

#[tokio::test]
async fn concurrent_registrations_of_one_client_leave_one_client() {
    let e = env().await;
    let t = e.clock.now();
    let c = client(&fx().app_ec);
    let bodies: Vec<String> = (0..6)
        .map(|_| {
            c.registration_request(REG, &b2b_request(), t)
                .unwrap()
                .to_string()
        })
        .collect();
    let server = &e.server;
    let results =
        futures::future::join_all(bodies.iter().map(|b| server.register(b.as_bytes()))).await;
    let outcomes: Vec<RegistrationOutcome> =
        results.into_iter().map(|r| r.unwrap().outcome).collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == RegistrationOutcome::Created)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(e.server.clients(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_token_request_is_refused_when_another_community_revokes_the_certificate() {
    // Registered through community A, which has no list; B trusts the same
    // root and later publishes the leaf's revocation.
    let f = fx();
    let a = trust();
    let b = Arc::new(community_of(&f.trusted, "urn:clinic:other-view"));
    let ours = |t: &Arc<TrustCommunity>| {
        ServerCommunity::new(t.clone(), &f.server.chain_pem, f.server.key_pem.as_bytes()).unwrap()
    };
    let clock = Arc::new(ManualClock::new(now()));
    let server = UdapServer::new(
        config(),
        vec![ours(&a), ours(&b)],
        Arc::new(MemoryStore::new()),
        Keyring::generate(),
        clock.clone(),
    )
    .unwrap();
    let c = client(&f.revoked);
    let t = clock.now();
    let reg = register_b2b(&server, &c, t).await;
    assert_eq!(reg.client.community, a.name());
    let id = reg.client.client_id;
    b.set_crls(&[f.trusted.crl(&[f.revoked.serial]).unwrap().into_bytes()])
        .unwrap();
    let refusal = server
        .authenticate(&form(c.token_request(&id, TOKEN, &b2b(), None, t).unwrap()))
        .await
        .unwrap_err();
    assert!(
        refusal.error.description().contains("revoked"),
        "{}",
        refusal.error
    );
    // A member's certificate: the refusal names the client, for the audit.
    assert_eq!(refusal.signer.as_deref(), Some(id.as_str()));
    // A stranger's is anyone's: no signer.
    let stranger = client(&f.stranger);
    let refusal = server
        .authenticate(&form(
            stranger.token_request(&id, TOKEN, &b2b(), None, t).unwrap(),
        ))
        .await
        .unwrap_err();
    assert_eq!(refusal.signer, None);
}

#[tokio::test]
async fn self_made_certificates_and_expired_replays_are_nobodys_and_name_no_client() {
    // Review finding: webpki refuses an expired, CA or server-only leaf
    // before it looks for an issuer, so these passed as "members" and
    // their refusals named the client they claimed to be.
    let e = env().await;
    let t = e.clock.now();
    let c = client(&fx().app_ec);
    let id = register_b2b(&e.server, &c, t).await.client.client_id;
    for kind in [Flaw::Expired, Flaw::Ca, Flaw::ServerAuthOnly] {
        let fake = client(&self_made(APP, kind).unwrap());
        let body = fake.registration_request(REG, &b2b_request(), t).unwrap();
        let r = e
            .server
            .prepare_registration(body.to_string().as_bytes())
            .await
            .unwrap_err();
        assert_eq!(r.error.code(), "unapproved_software_statement", "{kind:?}");
        assert_eq!(
            r.signer, None,
            "{kind:?}: a self-made certificate is no member"
        );
        assert_eq!(
            r.leaf_sha256.as_ref().map(String::len),
            Some(64),
            "{kind:?}"
        );
        let form_ = form(fake.token_request(&id, TOKEN, &b2b(), None, t).unwrap());
        let r = e.server.authenticate(&form_).await.unwrap_err();
        assert_eq!(r.error.code(), "invalid_client", "{kind:?}");
        assert_eq!(
            r.signer, None,
            "{kind:?}: the claimed client_id is not named"
        );
    }
    // A member's own expired certificate proves a path: a member's refusal.
    let body = reg_body(&fx().expired, &b2b_request(), t);
    let r = e
        .server
        .prepare_registration(body.as_bytes())
        .await
        .unwrap_err();
    assert!(r.error.description().contains("expired"), "{}", r.error);
    assert_eq!(r.signer.as_deref(), Some(APP));
    // A member's statement and assertion replayed after they expired are
    // refused before any chain is built: anyone can replay them.
    let old_body = reg_body(&fx().app_ec, &b2b_request(), t);
    let old_form = form(c.token_request(&id, TOKEN, &b2b(), None, t).unwrap());
    e.clock.advance(secs(301));
    let r = e
        .server
        .prepare_registration(old_body.as_bytes())
        .await
        .unwrap_err();
    assert_eq!(r.error.code(), "invalid_software_statement");
    assert!(r.error.description().contains("expired"), "{}", r.error);
    assert_eq!(r.signer, None);
    let r = e.server.authenticate(&old_form).await.unwrap_err();
    assert_eq!(r.error.code(), "invalid_client");
    assert_eq!(r.signer, None);
}

#[tokio::test]
async fn a_jti_may_be_used_again_once_the_jwt_that_used_it_has_expired() {
    // UDAP Security IG 1.2.4: a jti is unique while its JWT is valid.
    let e = env().await;
    let t = e.clock.now();
    let s = signer(&fx().app_ec);
    let with_jti = |now: u64| {
        let mut cl = claims(now);
        cl["jti"] = json!("the-same-jti");
        body(&s.sign(&cl).unwrap())
    };
    e.server.register(&with_jti(t)).await.unwrap();
    // Within the first JWT's life (and the leeway): a replay.
    e.clock.advance(secs(200));
    let err = refused(&e, &with_jti(e.clock.now())).await;
    assert!(err.description().contains("replay"), "{err}");
    // After it (exp + leeway): free again, once.
    e.clock.advance(secs(300 + 60));
    let again = with_jti(e.clock.now());
    e.server.register(&again).await.unwrap();
    let err = refused(&e, &again).await;
    assert!(err.description().contains("replay"), "{err}");
    // The same at the token endpoint.
    let id = registered(&e, &fx().app_ec).await;
    let assertion = |now: u64| {
        let cl = json!({
            "iss": id, "sub": id, "aud": TOKEN, "iat": now, "exp": now + 300,
            "jti": "token-jti", "extensions": { "hl7-b2b": b2b() },
        });
        vec![
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            (
                "client_assertion_type".to_owned(),
                careconnect::authz::udap::JWT_BEARER.to_owned(),
            ),
            ("client_assertion".to_owned(), s.sign(&cl).unwrap()),
            ("udap".to_owned(), "1".to_owned()),
        ]
    };
    e.server.token(&assertion(e.clock.now())).await.unwrap();
    let err = e.server.token(&assertion(e.clock.now())).await.unwrap_err();
    assert!(err.description().contains("replay"), "{err}");
    e.clock.advance(secs(361));
    e.server.token(&assertion(e.clock.now())).await.unwrap();
}

#[tokio::test]
async fn a_malformed_b2b_extension_is_invalid_grant_like_a_missing_one() {
    let e = env().await;
    let id = registered(&e, &fx().app_ec).await;
    let s = signer(&fx().app_ec);
    let t = e.clock.now();
    let mut missing_org = serde_json::to_value(b2b()).unwrap();
    missing_org
        .as_object_mut()
        .unwrap()
        .remove("organization_id");
    let mut pou_string = serde_json::to_value(b2b()).unwrap();
    pou_string["purpose_of_use"] = json!("TREAT");
    for (what, ext) in [
        ("organization_id missing", json!({ "hl7-b2b": missing_org })),
        ("purpose_of_use a string", json!({ "hl7-b2b": pou_string })),
        ("hl7-b2b a string", json!({ "hl7-b2b": "yes" })),
        ("extensions an array", json!([1])),
        ("no hl7-b2b", json!({})),
    ] {
        let cl = json!({
            "iss": id, "sub": id, "aud": TOKEN, "iat": t, "exp": t + 300,
            "jti": format!("jti-{}", rand::random::<u64>()), "extensions": ext,
        });
        let f = vec![
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            (
                "client_assertion_type".to_owned(),
                careconnect::authz::udap::JWT_BEARER.to_owned(),
            ),
            ("client_assertion".to_owned(), s.sign(&cl).unwrap()),
            ("udap".to_owned(), "1".to_owned()),
        ];
        let err = e.server.token(&f).await.unwrap_err();
        assert_eq!(err.code(), "invalid_grant", "{what}: {err}");
    }
}

#[tokio::test]
async fn the_offered_subset_of_asked_scopes_is_granted_and_a_trailing_slash_in_aud_is_accepted() {
    // STU 2 7.3: a registration or token request asking for one scope too
    // many gets the subset, and says so in `scope`.
    let e = env().await;
    let t = e.clock.now();
    let s = signer(&fx().app_ec);
    let mut cl = claims(t);
    cl["scope"] = json!("system/Patient.read system/*.write");
    cl["aud"] = json!(format!("{REG}/"));
    let reg = e
        .server
        .register(&body(&s.sign(&cl).unwrap()))
        .await
        .unwrap();
    assert_eq!(reg.body["scope"], "system/Patient.read");
    assert_eq!(reg.client.metadata.scopes, ["system/Patient.read"]);
    let id = reg.client.client_id;
    let c = client(&fx().app_ec);
    let tok = e
        .server
        .token(&form(
            c.token_request(
                &id,
                TOKEN,
                &b2b(),
                Some("system/Patient.read system/Observation.read"),
                t,
            )
            .unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(tok.grant.scopes, ["system/Patient.read"]);
    assert_eq!(tok.to_json()["scope"], "system/Patient.read");
    // Nothing registered among those asked: refused.
    let err = e
        .server
        .token(&form(
            c.token_request(&id, TOKEN, &b2b(), Some("system/Observation.read"), t)
                .unwrap(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_scope");
    // Two slashes, or another path, are still refused.
    for aud in [format!("{REG}//"), format!("{BASE}/registe")] {
        let mut cl = claims(t);
        cl["aud"] = json!(aud);
        let err = refused(&e, &body(&s.sign(&cl).unwrap())).await;
        assert_eq!(err.code(), "invalid_software_statement", "{aud}");
    }
}

fn secs(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n)
}
