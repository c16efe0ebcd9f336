//! The `rotate` binary on a real clinic directory: status, a dry run that
//! changes nothing, a rotation with a JSON report, verification; clear
//! errors for a directory with no clinic; and SIGKILL at a dozen instants
//! of a KMS master-key rotation, each followed by a rerun, after which
//! verification passes and every document matches the manifest taken
//! first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Instant;

use careconnect::authz::session::SystemClock;
use careconnect::authz::{Principal, Role, UserId};
use careconnect::core::audit::Verification;
use careconnect::core::{Clinic, ClinicConfig, CoreError};
use sha2::{Digest, Sha256};

fn doctor() -> Principal {
    Principal::new(
        UserId::new("https://idp.test", "doctor-grey").unwrap(),
        [Role::Doctor].into_iter().collect(),
    )
}

async fn open(dir: &Path) -> Clinic {
    let config = ClinicConfig::embedded(dir).unwrap();
    let store = careconnect::storage::connect(&config.storage_url)
        .await
        .unwrap();
    Clinic::open_with(config, store, Arc::new(SystemClock))
        .await
        .unwrap()
}

/// A clinic with demo data and `documents` documents; its manifest.
async fn clinic_with(dir: &Path, documents: usize) -> BTreeMap<String, String> {
    let c = open(dir).await;
    careconnect::core::seed::demo(&c, "https://idp.test")
        .await
        .unwrap();
    for i in 0..documents {
        let mut body = format!("%PDF-1.7 {i}\n").into_bytes();
        body.extend((0..(2000 + i * 13)).map(|k| ((k + i) % 251) as u8));
        c.medicloud()
            .upload(&doctor(), "scan.pdf", "application/pdf", body.as_slice())
            .await
            .unwrap();
    }
    manifest(&c).await
}

/// Every document's SHA-256 as downloaded, by id.
async fn manifest(c: &Clinic) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for d in c.medicloud().list(&doctor()).await.unwrap() {
        let mut body = Vec::new();
        c.medicloud()
            .download(&doctor(), &d.id, &mut body)
            .await
            .unwrap();
        out.insert(d.id, hex::encode(Sha256::digest(&body)));
    }
    out
}

