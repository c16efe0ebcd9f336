//! Envelope / raw-AEAD ratios measured interleaved, so that a noisy machine
//! (CPU frequency, neighbours) slows both sides alike.
//!
//! Each round times a batch of every variant back to back, in rotating order;
//! a ratio is the median over rounds of that round's ratio. Criterion
//! (`benches/envelope.rs`) gives absolute throughput; this gives the ratios.
//!
//! `cargo bench --features ring --bench ratios [-- quick] [salts]`

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Instant;

use careconnect::crypto::document::{DocumentHeader, DocumentSealer, OpenOptions};
use careconnect::crypto::provider::{AeadKey, Fastest, all_providers, fastest};
use careconnect::crypto::{
    DataKey, EncryptionContext, Keyring, KmsKeyId, RECORD_HEADER_LEN, Suite, WrappedKey,
};

const NONCE: [u8; 12] = [7; 12];

/// One timed variant: a label and the operation.
type Variant<'a> = (&'static str, Box<dyn FnMut() + 'a>);

/// An array of [`Variant`]s from `(label, Box::new(closure))` pairs.
macro_rules! variants {
    ($( ($name:expr, Box::new($f:expr) $(,)?) ),* $(,)?) => {
        [$( ($name, Box::new($f) as Box<dyn FnMut() + '_>) ),*]
    };
}

/// Times `f` run `n` times; nanoseconds per run.
fn per_op(n: u32, f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the variants interleaved; returns per-variant median ns/op and, for
/// each variant, the median over rounds of (baseline time / variant time).
fn race(rounds: usize, variants: &mut [Variant<'_>]) -> Vec<(f64, f64)> {
    // Batch size: about 2 ms of the first variant.
    let probe = per_op(3, &mut *variants[0].1).max(1.0);
    let n = ((2e6 / probe) as u32).clamp(1, 100_000);
    let k = variants.len();
    let mut times = vec![Vec::with_capacity(rounds); k];
    for _ in 0..2 {
        for (_, f) in variants.iter_mut() {
            per_op(n, &mut **f); // warm up
        }
    }
    for r in 0..rounds {
        for i in 0..k {
            let j = (i + r) % k;
            times[j].push(per_op(n, &mut *variants[j].1));
        }
    }
    (0..k)
        .map(|j| {
            let ratio = median(times[0].iter().zip(&times[j]).map(|(b, v)| b / v).collect());
            (median(times[j].clone()), ratio)
        })
        .collect()
}

fn ctx() -> EncryptionContext {
    EncryptionContext::new()
        .with("collection", "health_records")
        .with("field", "notes")
        .with("record", "6f1d2c1e-8d4b-4f57-9a57-0c1f5b9e2a10")
}

fn gbs(bytes: usize, ns: f64) -> f64 {
    bytes as f64 / ns
}

fn records(rounds: usize, targets: &mut Vec<(String, f64, f64)>) {
    let ctx = ctx();
    println!("## Records: GB/s, and ratio to raw (interleaved medians)");
    println!("   seal: raw = AEAD keyed once, raw+key = with a key schedule per message;");
    println!(
        "   env = Keyring::seal (allocates, copies), inpl = Keyring::seal_in_place (zero-copy)"
    );
    println!(
        "{:30} {:>8} | {:>6} {:>7} {:>6} {:>6} | {:>8} {:>8} {:>9} | {:>6} {:>6} {:>6} | {:>8} {:>8}",
        "provider-suite",
        "bytes",
        "raw",
        "raw+key",
        "env",
        "inpl",
        "env/raw",
        "inpl/raw",
        "inpl/r+k",
        "o.raw",
        "o.env",
        "o.inpl",
        "env/raw",
        "inpl/raw"
    );
    for p in all_providers() {
        for s in Suite::ALL {
            let name = format!("{}-{}", p.name(), s.name());
            let ring = Keyring::generate().with_suite(s).with_provider(p);
            let raw = p.aead(s, &AeadKey::new([9; 32]));
            for size in [256usize, 4 << 10, 64 << 10, 1 << 20] {
                let data = vec![0x42u8; size];
                let mut a = data.clone();
                let mut b = data.clone();
                let mut inplace = vec![0u8; RECORD_HEADER_LEN];
                inplace.extend_from_slice(&data);
                let seal = race(
                    rounds,
                    &mut variants![
                        (
                            "raw",
                            Box::new(|| {
                                let _ = black_box(raw.seal_in_place_detached(
                                    &NONCE,
                                    b"aad",
                                    black_box(&mut a),
                                ));
                            }),
                        ),
                        (
                            "raw+key",
                            Box::new(|| {
                                let k = AeadKey::new(black_box([9; 32]));
                                let _ = black_box(p.seal_once(
                                    s,
                                    &k,
                                    &NONCE,
                                    b"aad",
                                    black_box(&mut b),
                                ));
                            }),
                        ),
                        (
                            "env",
                            Box::new(|| {
                                let _ = black_box(ring.seal(&ctx, black_box(&data)));
                            }),
                        ),
                        (
                            "inpl",
                            Box::new(|| {
                                let _ =
                                    black_box(ring.seal_in_place(&ctx, black_box(&mut inplace)));
                                inplace.truncate(inplace.len() - 16);
                            }),
                        ),
                    ],
                );
                let mut sealed = data.clone();
                let tag = raw
                    .seal_in_place_detached(&NONCE, b"aad", &mut sealed)
                    .unwrap_or([0; 16]);
                let env = ring.seal(&ctx, &data).unwrap_or_default();
                let mut x = sealed.clone();
                let mut y = env.clone();
                let open = race(
                    rounds,
                    &mut variants![
                        (
                            "raw",
                            Box::new(|| {
                                // Decrypts in place, so copy the ciphertext in first;
                                // the envelope copies it the same way.
                                x.copy_from_slice(&sealed);
                                let _ = black_box(raw.open_in_place_detached(
                                    &NONCE,
                                    b"aad",
                                    black_box(&mut x),
                                    &tag,
                                ));
                            }),
                        ),
                        (
                            "env",
                            Box::new(|| {
                                let _ = black_box(ring.open(black_box(&env), &ctx));
                            }),
                        ),
                        (
                            "inpl",
                            Box::new(|| {
                                y.copy_from_slice(&env);
                                let _ = black_box(
                                    ring.open_in_place(black_box(&mut y), &ctx)
                                        .map(|o| o.key_id),
                                );
                            }),
                        ),
                    ],
                );
                println!(
                    "{name:30} {size:>8} | {:6.2} {:7.2} {:6.2} {:6.2} | {:8.2} {:8.2} {:9.2} | {:6.2} {:6.2} {:6.2} | {:8.2} {:8.2}",
                    gbs(size, seal[0].0),
                    gbs(size, seal[1].0),
                    gbs(size, seal[2].0),
                    gbs(size, seal[3].0),
                    seal[2].1,
                    seal[3].1,
                    seal[3].1 / seal[1].1,
                    gbs(size, open[0].0),
                    gbs(size, open[1].0),
                    gbs(size, open[2].0),
                    open[1].1,
                    open[2].1,
                );
                let need = match size {
                    256 => Some(0.4),
                    s if s >= 64 << 10 => Some(0.9),
                    _ => None,
                };
                if let Some(need) = need {
                    targets.push((
                        format!("record {name} {size} B seal_in_place/raw"),
                        seal[3].1,
                        need,
                    ));
                    targets.push((
                        format!("record {name} {size} B open_in_place/raw"),
                        open[2].1,
                        need,
                    ));
                    targets.push((
                        format!("record {name} {size} B seal/raw (allocating)"),
                        seal[2].1,
                        need,
                    ));
                    targets.push((
                        format!("record {name} {size} B open/raw (allocating)"),
                        open[1].1,
                        need,
                    ));
                }
            }
        }
    }
}

fn documents(rounds: usize, targets: &mut Vec<(String, f64, f64)>, openssl_aes_1mib: Option<f64>) {
    let ctx = ctx();
    let kek = KmsKeyId::new("documents").unwrap_or_else(|_| unreachable!());
    let options = OpenOptions::trusting(&kek);
    let dek = DataKey::generate();
    println!(
        "\n## Documents (64 KiB chunks, streaming std::io API): GB/s, ratio to raw AEAD over the same chunks"
    );
    for p in all_providers() {
        for s in Suite::ALL {
            let name = format!("{}-{}", p.name(), s.name());
            for size in [1usize << 20, 64 << 20] {
                let data = vec![0x42u8; size];
                // Raw gets its own copy of the plaintext: at 64 MiB (beyond
                // the last-level cache) raw and seal reading one buffer left
                // each other part of it in cache, while open's input stayed
                // cold, which made open look 15-25 % slower than it is.
                let raw_data = data.clone();
                let raw = p.aead(s, &AeadKey::new([9; 32]));
                let mut chunk = vec![0u8; 64 << 10];
                let sealer = DocumentSealer::new().suite(s).provider(p);
                let wrapped = WrappedKey::new(vec![1; 85]).unwrap_or_else(|_| unreachable!());
                let mut sealed = Vec::new();
                if let Ok(mut w) =
                    sealer.begin_with_key(&dek, &kek, wrapped.clone(), &ctx, &mut sealed)
                {
                    let _ = w.write_all(&data);
                    let _ = w.finish();
                }
                let mut out = vec![0u8; 64 << 10];
                let r = race(
                    rounds,
                    &mut variants![
                        (
                            "raw",
                            Box::new(|| {
                                for piece in raw_data.chunks(64 << 10) {
                                    chunk[..piece.len()].copy_from_slice(piece);
                                    let _ = black_box(raw.seal_in_place_detached(
                                        &NONCE,
                                        b"aad",
                                        &mut chunk[..piece.len()],
                                    ));
                                }
                            }),
                        ),
                        (
                            "seal",
                            Box::new(|| {
                                if let Ok(mut w) = sealer.begin_with_key(
                                    &dek,
                                    &kek,
                                    wrapped.clone(),
                                    &ctx,
                                    std::io::sink(),
                                ) {
                                    let _ = w.write_all(black_box(&data));
                                    let _ = black_box(w.finish());
                                }
                            }),
                        ),
                        (
                            "open",
                            Box::new(|| {
                                let mut input = sealed.as_slice();
                                let Ok(h) = DocumentHeader::read_from(&mut input, &options) else {
                                    return;
                                };
                                let Ok(opener) = h.with_key(&dek, &ctx, p) else {
                                    return;
                                };
                                let mut reader = opener.reader(input);
                                while let Ok(n) = reader.read(&mut out) {
                                    if n == 0 {
                                        break;
                                    }
                                    black_box(&out);
                                }
                            }),
                        ),
                    ],
                );
                println!(
                    "  {name:30} {:>3} MiB  raw {:6.2}  seal {:6.2} ({:4.2}x)  open {:6.2} ({:4.2}x)",
                    size >> 20,
                    gbs(size, r[0].0),
                    gbs(size, r[1].0),
                    r[1].1,
                    gbs(size, r[2].0),
                    r[2].1,
                );
                targets.push((
                    format!("document {name} {} MiB seal/raw", size >> 20),
                    r[1].1,
                    0.85,
                ));
                targets.push((
                    format!("document {name} {} MiB open/raw", size >> 20),
                    r[2].1,
                    0.85,
                ));
                let chosen = fastest().chosen(Suite::Aes256Gcm).name();
                if let (Some(o), true) = (
                    openssl_aes_1mib,
                    p.name() == chosen && s == Suite::Aes256Gcm && size == 1 << 20,
                ) {
                    targets.push((
                        format!(
                            "document {chosen} (auto-chosen) AES-256-GCM 1 MiB seal vs openssl speed ({o:.2} GB/s)"
                        ),
                        gbs(size, r[1].0) / o,
                        1.5,
                    ));
                    targets.push((
                        format!(
                            "document {chosen} (auto-chosen) AES-256-GCM 1 MiB open vs openssl speed ({o:.2} GB/s)"
                        ),
                        gbs(size, r[2].0) / o,
                        1.5,
                    ));
                }
            }
        }
    }
}

/// Where salts come from, and what it costs a 256-B record (issue 13, item 4).
///
/// The engine takes every salt from `getrandom(2)`, which cannot repeat after
/// a fork or a VM snapshot restore; until issue 13 it used `rand`'s
/// `ThreadRng`, which can. Both are raced here against raw AEAD, through the
/// same sealing code (only the salt source differs), so the before/after
/// ratios come from one run.
fn salts(rounds: usize) {
    use careconnect::crypto::envelope::seal_record_with_salt;
    use careconnect::crypto::format::KeyRef;
    use careconnect::crypto::{KeyId, SALT_LEN};
    use rand::{RngCore, TryRngCore};
    println!("\n## Salts: 256-B record seal, OS salt (now) vs ThreadRng salt (before issue 13)");
    println!(
        "{:30} | {:>7} {:>7} {:>7} | {:>9} {:>9} | {:>7} {:>7}",
        "provider-suite", "raw ns", "os ns", "tr ns", "os/raw", "tr/raw", "getrnd", "thrdrng"
    );
    let ctx = ctx();
    let data = [0x42u8; 256];
    let Some(id) = KeyId::new(1) else { return };
    for p in all_providers() {
        let s = Suite::Aes256Gcm;
        let ring = Keyring::generate().with_suite(s).with_provider(p);
        let dek = DataKey::from_bytes(zeroize::Zeroizing::new([9; 32]));
        let raw = p.aead(s, &AeadKey::new([9; 32]));
        let mut a = data;
        let r = race(
            rounds,
            &mut variants![
                (
                    "raw",
                    Box::new(|| {
                        let _ = black_box(raw.seal_in_place_detached(&NONCE, b"aad", &mut a));
                    })
                ),
                (
                    "os",
                    Box::new(|| {
                        let _ = black_box(ring.seal(&ctx, black_box(&data)));
                    })
                ),
                (
                    "threadrng",
                    Box::new(|| {
                        let mut salt = [0u8; SALT_LEN];
                        rand::rng().fill_bytes(&mut salt);
                        let _ = black_box(seal_record_with_salt(
                            p,
                            s,
                            &dek,
                            KeyRef::Keyring(id),
                            salt,
                            &ctx,
                            black_box(&data),
                        ));
                    })
                ),
                (
                    "getrandom only",
                    Box::new(|| {
                        let mut salt = [0u8; SALT_LEN];
                        let _ = rand::rngs::OsRng.try_fill_bytes(&mut salt);
                        black_box(salt);
                    })
                ),
                (
                    "threadrng only",
                    Box::new(|| {
                        let mut salt = [0u8; SALT_LEN];
                        rand::rng().fill_bytes(&mut salt);
                        black_box(salt);
                    })
                ),
            ],
        );
        println!(
            "{:30} | {:7.0} {:7.0} {:7.0} | {:9.2} {:9.2} | {:7.0} {:7.0}",
            format!("{}-{}", p.name(), s.name()),
            r[0].0,
            r[1].0,
            r[2].0,
            r[1].1,
            r[2].1,
            r[3].0,
            r[4].0
        );
    }
}

/// What `default_provider()` chose on this CPU, and what it measured.
fn chosen() {
    let f = fastest();
    println!("## The fastest provider, as default_provider() measured it at first use");
    for s in Suite::ALL {
        let seen: Vec<String> = f
            .timings(s)
            .iter()
            .map(|(n, t)| {
                format!(
                    "{n} {:.2} GB/s",
                    Fastest::SAMPLE_LEN as f64 / t.as_nanos().max(1) as f64
                )
            })
            .collect();
        println!(
            "  provider chosen for {}: {}  ({})",
            s.name(),
            f.chosen(s).name(),
            seen.join(", ")
        );
    }
}

/// The kdf costs, interleaved with nothing: ns per call.
fn kdf(rounds: usize) {
    use hkdf::Hkdf;
    use sha2::Sha256;
    let ikm = [5u8; 32];
    let info = [7u8; 42];
    let prk = Hkdf::<Sha256>::new(Some(b"careconnect/envelope/v1"), &ikm);
    let dek = DataKey::from_bytes(zeroize::Zeroizing::new(ikm));
    let salt = [3u8; 32];
    let mut variants: [Variant<'_>; 4] = [
        (
            "hkdf extract+expand (from scratch)",
            Box::new(|| {
                let mut okm = [0u8; 32];
                let _ = Hkdf::<Sha256>::new(Some(b"careconnect/envelope/v1"), black_box(&ikm))
                    .expand(&info, &mut okm);
                black_box(okm);
            }),
        ),
        (
            "hkdf expand (hkdf crate, cached PRK)",
            Box::new(|| {
                let mut okm = [0u8; 32];
                let _ = black_box(&prk).expand(&info, &mut okm);
                black_box(okm);
            }),
        ),
        (
            "engine per-message key (cached HMAC, 1 block)",
            Box::new(|| {
                black_box(black_box(&dek).message_key_for_bench(Suite::Aes256Gcm, &salt));
            }),
        ),
        (
            "DataKey load (extract + commitment)",
            Box::new(|| {
                black_box(DataKey::from_bytes(zeroize::Zeroizing::new(black_box(ikm))));
            }),
        ),
    ];
    let r = race(rounds, &mut variants);
    println!("\n## Key derivation (ns per call, median)");
    for ((label, _), (ns, _)) in variants.iter().zip(r) {
        println!("  {label:48} {ns:8.1}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let quick = args.iter().any(|a| a == "quick");
    if args.iter().any(|a| a == "salts") {
        salts(if quick { 9 } else { 31 });
        return;
    }
    let rounds = if quick { 9 } else { 31 };
    // GB/s of `openssl speed -evp aes-256-gcm -bytes 1048576`, measured by the
    // calling script in the same run.
    let openssl = std::env::var("OPENSSL_AES_1MIB_GBS")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut targets = Vec::new();
    chosen();
    records(rounds, &mut targets);
    documents(rounds.min(15), &mut targets, openssl);
    kdf(rounds);
    salts(rounds);
    println!("\n## Targets (issue 2)");
    for (what, got, need) in targets {
        println!(
            "  {} {what:64} {got:5.2} (>= {need})",
            if got >= need { "ok  " } else { "MISS" }
        );
    }
}
