//! Compromise of a data key in one patient's subject keyring (kind 3 for
//! patient data), and the opening of every patient row for `verify`. See
//! `docs/key-rotation.md`.
//!
//! The steps are those of the clinic's data-key compromise
//! ([`super::data_key`]), on the subject's keyring: nodes keep an opened
//! subject keyring for [`crate::ClinicConfig::keyring_recheck`], so the job
//! waits [`crate::Clinic::reload_window`] after each change to it.
//!
//! 1. a fresh key is added to the subject's keyring as `Active`;
//! 2. once every node knows it, it becomes the subject's primary;
//! 3. once every node seals the subject's data with it, every row of the
//!    subject under the compromised key is re-sealed (records, notes,
//!    appointments; a prescription's body inside its clinic-sealed row), a
//!    page at a time, with the page's row ids and the job's cursor in the
//!    same commit;
//! 4. the key is marked compromised; two checks a window apart must find no
//!    row of the subject under it; then it is destroyed.
//!
//! A row under the key's id that the subject's keyring does not open is
//! not the subject's (another patient's key may have the same id, or an
//! erased patient's) or is damaged: it is left alone and counted, as
//! destroying the key takes nothing from it.

use std::collections::{BTreeMap, HashMap, HashSet};

use careconnect_authz::Principal;
use careconnect_crypto::{KeyId, KeyState, Keyring};
use careconnect_storage::{Collection, Row, RowData, RowId, StorageError, Write};
use serde::{Deserialize, Serialize};

use super::DataKeyReport;
use super::data_key::{
    Passes, PassesJob, Step, clear_touched, delete_touched, late_rows, page_done, read_touched,
    wait,
};
use super::{OnProgress, Phase, Progress, Rotation, VerifyReport, job_conflict, jobs};
use crate::audit::{AuditEvent, Outcome, now_ms};
use crate::clinic::{Inner, field_context};
use crate::eps::{Locator, PRESCRIPTION_FIELD, PRESCRIPTIONS_COLLECTION};
use crate::error::CoreError;
use crate::rows;

/// The row of the subject-key job.
pub(super) const SUBJECT_JOB: &str = "subject-key";
/// Its touched-row pages: `subject-page-NNN…`.
const PAGES: &str = "subject-page-";
/// Rows re-sealed per commit (with the touched page and the checkpoint).
const PAGE: usize = careconnect_storage::MAX_WRITES - 2;

/// Collections whose rows are sealed whole under a subject keyring, with
/// the field each row is sealed as. Prescriptions come after them: their
/// rows are clinic-sealed and hold the body sealed under the subject's keys.
const PATIENT_ROWS: &[(&str, &str)] = &[
    (
        crate::records::RECORDS_COLLECTION,
        crate::records::RECORD_FIELD,
    ),
    (crate::records::NOTES_COLLECTION, crate::records::NOTE_FIELD),
    (
        crate::patients::APPOINTMENTS_COLLECTION,
        crate::patients::APPOINTMENT_FIELD,
    ),
];

impl PassesJob for SubjectJob {
    fn passes(&self) -> &Passes {
        &self.passes
    }
    fn passes_mut(&mut self) -> &mut Passes {
        &mut self.passes
    }
}

/// The checkpoint of a subject-key job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SubjectJob {
    /// The subject's handle (its keyring's row id).
    subject: String,
    /// The compromised key.
    old: u32,
    /// The subject's new primary.
    new: u32,
    step: Step,
    /// When the subject keyring last changed, Unix ms.
    changed_ms: u64,
    /// Targets: [`PATIENT_ROWS`], then prescriptions.
    #[serde(flatten)]
    passes: Passes,
}

/// What the compromise of a subject key did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectKeyReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// The job resumed one that an earlier run left unfinished.
    pub resumed: bool,
    /// The subject's handle: the id of its keyring's row (a keyed MAC of
    /// the patient's identity, not the identity).
    pub subject: String,
    /// The compromised key.
    pub old_key: u32,
    /// The subject's new primary (0 in a dry run).
    pub new_key: u32,
    /// Whether the compromised key is now destroyed.
    pub destroyed: bool,
    /// Rows re-sealed (in a dry run: under the key), by collection.
    pub rows: BTreeMap<String, u64>,
    /// Every row re-sealed, as `collection/row-id`.
    pub touched: Vec<String>,
    /// Rows under the key's id that the subject's keyring does not open
    /// (another subject's key with the same id, an erased subject's, or
    /// damaged), left alone.
    pub foreign_rows: u64,
}

