//! The envelope engine on AWS KMS, against two independent KMS API servers on
//! loopback: moto (`scripts/moto.sh`) and LocalStack's KMS
//! (`scripts/localstack.sh`, which also enforces key states). The same suite
//! runs on `LocalKms` and on a `CachingKms`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use careconnect::crypto::document::{DocumentHeader, DocumentSealer, OpenOptions};
use careconnect::crypto::kms::{AwsKms, AwsKmsConfig, CacheLimits, CachingKms};
use careconnect::crypto::{
    EncryptionContext, Error, Keyring, Kms, KmsError, KmsKeyId, LocalKms, RootSecret, TrustedKeys,
};

#[derive(Clone, Copy)]
enum Server {
    Moto,
    LocalStack,
}

fn endpoint(server: Server) -> String {
    let (var, default) = match server {
        Server::Moto => ("CARECONNECT_MOTO_ENDPOINT", "http://127.0.0.1:5555"),
        Server::LocalStack => ("CARECONNECT_LOCALSTACK_ENDPOINT", "http://127.0.0.1:4566"),
    };
    std::env::var(var).unwrap_or_else(|_| default.into())
}

fn config(server: Server) -> AwsKmsConfig {
    AwsKmsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint(server)),
        ..AwsKmsConfig::default()
    }
}

/// A raw SDK client for test set-up (creating and disabling keys).
async fn admin(server: Server) -> aws_sdk_kms::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(endpoint(server))
        .load()
        .await;
    aws_sdk_kms::Client::new(&conf)
}

async fn aws(server: Server) -> (AwsKms, KmsKeyId, KmsKeyId, aws_sdk_kms::Client) {
    let admin = admin(server).await;
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
                    endpoint(server)
                )
            });
        ids.push(KmsKeyId::new(k.key_metadata().unwrap().key_id()).unwrap());
    }
    // The provider under test goes through `connect`: timeouts, retries and
    // credentials from the standard chain (scripts/test.sh sets test ones).
    let kms = AwsKms::connect(&config(server)).await;
    let b = ids.pop().unwrap();
    let a = ids.pop().unwrap();
    (kms, a, b, admin)
}

