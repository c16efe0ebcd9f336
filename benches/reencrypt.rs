//! Re-encryption throughput, what a data-key rotation or a compromise
//! costs: 100,000 rows of 512 bytes sealed under an old data key are found
//! with `scan_key`, opened, sealed under the new primary and written back
//! with compare-and-swap, 100 to a `commit` batch; against the same work
//! written one row per commit, in the same run. SQLite (a file) and
//! PostgreSQL (`CARECONNECT_PG_URL`). The default provider, or ring with
//! its feature.
//!
//! `cargo bench --features ring --bench reencrypt`

#[path = "support/mod.rs"]
mod support;
use support::cpu;

use std::sync::Arc;
use std::time::Instant;

use careconnect::crypto::provider::all_providers;
use careconnect::crypto::{EncryptionContext, KeyId, Keyring};
use careconnect::storage::{Collection, PgStore, RecordStore, RowData, RowId, SqliteStore, Write};

const ROWS: usize = 100_000;
const ALONE: usize = 5_000;
const BATCH: usize = 100;

fn ctx(id: &RowId) -> EncryptionContext {
    EncryptionContext::new().with("row", id.as_str())
}

/// Seals `n` rows under the keyring's primary into `coll`.
async fn fill(store: &dyn RecordStore, coll: &Collection, keys: &Keyring, n: usize) -> Option<()> {
    let body = vec![0x5a_u8; 512];
    let mut writes = Vec::with_capacity(BATCH);
    for i in 0..n {
        let id = RowId::new(format!("row-{i:08}")).ok()?;
        let envelope = keys.seal(&ctx(&id), &body).ok()?;
        writes.push(Write::Insert {
            coll: coll.clone(),
            id,
            data: RowData {
                key_id: keys.primary().get(),
                envelope,
                indexes: vec![],
            },
        });
        if writes.len() == BATCH || i + 1 == n {
            store.commit(&writes).await.ok()?;
            writes.clear();
        }
    }
    Some(())
}

/// Re-seals every row under `old` with the primary, `per_commit` rows per
/// commit; returns the rows done.
async fn reencrypt(
    store: &dyn RecordStore,
    coll: &Collection,
    keys: &Keyring,
    old: KeyId,
    per_commit: usize,
) -> Option<usize> {
    let mut done = 0;
    let mut after: Option<RowId> = None;
    loop {
        let page = store
            .scan_key(coll, old.get(), after.as_ref(), BATCH)
            .await
            .ok()?;
        let Some(last) = page.rows.last() else {
            return Some(done);
        };
        after = Some(last.id.clone());
        let mut writes = Vec::with_capacity(page.rows.len());
        for row in &page.rows {
            let opened = keys.open(&row.envelope, &ctx(&row.id)).ok()?;
            writes.push(Write::Update {
                coll: coll.clone(),
                id: row.id.clone(),
                expected: row.version,
                data: RowData {
                    key_id: keys.primary().get(),
                    envelope: keys.seal(&ctx(&row.id), &opened.plaintext).ok()?,
                    indexes: row.indexes.clone(),
                },
            });
        }
        for chunk in writes.chunks(per_commit) {
            store.commit(chunk).await.ok()?;
        }
        done += writes.len();
    }
}

async fn measure(name: &str, store: Arc<dyn RecordStore>, tag: &str) -> Option<()> {
    let provider = all_providers()
        .into_iter()
        .find(|p| p.name() == "ring")
        .unwrap_or_else(careconnect::crypto::default_provider);
    let mut keys = Keyring::generate().with_provider(provider);
    let batched = Collection::new(format!("bench_reencrypt_{tag}_batched")).ok()?;
    let alone = Collection::new(format!("bench_reencrypt_{tag}_alone")).ok()?;
    fill(store.as_ref(), &batched, &keys, ROWS).await?;
    fill(store.as_ref(), &alone, &keys, ALONE).await?;
    let old = keys.primary();
    keys.rotate().ok()?;
    let t = Instant::now();
    let n = reencrypt(store.as_ref(), &alone, &keys, old, 1).await?;
    let one = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let n = reencrypt(store.as_ref(), &batched, &keys, old, BATCH).await?;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(n, ROWS);
    println!(
        "{name:10} {:>12.0} {:>14.0} {:>8.1} {:>10.1}",
        one,
        n as f64 / secs,
        (n as f64 / secs) / one,
        secs
    );
    // Leave a shared database as it was.
    for coll in [&batched, &alone] {
        empty(store.as_ref(), coll).await?;
    }
    Some(())
}

async fn empty(store: &dyn RecordStore, coll: &Collection) -> Option<()> {
    loop {
        let page = store.list(coll, None, BATCH).await.ok()?;
        if page.rows.is_empty() {
            return Some(());
        }
        let deletes: Vec<Write> = page
            .rows
            .iter()
            .map(|r| Write::Delete {
                coll: coll.clone(),
                id: r.id.clone(),
                expected: r.version,
            })
            .collect();
        store.commit(&deletes).await.ok()?;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "CPU: {} ({} threads); {ROWS} rows of 512 B",
        cpu(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "\n{:10} {:>12} {:>14} {:>8} {:>10}",
        "backend", "rows/s alone", "rows/s batched", "ratio", "100k in s"
    );
    let Ok(dir) = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let tag = format!("{:x}", std::process::id());
    match SqliteStore::open(&dir.path().join("reencrypt.db")).await {
        Ok(s) => {
            if measure("sqlite", Arc::new(s), &tag).await.is_none() {
                println!("sqlite: failed");
            }
        }
        Err(e) => println!("sqlite unavailable: {e}"),
    }
    let url = std::env::var("CARECONNECT_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match PgStore::connect(&url, 16).await {
        Ok(s) => {
            if measure("postgres", Arc::new(s), &tag).await.is_none() {
                println!("postgres: failed");
            }
        }
        Err(e) => println!("postgres unavailable at {url}: {e}"),
    }
}
