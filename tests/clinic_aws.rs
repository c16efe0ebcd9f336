//! The clinic on AWS KMS (moto on loopback, `scripts/moto.sh`): the clinic
//! keyring and the subject buckets are wrapped by KMS keys named by alias;
//! the services work; an erasure, which needs a KMS that destroys single
//! key versions (AWS KMS cannot), is refused before anything changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::sync::Arc;

use careconnect::authz::session::SystemClock;
use careconnect::authz::{Principal, Role, UserId};
use careconnect::core::audit::Verification;
use careconnect::core::records::PatientDetails;
use careconnect::core::{Clinic, ClinicConfig, CoreError, KmsConfig};
use careconnect::crypto::kms::{AwsKms, AwsKmsConfig};
use careconnect::crypto::{Error, KmsError};

fn endpoint() -> String {
    std::env::var("CARECONNECT_MOTO_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5555".into())
}

async fn admin_client() -> aws_sdk_kms::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(endpoint())
        .load()
        .await;
    aws_sdk_kms::Client::new(&conf)
}

/// A new KMS key named by `alias`.
async fn key_with_alias(admin: &aws_sdk_kms::Client, alias: &str) {
    let k = admin
        .create_key()
        .description(alias)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no KMS server at {} ({e:?}): run scripts/test.sh",
                endpoint()
            )
        });
    admin
        .create_alias()
        .alias_name(alias)
        .target_key_id(k.key_metadata().unwrap().key_id())
        .send()
        .await
        .unwrap();
}

fn who(s: &str, role: Role) -> Principal {
    Principal::new(
        UserId::new("https://idp.test", s).unwrap(),
        [role].into_iter().collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clinic_runs_on_aws_kms_and_refuses_an_erasure_it_cannot_finish() {
    let admin_kms = admin_client().await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let clinic_alias = format!("alias/cc-{nanos:x}-clinic");
    let prefix = format!("alias/cc-{nanos:x}-subjects-");
    let documents_alias = format!("alias/cc-{nanos:x}-documents");
    key_with_alias(&admin_kms, &clinic_alias).await;
    key_with_alias(&admin_kms, &documents_alias).await;
    for b in 0..2 {
        key_with_alias(&admin_kms, &format!("{prefix}{b:04}")).await;
    }
    let kms = AwsKms::connect(&AwsKmsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint()),
        ..AwsKmsConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ClinicConfig::embedded(dir.path()).unwrap();
    config.kms = KmsConfig::Provided(Arc::new(kms));
    config.clinic_kms_key = clinic_alias;
    config.subject_buckets = 2;
    config.subject_key_prefix = prefix;
    config.medicloud.kms_key = documents_alias;
    let store = careconnect::storage::connect("memory:").await.unwrap();
    let clinic = Clinic::open_with(config, store, Arc::new(SystemClock))
        .await
        .unwrap();
    let (admin, doctor, patient) = (
        who("admin", Role::Admin),
        who("doctor", Role::Doctor),
        who("patient", Role::Patient),
    );
    clinic
        .records()
        .register(
            &admin,
            &patient.user,
            &PatientDetails {
                name: "Aws Patient".into(),
                date_of_birth: "1960-07-01".into(),
                blood_type: "B-".into(),
                allergies: vec![],
            },
        )
        .await
        .unwrap();
    clinic
        .admin()
        .assign_care(&admin, &doctor.user, &patient.user)
        .await
        .unwrap();
    clinic
        .records()
        .add_note(&doctor, &patient.user, "Stored under AWS KMS keys", None)
        .await
        .unwrap();
    let status = clinic.admin().key_status(&admin).await.unwrap();
    assert_eq!(status.kms_keys.len(), 4);
    let erased = clinic
        .admin()
        .erase_patient(&admin, &patient.user, "patient asked to be forgotten")
        .await;
    assert!(
        matches!(
            erased,
            Err(CoreError::Crypto(Error::Kms(KmsError::Unsupported(_))))
        ),
        "{erased:?}"
    );
    // Nothing changed: the record and its note still open.
    let record = clinic
        .records()
        .record(&doctor, &patient.user)
        .await
        .unwrap();
    assert_eq!(record.notes.len(), 1);
    assert!(matches!(
        clinic.audit().verify().await.unwrap(),
        Verification::Intact { .. }
    ));
}
