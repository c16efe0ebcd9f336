//! Rotation of the clinic keyring's data keys: scheduled (kind 2) and
//! compromise (kind 3). See `docs/key-rotation.md`.
//!
//! Every node holds the clinic keyring in memory and re-reads the keyset
//! every [`crate::ClinicConfig::keyring_recheck`]; a job therefore waits
//! [`Clinic::reload_window`] after each change it stores before relying on
//! it:
//!
//! 1. a fresh key is added as `Active` (it opens, nothing seals with it);
//! 2. once every node knows it, it is promoted to primary;
//! 3. once every node seals with it, the rows under the old keys are
//!    re-sealed (a page at a time, compare-and-swap, the page's row ids and
//!    the job's cursor in the same commit), twice over the whole set;
//! 4. scheduled: the old keys are retired. Compromise: the key is marked
//!    compromised; after a window, no row may be under it, and again a
//!    window later; the audit chain is checkpointed under the new key; then
//!    the key is destroyed.

use std::collections::BTreeMap;
use std::time::Duration;

use careconnect_authz::{Action, Principal};
use careconnect_crypto::{EncryptionContext, KeyId, KeyState, Keyring, TrustedKeys};
use careconnect_storage::{Collection, Row, RowData, RowId, StorageError, Write};
use serde::{Deserialize, Serialize};

use super::{OnProgress, Phase, Progress, Rotation, job_conflict, jobs};
use crate::audit::now_ms;
use crate::audit::{AuditEvent, Outcome};
use crate::clinic::{CLINIC_KEYSET, Inner};
use crate::error::CoreError;
use crate::rows;

/// The row of the data-key job.
pub(super) const KEY_JOB: &str = "data-key";
/// Where a job keeps the ids of the rows it re-sealed, one row per page.
const TOUCHED_COLLECTION: &str = "core_rotation_touched";
/// Rows re-sealed per commit: with the page's touched-row insert and the
/// job's checkpoint, one storage batch.
const PAGE: usize = careconnect_storage::MAX_WRITES - 2;
/// Passes over every collection after the first, at most (each finds what
/// slower writers committed under an old key meanwhile).
const MAX_PASSES: u32 = 5;

/// How a collection's rows are bound to their place.
#[derive(Debug, Clone, Copy)]
enum Binding {
    /// This crate's rows ([`rows::context`]).
    Core,
    /// The authz crate's rows ([`careconnect_authz::row_context`]).
    Authz,
}

/// Every collection whose rows the clinic keyring seals.
const SEALED: &[(&str, Binding)] = &[
    (crate::clinic::PEOPLE_COLLECTION, Binding::Core),
    (crate::access::CARE_COLLECTION, Binding::Core),
    (crate::access::BREAK_GLASS_COLLECTION, Binding::Core),
    (crate::access::BREAK_GLASS_HISTORY_COLLECTION, Binding::Core),
    (crate::patients::SLOTS_COLLECTION, Binding::Core),
    (crate::finance::TRANSACTIONS_COLLECTION, Binding::Core),
    (crate::eps::PRESCRIPTIONS_COLLECTION, Binding::Core),
    (crate::eps::SIGNING_KEYS_COLLECTION, Binding::Core),
    (crate::medicloud::DOCUMENTS_COLLECTION, Binding::Core),
    (crate::medicloud::SHARES_COLLECTION, Binding::Core),
    (crate::medicloud::STATE_COLLECTION, Binding::Core),
    (super::JOBS_COLLECTION, Binding::Core),
    (
        careconnect_authz::mapper::ASSIGNMENTS_COLLECTION,
        Binding::Authz,
    ),
    (
        careconnect_authz::session::SESSIONS_COLLECTION,
        Binding::Authz,
    ),
    // UDAP clients, seen `jti`s and access tokens (authz feature `udap`).
    // Named here whether or not that feature is compiled in, so a rotation
    // tool built without it still re-seals them before a key is destroyed;
    // a test checks the names against the authz crate's.
    (UDAP_COLLECTIONS[0], Binding::Authz),
    (UDAP_COLLECTIONS[1], Binding::Authz),
    (UDAP_COLLECTIONS[2], Binding::Authz),
];

/// The authz crate's UDAP collections.
pub(crate) const UDAP_COLLECTIONS: [&str; 3] = ["udap_clients", "udap_jti", "udap_tokens"];

fn context(binding: Binding, coll: &Collection, id: &RowId) -> EncryptionContext {
    match binding {
        Binding::Core => rows::context(coll, id),
        Binding::Authz => careconnect_authz::row_context(coll, id),
    }
}

/// Which kind of data-key rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataKeyKind {
    /// Scheduled (kind 2): a new primary; old keys kept for reading, or
    /// their rows re-sealed and the keys retired.
    Scheduled,
    /// Compromise (kind 3): every row under the key re-sealed, then the key
    /// destroyed.
    Compromise,
}

