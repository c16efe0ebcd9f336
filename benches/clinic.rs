//! The clinic's operations per second on SQLite (a file on the build disk),
//! with 1 and 16 tasks, each call's audit event durable before it returns:
//! open a health record with 20 notes, prescribe (signing included), pay
//! (prescription and transaction in one commit), list 1,000 transactions;
//! then `verify` over a 100,000-event chain. A baseline measured in the same
//! run (reading the same 21 rows raw by the same index, no crypto, no
//! audit) gives each record rate a ratio that means something on a noisy
//! machine; the audit event alone (group-committed) shows the cap.
//! Bounded: about 1 minute.
//!
//! `cargo bench --bench clinic`

#[path = "support/mod.rs"]
mod support;
use support::cpu;

use std::sync::Arc;
use std::time::Instant;

use careconnect::authz::session::SystemClock;
use careconnect::authz::{Principal, Role, UserId};
use careconnect::core::audit::{AuditEvent, Outcome, Verification};
use careconnect::core::eps::PrescriptionInput;
use careconnect::core::finance::DateRange;
use careconnect::core::records::PatientDetails;
use careconnect::core::{Clinic, ClinicConfig};
use careconnect::storage::{Collection, RecordStore};

const PATIENTS: usize = 16;
const NOTES: usize = 20;
const VERIFY_EVENTS: usize = 100_000;

fn who(s: &str, role: Role) -> Option<Principal> {
    Some(Principal::new(
        UserId::new("https://idp.bench", s).ok()?,
        [role].into_iter().collect(),
    ))
}