/// The suite every provider passes; `b` is the re-wrap target.
async fn envelope_suite(kms: &dyn Kms, a: &KmsKeyId, b: Option<&KmsKeyId>) {
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
    // The reader trusts exactly the suite's keys.
    let trusted = TrustedKeys::new(std::iter::once(a.clone()).chain(b.cloned()));
    let options = OpenOptions::trusting(trusted.clone());
    let options = &options;
    let open = |sealed: Vec<u8>, ctx: EncryptionContext| async move {
        let mut input = sealed.as_slice();
        let header = DocumentHeader::read_from(&mut input, options)?;
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
    let err = open(doc.clone(), other).await.unwrap_err();
    assert!(
        matches!(err, Error::Kms(KmsError::UnwrapFailed { .. })),
        "wrong context: {err:?}"
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

    // Strict mode: a document or keyset sealed under a KMS key the reader
    // does not trust is refused with a typed error, before any KMS call.
    let elsewhere = KmsKeyId::new("alias/not-the-writer").unwrap();
    let doc_a = seal(a.clone()).await;
    let header =
        DocumentHeader::read_from(&mut doc_a.as_slice(), &OpenOptions::trusting(&elsewhere))
            .unwrap();
    assert!(matches!(
        header.unwrap_key(kms, &ctx).await,
        Err(Error::Kms(KmsError::UntrustedKey { ref key })) if key == a.as_str()
    ));
    let stored = Keyring::generate().seal_keyset(kms, a).await.unwrap();
    assert!(matches!(
        Keyring::open_keyset(kms, &(&elsewhere).into(), &stored).await,
        Err(Error::Kms(KmsError::UntrustedKey { .. }))
    ));
    assert!(Keyring::open_keyset(kms, &trusted, &stored).await.is_ok());

    // Re-wrapping (ReEncrypt) is skipped where the server lacks it
    // (LocalStack's free KMS).
    let Some(b) = b else { return };

    // Re-wrap the document's key under b: only the header changes.
    let mut input = doc.as_slice();
    let header = DocumentHeader::read_from(&mut input, options).unwrap();
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
    let rewrapped = Keyring::rewrap_keyset(kms, &trusted, &stored, b)
        .await
        .unwrap();
    let back = Keyring::open_keyset(kms, &trusted, &rewrapped)
        .await
        .unwrap();
    assert_eq!(
        back.open(&record, &rctx).unwrap().plaintext,
        b"allergies: none"
    );
}

#[tokio::test]
async fn aws_kms_on_moto_passes_the_envelope_suite() {
    let (kms, a, b, _) = aws(Server::Moto).await;
    envelope_suite(&kms, &a, Some(&b)).await;
    assert_eq!(kms.describe(&a).await.unwrap().key, a);
}

#[tokio::test]
async fn aws_kms_on_localstack_passes_the_envelope_suite() {
    let (kms, a, _, _) = aws(Server::LocalStack).await;
    envelope_suite(&kms, &a, None).await;
    assert_eq!(kms.describe(&a).await.unwrap().key, a);
}

#[tokio::test]
async fn local_kms_passes_the_same_suite() {
    let dir = tempfile::tempdir().unwrap();
    let kms = LocalKms::open_or_create(dir.path().join("kms.bin"), RootSecret::generate()).unwrap();
    let (a, b) = (KmsKeyId::new("a").unwrap(), KmsKeyId::new("b").unwrap());
    kms.ensure_key(&a).unwrap();
    kms.ensure_key(&b).unwrap();
    envelope_suite(&kms, &a, Some(&b)).await;
}

#[tokio::test]
async fn caching_kms_passes_the_same_suite() {
    let (kms, a, b, _) = aws(Server::Moto).await;
    let cached = CachingKms::new(
        kms,
        CacheLimits {
            max_age: Duration::from_secs(60),
            max_uses: 100,
            max_entries: 100,
        },
    );
    envelope_suite(&cached, &a, Some(&b)).await;
    assert!(cached.stats().hits > 0, "{:?}", cached.stats());
}

/// Seals a small document under `key`, for the key-state tests.
async fn sealed(kms: &dyn Kms, key: &KmsKeyId, ctx: &EncryptionContext) -> Result<Vec<u8>, Error> {
    let mut w = DocumentSealer::new()
        .begin(kms, key, ctx, Vec::new())
        .await?;
    w.write_all(b"discharge letter")?;
    w.finish()
}

async fn unwrap_of(
    kms: &dyn Kms,
    key: &KmsKeyId,
    doc: &[u8],
    ctx: &EncryptionContext,
) -> Result<(), Error> {
    let mut input = doc;
    DocumentHeader::read_from(&mut input, &OpenOptions::trusting(key))?
        .unwrap_key(kms, ctx)
        .await
        .map(drop)
}

fn unusable(r: Result<impl std::fmt::Debug, Error>, what: &str) {
    let err = r.unwrap_err();
    assert!(
        matches!(err, Error::Kms(KmsError::KeyUnusable { .. })),
        "{what}: {err:?}"
    );
    let cause = service_cause(&err);
    assert!(
        cause.contains("Disabled") || cause.contains("InvalidState"),
        "{what}: the KMS's own answer is kept as the cause: {cause}"
    );
}

/// The KMS service error kept under a typed error, as text.
fn service_cause(err: &Error) -> String {
    let Error::Kms(kms) = err else {
        panic!("not a KMS error: {err:?}")
    };
    let cause = std::error::Error::source(kms).expect("the cause is kept");
    format!("{cause}: {cause:?}")
}

// moto does not check key states (it keeps serving a disabled key), so this
// runs on LocalStack's KMS, which answers as AWS does.
#[tokio::test]
async fn disabled_and_pending_deletion_keys_are_unusable() {
    let (kms, a, _, admin) = aws(Server::LocalStack).await;
    let ctx = EncryptionContext::new().with("document", "1");
    let doc = sealed(&kms, &a, &ctx).await.unwrap();

    admin.disable_key().key_id(a.as_str()).send().await.unwrap();
    unusable(sealed(&kms, &a, &ctx).await, "seal under a disabled key");
    unusable(
        unwrap_of(&kms, &a, &doc, &ctx).await,
        "open under a disabled key",
    );

    admin.enable_key().key_id(a.as_str()).send().await.unwrap();
    unwrap_of(&kms, &a, &doc, &ctx).await.unwrap();

    admin
        .schedule_key_deletion()
        .key_id(a.as_str())
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    unusable(sealed(&kms, &a, &ctx).await, "seal, pending deletion");
    unusable(
        unwrap_of(&kms, &a, &doc, &ctx).await,
        "open, pending deletion",
    );
    // Cancelling leaves the key disabled, as on AWS; enabling brings it back.
    admin
        .cancel_key_deletion()
        .key_id(a.as_str())
        .send()
        .await
        .unwrap();
    unusable(unwrap_of(&kms, &a, &doc, &ctx).await, "open after cancel");
    admin.enable_key().key_id(a.as_str()).send().await.unwrap();
    unwrap_of(&kms, &a, &doc, &ctx).await.unwrap();
}

// `describe` counts AWS's backing keys from ListKeyRotations (every page).
// LocalStack's community KMS lacks that call: it reads as "never rotated",
// while a typed failure (here: an unknown key) is still reported.
#[tokio::test]
async fn on_demand_rotations_are_counted() {
    let (kms, a, _, _) = aws(Server::Moto).await;
    assert_eq!(kms.describe(&a).await.unwrap().current_version, 1);
    kms.rotate(&a).await.unwrap();
    let after = kms.rotate(&a).await.unwrap();
    assert_eq!(after.current_version, 3);
    assert_eq!(after.enabled_versions, vec![1, 2, 3]);

    let (kms, a, _, _) = aws(Server::LocalStack).await;
    kms.rotate(&a).await.unwrap();
    assert_eq!(kms.describe(&a).await.unwrap().current_version, 1);
    let missing = KmsKeyId::new("00000000-0000-0000-0000-000000000000").unwrap();
    let err = kms.describe(&missing).await.unwrap_err();
    assert!(
        matches!(err, Error::Kms(KmsError::KeyNotFound { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn scheduled_rotation_can_be_turned_on_and_off() {
    for server in [Server::Moto, Server::LocalStack] {
        let (kms, a, _, _) = aws(server).await;
        assert!(!kms.rotation_status(&a).await.unwrap().enabled);
        kms.enable_rotation(&a, Some(180)).await.unwrap();
        let on = kms.rotation_status(&a).await.unwrap();
        assert!(on.enabled);
        // moto reports only the flag; LocalStack, like AWS, the schedule too.
        if let Server::LocalStack = server {
            assert_eq!(on.period_days, Some(180));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let next = on.next_rotation_unix.unwrap() - now;
            assert!((179 * 86_400..=181 * 86_400).contains(&next), "{next}");
        }
        kms.disable_rotation(&a).await.unwrap();
        assert!(!kms.rotation_status(&a).await.unwrap().enabled);
        // Out of AWS's range: refused before any call.
        let err = kms.enable_rotation(&a, Some(30)).await.unwrap_err();
        assert!(matches!(err, Error::Misuse(_)), "{err:?}");
        kms.enable_rotation(&a, None).await.unwrap();
        assert!(kms.rotation_status(&a).await.unwrap().enabled);
    }
}

#[tokio::test]
async fn unknown_keys_are_typed() {
    for server in [Server::Moto, Server::LocalStack] {
        let (kms, _, _, _) = aws(server).await;
        let ctx = EncryptionContext::new();
        let missing = KmsKeyId::new("00000000-0000-0000-0000-000000000000").unwrap();
        let err = kms.generate_data_key(&missing, &ctx).await.unwrap_err();
        assert!(
            matches!(err, Error::Kms(KmsError::KeyNotFound { .. })),
            "{err:?}"
        );
        assert!(service_cause(&err).contains("NotFound"), "{err:?}");
        let err = kms.rotation_status(&missing).await.unwrap_err();
        assert!(
            matches!(err, Error::Kms(KmsError::KeyNotFound { .. })),
            "{err:?}"
        );
    }
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

#[tokio::test]
async fn keys_can_be_named_by_alias_or_arn() {
    for server in [Server::Moto, Server::LocalStack] {
        let (kms, a, _, admin) = aws(server).await;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let alias = format!("alias/careconnect-test-{nanos:x}");
        admin
            .create_alias()
            .alias_name(&alias)
            .target_key_id(a.as_str())
            .send()
            .await
            .unwrap();
        let arn = admin
            .describe_key()
            .key_id(a.as_str())
            .send()
            .await
            .unwrap()
            .key_metadata()
            .unwrap()
            .arn()
            .unwrap()
            .to_owned();
        let ctx = EncryptionContext::new().with("document", "alias");
        for name in [alias.as_str(), arn.as_str()] {
            let key = KmsKeyId::new(name).unwrap();
            let doc = sealed(&kms, &key, &ctx).await.unwrap();
            unwrap_of(&kms, &key, &doc, &ctx).await.unwrap();
        }
    }
}
