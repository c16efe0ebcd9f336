//! Medicloud killed with SIGKILL at any instant during uploads and deletes:
//! every document listed afterwards downloads whole and unaltered (no
//! dangling half), every upload acknowledged before the kill is there, and
//! every delete acknowledged before the kill is gone. Orphan blobs (an
//! upload killed after its blob, before its metadata; a delete killed
//! after the metadata, before the blob) may remain; nothing reaches them,
//! and collecting orphans afterwards leaves exactly one blob per listed
//! document, each still whole.
//!
//! The worker is this test binary re-run as a child (`child_worker`,
//! ignored unless asked for by name with `CARECONNECT_MEDICLOUD_DIR` set).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use careconnect_testkit::copy_dir;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use careconnect_authz::session::SystemClock;
use careconnect_authz::{Principal, Role, UserId};
use careconnect_core::medicloud::MedicloudConfig;
use careconnect_core::{Clinic, ClinicConfig, CoreError};
use sha2::{Digest, Sha256};

fn doctor() -> Principal {
    Principal::new(
        UserId::new("https://idp.test", "doctor").unwrap(),
        [Role::Doctor].into_iter().collect(),
    )
}

fn body(i: usize) -> Vec<u8> {
    let mut v = format!("%PDF-1.7 document {i}\n").into_bytes();
    v.extend((0..(64 << 10)).map(|k| ((k + i) % 251) as u8));
    v
}

async fn open(dir: &Path) -> Clinic {
    open_with_grace(dir, MedicloudConfig::default().orphan_grace).await
}

async fn open_with_grace(dir: &Path, grace: Duration) -> Clinic {
    let mut config = ClinicConfig::embedded(dir).unwrap();
    config.subject_buckets = 2;
    config.medicloud.orphan_grace = grace;
    let url = format!("sqlite://{}", dir.join("clinic.db").display());
    let store = careconnect_storage::connect(&url).await.unwrap();
    Clinic::open_with(config, store, Arc::new(SystemClock))
        .await
        .unwrap()
}

/// The child: uploads (mode `up`) or deletes every listed document (mode
/// `delete`), printing each id once its call has returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the crash test as a child process"]
async fn child_worker() {
    let Some(dir) = std::env::var_os("CARECONNECT_MEDICLOUD_DIR") else {
        return;
    };
    let clinic = open(Path::new(&dir)).await;
    let m = clinic.medicloud();
    if std::env::var("CARECONNECT_MEDICLOUD_MODE").as_deref() == Ok("delete") {
        for d in m.list(&doctor()).await.unwrap() {
            m.delete(&doctor(), &d.id).await.unwrap();
            println!("deleted {}", d.id);
        }
    } else {
        for i in 0..40 {
            let d = m
                .upload(
                    &doctor(),
                    &format!("doc-{i}.pdf"),
                    "application/pdf",
                    body(i).as_slice(),
                )
                .await
                .unwrap();
            println!("uploaded {} {}", d.id, d.sha256);
        }
    }
}

/// Runs the child in `mode` on `dir` and kills it (SIGKILL) once it has
/// acknowledged `after` calls (`None`: lets it finish), `jitter` later, so
/// the kill lands part-way into the next call; returns what it had
/// acknowledged. Decided by the child's progress, not by the clock: a busy
/// machine slows both sides alike.
async fn run_and_kill(
    dir: &Path,
    mode: &str,
    after: Option<usize>,
    jitter: Duration,
) -> Vec<String> {
    let (dir, mode) = (dir.to_owned(), mode.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_worker", "--nocapture"])
            .env("CARECONNECT_MEDICLOUD_DIR", &dir)
            .env("CARECONNECT_MEDICLOUD_MODE", &mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut acked = Vec::new();
        // Every line read was written before the kill (the pipe outlives
        // the child until it is drained).
        for line in out.lines() {
            let Ok(line) = line else { break };
            if line.starts_with("uploaded ") || line.starts_with("deleted ") {
                acked.push(line);
                if Some(acked.len()) == after {
                    std::thread::sleep(jitter);
                    let _ = child.kill();
                }
            }
        }
        let _ = child.wait();
        acked
    })
    .await
    .unwrap()
}

