//! Inserts, gets and compare-and-swap updates per second for 512-byte rows,
//! on SQLite (a file on the build disk) and PostgreSQL (`CARECONNECT_PG_URL`,
//! default the machine's 127.0.0.1:5432/test), with 1 and 16 concurrent tasks.
//! Bounded: 2000 operations of each kind per configuration.
//!
//! `cargo bench --bench storage`

use std::sync::Arc;
use std::time::Instant;

use careconnect::storage::{Collection, PgStore, RecordStore, RowData, RowId, SqliteStore};

const OPS: usize = 2000;

fn row(i: usize) -> RowData {
    RowData {
        key_id: 1,
        envelope: vec![(i % 251) as u8; 512],
        indexes: vec![],
    }
}

async fn run(name: &str, store: Arc<dyn RecordStore>, tasks: usize) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let Ok(c) = Collection::new(format!("bench-{nanos:x}")) else {
        return;
    };
    let per = OPS / tasks;
    let phase = |op: u8| {
        let (store, c) = (Arc::clone(&store), c.clone());
        async move {
            let t = Instant::now();
            let handles: Vec<_> = (0..tasks)
                .map(|k| {
                    let (store, c) = (Arc::clone(&store), c.clone());
                    tokio::spawn(async move {
                        for j in 0..per {
                            let i = k * per + j;
                            let Ok(id) = RowId::new(format!("r{i:06}")) else {
                                return;
                            };
                            let r = match op {
                                0 => store.insert(&c, &id, row(i)).await.map(|_| ()),
                                1 => store.get(&c, &id).await.map(|_| ()),
                                _ => store.update(&c, &id, 1, row(i + 1)).await.map(|_| ()),
                            };
                            if let Err(e) = r {
                                eprintln!("{e}");
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
    };
    let ins = phase(0).await;
    let get = phase(1).await;
    let cas = phase(2).await;
    println!("{name:10} {tasks:>5} | {ins:10.0} {get:10.0} {cas:10.0}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    println!(
        "{:10} {:>5} | {:>10} {:>10} {:>10}",
        "backend", "tasks", "insert/s", "get/s", "cas/s"
    );
    let Ok(dir) = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    for tasks in [1, 16] {
        match SqliteStore::open(&dir.path().join(format!("bench-{tasks}.db"))).await {
            Ok(s) => run("sqlite", Arc::new(s), tasks).await,
            Err(e) => println!("sqlite unavailable: {e}"),
        }
    }
    let url = std::env::var("CARECONNECT_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    for tasks in [1, 16] {
        match PgStore::connect(&url, 16).await {
            Ok(s) => run("postgres", Arc::new(s), tasks).await,
            Err(e) => println!("postgres unavailable at {url}: {e}"),
        }
    }
}