/// What replacing a compromised key of a bucket keyring did (or, in a dry
/// run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketKeyReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// The bucket whose keyring held the key.
    pub bucket: u16,
    /// The compromised key.
    pub old_key: u32,
    /// Subject keyrings re-sealed under the bucket's new key (in a dry run:
    /// the subject rows of the bucket).
    pub subjects_resealed: usize,
    /// The bucket's keys destroyed: the compromised one and any other
    /// older one.
    pub destroyed: Vec<u32>,
}

/// What the compromise of a data key did, by the keyring that held it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "keyring", rename_all = "kebab-case")]
pub enum CompromiseReport {
    /// A key of the clinic keyring ([`Rotation::data_key_compromised`]).
    Clinic(DataKeyReport),
    /// A key of one patient's keyring ([`Rotation::subject_key_compromised`]).
    Subject(SubjectKeyReport),
    /// A key of a bucket keyring ([`Rotation::bucket_key_compromised`]).
    Bucket(BucketKeyReport),
}

impl SubjectKeyReport {
    /// Rows re-sealed (or to re-seal), all collections.
    pub fn total_rows(&self) -> u64 {
        self.rows.values().sum()
    }
}

fn key_id(raw: u32) -> Result<KeyId, CoreError> {
    KeyId::new(raw).ok_or(CoreError::Corrupt("rotation job row"))
}

/// The collection of target `i` and, for a patient collection, its field.
fn target(i: usize) -> Result<Option<(Collection, Option<&'static str>)>, CoreError> {
    Ok(match PATIENT_ROWS.get(i) {
        Some((name, field)) => Some((Collection::new(*name)?, Some(*field))),
        None if i == PATIENT_ROWS.len() => Some((Collection::new(PRESCRIPTIONS_COLLECTION)?, None)),
        None => None,
    })
}

/// What the subject's keyring opens in a row under the key `old`: the
/// plaintext and how to put a re-sealed envelope back.
enum Under {
    /// Sealed whole: the plaintext.
    Whole(zeroize::Zeroizing<Vec<u8>>),
    /// A prescription: the plaintext body and the locator's handle.
    Nested(zeroize::Zeroizing<Vec<u8>>, String),
}

impl Inner {
    /// A prescription row's locator, under whatever clinic key still opens
    /// it (a key another job marked compromised included: the body inside
    /// must not be lost to this one).
    fn prescription_locator(&self, coll: &Collection, row: &Row) -> Option<Locator> {
        let opened = self
            .keys
            .current()
            .open(&row.envelope, &rows::context(coll, &row.id))
            .ok()?;
        serde_json::from_slice(&opened.plaintext).ok()
    }

    /// The opened data of `row` (target `field`, or a prescription when
    /// `None`) if it is the subject's and under key `old`.
    fn subject_data_under(
        &self,
        s: &Keyring,
        subject: &RowId,
        coll: &Collection,
        field: Option<&str>,
        row: &Row,
        old: u32,
    ) -> Option<Under> {
        match field {
            Some(field) => {
                if row.key_id != old {
                    return None;
                }
                let opened = s
                    .open(&row.envelope, &field_context(coll, &row.id, field))
                    .ok()?;
                (opened.key_id.get() == old).then(|| Under::Whole(opened.plaintext.into()))
            }
            None => {
                let locator = self.prescription_locator(coll, row)?;
                if locator.handle != subject.as_str() {
                    return None;
                }
                let inner = hex::decode(&locator.body).ok()?;
                let opened = s
                    .open(&inner, &field_context(coll, &row.id, PRESCRIPTION_FIELD))
                    .ok()?;
                (opened.key_id.get() == old)
                    .then(|| Under::Nested(opened.plaintext.into(), locator.handle))
            }
        }
    }