/// Every listed document downloads whole, with the hash it was listed with.
async fn all_whole(clinic: &Clinic) -> Vec<String> {
    let m = clinic.medicloud();
    let mut ids = Vec::new();
    for d in m.list(&doctor()).await.unwrap() {
        let mut out = Vec::new();
        m.download(&doctor(), &d.id, &mut out)
            .await
            .unwrap_or_else(|e| panic!("{} listed but does not download: {e}", d.id));
        assert_eq!(hex::encode(Sha256::digest(&out)), d.sha256, "{}", d.id);
        ids.push(d.id);
    }
    ids
}

/// Collects orphans (the worker is dead: no grace needed): afterwards
/// exactly the listed documents' blobs remain, and every listed document is
/// still whole.
async fn collect(dir: &Path, listed: &[String]) {
    let clinic = open_with_grace(dir, Duration::ZERO).await;
    let admin = Principal::new(
        UserId::new("https://idp.test", "admin").unwrap(),
        [Role::Admin].into_iter().collect(),
    );
    let report = clinic.medicloud().collect_orphans(&admin).await.unwrap();
    assert_eq!(report.documents as usize, listed.len(), "{report:?}");
    let blobs = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            !name.to_string_lossy().starts_with(".tmp-")
        })
        .count();
    assert_eq!(blobs, listed.len(), "one blob per document: {report:?}");
    println!("orphans collected: {}", report.deleted);
    assert_eq!(all_whole(&clinic).await, listed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_uploads_and_deletes_leaves_no_half_document() {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    std::fs::create_dir_all(&pristine).unwrap();
    drop(open(&pristine).await);
    // Left alone, each job finishes.
    let whole = root.path().join("whole");
    copy_dir(&pristine, &whole);
    let all = run_and_kill(&whole, "up", None, Duration::ZERO).await;
    assert_eq!(all.len(), 40, "the uploader finishes when left alone");
    let all = run_and_kill(&whole, "delete", None, Duration::ZERO).await;
    assert_eq!(all.len(), 40, "the deleter finishes when left alone");
    let rounds = 8usize;
    let (mut uploads_cut, mut deletes_cut) = (0, 0);
    for round in 0..rounds {
        let dir = root.path().join(format!("round-{round}"));
        copy_dir(&pristine, &dir);
        // Uploads, killed after 1, 6, 11... of 40 were acknowledged, a few
        // milliseconds into the next (so at different points inside it).
        let jitter = Duration::from_millis((round % 4) as u64);
        let acked = run_and_kill(&dir, "up", Some(1 + round * 5), jitter).await;
        let clinic = open(&dir).await;
        let listed = all_whole(&clinic).await;
        for line in &acked {
            let id = line.split(' ').nth(1).unwrap();
            assert!(
                listed.iter().any(|l| l == id),
                "round {round}: {id} acknowledged, not listed"
            );
        }
        println!(
            "round {round}: {} uploads acknowledged, {} listed",
            acked.len(),
            listed.len()
        );
        if (1..40).contains(&acked.len()) {
            uploads_cut += 1;
        }
        collect(&dir, &listed).await;
        drop(clinic);
        // Deletes, killed part-way in the same way.
        let after = (1 + round * listed.len() / rounds).min(listed.len().saturating_sub(1));
        let acked = run_and_kill(&dir, "delete", Some(after.max(1)), jitter).await;
        let clinic = open(&dir).await;
        let left = all_whole(&clinic).await;
        for line in &acked {
            let id = line.split(' ').nth(1).unwrap();
            assert!(
                !left.iter().any(|l| l == id),
                "round {round}: {id} deleted, still listed"
            );
            let mut out = Vec::new();
            assert!(matches!(
                clinic.medicloud().download(&doctor(), id, &mut out).await,
                Err(CoreError::NotFound)
            ));
        }
        println!(
            "round {round}: {} deletes acknowledged, {} left",
            acked.len(),
            left.len()
        );
        if !acked.is_empty() && !left.is_empty() {
            deletes_cut += 1;
        }
        collect(&dir, &left).await;
    }
    assert!(
        uploads_cut >= 3,
        "only {uploads_cut} upload runs were cut part-way"
    );
    assert!(
        deletes_cut >= 1,
        "only {deletes_cut} delete runs were cut part-way"
    );
}
