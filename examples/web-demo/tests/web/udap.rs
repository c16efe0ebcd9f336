//! UDAP at the demo over real HTTPS: the `udap-register` example registers
//! with the development community's client certificate, gets a token and
//! sees its replayed assertion refused; the admin page lists the app and
//! the audit log holds the purpose of use. Then the abuse: a certificate
//! from an untrusted community, malformed and oversized bodies, another
//! client's id, an unknown community, and a flood.

use careconnect::authz::udap::dev::{DevCommunity, KeyKind};
use careconnect::authz::udap::{B2bExtension, ClientRequest, UdapClient};
use careconnect_udap_register::{Args, run};
use careconnect_web_demo::udap::DEV_CLIENT_ISS;
use clap::Parser;
use reqwest::StatusCode;
use serde_json::Value;

use crate::common::Demo;

fn args(demo: &Demo, extra: &[&str]) -> Args {
    let d = demo.dir.path();
    let p = |x: &str| d.join(x).display().to_string();
    let mut v = vec![
        "udap-register".to_owned(),
        "--server".into(),
        demo.url.clone(),
        "--ca".into(),
        demo.ca().display().to_string(),
        "--anchor".into(),
        p("udap/anchor.pem"),
        "--chain".into(),
        p("udap/dev-client/chain.pem"),
        "--key".into(),
        p("udap/dev-client/key.pem"),
        "--iss".into(),
        DEV_CLIENT_ISS.into(),
        "--name".into(),
        "Lab results sync".into(),
    ];
    v.extend(extra.iter().map(|s| (*s).to_owned()));
    Args::try_parse_from(v).unwrap()
}

