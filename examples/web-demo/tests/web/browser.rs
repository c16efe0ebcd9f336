//! The demo in a real browser: headless Chromium driven by playwright-core
//! (`scripts/browser.sh` installs both) walks the clinic as every demo user
//! (`tests/browser/web_demo.mjs`): sign in through the development issuer,
//! each subsystem's main flow, what must and must not be visible, sign out.
//! Screenshots of every page land in the target directory
//! (`web-demo-screenshots/`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use clap::Parser;

use super::common::Demo;

#[derive(serde::Deserialize, Debug)]
struct Outcome {
    checks: usize,
    failures: Vec<String>,
    shots: Vec<PathBuf>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_walks_the_clinic_in_chromium() {
    let mut demo = Demo::start().await;
    // An app of the development community registers itself (UDAP), so the
    // admin page has one to list.
    let d = demo.dir.path().display().to_string();
    let args = careconnect_udap_register::Args::try_parse_from([
        "udap-register".to_owned(),
        "--server".into(),
        demo.url.clone(),
        "--ca".into(),
        format!("{d}/tls/ca.pem"),
        "--chain".into(),
        format!("{d}/udap/dev-client/chain.pem"),
        "--key".into(),
        format!("{d}/udap/dev-client/key.pem"),
        "--iss".into(),
        careconnect_web_demo::udap::DEV_CLIENT_ISS.into(),
        "--name".into(),
        "Lab results sync".into(),
    ])
    .unwrap();
    careconnect_udap_register::run(&args).await.unwrap();
    let dir = careconnect_testkit::browser_dir();
    // The driver as this checkout has it (the browser directory may hold an
    // older copy).
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/web_demo.mjs");
    std::fs::copy(&driver, dir.join("web_demo.mjs")).unwrap();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-demo-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let url = demo.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(dir.join("web_demo.mjs"))
            .arg(&url)
            .arg(&shots)
            .env(
                "EXPECT_TLS_GROUP",
                if cfg!(feature = "aws-lc") {
                    "X25519MLKEM768"
                } else {
                    "X25519"
                },
            )
            .env("EXPECT_UDAP_APP", "Lab results sync")
            .current_dir(&dir)
            .output()
            .expect("node")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "browser driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o: Outcome = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        o.failures.is_empty(),
        "{} of {} checks failed: {:#?}",
        o.failures.len(),
        o.checks,
        o.failures
    );
    assert!(o.checks >= 50, "only {} checks ran", o.checks);
    for s in &o.shots {
        assert!(
            std::fs::metadata(s).unwrap().len() > 10_000,
            "screenshot {}",
            s.display()
        );
    }
    demo.stop().await;
}
