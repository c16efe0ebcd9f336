//! `rotate`: the key-rotation tool for a careconnect clinic. Thin: it opens
//! the clinic its data directory holds and calls
//! `careconnect::core::rotation`; every rule is there.
//!
//! ```text
//! rotate --data-dir data status
//! rotate --data-dir data rotate-kek --dry-run
//! rotate --data-dir data rotate-kek --json
//! rotate --data-dir data verify
//! rotate --data-dir data compromised-document <document-id>
//! rotate --data-dir data rotate-data-key [--no-reencrypt] [--dry-run]
//! rotate --data-dir data compromised <data-key-id> [--dry-run]
//! rotate --data-dir data compromised-kek <kms-key> <version> [--dry-run]
//! ```
//!
//! Progress goes to stderr: bars with rate and ETA on a terminal, plain
//! lines otherwise. `--json` prints the report on stdout at the end.
//! Exit status: 0 done, 1 failed (verification included), 2 bad usage.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use careconnect::authz::session::SystemClock;
use careconnect::authz::{Principal, Role, UserId};
use careconnect::core::config::{ClinicFile, KmsFile};
use careconnect::core::rotation::{
    BucketKeyReport, CompromiseReport, DataKeyReport, Phase, Progress, SubjectKeyReport,
};
use careconnect::core::{Clinic, CoreError, KmsConfig};
use careconnect::crypto::kms::{Kms, LocalKms, RootSecret};
use careconnect::crypto::{KeyInfo, KmsKeyId};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Rotate and verify a careconnect clinic's keys.
#[derive(Parser)]
#[command(name = "rotate", version)]
struct Args {
    /// The clinic's data directory (SQLite file, local KMS, blobs).
    #[arg(long, env = "CARECONNECT_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// A clinic settings file (TOML: `careconnect_core::config::ClinicFile`)
    /// naming its database, blob store and KMS; replaces `--data-dir`.
    #[arg(long, env = "CARECONNECT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// How often the clinic's nodes re-read the clinic keyset, in
    /// milliseconds: must be the value they run with (data-key rotations
    /// wait twice this between steps). A settings file's value wins.
    #[arg(long, env = "CARECONNECT_KEYRING_RECHECK_MS", default_value_t = 5000)]
    keyring_recheck_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The KMS keys and the clinic keyring: versions, states; whether a
    /// rotation is unfinished.
    Status,
    /// KMS master-key rotation: a new version of every KMS key, then the
    /// keysets and every document's data key re-wrapped under it (no record
    /// or document body is decrypted). Resumes an unfinished run.
    RotateKek {
        /// Report what would be touched; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Open every keyset and every document, each checked against its
    /// recorded SHA-256. Changes nothing.
    Verify,
    /// A document's data key is compromised: re-encrypt the document under
    /// a fresh key into a new blob and delete the old blob.
    CompromisedDocument {
        /// The document's id.
        id: String,
    },
    /// Scheduled data-key rotation: a fresh data key becomes the clinic
    /// keyring's primary (announced to every node first); rows under older
    /// keys are re-sealed under it and the older keys retired. Resumes an
    /// unfinished run.
    RotateDataKey {
        /// Only the new primary: leave rows under older keys as they are.
        #[arg(long)]
        no_reencrypt: bool,
        /// Report what would be re-sealed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// A version of one of the clinic's KMS keys is compromised: rotate
    /// the KMS keys and re-wrap everything (as `rotate-kek`), check that
    /// nothing is still wrapped under that version, destroy it.
    CompromisedKek {
        /// The KMS key's name (as `status` lists it).
        key: String,
        /// The compromised version.
        version: u32,
        /// List what is wrapped under the version; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// A data key is compromised: re-seal every row under it under a fresh
    /// key, check twice that none is left, destroy it. A key of the clinic
    /// keyring, or else of a patient's own keyring (then that patient's
    /// rows). Resumes an unfinished run.
    Compromised {
        /// The data key's id (as `status` or `verify` lists it).
        key: u32,
        /// Report what would be re-sealed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// After a run stopped at audit entries chained under the key after
        /// the new key took over: accept them, through this entry number,
        /// once reviewed (audited with --reason).
        #[arg(
            long,
            value_name = "ENTRY",
            requires = "reason",
            conflicts_with = "dry_run"
        )]
        accept_audit_through: Option<u64>,
        /// Why the entries are accepted (at least ten characters).
        #[arg(long, requires = "accept_audit_through")]
        reason: Option<String>,
    },
    /// After the audit log was found cut (every audited action refused,
    /// `verify` naming the cut) and the cut investigated: anchor the log
    /// at its head as it now is, so the clinic records again. The entries
    /// lost stay lost; the re-anchoring is itself audited with the reason.
    ReAnchor {
        /// What was investigated and why the clinic may go on (at least
        /// ten characters).
        #[arg(long)]
        reason: String,
    },
}

fn operator() -> Result<Principal> {
    Ok(Principal::new(
        UserId::new("careconnect-rotate", "operator")?,
        [Role::Admin].into_iter().collect(),
    ))
}

/// The KMS a settings file names, opened without creating anything.
async fn kms_of(file: &ClinicFile) -> Result<Arc<dyn Kms>> {
    let dir = &file.data_dir;
    match &file.kms {
        KmsFile::Local => {
            for name in ["kms.bin", "kms-root.key"] {
                if !dir.join(name).is_file() {
                    bail!(
                        "no clinic in {}: {name} is missing (start the web demo once, or pass --data-dir)",
                        dir.display()
                    );
                }
            }
            let root = RootSecret::from_file(&dir.join("kms-root.key"))
                .context("reading the KMS root secret")?;
            Ok(Arc::new(
                LocalKms::open(dir.join("kms.bin"), root).context("opening the local KMS")?,
            ))
        }
        _ => file
            .connect_kms()
            .await?
            .context("the settings name no KMS to connect to"),
    }
}

/// Opens the clinic a settings file (or the data directory) describes,
/// changing nothing: its KMS and database must exist already, and unless
/// the file says, the number of subject buckets is read off the KMS.
async fn open(args: &Args) -> Result<Clinic> {
    let file = match &args.config {
        Some(path) => ClinicFile::from_toml(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?,
        None => ClinicFile::at(&args.data_dir),
    };
    let dir = file.data_dir.clone();
    if file.storage_url.is_none() && !dir.join("clinic.db").is_file() {
        bail!(
            "no clinic in {}: clinic.db is missing (start the web demo once, or pass --data-dir)",
            dir.display()
        );
    }
    let kms = kms_of(&file).await?;
    let buckets = match file.subject_buckets {
        Some(n) => n,
        None => {
            // The buckets are the subject keys the KMS holds: 0000, 0001, ...
            let prefix = file
                .subject_key_prefix
                .clone()
                .unwrap_or_else(|| careconnect::core::subjects::DEFAULT_KEY_PREFIX.into());
            let mut n = 0u16;
            while n < u16::MAX
                && kms
                    .describe(&KmsKeyId::new(format!("{prefix}{n:04}"))?)
                    .await
                    .is_ok()
            {
                n += 1;
            }
            n
        }
    };
    if buckets == 0 {
        bail!(
            "no subject keys in the KMS of {}: not a clinic",
            dir.display()
        );
    }
    let recheck = file.keyring_recheck_ms;
    let mut config = file.into_config(Some(KmsConfig::Provided(kms)))?;
    config.subject_buckets = buckets;
    if recheck.is_none() {
        config.keyring_recheck = Duration::from_millis(args.keyring_recheck_ms);
    }
    let store = careconnect::storage::connect(&config.storage_url)
        .await
        .with_context(|| format!("opening the database of the clinic in {}", dir.display()))?;
    Clinic::open_with(config, store, Arc::new(SystemClock))
        .await
        .context("opening the clinic (its keys, its KMS)")
}

/// Shows progress: a bar per phase on a terminal, a line a second otherwise.
struct Shown {
    terminal: bool,
    phase: Option<Phase>,
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Shown {
    fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            phase: None,
            bar: None,
            last_line: Instant::now(),
        }
    }

    fn show(&mut self, p: Progress) {
        let name = phase_name(p.phase);
        if self.phase != Some(p.phase) {
            self.finish();
            self.phase = Some(p.phase);
            if self.terminal {
                let bar = ProgressBar::new(p.total);
                if let Ok(style) = ProgressStyle::with_template(
                    "{msg:18} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_message(name);
                self.bar = Some(bar);
            } else {
                eprintln!("{name}: {} of {}", p.done, p.total);
                self.last_line = Instant::now();
            }
        }
        if let Some(bar) = &self.bar {
            bar.set_length(p.total);
            bar.set_position(p.done);
        } else if self.last_line.elapsed() >= Duration::from_secs(1) {
            eprintln!("{name}: {} of {}", p.done, p.total);
            self.last_line = Instant::now();
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Counting => "counting",
        Phase::RotateKmsKeys => "rotating kms keys",
        Phase::RewrapKeysets => "re-wrapping keysets",
        Phase::RewrapDocuments => "re-wrapping docs",
        Phase::VerifyKeysets => "verifying keysets",
        Phase::VerifyDocuments => "verifying docs",
        Phase::AnnounceKey => "announcing new key",
        Phase::PromoteKey => "promoting new key",
        Phase::ResealRows => "re-sealing rows",
        Phase::VerifyRows => "checking no rows",
        Phase::OpenRows => "opening rows",
        Phase::OpenPatientRows => "opening patient rows",
        _ => "working",
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("rotate: {e:#}");
            if let Some(CoreError::LateAuditEntries { last, .. }) = e.downcast_ref() {
                eprintln!(
                    "rotate: read them with the admin audit log; to go on: rotate compromised KEY --accept-audit-through {last} --reason \"...\""
                );
            }
            std::process::ExitCode::from(1)
        }
    }
}

/// Runs the command; `Ok(false)` when it ran but found failures.
async fn run(args: Args) -> Result<bool> {
    if args.keyring_recheck_ms == 0 {
        bail!("--keyring-recheck-ms must be above 0");
    }
    let clinic = open(&args).await?;
    let operator = operator()?;
    let mut shown = Shown::new();
    match args.command {
        Command::Status => {
            let keys = clinic.admin().key_status(&operator).await?;
            let pending = clinic.rotation().pending(&operator).await?;
            if args.json {
                let kms: Vec<_> = keys
                    .kms_keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "key": k.key.as_str(),
                            "current_version": k.current_version,
                            "enabled_versions": k.enabled_versions,
                            "destroyed_versions": k.destroyed_versions,
                        })
                    })
                    .collect();
                let key = |k: &KeyInfo| serde_json::json!({"id": k.id.get(), "state": format!("{:?}", k.state)});
                let clinic_keys: Vec<_> = keys.clinic_keys.iter().map(key).collect();
                let bucket_keys: Vec<_> = keys
                    .bucket_keys
                    .iter()
                    .map(|(b, ks)| serde_json::json!({"bucket": b, "keys": ks.iter().map(key).collect::<Vec<_>>()}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"kms_keys": kms, "clinic_keys": clinic_keys, "bucket_keys": bucket_keys, "kek_rotation_unfinished": pending})
                );
            } else {
                for k in &keys.kms_keys {
                    println!(
                        "kms key {:32} version {} (enabled {:?}, destroyed {:?})",
                        k.key.as_str(),
                        k.current_version,
                        k.enabled_versions,
                        k.destroyed_versions
                    );
                }
                for k in &keys.clinic_keys {
                    println!("clinic data key {:>10}  {:?}", k.id.get(), k.state);
                }
                for (b, ks) in &keys.bucket_keys {
                    for k in ks {
                        println!("bucket {b:04} key   {:>10}  {:?}", k.id.get(), k.state);
                    }
                }
                if pending {
                    println!(
                        "a KMS master-key rotation is unfinished: run `rotate rotate-kek` to finish it"
                    );
                }
            }
            Ok(true)
        }
        Command::RotateKek { dry_run } => {
            let report = clinic
                .rotation()
                .rotate_kek(&operator, dry_run, &mut |p| shown.show(p))
                .await?;
            shown.finish();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let verb = if dry_run { "would rotate" } else { "rotated" };
                for k in &report.kms_keys {
                    println!(
                        "{verb} kms key {:32} version {} -> {}",
                        k.key,
                        k.from_version,
                        if dry_run {
                            k.from_version + 1
                        } else {
                            k.to_version
                        }
                    );
                }
                let verb = if dry_run {
                    "would re-wrap"
                } else {
                    "re-wrapped"
                };
                println!(
                    "{verb} {} keysets and {} documents' data keys{}{}",
                    report.keysets,
                    report.documents,
                    if report.documents_gone > 0 {
                        format!(" ({} deleted meanwhile)", report.documents_gone)
                    } else {
                        String::new()
                    },
                    if report.resumed {
                        "; resumed an unfinished run"
                    } else {
                        ""
                    }
                );
            }
            Ok(true)
        }
        Command::CompromisedDocument { id } => {
            let report = clinic
                .rotation()
                .document_key_compromised(&operator, &id)
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "document {id}: {} bytes re-encrypted under a fresh data key; old blob {}",
                    report.size,
                    if report.old_blob_deleted {
                        "deleted"
                    } else {
                        "left for orphan collection"
                    }
                );
            }
            Ok(true)
        }
        Command::RotateDataKey {
            no_reencrypt,
            dry_run,
        } => {
            let report = clinic
                .rotation()
                .rotate_data_key(&operator, !no_reencrypt, dry_run, &mut |p| shown.show(p))
                .await?;
            shown.finish();
            print_data_key(&report, args.json)?;
            Ok(true)
        }
        Command::CompromisedKek {
            key,
            version,
            dry_run,
        } => {
            let report = clinic
                .rotation()
                .kek_version_compromised(&operator, &key, version, dry_run, &mut |p| shown.show(p))
                .await?;
            shown.finish();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if dry_run {
                println!(
                    "{} things wrapped under {key} version {version}",
                    report.wrapped_under.len()
                );
                for w in &report.wrapped_under {
                    println!("  {w}");
                }
            } else {
                println!("{key} version {version}: everything re-wrapped off it; destroyed");
            }
            Ok(true)
        }
        Command::Compromised {
            key,
            dry_run,
            accept_audit_through,
            reason,
        } => {
            if let (Some(through), Some(reason)) = (accept_audit_through, reason) {
                clinic
                    .rotation()
                    .accept_late_audit_entries(&operator, key, through, &reason)
                    .await?;
            }
            let report = clinic
                .rotation()
                .key_compromised(&operator, key, dry_run, &mut |p| shown.show(p))
                .await?;
            shown.finish();
            match &report {
                _ if args.json => println!("{}", serde_json::to_string_pretty(&report)?),
                CompromiseReport::Clinic(r) => print_data_key(r, false)?,
                CompromiseReport::Subject(r) => print_subject_key(r),
                CompromiseReport::Bucket(r) => print_bucket_key(r),
            }
            Ok(true)
        }
        Command::ReAnchor { reason } => {
            let (from, to) = clinic.audit().re_anchor(&reason).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "anchored_seq": from, "log_head_seq": to })
                );
            } else {
                println!(
                    "audit log re-anchored: the anchor named entry {from}, the log now ends at entry {to}; recorded with your reason"
                );
            }
            Ok(true)
        }
        Command::Verify => {
            let report = clinic
                .rotation()
                .verify(&operator, &mut |p| shown.show(p))
                .await?;
            shown.finish();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} keysets, {} documents ({} with re-wrapped keys) and {} rows open; {} failures",
                    report.keysets_ok,
                    report.documents_ok,
                    report.documents_rewrapped,
                    report.rows_ok,
                    report.failures.len()
                );
                for (key, n) in &report.rows_by_key {
                    println!("  rows under data key {key:>10}: {n}");
                }
                println!(
                    "{} patients' keyrings open; {} patient rows open under them; {} under no live patient's key (erased or forged)",
                    report.subjects_ok, report.patient_rows_ok, report.patient_rows_unattributed
                );
                for f in &report.failures {
                    println!("FAILED {f}");
                }
            }
            Ok(report.passed())
        }
    }
}

