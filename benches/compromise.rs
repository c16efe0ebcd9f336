//! A compromised clinic data key with 100,000 rows under it (50,000 people:
//! directory entry and stored roles each), on SQLite, while a second node
//! serves reads and writes: the whole job's time, the re-sealing phase's
//! rows per second, the waits (four reload windows), and the serving
//! node's latency during the job against the same load just before it, in
//! the same run.
//!
//! `cargo bench --features ring --bench compromise`
//! (`CARECONNECT_BENCH_PEOPLE`, default 50,000; `CARECONNECT_BENCH_RECHECK_MS`,
//! default 1,000: the clinics' keyring recheck interval).

#[path = "support/mod.rs"]
mod support;
use support::{cpu, run_async};

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use careconnect::authz::mapper::Claims;
use careconnect::authz::session::SystemClock;
use careconnect::authz::{Principal, Role, RoleSet, UserId};
use careconnect::core::rotation::Phase;
use careconnect::core::{Clinic, ClinicConfig};
use careconnect::crypto::KeyState;

const ISSUER: &str = "https://idp.bench";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn admin() -> Option<Principal> {
    Some(Principal::new(
        UserId::new(ISSUER, "admin").ok()?,
        [Role::Admin].into_iter().collect(),
    ))
}

async fn node(dir: &Path, recheck: Duration) -> Option<Clinic> {
    let mut config = ClinicConfig::embedded(dir).ok()?;
    config.keyring_recheck = recheck;
    config.provider = support::ring_or_default();
    let store = careconnect::storage::connect(&config.storage_url)
        .await
        .ok()?;
    Clinic::open_with(config, store, Arc::new(SystemClock))
        .await
        .ok()
}

/// Serves until `stop`: a directory read and a person's update in turn;
/// returns each operation's latency in microseconds and the failures.
async fn serve(c: Clinic, stop: Arc<AtomicBool>, people: usize) -> (Vec<u64>, u64) {
    let (mut lat, mut failed) = (Vec::new(), 0u64);
    let Some(admin) = admin() else {
        return (lat, 1);
    };
    let roles: RoleSet = [Role::Doctor].into_iter().collect();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let Ok(user) = UserId::new(ISSUER, format!("person-{:06}", (n * 7919) % people)) else {
            failed += 1;
            continue;
        };
        let t = Instant::now();
        let ok = if n.is_multiple_of(2) {
            c.admin()
                .set_person(&admin, &user, &format!("Person {n}"), roles)
                .await
                .is_ok()
        } else {
            // A sign-in: the stored roles read, the login audited.
            let claims = Claims::new(user.clone());
            c.sign_in(&claims)
                .await
                .is_ok_and(|p| p.roles.contains(Role::Doctor))
        };
        lat.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
        if !ok {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (lat, failed)
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0)
}

async fn bench() -> Option<()> {
    let people = env_or("CARECONNECT_BENCH_PEOPLE", 50_000) as usize;
    let recheck = Duration::from_millis(env_or("CARECONNECT_BENCH_RECHECK_MS", 1000).max(1));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).ok()?;
    let a = node(dir.path(), recheck).await?;
    let admin = admin()?;
    let roles: RoleSet = [Role::Doctor].into_iter().collect();
    let t = Instant::now();
    let all: Vec<(UserId, String, RoleSet)> = (0..people)
        .filter_map(|i| {
            Some((
                UserId::new(ISSUER, format!("person-{i:06}")).ok()?,
                format!("Person {i}"),
                roles,
            ))
        })
        .collect();
    a.admin().import_people(&admin, &all).await.ok()?;
    let seeded = t.elapsed();
    let status = a.admin().key_status(&admin).await.ok()?;
    let k = status
        .clinic_keys
        .iter()
        .find(|k| k.state == KeyState::Primary)?
        .id
        .get();
    let b = node(dir.path(), recheck).await?;

    // The serving node's latency without a rotation, then during one.
    let load = Duration::from_secs(10);
    let stop = Arc::new(AtomicBool::new(false));
    let quiet = tokio::spawn(serve(b.clone(), stop.clone(), people));
    tokio::time::sleep(load).await;
    stop.store(true, Ordering::Relaxed);
    let (mut quiet_lat, quiet_failed) = quiet.await.ok()?;

    let stop = Arc::new(AtomicBool::new(false));
    let busy = tokio::spawn(serve(b.clone(), stop.clone(), people));
    let mut reseal: Option<(Instant, Instant)> = None;
    let t = Instant::now();
    let report = a
        .rotation()
        .data_key_compromised(&admin, k, false, &mut |p| {
            if p.phase == Phase::ResealRows {
                let now = Instant::now();
                reseal = Some((reseal.map_or(now, |(s, _)| s), now));
            }
        })
        .await
        .ok()?;
    let total = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut busy_lat, busy_failed) = busy.await.ok()?;
    let rows = report.total_rows();
    let reseal_s = reseal.map_or(0.0, |(s, e)| (e - s).as_secs_f64());
    let (q50, q99) = (
        percentile(&mut quiet_lat, 0.5),
        percentile(&mut quiet_lat, 0.99),
    );
    let (b50, b99) = (
        percentile(&mut busy_lat, 0.5),
        percentile(&mut busy_lat, 0.99),
    );
    println!(
        "compromise of a clinic data key on SQLite ({}), provider {}",
        cpu(),
        support::ring_or_default().name()
    );
    println!(
        "  seeded {people} people ({rows} rows under the key) in {:.1} s",
        seeded.as_secs_f64()
    );
    println!(
        "  whole job {:.1} s (waits: 4 reload windows of {} ms = {:.1} s, at a recheck of {} ms); re-sealing phase {:.1} s = {:.0} rows/s",
        total.as_secs_f64(),
        a.reload_window().as_millis(),
        4.0 * a.reload_window().as_secs_f64(),
        recheck.as_millis(),
        reseal_s,
        rows as f64 / reseal_s.max(1e-9)
    );
    println!(
        "  serving node, p50/p99 latency: {q50}/{q99} us quiet, {b50}/{b99} us during the job (x{:.2} / x{:.2}); {} and {} ops, {} and {} failed",
        b50 as f64 / q50.max(1) as f64,
        b99 as f64 / q99.max(1) as f64,
        quiet_lat.len(),
        busy_lat.len(),
        quiet_failed,
        busy_failed
    );
    println!(
        "  destroyed {:?}; {} audit entries sealed off by the checkpoint",
        report.destroyed, report.audit_entries_sealed_off
    );
    Some(())
}

fn main() {
    run_async("compromise", bench());
}
