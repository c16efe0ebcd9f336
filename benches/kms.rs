//! Sealing and opening 4 KiB documents through a KMS (one GenerateDataKey per
//! seal, one Decrypt per open), with and without the data-key cache.
//!
//! KMS servers: moto (`CARECONNECT_MOTO_ENDPOINT`, default 127.0.0.1:5555) and
//! LocalStack (`CARECONNECT_LOCALSTACK_ENDPOINT`, default 127.0.0.1:4566) when
//! they answer, and the embedded `LocalKms` as the no-network reference.
//! `scripts/bench-kms.sh` starts the servers. Rounds interleave the cached and
//! uncached runs so this noisy machine slows both alike; the ratio is the
//! median of per-round ratios. Bounded: 5 rounds x 100 documents per side.
//!
//! What the cache can serve: seals share a data key only when they share the
//! KMS key *and* the encryption context, so the seal figure uses one context
//! for all documents (a batch into one collection); opens hit when the same
//! document is opened again, so the open figure cycles over 10 documents.
//! With a per-document context and distinct documents the cache never hits.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use careconnect::crypto::document::{DocumentHeader, DocumentSealer, OpenOptions};
use careconnect::crypto::kms::{AwsKms, AwsKmsConfig, CacheLimits, CachingKms};
use careconnect::crypto::{EncryptionContext, Kms, KmsKeyId, LocalKms, RootSecret};

const ROUNDS: usize = 5;
const DOCS: usize = 100;
const LIMITS: CacheLimits = CacheLimits {
    max_age: Duration::from_secs(60),
    max_uses: 100,
    max_entries: 1000,
};

async fn seal(kms: &dyn Kms, key: &KmsKeyId, ctx: &EncryptionContext, body: &[u8]) -> Vec<u8> {
    let Ok(mut w) = DocumentSealer::new()
        .begin(kms, key, ctx, Vec::with_capacity(body.len() + 512))
        .await
    else {
        return Vec::new();
    };
    if w.write_all(body).is_err() {
        return Vec::new();
    }
    w.finish().unwrap_or_default()
}

async fn open(kms: &dyn Kms, key: &KmsKeyId, doc: &[u8], ctx: &EncryptionContext) -> usize {
    let mut input = doc;
    let Ok(header) = DocumentHeader::read_from(&mut input, &OpenOptions::trusting(key)) else {
        return 0;
    };
    let Ok(opener) = header.unwrap_key(kms, ctx).await else {
        return 0;
    };
    let mut out = Vec::with_capacity(4096);
    opener.reader(input).read_to_end(&mut out).unwrap_or(0)
}

/// Documents per second for `DOCS` seals, then for `DOCS` opens of 10 documents.
async fn run(kms: &dyn Kms, key: &KmsKeyId) -> (f64, f64) {
    let ctx = EncryptionContext::new().with("collection", "documents");
    let body = vec![7u8; 4096];
    let t = Instant::now();
    let mut docs = Vec::with_capacity(DOCS);
    for _ in 0..DOCS {
        docs.push(seal(kms, key, &ctx, &body).await);
    }
    let seal_rate = DOCS as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut opened = 0;
    for i in 0..DOCS {
        opened += open(kms, key, &docs[i % 10], &ctx).await;
    }
    let open_rate = DOCS as f64 / t.elapsed().as_secs_f64();
    if opened != DOCS * body.len() {
        eprintln!("  some operations failed: is the KMS server up?");
    }
    (seal_rate, open_rate)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn compare<K: Kms + 'static>(name: &str, kms: K, key: &KmsKeyId) {
    let cached = CachingKms::new(kms, LIMITS);
    let (mut plain, mut hot, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let p = run(cached.inner(), key).await;
        cached.clear();
        let c = run(&cached, key).await;
        ratio.push((c.0 / p.0, c.1 / p.1));
        plain.push(p);
        hot.push(c);
    }
    let col = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(v.iter().map(f).collect());
    println!(
        "{name:12} {:>9.0} {:>9.0} {:>10.0} {:>10.0} {:>9.1}x {:>9.1}x",
        col(&plain, |x| x.0),
        col(&plain, |x| x.1),
        col(&hot, |x| x.0),
        col(&hot, |x| x.1),
        col(&ratio, |x| x.0),
        col(&ratio, |x| x.1),
    );
}

async fn aws_key(endpoint: &str) -> Option<(AwsKms, KmsKeyId)> {
    let kms = AwsKms::connect(&AwsKmsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.into()),
        ..AwsKmsConfig::default()
    })
    .await;
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .load()
        .await;
    let made = aws_sdk_kms::Client::new(&conf)
        .create_key()
        .description("bench")
        .send()
        .await
        .ok()?;
    let id = KmsKeyId::new(made.key_metadata()?.key_id()).ok()?;
    Some((kms, id))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        eprintln!("set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (any value for a local server)");
    }
    println!(
        "4 KiB documents/s, {ROUNDS} rounds x {DOCS}; cache: max_uses {}, max_age {:?}",
        LIMITS.max_uses, LIMITS.max_age
    );
    println!(
        "{:12} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "kms", "seal/s", "open/s", "seal/s $", "open/s $", "seal $/no", "open $/no"
    );
    for (name, var, default) in [
        ("moto", "CARECONNECT_MOTO_ENDPOINT", "http://127.0.0.1:5555"),
        (
            "localstack",
            "CARECONNECT_LOCALSTACK_ENDPOINT",
            "http://127.0.0.1:4566",
        ),
    ] {
        let endpoint = std::env::var(var).unwrap_or_else(|_| default.into());
        match aws_key(&endpoint).await {
            Some((kms, key)) => compare(name, kms, &key).await,
            None => println!("{name:12} (no KMS server at {endpoint})"),
        }
    }
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(local) = LocalKms::open_or_create(dir.path().join("kms.bin"), RootSecret::generate())
    else {
        return;
    };
    let Ok(key) = KmsKeyId::new("bench") else {
        return;
    };
    if local.ensure_key(&key).is_ok() {
        compare("local (file)", local, &key).await;
    }
    println!("($ = with CachingKms; ratios are medians of per-round ratios)");
}