/// Where a data-key job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Step {
    /// The new key is stored as `Active`.
    Added,
    /// The new key is the primary.
    Promoted,
    /// Every row under the old keys was re-sealed.
    Resealed,
    /// (Compromise) the key is marked compromised.
    Marked,
    /// (Compromise) a first check a window after marking found no row.
    CheckedOnce,
}

/// The checkpoint of a data-key job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyJob {
    kind: DataKeyKind,
    /// Keys whose rows are re-sealed.
    old: Vec<u32>,
    /// The new primary.
    new: u32,
    step: Step,
    /// When the keyset last changed, Unix ms: waits count from here.
    changed_ms: u64,
    /// Position in [`SEALED`] × `old`, and what the passes did.
    #[serde(flatten)]
    passes: Passes,
    /// The audit entry recorded once every node chains under the new key:
    /// no entry after it may be under an old one.
    #[serde(default)]
    audit_after: u64,
    /// Entries under the old keys up to this one an administrator reviewed
    /// and accepted into the checkpoint (0: none).
    #[serde(default)]
    audit_accepted: u64,
    /// The last late entry the last run stopped at (0: none): what an
    /// acceptance must name.
    #[serde(default)]
    audit_late_last: u64,
}

/// A job that re-seals rows in passes, a page at a time.
pub(super) trait PassesJob: Clone + Serialize {
    /// Where its passes are.
    fn passes(&self) -> &Passes;
    /// The same, to move on.
    fn passes_mut(&mut self) -> &mut Passes;
}

impl PassesJob for KeyJob {
    fn passes(&self) -> &Passes {
        &self.passes
    }
    fn passes_mut(&mut self) -> &mut Passes {
        &mut self.passes
    }
}

/// The job once a page of `coll` is done: at the page after it (`next`)
/// or the next target, with the `ids` it re-sealed recorded (the page:
/// `(coll, ids, next)`). Adds what
/// commits with the page's rows to `writes`: the page's touched-row entry
/// (pages named `{prefix}…`) and the job's checkpoint.
pub(super) fn page_done<J: PassesJob>(
    c: &Inner,
    prefix: &str,
    row: &Row,
    job: &J,
    (coll, ids, next): (&Collection, &[String], Option<&RowId>),
    writes: &mut Vec<Write>,
) -> Result<J, CoreError> {
    let mut after = job.clone();
    let passes = after.passes_mut();
    match next {
        Some(n) => passes.cursor = Some(n.as_str().to_owned()),
        None => {
            passes.target += 1;
            passes.cursor = None;
        }
    }
    if !ids.is_empty() {
        passes.record(coll, ids.len() as u64);
        writes.push(touched_write(c, prefix, job.passes().pages, coll, ids)?);
    }
    writes.push(c.job_write(row, &after)?);
    Ok(after)
}

/// Where a job's passes over the rows it re-seals are, and what they did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Passes {
    /// The job's current target (a collection, or a collection and key),
    /// and the last row done there.
    pub(super) target: usize,
    pub(super) cursor: Option<String>,
    /// Passes over everything done.
    pub(super) pass: u32,
    /// Rows re-sealed in the current pass.
    pub(super) pass_rows: u64,
    /// Rows re-sealed, by collection.
    pub(super) rows: BTreeMap<String, u64>,
    /// Touched-row pages written.
    pub(super) pages: u64,
}

impl Passes {
    /// Counts `n` rows of `coll` re-sealed, on one more touched page.
    pub(super) fn record(&mut self, coll: &Collection, n: u64) {
        self.pages += 1;
        self.pass_rows += n;
        *self.rows.entry(coll.as_str().to_owned()).or_insert(0) += n;
    }

    /// Passes again from the first target, as after a check found rows.
    pub(super) fn restart(&mut self) {
        self.pass = 0;
        self.pass_rows = 0;
        self.target = 0;
        self.cursor = None;
    }

    /// At the end of a pass: `true` and back to the first target when
    /// another pass is due (this one re-sealed something, and fewer than
    /// [`MAX_PASSES`] followed the first).
    pub(super) fn again(&mut self) -> bool {
        if self.pass_rows == 0 || self.pass >= MAX_PASSES {
            return false;
        }
        self.pass += 1;
        self.pass_rows = 0;
        self.target = 0;
        self.cursor = None;
        true
    }
}

/// What a data-key rotation did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataKeyReport {
    /// Which kind.
    pub kind: DataKeyKind,
    /// Nothing was changed.
    pub dry_run: bool,
    /// The job resumed one that an earlier run left unfinished.
    pub resumed: bool,
    /// The keys whose rows were re-sealed (compromise: the one key).
    pub old_keys: Vec<u32>,
    /// The new primary (0 in a dry run).
    pub new_key: u32,
    /// Keys retired (scheduled) or destroyed (compromise) at the end.
    pub retired: Vec<u32>,
    /// Keys destroyed at the end.
    pub destroyed: Vec<u32>,
    /// Rows re-sealed (in a dry run: under the old keys), by collection.
    pub rows: BTreeMap<String, u64>,
    /// Every row re-sealed, as `collection/row-id`.
    pub touched: Vec<String>,
    /// Audit entries chained under a destroyed key, now covered by a
    /// checkpoint under the new one (their sealed reasons no longer open).
    pub audit_entries_sealed_off: u64,
}