    /// `row` sealed again under the subject's primary, same plaintext and
    /// place; `None` when it is not the subject's row under `old`.
    fn subject_resealed(
        &self,
        s: &Keyring,
        subject: &RowId,
        coll: &Collection,
        field: Option<&str>,
        row: &Row,
        old: u32,
    ) -> Result<Option<Write>, CoreError> {
        let data = match self.subject_data_under(s, subject, coll, field, row, old) {
            None => return Ok(None),
            Some(Under::Whole(plain)) => RowData {
                key_id: s.primary().get(),
                envelope: s.seal(
                    &field_context(coll, &row.id, field.unwrap_or_default()),
                    &plain,
                )?,
                indexes: row.indexes.clone(),
            },
            Some(Under::Nested(plain, handle)) => {
                let inner = s.seal(&field_context(coll, &row.id, PRESCRIPTION_FIELD), &plain)?;
                let locator = Locator {
                    handle,
                    body: hex::encode(inner),
                };
                let mut data = rows::seal(&self.keys, coll, &row.id, &locator)?;
                data.indexes.clone_from(&row.indexes);
                data
            }
        };
        Ok(Some(Write::Update {
            coll: coll.clone(),
            id: row.id.clone(),
            expected: row.version,
            data,
        }))
    }

    /// A page of target `field`'s collection from `after`: by key-id
    /// column for a patient collection, every row for prescriptions (their
    /// column names the clinic key).
    async fn subject_page(
        &self,
        coll: &Collection,
        field: Option<&str>,
        old: u32,
        after: Option<&RowId>,
        limit: usize,
    ) -> Result<(Vec<Row>, Option<RowId>), CoreError> {
        let page = match field {
            Some(_) => self.store.scan_key(coll, old, after, limit).await?,
            None => self.store.list(coll, after, limit).await?,
        };
        Ok((page.rows, page.next))
    }

