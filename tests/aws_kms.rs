//! The envelope engine on AWS KMS, against a real KMS API server on loopback
//! (moto; `scripts/moto.sh` starts it): the same suite runs on `LocalKms`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use careconnect::crypto::document::{DocumentHeader, DocumentSealer};
use careconnect::crypto::kms::{AwsKms, AwsKmsConfig};
use careconnect::crypto::{
    EncryptionContext, Error, Keyring, Kms, KmsError, KmsKeyId, LocalKms, RootSecret,
};

fn endpoint() -> String {
    std::env::var("CARECONNECT_MOTO_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5555".into())
}

fn config() -> AwsKmsConfig {
    AwsKmsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint()),
        ..AwsKmsConfig::default()
    }
}

/// A raw SDK client for test set-up (creating and disabling keys).
async fn admin() -> aws_sdk_kms::Client {
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

async fn aws() -> (AwsKms, KmsKeyId, KmsKeyId, aws_sdk_kms::Client) {
    let admin = admin().await;
    let mut ids = Vec::new();
    for d in ["kek-a", "kek-b"] {
        let k = admin
            .create_key()
            .description(d)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no KMS server at {} ({e:?}): run scripts/test.sh, which starts one",
                    endpoint()
                )
            });
        ids.push(KmsKeyId::new(k.key_metadata().unwrap().key_id()).unwrap());
    }
    // The provider under test goes through `connect`: timeouts, retries and
    // credentials from the standard chain (scripts/test.sh sets moto's).
    let kms = AwsKms::connect(&config()).await;
    let b = ids.pop().unwrap();
    let a = ids.pop().unwrap();
    (kms, a, b, admin)
}

/// The suite both providers pass.
async fn envelope_suite(kms: &dyn Kms, a: &KmsKeyId, b: &KmsKeyId) {
    let ctx = EncryptionContext::new()
        .with("collection", "documents")
        .with("document", "7");
    let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let seal = |key: KmsKeyId| {
        let plain = plain.clone();
        let ctx = ctx.clone();
        async move {
            let mut w = DocumentSealer::new()
                .begin(kms, &key, &ctx, Vec::new())
                .await
                .unwrap();
            w.write_all(&plain).unwrap();
            w.finish().unwrap()
        }
    };
    let open = |sealed: Vec<u8>, ctx: EncryptionContext| async move {
        let mut input = sealed.as_slice();
        let header = DocumentHeader::read_from(&mut input)?;
        let mut out = Vec::new();
        header
            .unwrap_key(kms, &ctx)
            .await?
            .reader(input)
            .read_to_end(&mut out)
            .map_err(|_| Error::DecryptionFailed)?;
        Ok::<_, Error>(out)
    };
    let doc = seal(a.clone()).await;
    assert_eq!(
        open(doc.clone(), ctx.clone()).await.unwrap(),
        plain,
        "document round trip"
    );
    let other = EncryptionContext::new()
        .with("collection", "documents")
        .with("document", "8");
    assert!(
        open(doc.clone(), other).await.is_err(),
        "wrong context must fail"
    );

    // Rotation keeps old documents opening.
    kms.rotate(a).await.unwrap();
    assert_eq!(
        open(doc.clone(), ctx.clone()).await.unwrap(),
        plain,
        "after rotation"
    );
    let newer = seal(a.clone()).await;
    assert_eq!(open(newer, ctx.clone()).await.unwrap(), plain);

    // Re-wrap the document's key under b: only the header changes.
    let mut input = doc.as_slice();
    let header = DocumentHeader::read_from(&mut input).unwrap();
    let mut moved = header.rewrap(kms, &ctx, b).await.unwrap();
    moved.extend_from_slice(input);
    assert_eq!(
        open(moved, ctx.clone()).await.unwrap(),
        plain,
        "re-wrapped under b"
    );

    // A keyring sealed under a, re-wrapped under b without opening any record.
    let ring = Keyring::generate();
    let rctx = EncryptionContext::new().with("record", "1");
    let record = ring.seal(&rctx, b"allergies: none").unwrap();
    let stored = ring.seal_keyset(kms, a).await.unwrap();
    let rewrapped = Keyring::rewrap_keyset(kms, &stored, b).await.unwrap();
    let back = Keyring::open_keyset(kms, &rewrapped).await.unwrap();
    assert_eq!(
        back.open(&record, &rctx).unwrap().plaintext,
        b"allergies: none"
    );
}

#[tokio::test]
async fn aws_kms_passes_the_envelope_suite() {
    let (kms, a, b, _) = aws().await;
    envelope_suite(&kms, &a, &b).await;
    let d = kms.describe(&a).await.unwrap();
    assert_eq!(d.key, a);
}

#[tokio::test]
async fn local_kms_passes_the_same_suite() {
    let dir = tempfile::tempdir().unwrap();
    let kms = LocalKms::open_or_create(dir.path().join("kms.bin"), RootSecret::generate()).unwrap();
    let (a, b) = (KmsKeyId::new("a").unwrap(), KmsKeyId::new("b").unwrap());
    kms.ensure_key(&a).unwrap();
    kms.ensure_key(&b).unwrap();
    envelope_suite(&kms, &a, &b).await;
}

// Disabled keys: moto 5 does not check the key state on GenerateDataKey,
// Decrypt or ReEncrypt (even after DisableKey or ScheduleKeyDeletion), so the
// `KeyUnusable` mapping of DisabledException cannot be shown against it.
#[tokio::test]
async fn unknown_keys_are_typed() {
    let (kms, _, _, _) = aws().await;
    let ctx = EncryptionContext::new();
    let missing = KmsKeyId::new("00000000-0000-0000-0000-000000000000").unwrap();
    let err = kms.generate_data_key(&missing, &ctx).await.unwrap_err();
    assert!(
        matches!(err, Error::Kms(KmsError::KeyNotFound(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn server_down_is_unavailable_within_the_timeout() {
    let kms = AwsKms::connect(&AwsKmsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some("http://127.0.0.1:1".into()),
        attempt_timeout: Duration::from_millis(500),
        operation_timeout: Duration::from_secs(2),
        max_attempts: 2,
    })
    .await;
    let key = KmsKeyId::new("any").unwrap();
    let t = Instant::now();
    let err = kms
        .generate_data_key(&key, &EncryptionContext::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Kms(KmsError::Unavailable(_))),
        "{err:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
}
