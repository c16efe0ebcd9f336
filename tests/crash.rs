//! Crash safety of the local KMS file: a process killed with SIGKILL in the
//! middle of rewriting it loses nothing it acknowledged, and the file still
//! opens; processes rotating concurrently never lose each other's versions.
//!
//! The writer is this test binary re-run as a child (`child_writer`, ignored
//! unless asked for by name with `CARECONNECT_CRASH_DIR` set).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use careconnect::crypto::{EncryptionContext, Kms, KmsKeyId, LocalKms, RootSecret};

const ROOT_HEX: &str = "4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn key() -> KmsKeyId {
    KmsKeyId::new("records").unwrap()
}

/// The child: rotates (and destroys old versions) in a loop, printing each
/// version once `rotate` has returned, i.e. once it is durable.
#[test]
#[ignore = "run by the crash tests as a child process"]
fn child_writer() {
    let Some(dir) = std::env::var_os("CARECONNECT_CRASH_DIR") else {
        return;
    };
    let limit: u32 = std::env::var("CARECONNECT_CRASH_COUNT")
        .map(|s| s.parse().unwrap())
        .unwrap_or(u32::MAX);
    let kms = LocalKms::open(
        Path::new(&dir).join("kms.bin"),
        RootSecret::from_hex(ROOT_HEX).unwrap(),
    )
    .unwrap();
    let rt = rt();
    let mut out = std::io::stdout().lock();
    for i in 0..limit {
        let d = rt.block_on(kms.rotate(&key())).unwrap();
        writeln!(out, "ack {}", d.current_version).unwrap();
        out.flush().unwrap();
        // Now and then destroy a version older than the previous one (never 1,
        // which the parent's probe data key needs).
        if i % 5 == 4 && d.current_version > 3 {
            let _ = kms.destroy_version(&key(), d.current_version - 2);
        }
    }
}

/// A child process killed when dropped, so a failing test leaves none behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns the writer on `dir`, stopping after `count` rotations if given;
/// with `hold`, its `hold.0`-th atomic write creates `hold.1` and waits there
/// (temporary file written, not renamed) until killed.
fn spawn_child(dir: &Path, count: Option<u32>, hold: Option<(u32, &Path)>) -> Reaped {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child_writer",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("CARECONNECT_CRASH_DIR", dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if let Some((at, marker)) = hold {
        cmd.env("CARECONNECT_TEST_HOLD_BEFORE_RENAME", at.to_string())
            .env("CARECONNECT_TEST_HOLD_MARKER", marker);
    }
    if let Some(n) = count {
        cmd.env("CARECONNECT_CRASH_COUNT", n.to_string());
    }
    Reaped(cmd.spawn().unwrap())
}

/// The version in an `ack N` line. libtest prints `test child_writer ... `
/// without a newline first, so the first ack shares its line.
fn acks(line: &str) -> Option<u32> {
    line.split("ack ").nth(1)?.trim().parse().ok()
}