#[tokio::test]
async fn the_example_registers_gets_a_token_and_a_replay_fails() {
    let mut demo = Demo::start().await;
    let report = run(&args(&demo, &["--token", "--check-replay"]))
        .await
        .unwrap();
    assert!(report.metadata_verified);
    assert_eq!(report.registration_status, 201);
    assert!(!report.client_id.is_empty());
    let (token_type, expires_in, scope) = report.token.clone().unwrap();
    assert_eq!(token_type, "Bearer");
    assert!(expires_in > 0 && expires_in <= 3600);
    assert!(scope.contains("system/Patient.read"));
    let (error, why) = report.replay_refused.clone().unwrap();
    assert_eq!(error, "invalid_client");
    assert!(why.contains("replay"), "{why}");
    // Registering again updates the same client (200).
    let again = run(&args(&demo, &["--scope", "system/Patient.read"]))
        .await
        .unwrap();
    assert_eq!(
        (again.registration_status, again.client_id.as_str()),
        (200, report.client_id.as_str())
    );
    assert_eq!(again.scopes, "system/Patient.read");

    // The admin sees the app; the audit log has the token's purpose of use.
    let admin = demo.login("admin-adam").await;
    let page = admin.page("/admin").await;
    assert!(
        page.contains("data-testid=\"udap-client\""),
        "no UDAP app listed"
    );
    // (minijinja escapes '/' in HTML.)
    assert!(
        page.contains("Lab results sync") && page.contains(&DEV_CLIENT_ISS.replace('/', "&#x2f;"))
    );
    assert!(page.contains(&report.client_id));
    let log = admin.page("/admin?from=0#audit").await;
    let everything = format!("{page}{log}");
    assert!(everything.contains("udap_token"), "token not audited");
    assert!(
        everything
            .contains("purpose_of_use&quot;:[&quot;urn:oid:2.16.840.1.113883.5.8#TREAT&quot;]"),
        "purpose of use not audited: {}",
        everything
            .lines()
            .filter(|l| l.contains("udap_token"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Nobody else sees the list.
    let doctor = demo.login("doctor-grey").await;
    assert_eq!(doctor.get("/admin").await.status(), StatusCode::FORBIDDEN);

    // Cancelling removes it from the list.
    let cancelled = run(&args(&demo, &["--cancel"])).await.unwrap();
    assert_eq!(cancelled.registration_status, 200);
    let page = admin.page("/admin").await;
    assert!(!page.contains("data-testid=\"udap-client\""));
    demo.stop().await;
}

async fn post_json(demo: &Demo, path: &str, ct: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let r = demo
        .client()
        .post(demo.at(path))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let s = r.status();
    let text = r.text().await.unwrap();
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn abuse_of_the_udap_endpoints() {
    let mut demo = Demo::start().await;
    let reg = demo.at("/register");
    let tok = demo.at("/token");
    let c = demo.client();

    // Metadata: the default and the named community; an unknown one is 204.
    let m: Value = c
        .get(demo.at("/.well-known/udap"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["registration_endpoint"], reg.as_str());
    let r = c
        .get(demo.at("/.well-known/udap?community=urn:careconnect:dev-community"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(demo.at("/.well-known/udap?community=urn:evil"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // A certificate from a community this server does not trust.
    let stranger = DevCommunity::generate("urn:elsewhere").unwrap();
    let cert = stranger.issue(DEV_CLIENT_ISS, KeyKind::P256, 30).unwrap();
    let app =
        UdapClient::from_pem(&cert.chain_pem, cert.key_pem.as_bytes(), DEV_CLIENT_ISS).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let req = ClientRequest::b2b(
        "Stranger",
        "mailto:x@elsewhere.example",
        &["system/Patient.read"],
    );
    let body = app
        .registration_request(&reg, &req, now)
        .unwrap()
        .to_string()
        .into_bytes();
    let (s, v) = post_json(&demo, "/register", "application/json", body).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("unapproved_software_statement")
        )
    );
    assert!(!v["error_description"].as_str().unwrap().is_empty());

    // Malformed bodies, the wrong content type, an oversized body.
    let (s, v) = post_json(
        &demo,
        "/register",
        "application/json",
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_client_metadata"))
    );
    let (s, _) = post_json(&demo, "/register", "text/plain", b"{}".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = post_json(
        &demo,
        "/register",
        "application/json",
        vec![b' '; 80 * 1024],
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, v) = post_json(
        &demo,
        "/token",
        "application/x-www-form-urlencoded",
        b"grant_type=password".to_vec(),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_grant_type"))
    );

    // Another client's id: the dev client registers, a second app (same
    // community, another identity) asserts the first one's id.
    let mine = run(&args(&demo, &[])).await.unwrap();
    let dev = DevCommunity::load_or_create(&demo.dir.path().join("udap"), "unused").unwrap();
    let other = dev
        .issue("https://other-app.example/udap", KeyKind::P256, 30)
        .unwrap();
    let other = UdapClient::from_pem(
        &other.chain_pem,
        other.key_pem.as_bytes(),
        "https://other-app.example/udap",
    )
    .unwrap();
    let b2b = B2bExtension::new("https://other-app.example/org", vec!["TREAT".into()]);
    let form = other
        .token_request(&mine.client_id, &tok, &b2b, None, now)
        .unwrap();
    let r = c.post(&tok).form(&form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_client");
    // An Authorization header (a client secret) is refused outright.
    let r = c
        .post(&tok)
        .basic_auth("id", Some("secret"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A flood of registrations with bad statements: each refused (or told
    // to retry), nothing stored, and the server still serves.
    let bad = app
        .registration_request(&reg, &req, now)
        .unwrap()
        .to_string();
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let (c, reg, bad) = (c.clone(), reg.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            c.post(reg)
                .header("content-type", "application/json")
                .body(bad)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut refused = 0;
    for t in tasks {
        let s = t.await.unwrap();
        assert!(
            s == StatusCode::BAD_REQUEST || s == StatusCode::SERVICE_UNAVAILABLE,
            "{s}"
        );
        refused += usize::from(s == StatusCode::BAD_REQUEST);
    }
    assert!(refused > 0);
    let again = run(&args(&demo, &["--token"])).await.unwrap();
    assert_eq!(again.registration_status, 200);
    let admin = demo.login("admin-adam").await;
    assert_eq!(
        admin
            .page("/admin")
            .await
            .matches("data-testid=\"udap-client\"")
            .count(),
        1
    );
    // The flood did not flood the audit log: refusals from one address are
    // recorded up to the per-source limit, then one entry says more went
    // unrecorded (the minute may turn over once mid-flood; every refusal in
    // this test comes from 127.0.0.1).
    let mut refusals = 0;
    let mut from = 0;
    loop {
        let page = admin.page(&format!("/admin?from={from}")).await;
        refusals += page.matches("udap-client:?").count();
        let rows = page.matches("<tr><td>").count();
        if !page.contains("Newer →") || rows == 0 || from > 5000 {
            break;
        }
        from += 50;
    }
    let limit = careconnect::core::udap::MAX_AUDITED_REFUSALS_PER_SOURCE as usize;
    assert!(
        refusals >= limit.min(refused),
        "{refusals} refusals audited"
    );
    assert!(refusals <= 2 * (limit + 1), "{refusals} refusals audited");

    // A query with anything but one community: a JSON 400.
    let r = c
        .get(demo.at("/.well-known/udap?community=a&community=b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request");
    demo.stop().await;
}

#[tokio::test]
async fn a_killed_demo_keeps_its_community_and_its_apps() {
    let mut demo = Demo::spawn(None, &[]);
    let first = run(&args(&demo, &["--token"])).await.unwrap();
    assert_eq!(first.registration_status, 201);
    // Registrations in flight when the process is killed (SIGKILL).
    let mut inflight = Vec::new();
    for _ in 0..20 {
        let a = args(&demo, &[]);
        inflight.push(tokio::spawn(async move { run(&a).await }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let mut child = demo.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    for t in inflight {
        let _ = t.await.unwrap(); // done or cut off: either is fine
    }
    // Started again on the same data (another port, so a new server
    // certificate from the same community): the app is still registered,
    // once, and the audit chain is intact.
    let dir = std::mem::replace(&mut demo.dir, tempfile::tempdir().unwrap());
    let mut again = Demo::spawn(Some((dir, demo.issuer_port)), &[]);
    let report = run(&args(&again, &["--token"])).await.unwrap();
    assert!(
        report.metadata_verified,
        "the reloaded community signs the metadata"
    );
    assert_eq!(
        (report.registration_status, report.client_id.as_str()),
        (200, first.client_id.as_str())
    );
    let admin = again.login("admin-adam").await;
    let page = admin.page("/admin").await;
    assert_eq!(page.matches("data-testid=\"udap-client\"").count(), 1);
    assert!(
        page.contains("Chain verified"),
        "audit chain after the kill"
    );
    again.stop().await;
}
