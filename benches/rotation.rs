//! KMS master-key rotation time against the number and the size of
//! documents: 10,000 documents of 1 KiB, then 1,000 of 1 KiB against 1,000
//! of 1 MiB in the same run (a rotation re-wraps data keys and never reads
//! a body, so size must not matter). Local KMS, SQLite, filesystem blobs.
//!
//! `cargo bench --bench rotation`

#[path = "support/mod.rs"]
mod support;
use support::cpu;

use std::sync::Arc;
use std::time::Instant;

use careconnect::authz::session::SystemClock;
use careconnect::authz::{Principal, Role, UserId};
use careconnect::core::{Clinic, ClinicConfig};

fn who(s: &str, role: Role) -> Option<Principal> {
    Some(Principal::new(
        UserId::new("https://idp.bench", s).ok()?,
        [role].into_iter().collect(),
    ))
}

/// Seconds to rotate a fresh clinic's KMS keys with `n` documents of
/// `size` bytes, and the upload time spent first.
async fn rotation(n: usize, size: usize) -> Option<(f64, f64)> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).ok()?;
    let mut config = ClinicConfig::embedded(dir.path()).ok()?;
    config.medicloud.max_bytes = (size + 64) as u64;
    let store = careconnect::storage::connect(&config.storage_url)
        .await
        .ok()?;
    let clinic = Clinic::open_with(config, store, Arc::new(SystemClock))
        .await
        .ok()?;
    let (doctor, admin) = (who("doctor", Role::Doctor)?, who("admin", Role::Admin)?);
    let mut body = b"%PDF-1.7\n".to_vec();
    body.resize(size, 0x42);
    let t = Instant::now();
    for _ in 0..n {
        clinic
            .medicloud()
            .upload(&doctor, "doc.pdf", "application/pdf", body.as_slice())
            .await
            .ok()?;
    }
    let upload = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let report = clinic
        .rotation()
        .rotate_kek(&admin, false, &mut |_| {})
        .await
        .ok()?;
    let rotate = t.elapsed().as_secs_f64();
    assert_eq!(report.documents, n as u64);
    Some((rotate, upload))
}

async fn bench() -> Option<()> {
    println!(
        "CPU: {} ({} threads); local KMS, SQLite, filesystem blobs",
        cpu(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("\n## KMS master-key rotation");
    println!(
        "{:>10} {:>10} {:>12} {:>14} {:>16}",
        "documents", "size", "rotation s", "documents/s", "(upload first s)"
    );
    for (n, size) in [(10_000, 1 << 10), (1_000, 1 << 10), (1_000, 1 << 20)] {
        let (rotate, upload) = rotation(n, size).await?;
        println!(
            "{n:>10} {:>9}K {rotate:>12.2} {:>14.0} {upload:>16.1}",
            size >> 10,
            n as f64 / rotate
        );
    }
    Some(())
}

fn main() {
    support::run_async("rotation", bench());
}
