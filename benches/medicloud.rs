//! Medicloud throughput: a 64 MiB document uploaded (sniffed, sealed under a
//! fresh KMS data key, streamed into filesystem blobs, metadata sealed) and
//! downloaded (verified chunk by chunk) through the service, against the raw
//! document envelope sealing and opening the same bytes in memory, in the
//! same run (the ratio is what means something on a noisy machine). Local
//! KMS; the `ring` provider when built with its feature, else the default.
//! SHA-256 of the same bytes is measured too: the upload hashes the
//! plaintext, so it bounds the upload's ratio; so does writing the blob
//! file (fsynced), measured alone as well. Bounded: seven interleaved
//! rounds.
//!
//! `cargo bench --features ring --bench medicloud`

#[path = "support/mod.rs"]
mod support;
use support::cpu;

use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use careconnect::authz::session::SystemClock;
use careconnect::authz::{Principal, Role, UserId};
use careconnect::core::{Clinic, ClinicConfig};
use careconnect::crypto::document::{DocumentHeader, DocumentSealer, OpenOptions};
use careconnect::crypto::{CryptoProvider, DataKey, EncryptionContext, KmsKeyId, WrappedKey};
use careconnect::storage::{BlobStore, FsBlobStore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const SIZE: usize = 64 << 20;
const ROUNDS: usize = 7;

/// A PDF-looking stream of `left` bytes, never held in memory.
struct Generator {
    left: usize,
    started: bool,
}

impl AsyncRead for Generator {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.left);
        let out = buf.initialize_unfilled_to(n);
        out.fill(0x42);
        if !self.started && n >= 5 {
            out[..5].copy_from_slice(b"%PDF-");
            self.started = true;
        }
        buf.advance(n);
        self.left -= n;
        Poll::Ready(Ok(()))
    }
}

/// Discards what it is given, counting it.
#[derive(Default)]
struct Sink(usize);

impl AsyncWrite for Sink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0 += data.len();
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Seconds per round, for each path measured.
#[derive(Default)]
struct Times {
    raw_seal: Vec<f64>,
    raw_open: Vec<f64>,
    hash: Vec<f64>,
    store: Vec<f64>,
    up: Vec<f64>,
    down: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn mib_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

fn provider() -> &'static dyn CryptoProvider {
    support::ring_or_default()
}

async fn bench() -> Option<()> {
    let provider = provider();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).ok()?;
    let mut config = ClinicConfig::embedded(dir.path()).ok()?;
    config.medicloud.max_bytes = (SIZE + 1) as u64;
    config.provider = provider;
    let url = format!("sqlite://{}", dir.path().join("clinic.db").display());
    let store = careconnect::storage::connect(&url).await.ok()?;
    let clinic = Clinic::open_with(config, store, Arc::new(SystemClock))
        .await
        .ok()?;
    let doctor = Principal::new(
        UserId::new("https://idp.bench", "doctor").ok()?,
        [Role::Doctor].into_iter().collect(),
    );
    // Raw envelope, in memory: the same bytes sealed and opened.
    let plain = {
        let mut v = vec![0x42u8; SIZE];
        v[..5].copy_from_slice(b"%PDF-");
        v
    };
    let dek = DataKey::generate();
    let key = KmsKeyId::new("raw").ok()?;
    let ctx = EncryptionContext::new().with("document", "raw");
    let raw_blobs = FsBlobStore::open(dir.path().join("raw-blobs")).await.ok()?;
    // Every round measures each path once, interleaved, so a noisy moment
    // hits all of them; the ratios are per round, the figures medians.
    let mut t = Times::default();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut w = DocumentSealer::new()
            .provider(provider)
            .begin_with_key(
                &dek,
                &key,
                WrappedKey::new(vec![1; 40]).ok()?,
                &ctx,
                Vec::with_capacity(SIZE + (1 << 20)),
            )
            .ok()?;
        w.write_all(&plain).ok()?;
        let sealed = w.finish().ok()?;
        t.raw_seal.push(start.elapsed().as_secs_f64());

        let start = Instant::now();
        let mut input = sealed.as_slice();
        let header = DocumentHeader::read_from(&mut input, &OpenOptions::trusting(&key)).ok()?;
        let mut r = header.with_key(&dek, &ctx, provider).ok()?.reader(input);
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        loop {
            let k = r.read(&mut buf).ok()?;
            if k == 0 {
                break;
            }
            n += k;
        }
        assert_eq!(n, SIZE);
        t.raw_open.push(start.elapsed().as_secs_f64());

        let start = Instant::now();
        std::hint::black_box(Sha256::digest(&plain));
        t.hash.push(start.elapsed().as_secs_f64());

        let start = Instant::now();
        let blob = raw_blobs.put(&mut sealed.as_slice()).await.ok()?;
        t.store.push(start.elapsed().as_secs_f64());
        raw_blobs.delete(&blob).await.ok()?;

        // Through the service: upload from a stream, download into a sink.
        let start = Instant::now();
        let doc = clinic
            .medicloud()
            .upload(
                &doctor,
                "scan.pdf",
                "application/pdf",
                Generator {
                    left: SIZE,
                    started: false,
                },
            )
            .await
            .ok()?;
        t.up.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let mut sink = Sink::default();
        clinic
            .medicloud()
            .download(&doctor, &doc.id, &mut sink)
            .await
            .ok()?;
        assert_eq!(sink.0, SIZE);
        t.down.push(start.elapsed().as_secs_f64());
        clinic.medicloud().delete(&doctor, &doc.id).await.ok()?;
    }
    println!(
        "CPU: {} ({} threads); provider: {}; medians of {ROUNDS} interleaved rounds",
        cpu(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        provider.name()
    );
    println!("\n## Medicloud, 64 MiB document (MiB/s)");
    println!(
        "{:10} {:>12} {:>12} {:>8}",
        "", "raw envelope", "service", "ratio"
    );
    for (what, raw, svc) in [
        ("upload", &t.raw_seal, &t.up),
        ("download", &t.raw_open, &t.down),
    ] {
        let ratios: Vec<f64> = raw.iter().zip(svc).map(|(r, s)| r / s).collect();
        println!(
            "{what:10} {:>12.0} {:>12.0} {:>8.2}",
            mib_s(SIZE, median(raw)),
            mib_s(SIZE, median(svc)),
            median(&ratios)
        );
    }
    println!(
        "\nalone: SHA-256 {:.0} MiB/s, blob file write (fsync) {:.0} MiB/s; \
         the upload hashes, seals and writes every byte",
        mib_s(SIZE, median(&t.hash)),
        mib_s(SIZE, median(&t.store)),
    );
    Some(())
}

fn main() {
    support::run_async("medicloud", bench());
}
