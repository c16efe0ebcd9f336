//! The `rotate` binary on a clinic described by a settings file that names
//! PostgreSQL, S3 blobs and AWS KMS (`kind = "aws"`): moto on loopback for
//! KMS and S3 (`scripts/moto.sh`), a database of the test's own on the
//! PostgreSQL server (`scripts/pg.sh`). The tool reads status, replaces a
//! compromised clinic data key and a patient's key, and verifies; the
//! clinic reads the same as before. Built with `--features aws`.

#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::process::Command;
use std::sync::Arc;

use careconnect::authz::session::SystemClock;
use careconnect::authz::{Principal, Role, UserId};
use careconnect::core::config::ClinicFile;
use careconnect::core::{BlobConfig, Clinic, KmsConfig};
use careconnect::crypto::kms::{AwsKms, AwsKmsConfig};

mod common;
use common::{json, primary_in};

fn endpoint() -> String {
    careconnect_testkit::moto_endpoint()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_rotates_a_clinic_on_postgres_s3_and_aws_kms_from_its_settings_file() {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("{:x}", careconnect_testkit::nanos());
    let kms_admin = careconnect_testkit::kms_admin().await;
    for k in ["clinic", "documents", "subjects-0000", "subjects-0001"] {
        careconnect_testkit::kms_key_with_alias(&kms_admin, &format!("alias/rot-{tag}-{k}")).await;
    }
    let blobs = careconnect_testkit::fresh_bucket();
    let own = careconnect_testkit::OwnDb::create("rotate_aws").await;
    let db = own.url.clone();
    let settings = format!(
        r#"data_dir = {dir:?}
storage_url = "{db}"
blobs_url = "s3://{blobs}/medicloud"
clinic_kms_key = "alias/rot-{tag}-clinic"
documents_kms_key = "alias/rot-{tag}-documents"
subject_buckets = 2
subject_key_prefix = "alias/rot-{tag}-subjects-"
keyring_recheck_ms = 50

[kms]
kind = "aws"
region = "us-east-1"
endpoint = "{endpoint}"
"#,
        dir = dir.path(),
        endpoint = endpoint(),
    );
    let file = dir.path().join("clinic.toml");
    std::fs::write(&file, &settings).unwrap();
    // The tool reads S3's endpoint and credentials from its environment.
    let env = [
        ("AWS_ENDPOINT_URL", careconnect_testkit::s3_endpoint()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
    ];

    // The clinic, opened in this process from the same file, seeded with
    // the demo data and a document.
    let parsed = ClinicFile::from_toml(&settings).unwrap();
    let kms = AwsKms::connect(&AwsKmsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint()),
        ..AwsKmsConfig::default()
    })
    .await;
    let mut config = parsed
        .into_config(Some(KmsConfig::Provided(Arc::new(kms))))
        .unwrap();
    // Here the same bucket, with the options given directly.
    let options = careconnect_testkit::s3_options();
    config.blobs = BlobConfig::Provided(Arc::new(
        careconnect::storage::S3BlobStore::open_with(
            &format!("s3://{blobs}/medicloud"),
            options.iter().map(|(k, v)| (*k, v.as_str())),
        )
        .unwrap(),
    ));
    let store = careconnect::storage::connect(&config.storage_url)
        .await
        .unwrap();
    let clinic = Clinic::open_with(config, store, Arc::new(SystemClock))
        .await
        .unwrap();
    careconnect::core::seed::demo(&clinic, "https://idp.test")
        .await
        .unwrap();
    let grey = Principal::new(
        UserId::new("https://idp.test", "doctor-grey").unwrap(),
        [Role::Doctor].into_iter().collect(),
    );
    let doc = clinic
        .medicloud()
        .upload(&grey, "scan.pdf", "application/pdf", &b"%PDF-1.7 in S3"[..])
        .await
        .unwrap();
    let admin = Principal::new(
        UserId::new("https://idp.test", "admin-adam").unwrap(),
        [Role::Admin].into_iter().collect(),
    );
    let view = |c: Clinic| {
        let admin = admin.clone();
        async move { show(c, admin).await }
    };
    async fn show(c: Clinic, admin: Principal) -> String {
        let alice = Principal::new(
            UserId::new("https://idp.test", "patient-alice").unwrap(),
            [Role::Patient].into_iter().collect(),
        );
        format!(
            "{:?} {:?} {:?}",
            c.records().patients(&admin).await.unwrap(),
            c.patients().record(&alice).await.unwrap(),
            c.medicloud().list(&admin).await.unwrap(),
        )
    }
    let before = view(clinic.clone()).await;

    let rotate = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rotate"))
            .arg("--config")
            .arg(&file)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    };
    let status = json(&rotate(&["--json", "status"]));
    assert_eq!(status["kms_keys"].as_array().unwrap().len(), 4, "{status}");
    let clinic_key = primary_in(&status["clinic_keys"]);
    let done = json(&rotate(&["--json", "compromised", &clinic_key]));
    assert_eq!(done["keyring"], "clinic", "{done}");
    assert!(
        done["touched"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == &serde_json::json!(format!("core_documents/{}", doc.id)))
    );
    // A patient's key: the first note's.
    let store = careconnect::storage::connect(&db).await.unwrap();
    let notes = careconnect::storage::Collection::new("core_notes").unwrap();
    let patient_key = store.list(&notes, None, 1).await.unwrap().rows[0]
        .key_id
        .to_string();
    let done = json(&rotate(&["--json", "compromised", &patient_key]));
    assert_eq!(done["keyring"], "subject", "{done}");
    assert_eq!(done["destroyed"], true, "{done}");
    let verified = json(&rotate(&["--json", "verify"]));
    assert_eq!(
        verified["failures"].as_array().unwrap().len(),
        0,
        "{verified}"
    );
    assert_eq!(verified["documents_ok"], 1);
    // The clinic (which re-reads its keys) reads as before.
    tokio::time::sleep(clinic.reload_window()).await;
    assert_eq!(view(clinic.clone()).await, before);
    drop((clinic, store));
    own.drop_db().await;
}
