//! A flood of UDAP requests that anyone can send, against the clinic's
//! audited UDAP server: each refusal is audited, but the log is permanent
//! (an entry cannot be pruned without breaking the chain), so what anyone
//! can add to it must be bounded, and must never name a registered client.
//!
//! Review finding (issue 31, item 1): self-made certificates that fail for
//! reasons of their own (expired, a CA, for servers only) passed as a
//! community member's, were never throttled, and at `/token` named the
//! real client they claimed to be; an expired statement could be replayed
//! for ever.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use careconnect_authz::session::{Clock, ManualClock};
use careconnect_authz::udap::dev::{DevCommunity, Flaw, KeyKind, self_made};
use careconnect_authz::udap::{
    B2bExtension, ClientRequest, ServerCommunity, TrustCommunity, UdapClient, UdapConfig,
};
use careconnect_core::audit::{AuditEvent, Verification};
use careconnect_core::udap::{
    ClinicUdap, MAX_AUDITED_MEMBER_REFUSALS_PER_MINUTE, MAX_AUDITED_REFUSALS_PER_MINUTE,
};
use careconnect_core::{Clinic, ClinicConfig};

const BASE: &str = "https://fhir.clinic.test";
const APP: &str = "https://lab.example/udap";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b2b() -> B2bExtension {
    B2bExtension::new(
        "https://lab.example/org",
        vec!["urn:oid:2.16.840.1.113883.5.8#TREAT".into()],
    )
}