    /// Rows of the subject under `old`, by collection; and rows under the
    /// key's id that it does not open.
    /// With `strict`, a prescription row that does not open is an error:
    /// whose body it holds cannot be told, so the key must not go.
    async fn subject_rows_under(
        &self,
        s: &Keyring,
        subject: &RowId,
        old: u32,
        strict: bool,
    ) -> Result<(BTreeMap<String, u64>, u64), CoreError> {
        let mut counts = BTreeMap::new();
        let mut foreign = 0;
        let mut i = 0;
        while let Some((coll, field)) = target(i)? {
            let mut after = None;
            loop {
                let (rows, next) = self
                    .subject_page(&coll, field, old, after.as_ref(), 1000)
                    .await?;
                for r in &rows {
                    if self
                        .subject_data_under(s, subject, &coll, field, r, old)
                        .is_some()
                    {
                        *counts.entry(coll.as_str().to_owned()).or_insert(0) += 1;
                    } else if field.is_some() {
                        foreign += 1;
                    } else if strict && self.prescription_locator(&coll, r).is_none() {
                        return Err(CoreError::Corrupt(
                            "a prescription row does not open: whose body it holds cannot be told",
                        ));
                    }
                }
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            i += 1;
        }
        Ok((counts, foreign))
    }

    /// The one live subject whose keyring holds `key` (not destroyed).
    async fn holder_of(&self, key: u32) -> Result<RowId, CoreError> {
        let id = KeyId::new(key).ok_or(CoreError::Invalid("data key id"))?;
        let mut found = self
            .subjects
            .all()
            .await?
            .into_iter()
            .filter_map(|(handle, s)| {
                s.ok()?
                    .key(id)
                    .filter(|k| k.state != KeyState::Destroyed)
                    .map(|_| handle)
            });
        match (found.next(), found.next()) {
            (Some(handle), None) => Ok(handle),
            (None, _) => Err(CoreError::Invalid(
                "data key id: in no keyring of the clinic, or already destroyed",
            )),
            (Some(_), Some(_)) => Err(CoreError::Conflict(
                "data key id: held by several patients' keyrings (ids are random 32-bit numbers)",
            )),
        }
    }

    /// Whether no row of the subject is under `old`, judged from every
    /// patient row's envelope (a key-id column that lies stops the job);
    /// and how many rows under the key's id are not the subject's.
    async fn subject_none_under(
        &self,
        s: &Keyring,
        subject: &RowId,
        old: u32,
    ) -> Result<(bool, u64), CoreError> {
        for (name, _) in PATIENT_ROWS {
            let coll = Collection::new(*name)?;
            let mut pages = self.pages(&coll, 1000);
            while let Some(page) = pages.next().await? {
                for r in &page {
                    if Keyring::key_id_of(&r.envelope).is_ok_and(|id| id.get() != r.key_id) {
                        return Err(CoreError::Corrupt(
                            "a row's key id column does not match its envelope",
                        ));
                    }
                }
            }
        }
        let (under, foreign) = self.subject_rows_under(s, subject, old, true).await?;
        Ok((under.is_empty(), foreign))
    }

    /// Opens every patient row under its subject's keyring into `report`.
    /// A row under a key no live subject holds (an erased patient's, or
    /// forged) opens for no one and is counted apart; a row under a live
    /// subject's key that does not open is a failure.
    pub(super) async fn verify_patient_rows(
        &self,
        report: &mut VerifyReport,
        progress: OnProgress<'_>,
    ) -> Result<(), CoreError> {
        let mut rings = Vec::new();
        let mut by_key: HashMap<u32, Vec<usize>> = HashMap::new();
        // Keys of live patients that are gone: a row under one is lost.
        let mut destroyed: HashSet<u32> = HashSet::new();
        let mut by_handle: HashMap<String, usize> = HashMap::new();
        for (handle, opened) in self.subjects.all().await? {
            match opened {
                Ok(s) => {
                    report.subjects_ok += 1;
                    for k in s.keys() {
                        if k.state == KeyState::Destroyed {
                            destroyed.insert(k.id.get());
                        } else {
                            by_key.entry(k.id.get()).or_default().push(rings.len());
                        }
                    }
                    by_handle.insert(handle.as_str().to_owned(), rings.len());
                    rings.push(s);
                }
                Err(e) => report
                    .failures
                    .push(format!("subject {}: {e}", handle.as_str())),
            }
        }
        let clinic = self.keys.current();
        let mut i = 0;
        while let Some((coll, field)) = target(i)? {
            progress(Progress {
                phase: Phase::OpenPatientRows,
                done: i as u64,
                total: PATIENT_ROWS.len() as u64 + 1,
            });
            let name = coll.as_str();
            let mut pages = self.pages(&coll, 1000);
            while let Some(page) = pages.next().await? {
                for row in page {
                    let id = row.id.as_str();
                    let (candidates, envelope, field) = match field {
                        Some(field) => {
                            let Ok(k) = Keyring::key_id_of(&row.envelope) else {
                                report
                                    .failures
                                    .push(format!("row {name}/{id}: not an envelope"));
                                continue;
                            };
                            if k.get() != row.key_id {
                                report.failures.push(format!(
                                    "row {name}/{id}: its key id column names another key"
                                ));
                                continue;
                            }
                            let candidates = by_key.get(&k.get()).cloned().unwrap_or_default();
                            (candidates, row.envelope, field)
                        }
                        None => {
                            // Clinic-sealed: opened (or not) by `verify_rows`.
                            let Some(locator) = rows::open::<Locator>(&clinic, &coll, &row) else {
                                continue;
                            };
                            let candidates: Vec<usize> = by_handle
                                .get(&locator.handle)
                                .copied()
                                .into_iter()
                                .collect();
                            let Ok(inner) = hex::decode(&locator.body) else {
                                report
                                    .failures
                                    .push(format!("row {name}/{id}: body is not hex"));
                                continue;
                            };
                            (candidates, inner, PRESCRIPTION_FIELD)
                        }
                    };
                    if candidates.is_empty() {
                        match Keyring::key_id_of(&envelope) {
                            Ok(k) if destroyed.contains(&k.get()) => {
                                report.failures.push(format!(
                                    "row {name}/{id}: under a destroyed key of a live patient"
                                ));
                            }
                            _ => report.patient_rows_unattributed += 1,
                        }
                        continue;
                    }
                    let ctx = field_context(&coll, &row.id, field);
                    if candidates
                        .iter()
                        .filter_map(|c| rings.get(*c))
                        .any(|s| s.open(&envelope, &ctx).is_ok())
                    {
                        report.patient_rows_ok += 1;
                    } else {
                        report.failures.push(format!(
                            "row {name}/{id}: does not open under its patient's keys"
                        ));
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }
}

impl Rotation<'_> {
    /// Compromise of data key `key`, wherever the clinic holds it: the
    /// clinic keyring ([`Rotation::data_key_compromised`]), else a
    /// patient's keyring ([`Rotation::subject_key_compromised`]), else a
    /// bucket keyring ([`Rotation::bucket_key_compromised`]). An unfinished
    /// job for the key is resumed.
    ///
    /// # Errors
    ///
    /// [`CoreError::Invalid`] for a key no keyring holds (or holds
    /// destroyed); otherwise as the call that handles it.
    pub async fn key_compromised(
        &self,
        admin: &Principal,
        key: u32,
        dry_run: bool,
        progress: OnProgress<'_>,
    ) -> Result<CompromiseReport, CoreError> {
        let c = &self.clinic.inner;
        // Which keyring holds it is found first, so the one call made is
        // the one audited.
        if c.clinic_holds(key).await? {
            return self
                .data_key_compromised(admin, key, dry_run, progress)
                .await
                .map(CompromiseReport::Clinic);
        }
        let resuming = c
            .job::<SubjectJob>(SUBJECT_JOB)
            .await?
            .is_some_and(|(_, j)| j.old == key);
        if !resuming && c.subjects.bucket_holding(key).await?.is_some() {
            return self
                .bucket_key_compromised(admin, key, dry_run)
                .await
                .map(CompromiseReport::Bucket);
        }
        // A patient's key, or no one's (refused, audited, there).
        self.subject_key_compromised(admin, key, dry_run, progress)
            .await
            .map(CompromiseReport::Subject)
    }

    /// Compromise of key `key` of a bucket keyring (which seals patients'
    /// subject keyrings, never data): the bucket gets a new key, every
    /// subject keyring of the bucket is re-sealed under it, then every
    /// older key of the bucket is destroyed. Nodes read bucket keyrings
    /// afresh on each use, so no reload window is needed. Run again after
    /// a crash: it finishes the job.
    ///
    /// A copy of the database taken while the key was exposed still yields
    /// the bucket's subject keyrings to whoever holds the key: replace the
    /// patients' keys too if that is feared (`docs/key-rotation.md`).
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for anyone but an administrator;
    /// [`CoreError::Invalid`] for a key no bucket keyring holds (or holds
    /// destroyed); [`CoreError::Corrupt`] for a subject row of the bucket
    /// that does not open and is not erased (nothing is destroyed);
    /// storage and KMS errors (run again).
    pub async fn bucket_key_compromised(
        &self,
        admin: &Principal,
        key: u32,
        dry_run: bool,
    ) -> Result<BucketKeyReport, CoreError> {
        let c = &self.clinic.inner;
        c.decide_compromise(admin, "bucket-key", key, dry_run)
            .await?;
        let bucket = c
            .subjects
            .bucket_holding(key)
            .await?
            .ok_or(CoreError::Invalid(
                "data key id: in no keyring of the clinic, or already destroyed",
            ))?;
        let mut report = BucketKeyReport {
            dry_run,
            bucket,
            old_key: key,
            subjects_resealed: 0,
            destroyed: Vec::new(),
        };
        if dry_run {
            report.subjects_resealed = c.subjects.bucket_size(bucket).await?;
            return Ok(report);
        }
        (report.subjects_resealed, report.destroyed) =
            c.subjects.replace_compromised_bucket_key(bucket).await?;
        c.audit
            .record(AuditEvent::by(
                admin,
                "RotateKeys",
                format!(
                    "keys:bucket-key compromise done bucket={bucket} destroyed={:?}",
                    report.destroyed
                ),
                Outcome::Allowed,
            ))
            .await?;
        Ok(report)
    }

    /// Compromise of data key `key` of one patient's subject keyring: every
    /// row of that patient under it is re-sealed under a fresh key of the
    /// patient's keyring, the key is marked compromised, two checks a
    /// reload window apart must find no row of the patient under it, and
    /// the key is destroyed. The report lists every row re-sealed. Run
    /// again after a crash or an error: the job resumes where it stopped.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for anyone but an administrator;
    /// [`CoreError::Invalid`] for a key no live patient's keyring holds (or
    /// holds destroyed); [`CoreError::Conflict`] for one that several hold,
    /// when a job for another subject key is unfinished, or when another
    /// run of this one is progressing; [`CoreError::Erased`] when the patient was
    /// erased meanwhile (nothing is left to re-seal: run again to clear the
    /// job); [`CoreError::Corrupt`] for a patient row whose key-id column
    /// does not match its envelope (nothing is destroyed); storage and KMS
    /// errors (run again).
    pub async fn subject_key_compromised(
        &self,
        admin: &Principal,
        key: u32,
        dry_run: bool,
        progress: OnProgress<'_>,
    ) -> Result<SubjectKeyReport, CoreError> {
        let c = &self.clinic.inner;
        c.decide_compromise(admin, "subject-key", key, dry_run)
            .await?;
        let existing = c.job::<SubjectJob>(SUBJECT_JOB).await?;
        if existing.as_ref().is_some_and(|(_, j)| j.old != key) {
            return Err(CoreError::Conflict(
                "another subject-key compromise is unfinished: run it again first",
            ));
        }
        let subject = match &existing {
            Some((_, j)) => RowId::new(j.subject.clone())?,
            None => c.holder_of(key).await?,
        };
        let mut report = SubjectKeyReport {
            dry_run,
            resumed: existing.is_some(),
            subject: subject.as_str().to_owned(),
            old_key: key,
            new_key: existing.as_ref().map_or(0, |(_, j)| j.new),
            destroyed: false,
            rows: BTreeMap::new(),
            touched: Vec::new(),
            foreign_rows: 0,
        };
        if dry_run {
            progress(Progress {
                phase: Phase::Counting,
                done: 0,
                total: 1,
            });
            let s = c.subjects.stored_keys(&subject).await?;
            (report.rows, report.foreign_rows) =
                c.subject_rows_under(&s, &subject, key, false).await?;
            return Ok(report);
        }
        let (row, job) = match existing {
            Some(found) => found,
            None => {
                // One key job at a time: a clinic data-key job re-seals the
                // job rows and may destroy the key the touched pages are
                // sealed under.
                if c.job_exists(super::data_key::KEY_JOB).await? {
                    return Err(CoreError::Conflict(
                        "a data-key rotation of the clinic keyring is unfinished: run it again first",
                    ));
                }
                clear_touched(c, PAGES).await?;
                let (_, new) = c.subjects.change(&subject, |s| Ok(s.add_key()?)).await?;
                let job = SubjectJob {
                    subject: subject.as_str().to_owned(),
                    old: key,
                    new: new.get(),
                    step: Step::Added,
                    changed_ms: now_ms(),
                    passes: Passes::default(),
                };
                (c.insert_job(SUBJECT_JOB, &job).await?, job)
            }
        };
        report.new_key = job.new;
        match self
            .run_subject_job(admin, &subject, row, job, &mut report, progress)
            .await
        {
            Err(CoreError::Erased) => {
                // Nothing of the patient opens any more: nothing to do. On
                // record first; the job goes once that is done.
                c.audit
                    .record(AuditEvent::by(
                        admin,
                        "RotateKeys",
                        format!("keys:subject-key:{key} compromise ended: patient erased"),
                        Outcome::Allowed,
                    ))
                    .await?;
                clear_touched(c, PAGES).await?;
                if let Some((row, _)) = c.job::<SubjectJob>(SUBJECT_JOB).await? {
                    c.store.delete(&jobs()?, &row.id, row.version).await?;
                }
                Err(CoreError::Erased)
            }
            other => other.map(|()| report),
        }
    }

    async fn run_subject_job(
        &self,
        admin: &Principal,
        subject: &RowId,
        mut row: Row,
        mut job: SubjectJob,
        report: &mut SubjectKeyReport,
        progress: OnProgress<'_>,
    ) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        let window = self.clinic.reload_window();
        let (old, new) = (key_id(job.old)?, key_id(job.new)?);
        let step = |s: &mut Keyring, to: KeyState| -> Result<(), CoreError> {
            match s.key(old).map(|k| k.state) {
                Some(state) if state == to => Ok(()),
                Some(_) if to == KeyState::Compromised => Ok(s.mark_compromised(old)?),
                Some(_) => Ok(s.destroy(old)?),
                None => Err(CoreError::Corrupt("subject keyring lost the rotated key")),
            }
        };
        let mut late = 0;
        loop {
            match job.step {
                Step::Added => {
                    wait(Phase::AnnounceKey, job.changed_ms, window, progress).await;
                    c.subjects.change(subject, |s| Ok(s.promote(new)?)).await?;
                    job.step = Step::Promoted;
                }
                Step::Promoted => {
                    wait(Phase::PromoteKey, job.changed_ms, window, progress).await;
                    self.reseal_subject(subject, &mut row, &mut job, progress)
                        .await?;
                    job.step = Step::Resealed;
                }
                Step::Resealed => {
                    c.subjects
                        .change(subject, |s| step(s, KeyState::Compromised))
                        .await?;
                    job.step = Step::Marked;
                }
                Step::Marked | Step::CheckedOnce => {
                    wait(Phase::VerifyRows, job.changed_ms, window, progress).await;
                    let s = c.subjects.stored_keys(subject).await?;
                    let (none, foreign) = c.subject_none_under(&s, subject, job.old).await?;
                    report.foreign_rows = foreign;
                    if !none {
                        late_rows(&mut late)?;
                        job.passes.restart();
                        self.reseal_subject(subject, &mut row, &mut job, progress)
                            .await?;
                        job.step = Step::Marked;
                    } else if job.step == Step::Marked {
                        job.step = Step::CheckedOnce;
                    } else {
                        break;
                    }
                }
            }
            job.changed_ms = now_ms();
            c.save_job(&mut row, &job).await?;
        }
        // The list of what was touched is read before the key goes, so a
        // page that does not open stops the job with the key still there.
        let (touched, stored) = read_touched(c, PAGES).await?;
        report.touched = touched;
        c.subjects
            .change(subject, |s| step(s, KeyState::Destroyed))
            .await?;
        report.destroyed = true;
        report.rows = job.passes.rows.clone();
        c.audit
            .record(AuditEvent::by(
                admin,
                "RotateKeys",
                format!(
                    "keys:subject-key compromise done old={} new={} rows={}",
                    job.old,
                    job.new,
                    report.total_rows()
                ),
                Outcome::Allowed,
            ))
            .await?;
        delete_touched(c, &stored).await?;
        c.store.delete(&jobs()?, &row.id, row.version).await?;
        tracing::info!(rows = report.total_rows(), "subject-key compromise done");
        Ok(())
    }

    /// Passes over the subject's rows under the old key until one finds
    /// nothing.
    async fn reseal_subject(
        &self,
        subject: &RowId,
        row: &mut Row,
        job: &mut SubjectJob,
        progress: OnProgress<'_>,
    ) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        let mut done = 0u64;
        let mut tries = 0;
        loop {
            while let Some((coll, field)) = target(job.passes.target)? {
                progress(Progress {
                    phase: Phase::ResealRows,
                    done,
                    total: done,
                });
                let s = c.subjects.stored_keys(subject).await?;
                let after = job.passes.cursor.as_deref().map(RowId::new).transpose()?;
                let (rows, next) = c
                    .subject_page(&coll, field, job.old, after.as_ref(), PAGE)
                    .await?;
                let mut writes = Vec::with_capacity(rows.len() + 2);
                let mut ids = Vec::new();
                for r in &rows {
                    if let Some(w) = c.subject_resealed(&s, subject, &coll, field, r, job.old)? {
                        writes.push(w);
                        ids.push(r.id.as_str().to_owned());
                    }
                }
                let after = page_done(
                    c,
                    PAGES,
                    row,
                    job,
                    (&coll, &ids, next.as_ref()),
                    &mut writes,
                )?;
                match c.store.commit(&writes).await {
                    Ok(versions) => {
                        row.version = versions.last().copied().unwrap_or(row.version + 1);
                        *job = after;
                        done += ids.len() as u64;
                        tries = 0;
                    }
                    // A row changed meanwhile (a concurrent update, never
                    // overwritten): the page again, read afresh.
                    Err(StorageError::VersionConflict { .. } | StorageError::NotFound)
                        if !ids.is_empty() =>
                    {
                        tries += 1;
                        if tries > super::RETRIES {
                            return Err(CoreError::Conflict("a row kept changing"));
                        }
                        if c.get(&jobs()?, &row.id).await?.map(|r| r.version) != Some(row.version) {
                            return Err(CoreError::Conflict(
                                "another run of this rotation is in progress",
                            ));
                        }
                    }
                    Err(e) => return Err(job_conflict(e)),
                }
            }
            if !job.passes.again() {
                return Ok(());
            }
            c.save_job(row, job).await?;
        }
    }
}
