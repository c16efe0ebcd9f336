//! The audit log on SQLite (a file on the build disk): events per second,
//! each durable before its call returns, with 1 and 16 tasks — the plain
//! store append (one commit per event, no chain) against the chained,
//! group-committed `AuditTrail`, measured in the same run so the ratio means
//! something on a noisy machine; then `verify` over 100,000 events.
//! Bounded: 4,000 events per configuration, one 100,000-event chain.
//!
//! `cargo bench --bench audit`

use std::sync::Arc;
use std::time::Instant;

use careconnect::authz::{Principal, Role, UserId};
use careconnect::core::audit::{Anchor, AuditEvent, AuditTrail, Outcome, Verification};
use careconnect::crypto::Keyring;
use careconnect::storage::{AuditLog, SqliteStore};

const EVENTS: usize = 4000;
const VERIFY_EVENTS: usize = 100_000;

fn event(who: &Principal, i: usize) -> AuditEvent {
    AuditEvent::by(
        who,
        "ReadHealthRecord",
        format!("patient:{i}"),
        Outcome::Allowed,
    )
}

/// Events per second through `op`, split over `tasks` tasks.
async fn rate<F, Fut>(tasks: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = bool> + Send,
{
    let per = EVENTS / tasks;
    let t = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|k| {
            let op = op.clone();
            tokio::spawn(async move {
                for j in 0..per {
                    if !op(k * per + j).await {
                        return;
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.await;
    }
    (per * tasks) as f64 / t.elapsed().as_secs_f64()
}

async fn bench() -> Option<()> {
    let dir = tempfile::tempdir().ok()?;
    let who = Principal::new(
        UserId::new("https://idp.bench", "doctor").ok()?,
        [Role::Doctor].into_iter().collect(),
    );
    let json = serde_json::to_vec(&event(&who, 0)).ok()?;
    println!("## Audit events/s on SQLite (durable before return)");
    println!(
        "{:10} {:>12} {:>12} {:>8}",
        "tasks", "plain", "chained", "ratio"
    );
    for tasks in [1, 16] {
        let plain = Arc::new(
            SqliteStore::open(&dir.path().join(format!("plain{tasks}.db")))
                .await
                .ok()?,
        );
        let chained = Arc::new(
            SqliteStore::open(&dir.path().join(format!("chained{tasks}.db")))
                .await
                .ok()?,
        );
        let trail = AuditTrail::new(
            chained,
            Keyring::generate(),
            Anchor::at(dir.path().join(format!("anchor{tasks}"))),
        );
        let (p, j) = (plain.clone(), json.clone());
        let plain_rate = rate(tasks, move |_| {
            let (p, j) = (p.clone(), j.clone());
            async move { p.append(j).await.is_ok() }
        })
        .await;
        let (t, w) = (trail.clone(), who.clone());
        let chained_rate = rate(tasks, move |i| {
            let (t, w) = (t.clone(), w.clone());
            async move { t.record(event(&w, i)).await.is_ok() }
        })
        .await;
        println!(
            "{tasks:10} {plain_rate:12.0} {chained_rate:12.0} {:8.2}",
            chained_rate / plain_rate
        );
    }
    // verify over a long chain, written in large batches by 64 tasks.
    let store = Arc::new(SqliteStore::open(&dir.path().join("long.db")).await.ok()?);
    let trail = AuditTrail::new(
        store,
        Keyring::generate(),
        Anchor::at(dir.path().join("long.anchor")),
    );
    let mut set = tokio::task::JoinSet::new();
    for k in 0..64 {
        let (t, w) = (trail.clone(), who.clone());
        set.spawn(async move {
            for j in 0..VERIFY_EVENTS / 64 {
                let _ = t.record(event(&w, k * 10_000 + j)).await;
            }
        });
    }
    while set.join_next().await.is_some() {}
    let t = Instant::now();
    let verdict = trail.verify().await.ok()?;
    let secs = t.elapsed().as_secs_f64();
    let Verification::Intact { entries } = verdict else {
        println!("verify: {verdict:?}");
        return None;
    };
    println!(
        "\n## verify: {entries} events in {secs:.2} s = {:.0} events/s",
        entries as f64 / secs
    );
    Some(())
}

fn main() {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    else {
        return;
    };
    if rt.block_on(bench()).is_none() {
        eprintln!("audit bench could not run");
    }
}