fn rotate(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rotate"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

mod common;
use careconnect_testkit::copy_dir;
use common::{json, primary_in};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_dry_run_rotation_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let before = clinic_with(dir.path(), 5).await;

    let status = json(&rotate(dir.path(), &["--json", "status"]));
    let versions = |s: &serde_json::Value| -> Vec<u64> {
        s["kms_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["current_version"].as_u64().unwrap())
            .collect()
    };
    let start = versions(&status);
    assert_eq!(status["kek_rotation_unfinished"], false);

    let dry = json(&rotate(dir.path(), &["rotate-kek", "--dry-run", "--json"]));
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["documents"], 5);
    assert_eq!(
        versions(&json(&rotate(dir.path(), &["--json", "status"]))),
        start
    );

    let done = json(&rotate(dir.path(), &["rotate-kek", "--json"]));
    assert_eq!(done["documents"], 5);
    let after = versions(&json(&rotate(dir.path(), &["--json", "status"])));
    assert_eq!(after, start.iter().map(|v| v + 1).collect::<Vec<_>>());

    let verified = json(&rotate(dir.path(), &["verify", "--json"]));
    assert_eq!(verified["documents_ok"], 5);
    assert_eq!(verified["documents_rewrapped"], 5);
    assert_eq!(verified["failures"].as_array().unwrap().len(), 0);
    // Plain output, without a terminal: lines, not bars.
    let plain = rotate(dir.path(), &["verify"]);
    assert!(plain.status.success());
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(
        text.contains("5 documents (5 with re-wrapped keys)"),
        "{text}"
    );
    assert!(text.contains("rows under data key"), "{text}");
    assert!(verified["rows_ok"].as_u64().unwrap() > 10, "{verified}");
    assert_eq!(manifest(&open(dir.path()).await).await, before);

    let id = before.keys().next().unwrap().clone();
    let replaced = json(&rotate(
        dir.path(),
        &["compromised-document", &id, "--json"],
    ));
    assert_eq!(replaced["old_blob_deleted"], true);
    let unknown = rotate(dir.path(), &["compromised-document", "no-such-document"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not found"));
    assert_eq!(manifest(&open(dir.path()).await).await, before);

    // A patient's own key: the clinic keyring does not hold it, so the
    // tool replaces it in that patient's keyring.
    let store =
        careconnect::storage::connect(&ClinicConfig::embedded(dir.path()).unwrap().storage_url)
            .await
            .unwrap();
    let notes = careconnect::storage::Collection::new("core_notes").unwrap();
    let key = store.list(&notes, None, 1).await.unwrap().rows[0]
        .key_id
        .to_string();
    let fast = ["--keyring-recheck-ms", "50", "compromised"];
    let dry = json(&rotate(
        dir.path(),
        &[&fast[..], &[&key, "--dry-run", "--json"]].concat(),
    ));
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["rows"]["core_notes"], 1, "{dry}");
    let done = json(&rotate(
        dir.path(),
        &[&fast[..], &[&key, "--json"]].concat(),
    ));
    assert_eq!(done["keyring"], "subject", "{done}");
    assert_eq!(done["destroyed"], true, "{done}");
    assert_eq!(done["rows"], dry["rows"]);
    assert_eq!(done["touched"].as_array().unwrap().len(), 4, "{done}");
    let verified = json(&rotate(dir.path(), &["verify", "--json"]));
    assert_eq!(
        verified["failures"].as_array().unwrap().len(),
        0,
        "{verified}"
    );
    assert!(
        verified["patient_rows_ok"].as_u64().unwrap() >= 12,
        "{verified}"
    );
    // Destroyed now, and a key no one holds: clear errors.
    for k in [key.as_str(), "7"] {
        let refused = rotate(dir.path(), &[&fast[..], &[k]].concat());
        assert_eq!(refused.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("data key id"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }
    // Accepting late audit entries needs a reason, and a job to accept
    // them into.
    let usage = rotate(
        dir.path(),
        &["compromised", "7", "--accept-audit-through", "5"],
    );
    assert_eq!(usage.status.code(), Some(2));
    let none = rotate(
        dir.path(),
        &[
            "compromised",
            "7",
            "--accept-audit-through",
            "5",
            "--reason",
            "reviewed: from node-3",
        ],
    );
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("not found"));
    // A bucket keyring's key, as `status` lists it.
    let status = json(&rotate(dir.path(), &["--json", "status"]));
    let bucket = &status["bucket_keys"][0];
    let key = primary_in(&bucket["keys"]);
    let done = json(&rotate(dir.path(), &["compromised", &key, "--json"]));
    assert_eq!(done["keyring"], "bucket", "{done}");
    assert_eq!(done["bucket"], bucket["bucket"]);
    assert!(
        done["destroyed"].as_array().unwrap().iter().any(|k| k
            .as_u64()
            .map(|n| n.to_string())
            .as_deref()
            == Some(key.as_str()))
    );
    let verified = json(&rotate(dir.path(), &["verify", "--json"]));
    assert_eq!(
        verified["failures"].as_array().unwrap().len(),
        0,
        "{verified}"
    );
    assert_eq!(manifest(&open(dir.path()).await).await, before);
}

#[test]
fn a_directory_without_a_clinic_is_a_clear_error_and_stays_empty() {
    let dir = tempfile::tempdir().unwrap();
    let out = rotate(dir.path(), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no clinic in"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let usage = rotate(dir.path(), &["rotate-everything"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_any_instant_of_a_rotation_then_a_rerun_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let before = clinic_with(dir.path(), 300).await;
    let start: Vec<u64> = json(&rotate(dir.path(), &["--json", "status"]))["kms_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["current_version"].as_u64().unwrap())
        .collect();
    // How long an uninterrupted run takes, start-up included (on a copy).
    let timing = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), timing.path());
    let t = Instant::now();
    assert!(rotate(timing.path(), &["rotate-kek"]).status.success());
    let full = t.elapsed();

    let kills = 12u32;
    let mut cut = 0;
    for k in 0..kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rotate"))
            .arg("--data-dir")
            .arg(dir.path())
            .arg("rotate-kek")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full * (k + 1) / (kills + 2));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok();
        child.wait().unwrap();
        if !finished {
            cut += 1;
        }
        // Whatever instant it died at, every document still opens whole.
        assert_eq!(manifest(&open(dir.path()).await).await, before, "kill {k}");
    }
    assert!(cut >= 6, "only {cut} of {kills} runs were cut part-way");
    // A last run finishes whatever is unfinished.
    assert!(rotate(dir.path(), &["rotate-kek"]).status.success());
    let status = json(&rotate(dir.path(), &["--json", "status"]));
    assert_eq!(status["kek_rotation_unfinished"], false);
    for (v, s) in status["kms_keys"].as_array().unwrap().iter().zip(&start) {
        assert!(v["current_version"].as_u64().unwrap() > *s);
    }
    // Nothing is left under any earlier version: destroy them all.
    {
        use careconnect::crypto::kms::{Kms, LocalKms, RootSecret};
        let root = RootSecret::from_file(&dir.path().join("kms-root.key")).unwrap();
        let kms = LocalKms::open(dir.path().join("kms.bin"), root).unwrap();
        for k in status["kms_keys"].as_array().unwrap() {
            let key = careconnect::crypto::KmsKeyId::new(k["key"].as_str().unwrap()).unwrap();
            let current = k["current_version"].as_u64().unwrap();
            for v in k["enabled_versions"].as_array().unwrap() {
                let v = v.as_u64().unwrap();
                if v < current {
                    Kms::destroy_version(&kms, &key, u32::try_from(v).unwrap())
                        .await
                        .unwrap();
                }
            }
        }
    }
    let verified = json(&rotate(dir.path(), &["verify", "--json"]));
    assert_eq!(
        verified["failures"].as_array().unwrap().len(),
        0,
        "{verified}"
    );
    assert_eq!(verified["documents_ok"], 300);
    assert_eq!(manifest(&open(dir.path()).await).await, before);
}