/// Operations per second of `op` run `total` times over `tasks` tasks.
async fn rate<F, Fut>(tasks: usize, total: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = bool> + Send,
{
    let per = total / tasks;
    let t = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|k| {
            let op = op.clone();
            tokio::spawn(async move {
                for j in 0..per {
                    if !op(k * per + j).await {
                        eprintln!("operation failed");
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
    let mut config = ClinicConfig::embedded(dir.path()).ok()?;
    config.subject_buckets = 16;
    let url = format!("sqlite://{}", dir.path().join("clinic.db").display());
    let store = careconnect::storage::connect(&url).await.ok()?;
    let raw: Arc<dyn RecordStore> = store.clone();
    let clinic = Clinic::open_with(config, store, Arc::new(SystemClock))
        .await
        .ok()?;
    // A second handle on the same database and keys, with the 1 s notes
    // read cache off: every open reads the notes from SQLite.
    let mut config2 = ClinicConfig::embedded(dir.path()).ok()?;
    config2.subject_buckets = 16;
    config2.read_cache = std::time::Duration::ZERO;
    config2.audit_anchor = dir.path().join("audit2.anchor");
    let store2 = careconnect::storage::connect(&url).await.ok()?;
    let uncached = Clinic::open_with(config2, store2, Arc::new(SystemClock))
        .await
        .ok()?;
    let admin = who("admin", Role::Admin)?;
    let doctor = who("doctor", Role::Doctor)?;
    let finance = who("finance", Role::Finance)?;
    let patients: Vec<Principal> = (0..PATIENTS)
        .map(|i| who(&format!("patient-{i}"), Role::Patient))
        .collect::<Option<_>>()?;
    for p in &patients {
        clinic
            .records()
            .register(
                &admin,
                &p.user,
                &PatientDetails {
                    name: format!("Bench {}", p.user.subject()),
                    date_of_birth: "1970-01-01".into(),
                    blood_type: "O+".into(),
                    allergies: vec!["none known".into()],
                },
            )
            .await
            .ok()?;
        clinic
            .admin()
            .assign_care(&admin, &doctor.user, &p.user)
            .await
            .ok()?;
        for n in 0..NOTES {
            clinic
                .records()
                .add_note(
                    &doctor,
                    &p.user,
                    &format!("Note {n}: blood pressure 120/80, pulse 64, no change."),
                    None,
                )
                .await
                .ok()?;
        }
    }
    println!(
        "CPU: {} ({} threads)",
        cpu(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("\n## Operations/s on SQLite (audit event durable before return)");
    println!(
        "{:32} {:>6} {:>10} {:>10} {:>8}",
        "operation", "tasks", "raw rows", "clinic", "ratio"
    );
    let notes = Collection::new("core_notes").ok()?;
    let records = Collection::new("core_records").ok()?;
    let first_record = raw
        .list(&records, None, 1)
        .await
        .ok()?
        .rows
        .first()?
        .id
        .clone();
    let note_index = raw
        .list(&notes, None, 1)
        .await
        .ok()?
        .rows
        .first()?
        .indexes
        .first()?
        .clone();
    for tasks in [1, 16] {
        // Baseline: the same rows read raw (20 notes and one record).
        let (s, n, rc, r, idx) = (
            raw.clone(),
            notes.clone(),
            records.clone(),
            first_record.clone(),
            note_index.clone(),
        );
        let base = rate(tasks, 4000, move |_| {
            let (s, n, rc, r, idx) = (s.clone(), n.clone(), rc.clone(), r.clone(), idx.clone());
            async move {
                let page = s.find(&n, &idx).await;
                let rec = s.get(&rc, &r).await;
                page.is_ok_and(|p| p.len() == NOTES) && rec.is_ok()
            }
        })
        .await;
        let (c, d) = (clinic.clone(), doctor.clone());
        let audit_only = rate(tasks, 4000, move |i| {
            let (c, d) = (c.clone(), d.clone());
            async move {
                c.audit()
                    .record(AuditEvent::by(
                        &d,
                        "ReadHealthRecord",
                        format!("patient:P-{i}"),
                        Outcome::Allowed,
                    ))
                    .await
                    .is_ok()
            }
        })
        .await;
        println!(
            "{:32} {tasks:>6} {:>10} {audit_only:>10.0}",
            "audit event alone (the cap)", ""
        );
        let (c, d, ps) = (clinic.clone(), doctor.clone(), patients.clone());
        let open = rate(tasks, 4000, move |i| {
            let (c, d, p) = (c.clone(), d.clone(), ps[i % PATIENTS].user.clone());
            async move {
                c.records()
                    .record(&d, &p)
                    .await
                    .is_ok_and(|r| r.notes.len() == NOTES)
            }
        })
        .await;
        println!(
            "{:32} {tasks:>6} {base:>10.0} {open:>10.0} {:>8.2}",
            "open record (20 notes)",
            open / base
        );
        let (c, d, ps) = (uncached.clone(), doctor.clone(), patients.clone());
        let open = rate(tasks, 4000, move |i| {
            let (c, d, p) = (c.clone(), d.clone(), ps[i % PATIENTS].user.clone());
            async move {
                c.records()
                    .record(&d, &p)
                    .await
                    .is_ok_and(|r| r.notes.len() == NOTES)
            }
        })
        .await;
        println!(
            "{:32} {tasks:>6} {base:>10.0} {open:>10.0} {:>8.2}",
            "  same, notes read cache off",
            open / base
        );
    }
    let input = PrescriptionInput {
        drug: "Bench drug".into(),
        dosage: "1 tablet".into(),
        frequency: "daily".into(),
        notes: String::new(),
    };
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    for (tasks, total) in [(1, 200), (16, 800)] {
        let (c, d, ps, inp, ids2) = (
            clinic.clone(),
            doctor.clone(),
            patients.clone(),
            input.clone(),
            ids.clone(),
        );
        let r = rate(tasks, total, move |i| {
            let (c, d, p, inp, ids) = (
                c.clone(),
                d.clone(),
                ps[i % PATIENTS].clone(),
                inp.clone(),
                ids2.clone(),
            );
            async move {
                match c.eps().prescribe(&d, &p.user, &inp).await {
                    Ok(rx) => {
                        if let Ok(mut v) = ids.lock() {
                            v.push((p, rx.id));
                        }
                        true
                    }
                    Err(_) => false,
                }
            }
        })
        .await;
        println!(
            "{:32} {tasks:>6} {:>10} {r:>10.0}",
            "prescribe (signed)", ""
        );
    }
    let all: Vec<(Principal, String)> = ids.lock().ok()?.clone();
    let (one, sixteen) = all.split_at(200.min(all.len()));
    for (tasks, chunk) in [(1, one.to_vec()), (16, sixteen.to_vec())] {
        let chunk = Arc::new(chunk);
        let (c, ch) = (clinic.clone(), chunk.clone());
        let r = rate(tasks, chunk.len(), move |i| {
            let (c, (p, id)) = (c.clone(), ch[i].clone());
            async move { c.patients().pay(&p, &id).await.is_ok() }
        })
        .await;
        println!(
            "{:32} {tasks:>6} {:>10} {r:>10.0}",
            "pay (atomic with transaction)", ""
        );
    }
    let count = clinic
        .finance()
        .transactions(&finance, &DateRange::default())
        .await
        .ok()?
        .len();
    for tasks in [1, 16] {
        let (c, f) = (clinic.clone(), finance.clone());
        let r = rate(tasks, 64, move |_| {
            let (c, f) = (c.clone(), f.clone());
            async move {
                c.finance()
                    .transactions(&f, &DateRange::default())
                    .await
                    .is_ok_and(|t| t.len() == count)
            }
        })
        .await;
        println!(
            "{:32} {tasks:>6} {:>10} {r:>10.0}",
            format!("list {count} transactions"),
            ""
        );
    }
    // verify: fill the clinic's own chain to 100,000 events.
    let mut set = tokio::task::JoinSet::new();
    for k in 0..64usize {
        let (c, d) = (clinic.clone(), doctor.clone());
        set.spawn(async move {
            for j in 0..VERIFY_EVENTS / 64 {
                let _ = c
                    .audit()
                    .record(AuditEvent::by(
                        &d,
                        "ReadHealthRecord",
                        format!("patient:P-{k}-{j}"),
                        Outcome::Allowed,
                    ))
                    .await;
            }
        });
    }
    while set.join_next().await.is_some() {}
    let t = Instant::now();
    let verdict = clinic.audit().verify().await.ok()?;
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
        eprintln!("clinic bench: setup failed");
        std::process::exit(1);
    }
}