#[test]
fn sigkill_mid_write_loses_nothing_acknowledged() {
    // On the build disk, not a tmpfs, so fsync and rename cost what they really cost.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("kms.bin");
    let root = || RootSecret::from_hex(ROOT_HEX).unwrap();
    let kms = LocalKms::open_or_create(&path, root()).unwrap();
    kms.ensure_key(&key()).unwrap();
    let ctx = EncryptionContext::new().with("probe", "1");
    let rt = rt();
    let (probe, wrapped) = rt.block_on(kms.generate_data_key(&key(), &ctx)).unwrap();
    drop(kms);

    let mut interrupted = 0;
    // Where a held writer says so (outside the KMS directory).
    let marks = tempfile::tempdir().unwrap();
    for round in 0..10u32 {
        // Even rounds: the third write stops between its temporary file and
        // its rename, says so, and is killed there (decided by progress, so
        // a busy machine changes nothing). Odd rounds: full speed, killed
        // at a varying moment.
        let paused = round % 2 == 0;
        let marker = marks.path().join(format!("held-{round}"));
        let mut child = spawn_child(dir.path(), None, paused.then_some((3, marker.as_path())));
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let mut last = 0;
        // Let it get some writes done, then kill it.
        if paused {
            let mut waited = 0;
            while !marker.exists() {
                assert!(
                    waited < 60_000,
                    "round {round}: the write never reached its rename"
                );
                std::thread::sleep(Duration::from_millis(10));
                waited += 10;
            }
        } else {
            for _ in 0..3 + round * 5 {
                last = lines
                    .by_ref()
                    .map_while(Result::ok)
                    .find_map(|l| acks(&l))
                    .expect("child stopped acknowledging");
            }
            std::thread::sleep(Duration::from_micros(u64::from(round) * 150));
        }
        child.0.kill().unwrap(); // SIGKILL
        child.0.wait().unwrap();
        // Anything printed before the kill was acknowledged too.
        for line in lines.map_while(Result::ok) {
            if let Some(v) = acks(&line) {
                last = v;
            }
        }

        let temps = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp-")
            })
            .count();
        if paused {
            assert_eq!(temps, 1, "round {round}: the kill should land mid-write");
        }
        interrupted += temps;
        let kms = LocalKms::open(&path, root()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let d = rt.block_on(kms.describe(&key())).unwrap();
        assert!(
            d.current_version >= last,
            "round {round}: lost v{last}, file has v{}",
            d.current_version
        );
        let again = rt.block_on(kms.decrypt(&key(), &wrapped, &ctx)).unwrap();
        assert!(format!("{again:?}") == format!("{probe:?}"));
        let (_, w) = rt.block_on(kms.generate_data_key(&key(), &ctx)).unwrap();
        assert!(rt.block_on(kms.decrypt(&key(), &w, &ctx)).is_ok());
    }
    assert!(
        interrupted >= 5,
        "only {interrupted} writes were interrupted"
    );
    // Opening swept the temporary files of interrupted writes; the file is private.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["kms.bin", "kms.bin.lock"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn concurrent_processes_never_lose_a_version() {
    // On the build disk, not a tmpfs, so fsync and rename cost what they really cost.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("kms.bin");
    let kms = LocalKms::open_or_create(&path, RootSecret::from_hex(ROOT_HEX).unwrap()).unwrap();
    kms.ensure_key(&key()).unwrap();
    let n = 40;
    let children: Vec<Reaped> = (0..2)
        .map(|_| spawn_child(dir.path(), Some(n), None))
        .collect();
    let mut seen = Vec::new();
    for mut c in children {
        let out = BufReader::new(c.0.stdout.take().unwrap());
        seen.extend(out.lines().map_while(Result::ok).filter_map(|l| acks(&l)));
        assert!(c.0.wait().unwrap().success());
    }
    seen.sort_unstable();
    let expected: Vec<u32> = (2..=2 * n + 1).collect();
    assert_eq!(seen, expected, "every rotation got its own version");
    // This handle learns of the other processes' rotations by itself.
    let d = rt().block_on(kms.describe(&key())).unwrap();
    assert_eq!(d.current_version, 2 * n + 1);
}

/// The child of `every_salt_is_fresh_from_the_os`: seals records and prints
/// each envelope's salt in hex.
#[test]
#[ignore = "run by every_salt_is_fresh_from_the_os as a child process"]
fn child_sealer() {
    let Some(n) = std::env::var("CARECONNECT_SEAL_COUNT")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    else {
        return;
    };
    let ring = careconnect::crypto::Keyring::generate();
    let ctx = EncryptionContext::new().with("record", "1");
    let mut out = std::io::stdout().lock();
    for _ in 0..n {
        let env = ring.seal(&ctx, &[0x42; 256]).unwrap();
        let (header, _) = careconnect::crypto::format::Header::parse(&env).unwrap();
        writeln!(out, "salt {}", hex::encode(header.salt)).unwrap();
    }
}

/// Salts must not repeat in both halves of a `fork(2)` or in the copies of a
/// restored VM snapshot, which a user-space generator seeded once would do.
/// So every salt is one `getrandom(2)` call: traced with strace, each salt an
/// envelope carries is exactly the buffer of its own call.
#[test]
fn every_salt_is_fresh_from_the_os() {
    const N: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let out = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-xx",
            "-s",
            "64",
            "-e",
            "trace=getrandom",
            "-o",
        ])
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_sealer", "--test-threads=1"])
        .env("CARECONNECT_SEAL_COUNT", N.to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("strace runs (scripts/test.sh installs it)");
    assert!(out.status.success(), "child failed");
    let salts: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        // The harness may print "test child_sealer ... " before the first line.
        .filter_map(|l| l.split("salt ").nth(1).map(str::to_owned))
        .collect();
    assert_eq!(salts.len(), N);
    // `getrandom("\x12\x34...", 32, 0) = 32` -> "1234..."
    let calls: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let s = l.split("getrandom(\"").nth(1)?;
            Some(s.split('"').next()?.replace("\\x", ""))
        })
        .collect();
    for salt in &salts {
        assert_eq!(
            calls.iter().filter(|c| *c == salt).count(),
            1,
            "salt {salt} is not the output of one getrandom call"
        );
    }
}