/// The clinic keyring's data keys, id -> state, as `status --json` lists them.
fn data_keys(dir: &Path) -> BTreeMap<u64, String> {
    json(&rotate(dir, &["--json", "status"]))["clinic_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_u64().unwrap(),
                k["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Doctors' names and documents' hashes: the rows the clinic keyring seals.
async fn rows_manifest(dir: &Path) -> BTreeMap<String, String> {
    let c = open(dir).await;
    let mut out = manifest(&c).await;
    for p in c.doctors().await.unwrap() {
        out.insert(p.user.subject().to_owned(), p.name);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_data_key_compromise_then_a_rerun_finishes_it() {
    const PEOPLE: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    clinic_with(dir.path(), 50).await;
    {
        let c = open(dir.path()).await;
        let admin = Principal::new(
            UserId::new("https://idp.test", "admin-adam").unwrap(),
            [Role::Admin].into_iter().collect(),
        );
        let roles: careconnect::authz::RoleSet = [Role::Doctor].into_iter().collect();
        let ids: Vec<usize> = (0..PEOPLE).collect();
        for chunk in ids.chunks(64) {
            let writes = chunk.iter().map(|i| {
                let (c, admin) = (&c, &admin);
                async move {
                    let user = UserId::new("https://idp.test", format!("doctor-{i:05}")).unwrap();
                    c.admin()
                        .set_person(admin, &user, &format!("Dr {i}"), roles)
                        .await
                        .unwrap();
                }
            });
            futures::future::join_all(writes).await;
        }
    }
    let before = rows_manifest(dir.path()).await;
    assert!(before.len() >= PEOPLE + 50);
    let keys = data_keys(dir.path());
    let (k, _) = keys.iter().find(|(_, s)| *s == "Primary").unwrap();
    let k = k.to_string();
    let fast = ["--keyring-recheck-ms", "50"];

    // Clear refusals: a key the keyring does not hold changes nothing.
    let unknown = (1..).find(|i| !keys.contains_key(i)).unwrap().to_string();
    let out = rotate(
        dir.path(),
        &[&fast[..], &["compromised", &unknown]].concat(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("data key id"));
    // A dry run counts and changes nothing.
    let dry = json(&rotate(
        dir.path(),
        &[&fast[..], &["--json", "compromised", &k, "--dry-run"]].concat(),
    ));
    let total: u64 = dry["rows"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(total >= (PEOPLE + 50) as u64, "{dry}");
    assert_eq!(data_keys(dir.path()), keys);

    // How long an uninterrupted run takes (on a copy).
    let timing = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), timing.path());
    let t = Instant::now();
    assert!(
        rotate(timing.path(), &[&fast[..], &["compromised", &k]].concat())
            .status
            .success()
    );
    let full = t.elapsed();

    // One run of the tool, SIGKILLed after `after` unless it ended first;
    // whether it was cut.
    let run_killed = |after: std::time::Duration| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rotate"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(fast)
            .args(["compromised", &k])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok();
        child.wait().unwrap();
        !finished
    };
    // Ten runs cut early (3 to 13 % of a whole run), so that none is left
    // to finish on its own; every row opens after each.
    let kills = 10u32;
    let mut cut = 0;
    for n in 0..kills {
        if run_killed(full * (n % 4 + 1) / 30) {
            cut += 1;
        }
        assert_eq!(rows_manifest(dir.path()).await, before, "kill {n}");
    }
    assert!(cut >= 10, "only {cut} of {kills} runs were cut part-way");
    // Then later cuts, into marking, checking, checkpoint and destruction.
    for tenths in [3, 5, 7] {
        if !run_killed(full * tenths / 10) {
            break;
        }
        assert_eq!(rows_manifest(dir.path()).await, before, "late kill");
    }
    // A last run finishes (or finds it finished).
    let destroyed = k.parse::<u64>().unwrap();
    if data_keys(dir.path()).get(&destroyed).map(String::as_str) != Some("Destroyed") {
        let report = json(&rotate(
            dir.path(),
            &[&fast[..], &["--json", "compromised", &k]].concat(),
        ));
        assert_eq!(report["destroyed"], serde_json::json!([destroyed]));
    }
    assert_eq!(
        data_keys(dir.path())
            .get(&k.parse().unwrap())
            .map(String::as_str),
        Some("Destroyed")
    );
    assert_eq!(rows_manifest(dir.path()).await, before);
    let c = open(dir.path()).await;
    assert!(matches!(
        c.audit().verify().await.unwrap(),
        Verification::Intact { .. }
    ));
    let verified = json(&rotate(dir.path(), &["verify", "--json"]));
    assert_eq!(
        verified["failures"].as_array().unwrap().len(),
        0,
        "{verified}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_file_names_the_clinic_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let before = clinic_with(dir.path(), 3).await;
    let settings = dir.path().join("clinic.toml");
    // A bad file: a clear error, nothing opened or changed.
    std::fs::write(&settings, "data_dir = \"/nowhere\"\ndatabase = \"x\"\n").unwrap();
    let keys = data_keys(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_rotate"))
        .arg("--config")
        .arg(&settings)
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("configuration: unknown field `database`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The clinic by its settings: the database named explicitly, a short
    // recheck interval for every node.
    std::fs::write(
        &settings,
        format!(
            "data_dir = {:?}\nstorage_url = \"sqlite://{}\"\nkeyring_recheck_ms = 50\n",
            dir.path(),
            dir.path().join("clinic.db").display()
        ),
    )
    .unwrap();
    let with_file = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rotate"))
            .arg("--config")
            .arg(&settings)
            .args(args)
            .output()
            .unwrap()
    };
    // A database that cannot be reached: a clear error, soon.
    let unreachable = dir.path().join("unreachable.toml");
    std::fs::write(
        &unreachable,
        format!(
            "data_dir = {:?}\nstorage_url = \"postgres://postgres@127.0.0.1:1/clinic\"\n",
            dir.path()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rotate"))
        .arg("--config")
        .arg(&unreachable)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening the database"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    let (k, _) = keys.iter().find(|(_, s)| *s == "Primary").unwrap();
    let report = json(&with_file(&["--json", "compromised", &k.to_string()]));
    assert_eq!(report["destroyed"], serde_json::json!([k]));
    // A KMS key version: a wrong one is a clear error, the current one is
    // moved off and destroyed.
    let out = with_file(&["compromised-kek", "careconnect-documents", "9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an enabled version"));
    let kek = json(&with_file(&[
        "--json",
        "compromised-kek",
        "careconnect-documents",
        "1",
    ]));
    assert_eq!(kek["destroyed"], true);
    assert_eq!(kek["rotation"]["documents"], 3);
    assert_eq!(
        json(&with_file(&["--json", "verify"]))["failures"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(manifest(&open(dir.path()).await).await, before);
}

/// Review finding 18: a log cut behind the clinic's back stops every
/// audited action (fail closed); `rotate re-anchor --reason` is the
/// documented recovery after investigation, and is itself audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_audit_log_stops_the_clinic_until_re_anchored_on_the_record() {
    let dir = tempfile::tempdir().unwrap();
    clinic_with(dir.path(), 0).await;
    // Nothing to re-anchor while the log is whole.
    let out = rotate(
        dir.path(),
        &["re-anchor", "--reason", "nothing happened at all"],
    );
    assert!(!out.status.success());
    // Someone with the database cuts the last ten entries.
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("clinic.db").display()
    ))
    .await
    .unwrap();
    // (The append-only trigger is no obstacle to someone who can write it.)
    for sql in [
        "DROP TRIGGER audit_no_delete",
        "DELETE FROM audit WHERE seq > (SELECT MAX(seq) - 10 FROM audit)",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    db.close().await;
    let c = open(dir.path()).await;
    assert!(matches!(
        c.audit().verify().await.unwrap(),
        Verification::Broken { .. }
    ));
    assert!(matches!(
        c.records().patients(&doctor()).await,
        Err(CoreError::AuditTampered)
    ));
    drop(c);
    // A reason is required.
    let out = rotate(dir.path(), &["re-anchor", "--reason", "ok"]);
    assert!(!out.status.success());
    let out = rotate(
        dir.path(),
        &[
            "re-anchor",
            "--reason",
            "cut by a restore of last night's backup; checked with the DBA",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The clinic records again, the chain verifies, and the re-anchoring
    // is on the record with its reason.
    let c = open(dir.path()).await;
    c.records().patients(&doctor()).await.unwrap();
    assert!(matches!(
        c.audit().verify().await.unwrap(),
        Verification::Intact { .. }
    ));
    let last = c.audit().last_seq().await.unwrap();
    let tail = c.audit().read(last.saturating_sub(20), 40).await.unwrap();
    let re = tail
        .iter()
        .find(|(_, e)| e.action == "ReAnchor")
        .expect("the re-anchoring is audited");
    assert!(
        re.1.reason
            .as_deref()
            .unwrap()
            .contains("restore of last night")
    );
}
