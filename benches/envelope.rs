//! The crypto hot path: envelope seal/open next to the raw AEAD of the same
//! provider on the same buffer, HKDF key derivation, and document streaming.
//!
//! `scripts/bench-crypto.sh` runs this with every provider and prints the
//! ratios envelope/raw beside `openssl speed` from the same run.
//!
//! Benchmark ids: `{op}/{provider}-{suite}/{variant}/{bytes}` where variant
//! is `raw` (keyed once: the AEAD alone), `raw+key` (key schedule per
//! message, what any per-message-key scheme must pay), or `envelope`.

use std::hint::black_box;
use std::io::{Read, Write};

use careconnect::crypto::document::{DocumentHeader, DocumentSealer, OpenOptions};
use careconnect::crypto::provider::{AeadKey, CryptoProvider, all_providers};
use careconnect::crypto::{
    DataKey, EncryptionContext, Keyring, KmsKeyId, RECORD_HEADER_LEN, Suite, WrappedKey,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use zeroize::Zeroizing;

const SIZES: [usize; 4] = [256, 4 << 10, 64 << 10, 1 << 20];
const NONCE: [u8; 12] = [7; 12];

fn label(p: &dyn CryptoProvider, s: Suite) -> String {
    format!("{}-{}", p.name(), s.name())
}

fn ctx() -> EncryptionContext {
    EncryptionContext::new()
        .with("collection", "health_records")
        .with("field", "notes")
        .with("record", "6f1d2c1e-8d4b-4f57-9a57-0c1f5b9e2a10")
}

fn records(c: &mut Criterion) {
    let ctx = ctx();
    for p in all_providers() {
        for s in Suite::ALL {
            let name = label(p, s);
            let ring = Keyring::generate().with_suite(s).with_provider(p);
            let raw = p.aead(s, &AeadKey::new([9; 32]));
            let mut g = c.benchmark_group(format!("record/{name}"));
            for size in SIZES {
                g.throughput(Throughput::Bytes(size as u64));
                let data = vec![0x42u8; size];
                let mut buf = data.clone();
                g.bench_function(BenchmarkId::new("seal-raw", size), |b| {
                    b.iter(|| raw.seal_in_place_detached(&NONCE, b"aad", black_box(&mut buf)))
                });
                g.bench_function(BenchmarkId::new("seal-raw+key", size), |b| {
                    b.iter(|| {
                        let a = p.aead(s, &AeadKey::new(black_box([9; 32])));
                        a.seal_in_place_detached(&NONCE, b"aad", black_box(&mut buf))
                    })
                });
                g.bench_function(BenchmarkId::new("seal-envelope", size), |b| {
                    b.iter(|| ring.seal(&ctx, black_box(&data)))
                });
                let mut sealed = data.clone();
                let tag = raw
                    .seal_in_place_detached(&NONCE, b"aad", &mut sealed)
                    .unwrap_or([0; 16]);
                let mut x = sealed.clone();
                g.bench_function(BenchmarkId::new("open-raw", size), |b| {
                    b.iter(|| {
                        // Opening decrypts in place, so each run copies the
                        // ciphertext into a preallocated buffer first (the
                        // envelope copies it into its output the same way).
                        x.copy_from_slice(&sealed);
                        raw.open_in_place_detached(&NONCE, b"aad", black_box(&mut x), &tag)
                    })
                });
                let env = ring.seal(&ctx, &data).unwrap_or_default();
                g.bench_function(BenchmarkId::new("open-envelope", size), |b| {
                    b.iter(|| ring.open(black_box(&env), &ctx))
                });
                // The zero-copy API, on one buffer like the raw AEAD: sealing
                // again re-encrypts the previous ciphertext under a new header.
                let mut inplace = vec![0u8; RECORD_HEADER_LEN];
                inplace.extend_from_slice(&data);
                g.bench_function(BenchmarkId::new("seal-envelope-in-place", size), |b| {
                    b.iter(|| {
                        let r = ring.seal_in_place(&ctx, black_box(&mut inplace));
                        inplace.truncate(inplace.len() - 16);
                        r
                    })
                });
                let mut y = env.clone();
                g.bench_function(BenchmarkId::new("open-envelope-in-place", size), |b| {
                    b.iter(|| {
                        y.copy_from_slice(&env);
                        ring.open_in_place(black_box(&mut y), &ctx)
                            .map(|o| o.key_id)
                    })
                });
            }
            g.finish();
        }
    }
}

/// What one message's key costs: HKDF from scratch vs the engine's cached
/// extract (one expand block), next to the AEAD key schedule itself.
fn key_derivation(c: &mut Criterion) {
    use hkdf::Hkdf;
    use sha2::Sha256;
    let ikm = [5u8; 32];
    let info = [7u8; 42]; // label "cc1/key" + suite, form, chunk + 32-byte salt
    let mut g = c.benchmark_group("kdf");
    g.bench_function("hkdf-extract+expand", |b| {
        b.iter(|| {
            let mut okm = [0u8; 32];
            let _ = Hkdf::<Sha256>::new(Some(b"careconnect/envelope/v1"), black_box(&ikm))
                .expand(&info, &mut okm);
            okm
        })
    });
    let prk = Hkdf::<Sha256>::new(Some(b"careconnect/envelope/v1"), &ikm);
    g.bench_function("hkdf-expand-cached", |b| {
        b.iter(|| {
            let mut okm = [0u8; 32];
            let _ = black_box(&prk).expand(&info, &mut okm);
            okm
        })
    });
    g.bench_function("datakey-load", |b| {
        b.iter(|| DataKey::from_bytes(Zeroizing::new(black_box(ikm))))
    });
    for p in all_providers() {
        for s in Suite::ALL {
            g.bench_function(format!("aead-key-schedule/{}", label(p, s)), |b| {
                b.iter(|| p.aead(s, &AeadKey::new(black_box([9; 32]))))
            });
        }
    }
    g.finish();
}

/// Documents through the streaming API (64 KiB chunks) vs the raw AEAD over
/// the same bytes in the same chunks.
fn documents(c: &mut Criterion) {
    let ctx = ctx();
    let kek = KmsKeyId::new("documents").unwrap_or_else(|_| unreachable!());
    let options = OpenOptions::trusting(&kek);
    let dek = DataKey::generate();
    let wrapped = WrappedKey::new(vec![1; 85]).unwrap_or_else(|_| unreachable!());
    for p in all_providers() {
        for s in Suite::ALL {
            let name = label(p, s);
            let mut g = c.benchmark_group(format!("document/{name}"));
            g.sample_size(10);
            for size in [1usize << 20, 64 << 20] {
                g.throughput(Throughput::Bytes(size as u64));
                let data = vec![0x42u8; size];
                let raw = p.aead(s, &AeadKey::new([9; 32]));
                let mut chunk = vec![0u8; 64 << 10];
                g.bench_function(BenchmarkId::new("seal-raw", size), |b| {
                    b.iter(|| {
                        for piece in data.chunks(64 << 10) {
                            chunk[..piece.len()].copy_from_slice(piece);
                            let _ = raw.seal_in_place_detached(
                                &NONCE,
                                b"aad",
                                &mut chunk[..piece.len()],
                            );
                        }
                    })
                });
                let sealer = DocumentSealer::new().suite(s).provider(p);
                let seal = || {
                    let mut w = sealer
                        .begin_with_key(&dek, &kek, wrapped.clone(), &ctx, std::io::sink())
                        .unwrap_or_else(|_| unreachable!());
                    let _ = w.write_all(&data);
                    w.finish()
                };
                g.bench_function(BenchmarkId::new("seal-envelope", size), |b| b.iter(&seal));
                let mut sealed = Vec::new();
                if let Ok(mut w) =
                    sealer.begin_with_key(&dek, &kek, wrapped.clone(), &ctx, &mut sealed)
                {
                    let _ = w.write_all(&data);
                    let _ = w.finish();
                }
                g.bench_function(BenchmarkId::new("open-envelope", size), |b| {
                    let mut out = vec![0u8; 64 << 10];
                    b.iter(|| {
                        let mut input = sealed.as_slice();
                        let Ok(h) = DocumentHeader::read_from(&mut input, &options) else {
                            return 0;
                        };
                        let Ok(opener) = h.with_key(&dek, &ctx, p) else {
                            return 0;
                        };
                        let mut r = opener.reader(input);
                        let mut total = 0;
                        while let Ok(n) = r.read(&mut out) {
                            if n == 0 {
                                break;
                            }
                            total += n;
                        }
                        total
                    })
                });
            }
            g.finish();
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(400))
        .measurement_time(std::time::Duration::from_millis(1200))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = records, key_derivation, documents
}
criterion_main!(benches);
