//! Peak memory of document streaming: seals and then opens an N MiB document
//! through the streaming API, from a generator to a sink, and prints the
//! throughput and the process's peak resident set (VmHWM). Run it with two
//! sizes: the peak must not grow with the size.
//!
//! `cargo bench --features ring --bench stream_memory -- 64 [provider] [suite]`

use std::io::{self, Read, Write};
use std::time::Instant;

use careconnect::crypto::document::{DocumentHeader, DocumentSealer, OpenOptions};
use careconnect::crypto::provider::all_providers;
use careconnect::crypto::{DataKey, EncryptionContext, KmsKeyId, Suite, WrappedKey};

/// Yields `left` bytes of a fixed pattern without holding them.
struct Generator {
    left: u64,
}

impl Read for Generator {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = out
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        out[..n].fill(0x42);
        self.left -= n as u64;
        Ok(n)
    }
}

/// The process's peak resident set size, from `/proc/self/status`.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mib: u64 = args.first().map_or(Ok(64), |s| s.parse())?;
    let provider = args.get(1).map_or("rustcrypto", String::as_str);
    let wanted = args.get(2).map_or("aes-256-gcm", String::as_str);
    let suite = Suite::ALL
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(wanted))
        .ok_or("unknown suite")?;
    let p = all_providers()
        .into_iter()
        .find(|p| p.name() == provider)
        .ok_or("unknown provider (build with --features ring for ring)")?;
    let size = mib << 20;
    let ctx = EncryptionContext::new().with("document", "bench");
    let dek = DataKey::generate();
    let kek = KmsKeyId::new("documents")?;
    let file = tempfile::tempfile()?;
    let baseline = peak_rss_kib();

    let t = Instant::now();
    let mut w = DocumentSealer::new()
        .suite(suite)
        .provider(p)
        .begin_with_key(
            &dek,
            &kek,
            WrappedKey::new(vec![1; 85])?,
            &ctx,
            io::BufWriter::new(&file),
        )?;
    io::copy(&mut Generator { left: size }, &mut w)?;
    w.finish()?.flush()?;
    let seal = t.elapsed();

    let t = Instant::now();
    let mut input = io::BufReader::new(&file);
    io::Seek::rewind(&mut input)?;
    let header = DocumentHeader::read_from(&mut input, &OpenOptions::trusting(&kek))?;
    let mut reader = header.with_key(&dek, &ctx, p)?.reader(input);
    let opened = io::copy(&mut reader, &mut io::sink())?;
    let open = t.elapsed();
    if opened != size {
        return Err("opened a different length".into());
    }
    let gbps = |d: std::time::Duration| size as f64 / d.as_secs_f64() / 1e9;
    println!(
        "stream {mib} MiB {provider} {}: seal {:.2} GB/s, open {:.2} GB/s, peak RSS {} KiB (before streaming {} KiB)",
        suite.name(),
        gbps(seal),
        gbps(open),
        peak_rss_kib(),
        baseline,
    );
    Ok(())
}
