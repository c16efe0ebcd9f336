//! Two demo processes on different ports, configured with one PostgreSQL
//! database (`scripts/pg.sh`), one S3-compatible store and one KMS (moto,
//! `scripts/moto.sh`) and one OpenID provider, behave as one clinic: a
//! session made on one is valid on the other, a document uploaded through
//! one downloads through the other, and a data-key rotation run while both
//! serve writes loses nothing. Built with `--features aws`.

#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use super::common::{Demo, free_port, pdf};
use careconnect::authz::dev_issuer::{DevClient, DevIssuer, DevIssuerConfig, DevUser};
use careconnect::authz::session::SystemClock;
use careconnect::authz::{Principal, Role, UserId};
use careconnect::core::config::ClinicFile;
use careconnect::core::seed::DEMO_USERS;
use careconnect::core::{BlobConfig, Clinic, KmsConfig};
use careconnect::crypto::kms::{AwsKms, AwsKmsConfig};
use careconnect::crypto::tls::DevPki;
use reqwest::StatusCode;

const SECRET: &str = "scale-out-client-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_are_one_clinic() {
    // The shared components.
    let tag = format!("{:x}", careconnect_testkit::nanos());
    let kms_admin = careconnect_testkit::kms_admin().await;
    for k in ["clinic", "documents", "subjects-0000", "subjects-0001"] {
        careconnect_testkit::kms_key_with_alias(&kms_admin, &format!("alias/so-{tag}-{k}")).await;
    }
    let bucket = careconnect_testkit::fresh_bucket();
    let db = careconnect_testkit::OwnDb::create("web_scale_out").await;
    let (port_a, port_b) = (free_port(), free_port());
    let callback = |p: u16| format!("https://127.0.0.1:{p}/auth/callback");
    let mut dev = DevIssuerConfig::clinic_demo("127.0.0.1:0".parse().unwrap());
    dev.users = DEMO_USERS
        .iter()
        .map(|u| DevUser {
            subject: u.subject.into(),
            name: u.name.into(),
            email: format!("{}@stjohns.example", u.subject),
            groups: Vec::new(),
            roles: Vec::new(),
        })
        .collect();
    dev.clients = vec![DevClient {
        client_id: "clinic".into(),
        client_secret: Some(SECRET.into()),
        redirect_uris: vec![callback(port_a), callback(port_b)],
    }];
    let issuer = DevIssuer::start(dev).await.unwrap();
    let clinic_toml = |dir: &std::path::Path| {
        format!(
            r#"data_dir = {dir:?}
storage_url = "{db}"
blobs_url = "s3://{bucket}/medicloud"
clinic_kms_key = "alias/so-{tag}-clinic"
documents_kms_key = "alias/so-{tag}-documents"
subject_buckets = 2
subject_key_prefix = "alias/so-{tag}-subjects-"
keyring_recheck_ms = 300
[kms]
kind = "aws"
region = "us-east-1"
endpoint = "{endpoint}"
"#,
            db = db.url,
            endpoint = careconnect_testkit::moto_endpoint(),
        )
    };
    let env = [
        ("AWS_ENDPOINT_URL", careconnect_testkit::s3_endpoint()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("CARECONNECT_OIDC_CLIENT_SECRET", SECRET.into()),
    ];
    // One certificate for both (a load balancer's names would be on it).
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let pki = DevPki::load_or_create(dir_a.path().join("tls")).unwrap();
    std::fs::create_dir_all(dir_b.path().join("tls")).unwrap();
    std::fs::copy(&pki.ca_cert, dir_b.path().join("tls/ca.pem")).unwrap();
    let node = |dir: &tempfile::TempDir, port: u16| {
        let settings = format!(
            "seed = true\ndev_udap_with_real_data = true\n[tls]\ncert = {:?}\nkey = {:?}\n[oidc]\nissuer = \"{}\"\nclient_id = \"clinic\"\n[clinic]\n{}",
            pki.server.cert,
            pki.server.key,
            issuer.url(),
            clinic_toml(dir.path()).replace("[kms]", "[clinic.kms]"),
        );
        let file = dir.path().join("web.toml");
        std::fs::write(&file, settings).unwrap();
        (file, port)
    };
    let (file_a, _) = node(&dir_a, port_a);
    let (file_b, _) = node(&dir_b, port_b);
    let spawn = |dir: tempfile::TempDir, file: &std::path::Path, port: u16| {
        Demo::spawn_env(
            Some((dir, free_port())),
            Some(port),
            &["--config", file.to_str().unwrap()],
            &env,
        )
    };
    let mut a = spawn(dir_a, &file_a, port_a);
    let mut b = spawn(dir_b, &file_b, port_b);

    // A session made on A is a session on B (the browser sends the cookie
    // to the same host, whichever node answers).
    let grey = a.login("doctor-grey").await;
    let on_b = |path: &str| grey.client.get(format!("{}{path}", b.url)).send();
    assert_eq!(on_b("/medrecords").await.unwrap().status(), StatusCode::OK);
    // A document uploaded through B downloads through A, whole.
    let bytes = pdf(600_000);
    let mut via_b = super::common::Session {
        client: grey.client.clone(),
        csrf: grey.csrf.clone(),
        base: b.url.clone(),
        callback: String::new(),
    };
    assert_eq!(
        via_b.upload("scan.pdf", bytes.clone()).await.status(),
        StatusCode::SEE_OTHER
    );
    let docs = grey.documents().await;
    assert_eq!(docs.len(), 1);
    let r = grey.get(&format!("/medicloud/documents/{}", docs[0])).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());
    // Sign-out on B ends the session on A: at once if A has not read it
    // lately, within A's `SESSION_RECHECK` (2 s) if it has.
    let on_a = |c: &reqwest::Client| c.get(format!("{}/careconnect", a.url)).send();
    let alice = b.login("patient-alice").await;
    via_b.csrf = alice.csrf.clone();
    via_b.client = alice.client.clone();
    assert_eq!(
        via_b.post("/logout", &[]).await.status(),
        StatusCode::SEE_OTHER
    );
    let r = on_a(&alice.client).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let alice = b.login("patient-alice").await;
    assert_eq!(on_a(&alice.client).await.unwrap().status(), StatusCode::OK);
    via_b.csrf = alice.csrf.clone();
    via_b.client = alice.client.clone();
    assert_eq!(
        via_b.post("/logout", &[]).await.status(),
        StatusCode::SEE_OTHER
    );
    let signed_out = std::time::Instant::now();
    loop {
        let status = on_a(&alice.client).await.unwrap().status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            signed_out.elapsed() < Duration::from_secs(10),
            "A still serves a session B ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A data-key rotation (re-sealing every row) while both nodes take notes.
    let dir_c = tempfile::tempdir().unwrap();
    let parsed = ClinicFile::from_toml(&clinic_toml(dir_c.path())).unwrap();
    let kms = AwsKms::connect(&AwsKmsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some(careconnect_testkit::moto_endpoint()),
        ..AwsKmsConfig::default()
    })
    .await;
    let mut config = parsed
        .into_config(Some(KmsConfig::Provided(Arc::new(kms))))
        .unwrap();
    let options = careconnect_testkit::s3_options();
    config.blobs = BlobConfig::Provided(Arc::new(
        careconnect::storage::S3BlobStore::open_with(
            &format!("s3://{bucket}/medicloud"),
            options.iter().map(|(k, v)| (*k, v.as_str())),
        )
        .unwrap(),
    ));
    let store = careconnect::storage::connect(&config.storage_url)
        .await
        .unwrap();
    let operator = Clinic::open_with(config, store, Arc::new(SystemClock))
        .await
        .unwrap();
    let admin = Principal::new(
        UserId::new("careconnect-test", "operator").unwrap(),
        [Role::Admin].into_iter().collect(),
    );
    let rotation = {
        let (operator, admin) = (operator.clone(), admin.clone());
        tokio::spawn(async move {
            operator
                .rotation()
                .rotate_data_key(&admin, true, false, &mut |_| {})
                .await
        })
    };
    let nodes = [a.url.clone(), b.url.clone()];
    let mut written = Vec::new();
    let mut i = 0;
    while !rotation.is_finished() || written.len() < 6 {
        let text = format!("Observation {i} during the rotation.");
        let r = grey
            .client
            .post(format!(
                "{}/medrecords/patients/patient-alice/notes",
                nodes[i % 2]
            ))
            .form(&[("csrf", grey.csrf.as_str()), ("text", text.as_str())])
            .send()
            .await
            .unwrap();
        // A node may briefly refuse while it confirms the new keyring (503):
        // that note was not written, and says so.
        match r.status() {
            StatusCode::SEE_OTHER => written.push(text),
            StatusCode::SERVICE_UNAVAILABLE => {}
            s => panic!("note {i}: {s}"),
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = rotation.await.unwrap().unwrap();
    assert!(report.new_key > 0, "{report:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await; // read caches
    for url in &nodes {
        let page = grey
            .client
            .get(format!("{url}/medrecords/patients/patient-alice"))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let page = page.text().await.unwrap();
        for t in &written {
            assert!(page.contains(t.as_str()), "{url} lost {t:?}");
        }
    }
    let verified = operator
        .rotation()
        .verify(&admin, &mut |_| {})
        .await
        .unwrap();
    assert!(verified.passed(), "{:?}", verified.failures);
    assert_eq!(
        verified.rows_by_key.keys().copied().collect::<Vec<_>>(),
        vec![report.new_key]
    );

    a.stop().await;
    b.stop().await;
    issuer.stop().await;
    drop(operator);
    db.drop_db().await;
}
