//! An erasure killed with SIGKILL at any instant loses nothing: every other
//! patient's record still opens, the erased patient is either untouched or
//! gone, running the erasure again finishes it, and the audit chain still
//! verifies.
//!
//! The eraser is this test binary re-run as a child (`child_eraser`,
//! ignored unless asked for by name with `CARECONNECT_ERASE_DIR` set).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use careconnect_testkit::copy_dir;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use careconnect_authz::session::SystemClock;
use careconnect_authz::{Principal, Role, UserId};
use careconnect_core::audit::Verification;
use careconnect_core::records::PatientDetails;
use careconnect_core::{Clinic, ClinicConfig, CoreError};

const PATIENTS: usize = 16;

fn patient(i: usize) -> UserId {
    UserId::new("https://idp.test", format!("patient-{i}")).unwrap()
}

fn admin() -> Principal {
    Principal::new(
        UserId::new("https://idp.test", "admin").unwrap(),
        [Role::Admin].into_iter().collect(),
    )
}

async fn open(dir: &Path) -> Clinic {
    let mut config = ClinicConfig::embedded(dir).unwrap();
    config.subject_buckets = 2;
    let url = format!("sqlite://{}", dir.join("clinic.db").display());
    let store = careconnect_storage::connect(&url).await.unwrap();
    Clinic::open_with(config, store, Arc::new(SystemClock))
        .await
        .unwrap()
}

/// The child: erases patient 0, then says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the crash test as a child process"]
async fn child_eraser() {
    let Some(dir) = std::env::var_os("CARECONNECT_ERASE_DIR") else {
        return;
    };
    let clinic = open(Path::new(&dir)).await;
    clinic
        .admin()
        .erase_patient(&admin(), &patient(0), "patient asked to be forgotten")
        .await
        .unwrap();
    println!("erased");
}

/// Which patients' records open for an administrator.
async fn readable(clinic: &Clinic) -> Vec<bool> {
    let mut out = Vec::new();
    for i in 0..PATIENTS {
        out.push(match clinic.records().record(&admin(), &patient(i)).await {
            Ok(r) => {
                assert_eq!(r.notes.len(), 1);
                true
            }
            Err(CoreError::Erased) => false,
            Err(e) => panic!("patient {i}: {e}"),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_erasure_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    std::fs::create_dir_all(&pristine).unwrap();
    {
        let clinic = open(&pristine).await;
        let doctor = Principal::new(
            UserId::new("https://idp.test", "doc").unwrap(),
            [Role::Doctor].into_iter().collect(),
        );
        for i in 0..PATIENTS {
            clinic
                .records()
                .register(
                    &admin(),
                    &patient(i),
                    &PatientDetails {
                        name: format!("Patient {i}"),
                        date_of_birth: "1970-01-01".into(),
                        blood_type: "unknown".into(),
                        allergies: vec![],
                    },
                )
                .await
                .unwrap();
            clinic
                .admin()
                .assign_care(&admin(), &doctor.user, &patient(i))
                .await
                .unwrap();
            clinic
                .records()
                .add_note(&doctor, &patient(i), &format!("note {i}"), None)
                .await
                .unwrap();
        }
    }
    // How long an uninterrupted erasure takes, child start-up included.
    let full = {
        let dir = root.path().join("timing");
        copy_dir(&pristine, &dir);
        let t = Instant::now();
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_eraser", "--nocapture"])
            .env("CARECONNECT_ERASE_DIR", &dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    };
    let rounds = 12u32;
    let mut interrupted = 0;
    for round in 0..rounds {
        let dir = root.path().join(format!("round-{round}"));
        copy_dir(&pristine, &dir);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_eraser", "--nocapture"])
            .env("CARECONNECT_ERASE_DIR", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(full * round / rounds).await;
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if !status.success() {
            interrupted += 1;
        }
        // Killed at any instant: every other patient opens; patient 0 is
        // either untouched or erased, never half.
        let clinic = open(&dir).await;
        let seen = readable(&clinic).await;
        assert!(seen[1..].iter().all(|ok| *ok), "round {round}: {seen:?}");
        // Running it again finishes the job.
        clinic
            .admin()
            .erase_patient(&admin(), &patient(0), "finishing an interrupted erasure")
            .await
            .unwrap();
        let seen = readable(&clinic).await;
        assert!(
            !seen[0] && seen[1..].iter().all(|ok| *ok),
            "round {round}: {seen:?}"
        );
        assert!(matches!(
            clinic.audit().verify().await.unwrap(),
            Verification::Intact { .. }
        ));
    }
    assert!(
        interrupted >= rounds / 3,
        "only {interrupted} rounds were cut short"
    );
    let _ = Duration::ZERO;
}
