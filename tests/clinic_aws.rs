//! The clinic on AWS KMS (moto on loopback, `scripts/moto.sh`): the clinic
//! keyring and the subject buckets are wrapped by KMS keys named by alias;
//! the services work; an erasure, which needs a KMS that destroys single
//! key versions (AWS KMS cannot), is refused before anything changes.
//! Medicloud on AWS KMS and S3 blobs (moto too): documents, sharing,
//! orphans, and rotation handed to the KMS's own schedule.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::sync::Arc;

use careconnect::authz::session::SystemClock;
use careconnect::authz::{Principal, Role, UserId};
use careconnect::core::audit::Verification;
use careconnect::core::records::PatientDetails;
use careconnect::core::{BlobConfig, Clinic, ClinicConfig, CoreError, KmsConfig};
use careconnect::crypto::kms::{AwsKms, AwsKmsConfig};
use careconnect::crypto::{Error, KmsError};

mod common;

use careconnect_testkit::{kms_admin as admin_client, kms_key_with_alias as key_with_alias};

fn endpoint() -> String {
    careconnect_testkit::moto_endpoint()
}

fn who(s: &str, role: Role) -> Principal {
    Principal::new(
        UserId::new("https://idp.test", s).unwrap(),
        [role].into_iter().collect(),
    )
}

/// Fresh AWS KMS keys for a clinic, by alias.
struct AwsKeys {
    clinic: String,
    subject_prefix: String,
    documents: String,
}

async fn aws_keys() -> AwsKeys {
    let admin_kms = admin_client().await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let keys = AwsKeys {
        clinic: format!("alias/cc-{nanos:x}-clinic"),
        subject_prefix: format!("alias/cc-{nanos:x}-subjects-"),
        documents: format!("alias/cc-{nanos:x}-documents"),
    };
    key_with_alias(&admin_kms, &keys.clinic).await;
    key_with_alias(&admin_kms, &keys.documents).await;
    for b in 0..2 {
        key_with_alias(&admin_kms, &format!("{}{b:04}", keys.subject_prefix)).await;
    }
    keys
}

async fn aws_kms() -> AwsKms {
    AwsKms::connect(&AwsKmsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint()),
        ..AwsKmsConfig::default()
    })
    .await
}