impl DataKeyReport {
    /// Rows re-sealed (or to re-seal), all collections.
    pub fn total_rows(&self) -> u64 {
        self.rows.values().sum()
    }
}

fn touched() -> Result<Collection, CoreError> {
    Ok(Collection::new(TOUCHED_COLLECTION)?)
}

fn key_id(raw: u32) -> Result<KeyId, CoreError> {
    KeyId::new(raw).ok_or(CoreError::Corrupt("rotation job row"))
}

impl Inner {
    /// The stored clinic keyset: its version and keyring, refused when it
    /// takes a key back in its life against the one loaded here.
    pub(super) async fn clinic_keyset(&self) -> Result<(u64, Keyring), CoreError> {
        let (version, sealed) = self.keystore.load(CLINIC_KEYSET).await?;
        let ring = Keyring::open_keyset(
            self.kms.as_ref(),
            &TrustedKeys::from(self.clinic_kms_key()),
            &sealed,
        )
        .await?;
        if crate::clinic::rolls_back(&self.keys.current(), &ring) {
            return Err(CoreError::Corrupt(
                "clinic keyset (it takes a key back in its life: an old copy put back?)",
            ));
        }
        Ok((version, ring))
    }

    /// Whether the clinic keyring is the one to handle a compromise of
    /// `key`: it holds the key (not destroyed), or an unfinished
    /// compromise job of the clinic keyring is about it.
    pub(super) async fn clinic_holds(&self, key: u32) -> Result<bool, CoreError> {
        if let Some((_, job)) = self.job::<KeyJob>(KEY_JOB).await? {
            return Ok(job.kind == DataKeyKind::Compromise && job.old == [key]);
        }
        let ring = self.clinic_keyset().await?.1;
        Ok(KeyId::new(key)
            .and_then(|k| ring.key(k))
            .is_some_and(|k| k.state != KeyState::Destroyed))
    }

