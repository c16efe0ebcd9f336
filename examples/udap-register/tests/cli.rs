//! The `udap-register` binary against the web demo running on loopback: it
//! registers with the development community's client certificate, gets a
//! token, and the replayed assertion is refused; with a certificate of
//! another community it fails with the server's error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::process::Command;

use careconnect_web_demo::udap::DEV_CLIENT_ISS;
use careconnect_web_demo::{Settings, start};

fn cli(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_udap-register"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_registers_gets_a_token_and_sees_its_replay_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::embedded(dir.path(), "127.0.0.1:0".parse().unwrap());
    s.dev_issuer = "127.0.0.1:0".parse().unwrap();
    let demo = start(s).await.unwrap();
    let d = dir.path();
    let p = |x: &str| d.join(x).display().to_string();
    let mut args: Vec<String> = [
        "--server",
        demo.url(),
        "--ca",
        &p("tls/ca.pem"),
        "--anchor",
        &p("udap/anchor.pem"),
        "--chain",
        &p("udap/dev-client/chain.pem"),
        "--key",
        &p("udap/dev-client/key.pem"),
        "--iss",
        DEV_CLIENT_ISS,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut with_token = args.clone();
    with_token.extend(["--token", "--check-replay", "--json"].map(String::from));
    let out = tokio::task::spawn_blocking(move || cli(&with_token))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["metadata_verified"], true);
    assert_eq!(report["registration_status"], 201);
    assert_eq!(report["token"]["token_type"], "Bearer");
    assert_eq!(report["replay_refused"]["error"], "invalid_client");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("access_token"),
        "the token was printed"
    );

    // Human output, then a key that is not the certificate's.
    let out = tokio::task::spawn_blocking({
        let a = args.clone();
        move || cli(&a)
    })
    .await
    .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("HTTP 200 client_id="));
    let other = careconnect::authz::udap::dev::DevCommunity::generate("urn:elsewhere").unwrap();
    let cert = other
        .issue(
            DEV_CLIENT_ISS,
            careconnect::authz::udap::dev::KeyKind::P256,
            30,
        )
        .unwrap();
    cert.save(&d.join("stranger")).unwrap();
    for (flag, file) in [
        ("--chain", "stranger/chain.pem"),
        ("--key", "stranger/key.pem"),
    ] {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = p(file);
    }
    let out = tokio::task::spawn_blocking(move || cli(&args))
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unapproved_software_statement"), "{err}");
    demo.stop().await;
}