/// A clinic configuration on `keys` (two subject buckets), data under `dir`.
async fn aws_config(keys: &AwsKeys, dir: &std::path::Path) -> ClinicConfig {
    let mut config = ClinicConfig::embedded(dir).unwrap();
    config.kms = KmsConfig::Provided(Arc::new(aws_kms().await));
    config.clinic_kms_key = keys.clinic.clone();
    config.subject_buckets = 2;
    config.subject_key_prefix = keys.subject_prefix.clone();
    config.medicloud.kms_key = keys.documents.clone();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clinic_runs_on_aws_kms_and_refuses_an_erasure_it_cannot_finish() {
    let dir = tempfile::tempdir().unwrap();
    let config = aws_config(&aws_keys().await, dir.path()).await;
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

fn pdf(n: usize) -> Vec<u8> {
    let mut v = b"%PDF-1.7\n".to_vec();
    v.extend((0..n).map(|i| (i % 251) as u8));
    v
}

async fn download(c: &Clinic, p: &Principal, id: &str) -> Result<Vec<u8>, CoreError> {
    let mut out = Vec::new();
    c.medicloud().download(p, id, &mut out).await.map(|_| out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn medicloud_runs_on_aws_kms_and_s3_blobs() {
    use careconnect::storage::BlobStore;
    use futures::TryStreamExt;
    let (keys, dir) = (aws_keys().await, tempfile::tempdir().unwrap());
    let mut config = aws_config(&keys, dir.path()).await;
    let blobs = Arc::new(common::s3_store("medicloud"));
    config.blobs = BlobConfig::Provided(blobs.clone());
    let store = careconnect::storage::connect("memory:").await.unwrap();
    let clinic = Clinic::open_with(config, store.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let (admin, doctor, partner) = (
        who("admin", Role::Admin),
        who("doctor", Role::Doctor),
        who("partner", Role::External),
    );
    // Shares go only to people in the directory.
    clinic
        .admin()
        .set_person(&admin, &partner.user, "Pat Lab", partner.roles)
        .await
        .unwrap();
    let m = clinic.medicloud();
    // Larger than one 8 MiB part: a real multipart upload, under a data key
    // from AWS KMS.
    let body = pdf(9 << 20);
    let doc = m
        .upload(&doctor, "scan.pdf", "application/pdf", body.as_slice())
        .await
        .unwrap();
    assert_eq!(download(&clinic, &doctor, &doc.id).await.unwrap(), body);
    assert!(matches!(
        download(&clinic, &partner, &doc.id).await,
        Err(CoreError::NotFound)
    ));
    m.share(&doctor, &doc.id, &partner.user, None)
        .await
        .unwrap();
    assert_eq!(download(&clinic, &partner, &doc.id).await.unwrap(), body);
    m.revoke(&doctor, &doc.id, &partner.user).await.unwrap();
    assert!(matches!(
        download(&clinic, &partner, &doc.id).await,
        Err(CoreError::NotFound)
    ));

    // The KMS keeps the schedule: rotate_if_due turns it on, at the
    // configured period, and makes no version itself.
    let before = m.rotation_status(&admin).await.unwrap();
    assert!(!before.kms_schedule.as_ref().unwrap().enabled, "{before:?}");
    assert_eq!(m.rotate_if_due(&admin).await.unwrap(), None);
    let after = m.rotation_status(&admin).await.unwrap();
    assert!(after.kms_schedule.as_ref().unwrap().enabled, "{after:?}");
    assert_eq!(after.current_version, before.current_version);
    assert!(matches!(
        m.rotate_if_due(&doctor).await,
        Err(CoreError::Denied(_))
    ));
    // A rotation forced on the KMS: the document still opens.
    let key = careconnect::crypto::KmsKeyId::new(after.kms_key.clone()).unwrap();
    careconnect::crypto::Kms::rotate(&aws_kms().await, &key)
        .await
        .unwrap();
    // (Named by alias: the rotation calls resolve it to the key.)
    let rotated = m.rotation_status(&admin).await.unwrap();
    assert_eq!(rotated.current_version, after.current_version + 1);
    assert_eq!(download(&clinic, &doctor, &doc.id).await.unwrap(), body);

    // Orphans on S3: a blob nothing references is young under the default
    // grace, and collected by a node with none; the document's blob stays.
    let orphan = blobs.put(&mut &pdf(100)[..]).await.unwrap();
    let report = m.collect_orphans(&admin).await.unwrap();
    assert_eq!((report.blobs, report.young, report.deleted), (2, 1, 0));
    let mut eager = aws_config(&keys, dir.path()).await;
    eager.blobs = BlobConfig::Provided(blobs.clone());
    eager.medicloud.orphan_grace = std::time::Duration::ZERO;
    let eager = Clinic::open_with(eager, store.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let report = eager.medicloud().collect_orphans(&admin).await.unwrap();
    assert_eq!((report.blobs, report.young, report.deleted), (2, 0, 1));
    assert!(!blobs.exists(&orphan).await.unwrap());
    assert_eq!(download(&eager, &doctor, &doc.id).await.unwrap(), body);

    // Delete: the metadata, then the blob with the only wrapped data key.
    m.delete(&doctor, &doc.id).await.unwrap();
    assert!(matches!(
        download(&clinic, &doctor, &doc.id).await,
        Err(CoreError::NotFound)
    ));
    let left: Vec<_> = blobs.list().try_collect().await.unwrap();
    assert!(left.is_empty(), "{left:?}");

    // A period outside AWS KMS's range is refused as a typed error before
    // any call; the schedule stays as it was.
    let mut monthly = aws_config(&keys, dir.path()).await;
    monthly.medicloud.rotate_every = std::time::Duration::from_secs(30 * 86_400);
    let monthly = Clinic::open_with(monthly, store, Arc::new(SystemClock))
        .await
        .unwrap();
    let err = monthly.medicloud().rotate_if_due(&admin).await.unwrap_err();
    assert!(
        matches!(err, CoreError::Crypto(Error::Misuse(_))),
        "{err:?}"
    );
    let still = monthly.medicloud().rotation_status(&admin).await.unwrap();
    assert_eq!(still.kms_schedule, after.kms_schedule);
}

/// A compromised clinic data key on AWS KMS (the keyset re-wrapped at each
/// step) with documents in S3: every row re-sealed, the key destroyed,
/// everything as before, the audit chain and `verify` intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_key_compromise_runs_on_aws_kms_and_s3_blobs() {
    use careconnect::crypto::KeyState;
    let (keys, dir) = (aws_keys().await, tempfile::tempdir().unwrap());
    let mut config = aws_config(&keys, dir.path()).await;
    config.blobs = BlobConfig::Provided(Arc::new(common::s3_store("data-key")));
    config.keyring_recheck = std::time::Duration::from_millis(50);
    let store = careconnect::storage::connect("memory:").await.unwrap();
    let clinic = Clinic::open_with(config, store, Arc::new(SystemClock))
        .await
        .unwrap();
    careconnect::core::seed::demo(&clinic, "https://idp.test")
        .await
        .unwrap();
    let (admin, grey) = (
        who("admin-adam", Role::Admin),
        who("doctor-grey", Role::Doctor),
    );
    let body = b"%PDF-1.7 on S3".to_vec();
    let doc = clinic
        .medicloud()
        .upload(&grey, "scan.pdf", "application/pdf", body.as_slice())
        .await
        .unwrap();
    let view = || async {
        format!(
            "{:?} {:?} {:?}",
            clinic.doctors().await.unwrap(),
            clinic.records().patients(&admin).await.unwrap(),
            clinic.medicloud().list(&grey).await.unwrap(),
        )
    };
    let before = view().await;
    let status = clinic.admin().key_status(&admin).await.unwrap();
    let k = status
        .clinic_keys
        .iter()
        .find(|k| k.state == KeyState::Primary)
        .unwrap()
        .id
        .get();
    let report = clinic
        .rotation()
        .data_key_compromised(&admin, k, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(report.destroyed, vec![k]);
    assert!(
        report
            .touched
            .iter()
            .any(|t| t == &format!("core_documents/{}", doc.id))
    );
    assert_eq!(view().await, before);
    assert_eq!(download(&clinic, &grey, &doc.id).await.unwrap(), body);
    let verified = clinic.rotation().verify(&admin, &mut |_| {}).await.unwrap();
    assert!(verified.passed(), "{verified:?}");
    assert!(!verified.rows_by_key.contains_key(&k));
    assert!(matches!(
        clinic.audit().verify().await.unwrap(),
        Verification::Intact { .. }
    ));
}