fn print_data_key(report: &DataKeyReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let verb = if report.dry_run {
        "would re-seal"
    } else {
        "re-sealed"
    };
    println!(
        "{verb} {} rows under data keys {:?}{}",
        report.total_rows(),
        report.old_keys,
        if report.resumed {
            "; resumed an unfinished run"
        } else {
            ""
        }
    );
    for (coll, n) in &report.rows {
        println!("  {coll:28} {n}");
    }
    if !report.dry_run {
        println!("new primary data key {}", report.new_key);
    }
    if !report.retired.is_empty() {
        println!("retired data keys {:?}", report.retired);
    }
    if !report.destroyed.is_empty() {
        println!(
            "destroyed data keys {:?}; {} audit entries chained under them are covered by a checkpoint",
            report.destroyed, report.audit_entries_sealed_off
        );
    }
    Ok(())
}

fn print_subject_key(report: &SubjectKeyReport) {
    println!(
        "{} {} rows of patient {} under data key {}{}",
        if report.dry_run {
            "would re-seal"
        } else {
            "re-sealed"
        },
        report.total_rows(),
        report.subject,
        report.old_key,
        if report.resumed {
            "; resumed an unfinished run"
        } else {
            ""
        }
    );
    for (coll, n) in &report.rows {
        println!("  {coll:28} {n}");
    }
    if report.foreign_rows > 0 {
        println!(
            "{} rows under the same key id do not open under this patient's keyring (another's, an erased patient's, or forged): left alone",
            report.foreign_rows
        );
    }
    if !report.dry_run {
        println!("new primary key of the patient {}", report.new_key);
    }
    if report.destroyed {
        println!("destroyed data key {}", report.old_key);
    }
}

fn print_bucket_key(report: &BucketKeyReport) {
    println!(
        "{} {} patients' keyrings of bucket {} under a new bucket key",
        if report.dry_run {
            "would re-seal"
        } else {
            "re-sealed"
        },
        report.subjects_resealed,
        report.bucket
    );
    if !report.destroyed.is_empty() {
        println!("destroyed bucket keys {:?}", report.destroyed);
    }
}