fn form(pairs: Vec<(&'static str, String)>) -> Vec<(String, String)> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

enum Request {
    Register(Vec<u8>),
    Token(Vec<(String, String)>),
}

async fn send(udap: &ClinicUdap, r: &Request, from: IpAddr) {
    match r {
        Request::Register(b) => {
            udap.register(b, from).await.unwrap_err();
        }
        Request::Token(f) => {
            udap.token(f, from).await.unwrap_err();
        }
    }
}

async fn events_after(clinic: &Clinic, from: u64) -> Vec<AuditEvent> {
    let mut out = Vec::new();
    let mut next = from + 1;
    loop {
        let page = clinic.audit().read(next, 1000).await.unwrap();
        let Some((last, _)) = page.last() else {
            return out;
        };
        next = last + 1;
        out.extend(page.into_iter().map(|(_, e)| e));
    }
}

async fn head(clinic: &Clinic) -> u64 {
    match clinic.audit().verify().await.unwrap() {
        Verification::Intact { entries } => entries,
        other => panic!("the audit chain does not verify: {other:?}"),
    }
}

#[tokio::test]
async fn ten_thousand_outsiders_requests_add_at_most_the_throttles_bound_and_name_no_client() {
    let dir = tempfile::tempdir().unwrap();
    let config = ClinicConfig::embedded(dir.path()).unwrap();
    let store = careconnect_storage::connect(&config.storage_url)
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(now()));
    let clinic = Clinic::open_with(config, store, clock.clone())
        .await
        .unwrap();
    let community = DevCommunity::generate("urn:clinic:community").unwrap();
    let server_cert = community.issue(BASE, KeyKind::Rsa2048, 30).unwrap();
    let app_cert = community.issue(APP, KeyKind::P256, 30).unwrap();
    let trust = Arc::new(
        TrustCommunity::new(community.name(), community.anchor_pem().as_bytes())
            .unwrap()
            .with_intermediates(community.intermediate_pem().as_bytes())
            .unwrap(),
    );
    let ours = ServerCommunity::new(
        trust,
        &server_cert.chain_pem,
        server_cert.key_pem.as_bytes(),
    )
    .unwrap();
    let (reg_url, token_url) = (format!("{BASE}/register"), format!("{BASE}/token"));
    let udap = clinic
        .udap(
            UdapConfig {
                base_url: BASE.into(),
                registration_endpoint: reg_url.clone(),
                token_endpoint: token_url.clone(),
                scopes: vec!["system/Patient.read".into()],
                token_lifetime: 900,
            },
            vec![ours],
        )
        .unwrap();
    let local = IpAddr::from([127, 0, 0, 1]);
    let app = UdapClient::from_pem(&app_cert.chain_pem, app_cert.key_pem.as_bytes(), APP).unwrap();
    let req = ClientRequest::b2b(
        "Lab results sync",
        "mailto:ops@lab.example",
        &["system/Patient.read"],
    );
    let t0 = clock.now();
    // The partner whose name an outsider would use.
    let client_id = udap
        .register(
            app.registration_request(&reg_url, &req, t0)
                .unwrap()
                .to_string()
                .as_bytes(),
            local,
        )
        .await
        .unwrap()
        .client
        .client_id;
    // What outsiders send: self-made certificates at both endpoints (the
    // token requests naming the real client), and the partner's own
    // statement and assertion captured and replayed after they expired.
    let mut flood = Vec::new();
    // Ten certificates of each kind, so the per-certificate bound is not
    // what stops them either.
    for kind in [Flaw::Expired, Flaw::Ca, Flaw::ServerAuthOnly].repeat(10) {
        let cert = self_made(APP, kind).unwrap();
        let fake = UdapClient::from_pem(&cert.chain_pem, cert.key_pem.as_bytes(), APP).unwrap();
        let reg = fake.registration_request(&reg_url, &req, t0).unwrap();
        flood.push(Request::Register(reg.to_string().into_bytes()));
        let tok = fake
            .token_request(&client_id, &token_url, &b2b(), None, t0)
            .unwrap();
        flood.push(Request::Token(form(tok)));
    }
    let old = t0 - 400;
    let reg = app.registration_request(&reg_url, &req, old).unwrap();
    flood.push(Request::Register(reg.to_string().into_bytes()));
    let tok = app
        .token_request(&client_id, &token_url, &b2b(), None, old)
        .unwrap();
    flood.push(Request::Token(form(tok)));

    let before = head(&clinic).await;
    let n = 10_000;
    for i in 0..n {
        // Half-way, the next minute.
        if i == n / 2 {
            clock.advance(Duration::from_secs(60));
        }
        // From 200 addresses, so the per-address bound is not what stops
        // them.
        let from = IpAddr::from([10, 0, (i % 200 / 100) as u8, (i % 100) as u8]);
        send(&udap, &flood[i % flood.len()], from).await;
    }
    let added = events_after(&clinic, before).await;
    let minutes = 2;
    let bound = minutes * (MAX_AUDITED_REFUSALS_PER_MINUTE as usize + 1);
    assert!(
        added.len() <= bound,
        "{} entries added by {n} refused requests (bound {bound})",
        added.len()
    );
    // Every refusal until the bound was audited, so the bound is what
    // stopped them (not a failure to audit).
    assert!(added.len() >= minutes * MAX_AUDITED_REFUSALS_PER_MINUTE as usize);
    for e in &added {
        assert_eq!(e.resource, "udap-client:?", "{e:?}");
        let reason = e.reason.as_deref().unwrap_or("");
        assert!(
            !reason.contains(&client_id) && !reason.contains(APP),
            "an outsider's refusal names a client: {e:?}"
        );
    }
    // Those refused after their signature verified name the certificate.
    assert!(
        added
            .iter()
            .filter(|e| e
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("certificate_sha256"))
            .count()
            >= minutes * MAX_AUDITED_REFUSALS_PER_MINUTE as usize
    );
    assert_eq!(
        added
            .iter()
            .filter(|e| e.reason.as_deref().unwrap_or("").contains("throttled"))
            .count(),
        minutes,
        "one entry a minute says that more went unrecorded"
    );

    // A member's valid assertion, replayed 1,000 times while it is valid:
    // refused as replays, audited naming the member, up to the member's
    // bound.
    clock.advance(Duration::from_secs(60));
    let before = head(&clinic).await;
    let tok = form(
        app.token_request(&client_id, &token_url, &b2b(), None, clock.now())
            .unwrap(),
    );
    udap.token(&tok, local).await.unwrap();
    for i in 0..1_000u32 {
        let from = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
        udap.token(&tok, from).await.unwrap_err();
    }
    let added = events_after(&clinic, before).await;
    let member_bound = 1 + MAX_AUDITED_MEMBER_REFUSALS_PER_MINUTE as usize + 1;
    assert_eq!(added.len(), member_bound, "{added:#?}");
    assert!(
        added
            .iter()
            .all(|e| e.resource == format!("udap-client:{client_id}"))
    );
    head(&clinic).await;
}