    /// Applies `change` to the stored clinic keyset (compare-and-swap,
    /// re-read on a concurrent change) and installs the result here.
    async fn change_keyset<T>(
        &self,
        change: impl Fn(&mut Keyring) -> Result<T, CoreError>,
    ) -> Result<(Keyring, T), CoreError> {
        for _ in 0..super::RETRIES {
            let read_at = std::time::Instant::now();
            let (version, mut ring) = self.clinic_keyset().await?;
            let out = change(&mut ring)?;
            let sealed = ring
                .seal_keyset(self.kms.as_ref(), self.clinic_kms_key())
                .await?;
            match self
                .keystore
                .store(CLINIC_KEYSET, Some(version), sealed)
                .await
            {
                Ok(v) => {
                    // What was stored is what was read plus this change:
                    // confirmed as of the read.
                    self.install_keys(v, ring.clone(), read_at);
                    return Ok((ring, out));
                }
                Err(StorageError::VersionConflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict("the clinic keyset kept changing"))
    }

    /// Moves each of `keys` on to `to` (retired, compromised or
    /// destroyed) in the stored clinic keyset, skipping those already there
    /// (and, for retiring, any not `Active`); returns the keys now in `to`.
    async fn move_keys(&self, keys: &[KeyId], to: KeyState) -> Result<Vec<u32>, CoreError> {
        let (ring, ()) = self
            .change_keyset(|ring| {
                for k in keys {
                    let Some(state) = ring.key(*k).map(|i| i.state) else {
                        continue;
                    };
                    match to {
                        KeyState::Retired if state == KeyState::Active => ring.retire(*k)?,
                        KeyState::Compromised if state != to => ring.mark_compromised(*k)?,
                        KeyState::Destroyed if state != to => ring.destroy(*k)?,
                        _ => {}
                    }
                }
                Ok(())
            })
            .await?;
        Ok(keys
            .iter()
            .filter(|k| ring.key(**k).is_some_and(|i| i.state == to))
            .map(|k| k.get())
            .collect())
    }

    /// `row` sealed again under the current primary, same plaintext, same
    /// place; `None` when it is no longer under one of `old`.
    fn resealed_raw(
        &self,
        keys: &Keyring,
        binding: Binding,
        coll: &Collection,
        row: &Row,
        old: &[u32],
    ) -> Result<Option<Write>, CoreError> {
        if !old.contains(&row.key_id) {
            return Ok(None);
        }
        let ctx = context(binding, coll, &row.id);
        // Fail closed: a row under the key that does not open is forged or
        // damaged, and re-sealing it would launder it.
        let opened = keys
            .open(&row.envelope, &ctx)
            .map_err(|_| CoreError::Corrupt("a row under the rotated key does not open"))?;
        let plaintext = zeroize::Zeroizing::new(opened.plaintext);
        Ok(Some(Write::Update {
            coll: coll.clone(),
            id: row.id.clone(),
            expected: row.version,
            data: RowData {
                key_id: keys.primary().get(),
                envelope: keys.seal(&ctx, &plaintext)?,
                indexes: row.indexes.clone(),
            },
        }))
    }

    /// Rows under any of `keys` in every sealed collection, by collection.
    async fn count_under(&self, keys: &[u32]) -> Result<BTreeMap<String, u64>, CoreError> {
        let mut counts = BTreeMap::new();
        for (name, _) in SEALED {
            let coll = Collection::new(*name)?;
            for key in keys {
                let mut after: Option<RowId> = None;
                loop {
                    let page = self
                        .store
                        .scan_key(&coll, *key, after.as_ref(), 1000)
                        .await?;
                    let n = page
                        .rows
                        .iter()
                        .filter(|r| !is_job_row(&coll, &r.id))
                        .count() as u64;
                    if n > 0 {
                        *counts.entry((*name).to_owned()).or_insert(0) += n;
                    }
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
            }
        }
        Ok(counts)
    }
}

impl Inner {
    /// Opens every row of every collection the clinic keyring seals into
    /// `report`: counts by data key, and a failure for each that does not
    /// open (forged, damaged, under a destroyed key).
    pub(super) async fn verify_rows(
        &self,
        report: &mut super::VerifyReport,
        progress: OnProgress<'_>,
    ) -> Result<(), CoreError> {
        let keys = self.keys.current();
        for (i, (name, binding)) in SEALED.iter().enumerate() {
            progress(Progress {
                phase: Phase::OpenRows,
                done: i as u64,
                total: SEALED.len() as u64,
            });
            let coll = Collection::new(*name)?;
            let mut pages = self.pages(&coll, 1000);
            while let Some(page) = pages.next().await? {
                for row in page {
                    let ctx = context(*binding, &coll, &row.id);
                    match keys.open(&row.envelope, &ctx) {
                        Ok(o) if o.key_id.get() == row.key_id => {
                            report.rows_ok += 1;
                            *report.rows_by_key.entry(row.key_id).or_insert(0) += 1;
                        }
                        Ok(_) => report.failures.push(format!(
                            "row {name}/{}: its key id column names another key",
                            row.id.as_str()
                        )),
                        Err(e) => report
                            .failures
                            .push(format!("row {name}/{}: {e}", row.id.as_str())),
                    }
                }
            }
        }
        Ok(())
    }
}

/// The data-key job's own row is re-sealed by each checkpoint, never by a page.
fn is_job_row(coll: &Collection, id: &RowId) -> bool {
    coll.as_str() == super::JOBS_COLLECTION && id.as_str() == KEY_JOB
}

/// The ids a page re-sealed, sealed under the clinic keyring.
#[derive(Serialize, Deserialize)]
struct TouchedPage {
    coll: String,
    ids: Vec<String>,
}

impl Rotation<'_> {
    /// Scheduled data-key rotation (kind 2): a fresh data key becomes the
    /// clinic keyring's primary, announced to every node before anything is
    /// sealed under it. With `reencrypt`, every row under an older key is
    /// then re-sealed under it and the older keys are retired (they still
    /// open, as the audit log's older entries need them). With `dry_run`,
    /// reports what would be re-sealed and changes nothing.
    ///
    /// # Errors
    ///
    /// As [`Rotation::data_key_compromised`].
    pub async fn rotate_data_key(
        &self,
        admin: &Principal,
        reencrypt: bool,
        dry_run: bool,
        progress: OnProgress<'_>,
    ) -> Result<DataKeyReport, CoreError> {
        let c = &self.clinic.inner;
        let what = if dry_run {
            "keys:data-key dry-run"
        } else {
            "keys:data-key"
        };
        c.decide_system(admin, Action::RotateKeys, what.into())
            .await?;
        let ring = c.clinic_keyset().await?.1;
        let old: Vec<u32> = if reencrypt {
            ring.keys()
                .filter(|k| matches!(k.state, KeyState::Primary | KeyState::Active))
                .map(|k| k.id.get())
                .collect()
        } else {
            Vec::new()
        };
        self.run_key_job(admin, DataKeyKind::Scheduled, old, dry_run, progress)
            .await
    }

    /// Compromise of data key `key` of the clinic keyring (kind 3): every
    /// row sealed under it is re-sealed under a fresh primary, the key is
    /// marked compromised, two checks a reload window apart must find no
    /// row under it, the audit chain is checkpointed under the new key,
    /// and the key is destroyed. The report lists every row re-sealed. Run
    /// again after a crash or an error: the job resumes where it stopped.
    ///
    /// Rows under the key keep opening until it is destroyed, as the job
    /// re-seals them anyway: it cannot tell a row forged with the stolen key
    /// from a genuine one. Compare the touched rows with a backup taken
    /// before the compromise.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for anyone but an administrator;
    /// [`CoreError::Invalid`] for a key the keyring does not hold or that
    /// is already destroyed; [`CoreError::Conflict`] when another data-key
    /// job (of another key or kind) is unfinished, or another run of this
    /// one is progressing; [`CoreError::Corrupt`] for a row under the key
    /// that does not open (the job stops there, nothing is destroyed);
    /// [`CoreError::AuditTampered`] when the audit chain does not verify
    /// (nothing is destroyed); storage and KMS errors (run again).
    pub async fn data_key_compromised(
        &self,
        admin: &Principal,
        key: u32,
        dry_run: bool,
        progress: OnProgress<'_>,
    ) -> Result<DataKeyReport, CoreError> {
        let c = &self.clinic.inner;
        c.decide_compromise(admin, "data-key", key, dry_run).await?;
        self.run_key_job(admin, DataKeyKind::Compromise, vec![key], dry_run, progress)
            .await
    }

    /// After a compromise of clinic data key `key` stopped at
    /// [`CoreError::LateAuditEntries`]: an administrator who reviewed the
    /// audit entries chained under the key after the new key took over
    /// (through entry `through`) accepts them, stating `reason`, so the
    /// next run checkpoints them and destroys the key. The entries stay in
    /// the log as they are; the acceptance is audited with its reason.
    /// Entries under the key after `through` still stop the job.
    ///
    /// # Errors
    ///
    /// [`CoreError::ReasonRequired`] for a reason under ten characters;
    /// [`CoreError::Denied`] (audited) for anyone but an administrator;
    /// [`CoreError::NotFound`] when no compromise job of `key` is
    /// unfinished; [`CoreError::Invalid`] for a `through` other than the
    /// last late entry the last run stopped at (exactly what was reviewed,
    /// nothing later); storage failures. A refusal is audited too.
    pub async fn accept_late_audit_entries(
        &self,
        admin: &Principal,
        key: u32,
        through: u64,
        reason: &str,
    ) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        let reason = reason.trim();
        if reason.chars().count() < crate::access::MIN_REASON_CHARS {
            return Err(CoreError::ReasonRequired);
        }
        let what = format!("keys:data-key:{key} late audit entries accepted through={through}");
        let decision = careconnect_authz::authorize(
            admin,
            Action::RotateKeys,
            &careconnect_authz::Resource::System,
        );
        // Checked before the audit, so the entry says what happened.
        let found = if decision.is_allowed() {
            match c.job::<KeyJob>(KEY_JOB).await? {
                Some((_, job)) if job.kind != DataKeyKind::Compromise || job.old != [key] => {
                    Err(CoreError::NotFound)
                }
                Some((_, job)) if job.audit_late_last == 0 || through != job.audit_late_last => {
                    Err(CoreError::Invalid(
                        "audit entry number: name the last late entry the last run stopped at",
                    ))
                }
                Some(found) => Ok(found),
                None => Err(CoreError::NotFound),
            }
        } else {
            Err(CoreError::NotFound)
        };
        let outcome = match (&decision, &found) {
            (careconnect_authz::Decision::Deny(_), _) => Outcome::Denied,
            (_, Ok(_)) => Outcome::Allowed,
            (_, Err(_)) => Outcome::Failed,
        };
        c.audit
            .record(AuditEvent::by(admin, "RotateKeys", what, outcome).because(reason))
            .await?;
        if let careconnect_authz::Decision::Deny(r) = decision {
            return Err(CoreError::Denied(r));
        }
        let (mut row, mut job) = found?;
        job.audit_accepted = through;
        c.save_job(&mut row, &job).await
    }

    async fn run_key_job(
        &self,
        admin: &Principal,
        kind: DataKeyKind,
        old: Vec<u32>,
        dry_run: bool,
        progress: OnProgress<'_>,
    ) -> Result<DataKeyReport, CoreError> {
        let c = &self.clinic.inner;
        let existing = c.job::<KeyJob>(KEY_JOB).await?;
        if let Some((_, job)) = &existing
            && (job.kind != kind || (kind == DataKeyKind::Compromise && job.old != old))
        {
            return Err(CoreError::Conflict(
                "another data-key rotation is unfinished: run it again first",
            ));
        }
        if existing.is_none() && kind == DataKeyKind::Compromise {
            let ring = c.clinic_keyset().await?.1;
            let known = old
                .first()
                .and_then(|k| KeyId::new(*k))
                .and_then(|k| ring.key(k));
            if known.is_none_or(|k| k.state == KeyState::Destroyed) {
                return Err(CoreError::Invalid(
                    "data key id: not in the clinic keyring, or already destroyed",
                ));
            }
        }
        let mut report = DataKeyReport {
            kind,
            dry_run,
            resumed: existing.is_some(),
            old_keys: existing
                .as_ref()
                .map_or(old.clone(), |(_, j)| j.old.clone()),
            new_key: existing.as_ref().map_or(0, |(_, j)| j.new),
            retired: Vec::new(),
            destroyed: Vec::new(),
            rows: BTreeMap::new(),
            touched: Vec::new(),
            audit_entries_sealed_off: 0,
        };
        if dry_run {
            progress(Progress {
                phase: Phase::Counting,
                done: 0,
                total: 1,
            });
            report.rows = c.count_under(&report.old_keys).await?;
            return Ok(report);
        }
        let (mut row, mut job) = match existing {
            Some(found) => found,
            None => self.start_key_job(kind, old).await?,
        };
        report.new_key = job.new;
        let new = key_id(job.new)?;
        let window = self.clinic.reload_window();

        if job.step == Step::Added {
            wait(Phase::AnnounceKey, job.changed_ms, window, progress).await;
            c.change_keyset(|ring| Ok(ring.promote(new)?)).await?;
            job.step = Step::Promoted;
            job.changed_ms = now_ms();
            c.save_job(&mut row, &job).await?;
        }
        if job.step == Step::Promoted {
            if !job.old.is_empty() {
                wait(Phase::PromoteKey, job.changed_ms, window, progress).await;
                if job.audit_after == 0 {
                    // From here every node chains audit entries under the
                    // new key: one under an old key after this is forged
                    // (or from a node that stopped reloading).
                    job.audit_after = c
                        .audit
                        .record(AuditEvent::by(
                            admin,
                            "RotateKeys",
                            format!("keys:data-key promoted new={}", job.new),
                            Outcome::Allowed,
                        ))
                        .await?;
                    c.save_job(&mut row, &job).await?;
                }
                self.reseal_all(&mut row, &mut job, progress).await?;
            }
            job.step = Step::Resealed;
            c.save_job(&mut row, &job).await?;
        }
        let old_ids = job
            .old
            .iter()
            .map(|k| key_id(*k))
            .collect::<Result<Vec<_>, _>>()?;
        match kind {
            DataKeyKind::Scheduled => {
                report.retired = c.move_keys(&old_ids, KeyState::Retired).await?;
            }
            DataKeyKind::Compromise => {
                let mut late = 0;
                loop {
                    match job.step {
                        Step::Resealed => {
                            c.move_keys(&old_ids, KeyState::Compromised).await?;
                            job.step = Step::Marked;
                        }
                        // Two checks a window apart must find nothing: a row
                        // sealed under the key by a node that had not
                        // reloaded yet shows in one of them, and is re-sealed.
                        Step::Marked | Step::CheckedOnce => {
                            wait(Phase::VerifyRows, job.changed_ms, window, progress).await;
                            if self.none_under(&job.old).await? {
                                if job.step == Step::CheckedOnce {
                                    break;
                                }
                                job.step = Step::CheckedOnce;
                            } else {
                                late_rows(&mut late)?;
                                job.passes.restart();
                                self.reseal_all(&mut row, &mut job, progress).await?;
                                job.step = Step::Marked;
                            }
                        }
                        Step::Added | Step::Promoted => {
                            return Err(CoreError::Corrupt("rotation job row"));
                        }
                    }
                    job.changed_ms = now_ms();
                    c.save_job(&mut row, &job).await?;
                }
                report.audit_entries_sealed_off = match c
                    .audit
                    .checkpoint(&old_ids, job.audit_after.max(job.audit_accepted))
                    .await
                {
                    Ok(n) => n,
                    Err(CoreError::LateAuditEntries { after, last }) => {
                        // Remembered, so an acceptance names exactly these.
                        job.audit_late_last = last;
                        c.save_job(&mut row, &job).await?;
                        return Err(CoreError::LateAuditEntries { after, last });
                    }
                    Err(e) => return Err(e),
                };
                report.destroyed = c.move_keys(&old_ids, KeyState::Destroyed).await?;
            }
        }
        report.rows = job.passes.rows.clone();
        self.finish_key_job(admin, &mut report, row).await?;
        Ok(report)
    }

    /// Whether no row of the sealed collections is under any of `keys`,
    /// judged by every row's envelope rather than its key-id column (a
    /// column that lies would hide a row from the scans and lose it to the
    /// destruction: such a row stops the job).
    async fn none_under(&self, keys: &[u32]) -> Result<bool, CoreError> {
        let c = &self.clinic.inner;
        for (name, _) in SEALED {
            let coll = Collection::new(*name)?;
            let mut pages = c.pages(&coll, 1000);
            while let Some(page) = pages.next().await? {
                for r in &page {
                    let Ok(id) = Keyring::key_id_of(&r.envelope) else {
                        continue; // opens under no key: not under these
                    };
                    if id.get() != r.key_id {
                        return Err(CoreError::Corrupt(
                            "a row's key id column does not match its envelope",
                        ));
                    }
                    if keys.contains(&id.get()) {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    async fn start_key_job(
        &self,
        kind: DataKeyKind,
        old: Vec<u32>,
    ) -> Result<(Row, KeyJob), CoreError> {
        let c = &self.clinic.inner;
        // One key job at a time (see the subject-key job).
        if c.job_exists(super::subject_key::SUBJECT_JOB).await? {
            return Err(CoreError::Conflict(
                "a compromise of a patient's key is unfinished: run it again first",
            ));
        }
        clear_touched(c, DATA_KEY_PAGES).await?;
        let (_, new) = c.change_keyset(|ring| Ok(ring.add_key()?)).await?;
        let job = KeyJob {
            kind,
            old,
            new: new.get(),
            step: Step::Added,
            changed_ms: now_ms(),
            passes: Passes::default(),
            audit_after: 0,
            audit_accepted: 0,
            audit_late_last: 0,
        };
        let row = c.insert_job(KEY_JOB, &job).await?;
        Ok((row, job))
    }

    /// Passes over every (collection, old key) until one finds nothing.
    async fn reseal_all(
        &self,
        row: &mut Row,
        job: &mut KeyJob,
        progress: OnProgress<'_>,
    ) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        let targets: Vec<(Collection, Binding, u32)> = SEALED
            .iter()
            .flat_map(|(name, b)| job.old.iter().map(move |k| (*name, *b, *k)))
            .map(|(name, b, k)| Ok((Collection::new(name)?, b, k)))
            .collect::<Result<_, CoreError>>()?;
        let total = c.count_under(&job.old).await?.values().sum::<u64>();
        let mut done = 0u64;
        loop {
            while let Some((coll, binding, key)) = targets.get(job.passes.target) {
                progress(Progress {
                    phase: Phase::ResealRows,
                    done,
                    total: total.max(done),
                });
                let after = job.passes.cursor.as_deref().map(RowId::new).transpose()?;
                let page = c.store.scan_key(coll, *key, after.as_ref(), PAGE).await?;
                let rows: Vec<&Row> = page
                    .rows
                    .iter()
                    .filter(|r| !is_job_row(coll, &r.id))
                    .collect();
                let keys = rows::sealing(&c.keys)?;
                let mut writes = Vec::with_capacity(rows.len() + 2);
                let mut ids = Vec::new();
                for r in &rows {
                    if let Some(w) = c.resealed_raw(&keys, *binding, coll, r, &job.old)? {
                        writes.push(w);
                        ids.push(r.id.as_str().to_owned());
                    }
                }
                // Where the job goes once this page is done.
                let next = page_done(
                    c,
                    DATA_KEY_PAGES,
                    row,
                    job,
                    (coll, &ids, page.next.as_ref()),
                    &mut writes,
                )?;
                match c.store.commit(&writes).await {
                    Ok(versions) => {
                        row.version = versions.last().copied().unwrap_or(row.version + 1);
                        *job = next;
                        done += ids.len() as u64;
                    }
                    // A row changed or went meanwhile: one at a time, each
                    // with its own touched entry and checkpoint, then the
                    // cursor moves on.
                    Err(StorageError::VersionConflict { .. } | StorageError::NotFound)
                        if !ids.is_empty() =>
                    {
                        for r in &rows {
                            if self
                                .reseal_recorded(row, job, *binding, coll, &r.id)
                                .await?
                            {
                                done += 1;
                            }
                        }
                        job.passes.target = next.passes.target;
                        job.passes.cursor = next.passes.cursor;
                        c.save_job(row, job).await?;
                    }
                    Err(e) => return Err(job_conflict(e)),
                }
            }
            // A pass that found nothing ends it; otherwise once more, for
            // rows a slower writer committed under an old key meanwhile.
            if !job.passes.again() {
                break;
            }
            c.save_job(row, job).await?;
        }
        Ok(())
    }

    /// Re-seals one row in a commit with its touched entry and the job's
    /// checkpoint, re-reading it while it keeps changing; `false` when it
    /// went or is no longer under an old key.
    async fn reseal_recorded(
        &self,
        row: &mut Row,
        job: &mut KeyJob,
        binding: Binding,
        coll: &Collection,
        id: &RowId,
    ) -> Result<bool, CoreError> {
        let c = &self.clinic.inner;
        for _ in 0..super::RETRIES {
            let Some(current) = c.get(coll, id).await? else {
                return Ok(false);
            };
            let Some(write) =
                c.resealed_raw(&*rows::sealing(&c.keys)?, binding, coll, &current, &job.old)?
            else {
                return Ok(false);
            };
            let mut next = job.clone();
            next.passes.record(coll, 1);
            let writes = [
                write,
                touched_write(
                    c,
                    DATA_KEY_PAGES,
                    job.passes.pages,
                    coll,
                    &[id.as_str().to_owned()],
                )?,
                c.job_write(row, &next)?,
            ];
            match c.store.commit(&writes).await {
                Ok(versions) => {
                    row.version = versions.last().copied().unwrap_or(row.version + 1);
                    *job = next;
                    return Ok(true);
                }
                Err(StorageError::VersionConflict { .. }) => {
                    // The job row itself moved: another run.
                    if c.get(&jobs()?, &row.id).await?.map(|r| r.version) != Some(row.version) {
                        return Err(CoreError::Conflict(
                            "another run of this rotation is in progress",
                        ));
                    }
                }
                Err(StorageError::NotFound) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict("a row kept changing"))
    }

    /// Reads the touched rows into the report, audits the end, deletes the
    /// touched rows and the job row (the audit first: a failure leaves a
    /// job to resume, not one to start again).
    async fn finish_key_job(
        &self,
        admin: &Principal,
        report: &mut DataKeyReport,
        row: Row,
    ) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        let (touched, stored) = read_touched(c, DATA_KEY_PAGES).await?;
        report.touched = touched;
        c.audit
            .record(AuditEvent::by(
                admin,
                "RotateKeys",
                format!(
                    "keys:data-key {} done new={} rows={} retired={:?} destroyed={:?}",
                    match report.kind {
                        DataKeyKind::Scheduled => "scheduled",
                        DataKeyKind::Compromise => "compromise",
                    },
                    report.new_key,
                    report.total_rows(),
                    report.retired,
                    report.destroyed
                ),
                Outcome::Allowed,
            ))
            .await?;
        delete_touched(c, &stored).await?;
        c.store.delete(&jobs()?, &row.id, row.version).await?;
        tracing::info!(
            rows = report.total_rows(),
            new = report.new_key,
            "clinic data-key rotation done"
        );
        Ok(())
    }
}

/// Touched-row pages of the data-key job: `page-NNN…`.
const DATA_KEY_PAGES: &str = "page-";

/// The insert of touched-row page number `page` of the job whose pages
/// are named `{prefix}{page}`: the ids of rows of `coll` it re-sealed.
fn touched_write(
    c: &Inner,
    prefix: &str,
    page: u64,
    coll: &Collection,
    ids: &[String],
) -> Result<Write, CoreError> {
    let touched = touched()?;
    let id = RowId::new(format!("{prefix}{page:012}"))?;
    let data = rows::seal(
        &c.keys,
        &touched,
        &id,
        &TouchedPage {
            coll: coll.as_str().to_owned(),
            ids: ids.to_vec(),
        },
    )?;
    Ok(Write::Insert {
        coll: touched,
        id,
        data,
    })
}

/// Every row listed on the touched-row pages named `{prefix}…`, as
/// `collection/row-id`, and the pages themselves.
pub(super) async fn read_touched(
    c: &Inner,
    prefix: &str,
) -> Result<(Vec<String>, Vec<Row>), CoreError> {
    let coll = touched()?;
    let mut pages = c.pages(&coll, 1000);
    let mut listed = Vec::new();
    let mut stored = Vec::new();
    while let Some(page) = pages.next().await? {
        for r in page {
            let rest = r.id.as_str().strip_prefix(prefix);
            if rest.is_none_or(|n| !n.bytes().all(|b| b.is_ascii_digit())) {
                continue;
            }
            let p = rows::open::<TouchedPage>(&c.keys.current(), &coll, &r)
                .ok_or(CoreError::Corrupt("rotation touched-rows page"))?;
            listed.extend(p.ids.iter().map(|id| format!("{}/{id}", p.coll)));
            stored.push(r);
        }
    }
    Ok((listed, stored))
}

/// Rounds of rows found under a compromised key after it was marked, in
/// one run, before the job stops for the operator.
const MAX_LATE_ROUNDS: u32 = 3;

/// Counts one more round of rows found under the key after it was marked
/// (from a node that does not reload, or a forger holding the key: they
/// are re-sealed and listed); too many in one run stop it.
pub(super) fn late_rows(rounds: &mut u32) -> Result<(), CoreError> {
    *rounds += 1;
    if *rounds > MAX_LATE_ROUNDS {
        return Err(CoreError::Conflict(
            "rows keep appearing under the compromised key (a node that does not reload, or a forger holding the key): find it, then run again",
        ));
    }
    Ok(())
}

/// Deletes every touched-row page named `{prefix}…`, without opening them:
/// what an earlier job of that kind left behind before a new one starts.
pub(super) async fn clear_touched(c: &Inner, prefix: &str) -> Result<(), CoreError> {
    let coll = touched()?;
    let mut pages = c.pages(&coll, 1000);
    let mut stale = Vec::new();
    while let Some(page) = pages.next().await? {
        stale.extend(
            page.into_iter()
                .filter(|r| r.id.as_str().starts_with(prefix)),
        );
    }
    delete_touched(c, &stale).await
}

/// Deletes the touched-row pages `stored`.
pub(super) async fn delete_touched(c: &Inner, stored: &[Row]) -> Result<(), CoreError> {
    let coll = touched()?;
    for chunk in stored.chunks(careconnect_storage::MAX_WRITES) {
        let writes: Vec<Write> = chunk
            .iter()
            .map(|r| Write::Delete {
                coll: coll.clone(),
                id: r.id.clone(),
                expected: r.version,
            })
            .collect();
        c.store.commit(&writes).await?;
    }
    Ok(())
}

/// Waits until `window` after `since_ms`, reporting the wait as `phase`.
pub(super) async fn wait(phase: Phase, since_ms: u64, window: Duration, progress: OnProgress<'_>) {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    let until = since_ms.saturating_add(window_ms);
    loop {
        let now = now_ms();
        progress(Progress {
            phase,
            done: window_ms.saturating_sub(until.saturating_sub(now)),
            total: window_ms,
        });
        if now >= until {
            return;
        }
        tokio::time::sleep(Duration::from_millis((until - now).min(250))).await;
    }
}
