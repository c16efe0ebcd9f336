//! Key rotation, the service behind the `rotate` tool. Three kinds, kept
//! apart (`docs/key-rotation.md`):
//!
//! 1. **KMS master-key rotation** ([`Rotation::rotate_kek`]): every KMS key
//!    the clinic uses gets a new version; the sealed keysets in the key
//!    store and every document's data key are re-wrapped under it with KMS
//!    `ReEncrypt`. No record or document body is decrypted, and blobs are
//!    never rewritten: a document's re-wrapped data key goes into its
//!    metadata row, so the time does not depend on document sizes.
//!    Afterwards the previous versions wrap nothing the clinic needs.
//! 2. **Data-key rotation** ([`Rotation::rotate_data_key`]): a fresh
//!    primary in the clinic keyring, announced to every node before
//!    anything is sealed under it; optionally every row under older keys
//!    re-sealed and the older keys retired.
//! 3. **Compromise**: of one document's data key
//!    ([`Rotation::document_key_compromised`]: re-encrypted under a fresh
//!    key into a new blob, the old blob deleted); of a clinic-keyring data
//!    key ([`Rotation::data_key_compromised`]: every row under it re-sealed,
//!    checked twice, the audit chain checkpointed, the key destroyed); of a
//!    KMS key version ([`Rotation::kek_version_compromised`]: kind 1, a
//!    check of every wrapped key's version, the version destroyed).
//!
//! A job is **online**: the clinic keeps serving (keysets are stored with
//! compare-and-swap on their version, document rows with compare-and-swap
//! on theirs, retried on a concurrent change), **resumable**: its progress
//! is a row in storage, so a job killed at any instant finishes when run
//! again, and **verifiable**: [`Rotation::verify`] opens every keyset and
//! every document and compares each document with its recorded SHA-256.

use std::collections::BTreeMap;

use careconnect_authz::{Action, Principal};
use careconnect_crypto::{Keyring, KmsKeyId, TrustedKeys};
use careconnect_storage::{BlobId, Collection, Row, RowId, StorageError, Write};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{AuditEvent, Outcome};
use crate::clinic::{Clinic, Inner};
use crate::error::CoreError;
use crate::medicloud::{DocRow, doc_context, docs};
use crate::rows;

mod data_key;

/// The UDAP collections rotation re-seals (checked against the authz crate).
#[cfg(all(test, feature = "udap"))]
pub(crate) fn data_key_udap_collections() -> [&'static str; 3] {
    data_key::UDAP_COLLECTIONS
}
mod kek_version;
mod subject_key;
pub use data_key::{DataKeyKind, DataKeyReport};
pub use kek_version::KekVersionReport;
pub use subject_key::{BucketKeyReport, CompromiseReport, SubjectKeyReport};

/// Where rotation jobs keep their progress.
const JOBS_COLLECTION: &str = "core_rotation_jobs";
/// The row of the KMS master-key rotation job.
const KEK_JOB: &str = "kek";
/// Document rows per batch (one compare-and-swap commit each).
const BATCH: usize = 100;
/// Attempts at a row or keyset that keeps changing under the job.
const RETRIES: usize = 8;

/// What a job is doing, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Phase {
    /// Counting what there is to do.
    Counting,
    /// Giving KMS keys new versions.
    RotateKmsKeys,
    /// Re-wrapping the sealed keysets in the key store.
    RewrapKeysets,
    /// Re-wrapping documents' data keys.
    RewrapDocuments,
    /// Opening keysets.
    VerifyKeysets,
    /// Opening documents and checking their hashes.
    VerifyDocuments,
    /// Waiting for every node to load the new data key (`done` and
    /// `total` in milliseconds).
    AnnounceKey,
    /// Waiting for every node to seal with the new primary (milliseconds).
    PromoteKey,
    /// Re-sealing rows under the old data keys.
    ResealRows,
    /// Waiting a reload window, then checking that no row is under the
    /// compromised key (milliseconds).
    VerifyRows,
    /// Opening every row the clinic keyring seals.
    OpenRows,
    /// Opening every patient row under its patient's subject keyring.
    OpenPatientRows,
}

/// A progress report: `done` of `total` in `phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Items done in it.
    pub done: u64,
    /// Items in it.
    pub total: u64,
}

/// Receives progress reports.
pub type OnProgress<'a> = &'a mut (dyn FnMut(Progress) + Send);

/// One KMS key in a master-key rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KekChange {
    /// The key.
    pub key: String,
    /// Its version when the job started.
    pub from_version: u32,
    /// Its version now (equal to `from_version` in a dry run).
    pub to_version: u32,
}

/// What a master-key rotation did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KekReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// The job resumed one that an earlier run left unfinished.
    pub resumed: bool,
    /// Every KMS key of the clinic.
    pub kms_keys: Vec<KekChange>,
    /// Sealed keysets re-wrapped.
    pub keysets: u64,
    /// Documents whose data key was re-wrapped.
    pub documents: u64,
    /// Documents deleted while the job ran (nothing to re-wrap).
    pub documents_gone: u64,
}

/// What [`Rotation::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Keysets that open.
    pub keysets_ok: u64,
    /// Documents that open whole with their recorded hash.
    pub documents_ok: u64,
    /// Documents whose data key is in their metadata (re-wrapped by a
    /// rotation) rather than only in the blob's header.
    pub documents_rewrapped: u64,
    /// Rows the clinic keyring seals that open (every collection it seals;
    /// patient data under subject keys is not counted here).
    pub rows_ok: u64,
    /// Those rows by the data key that sealed them.
    pub rows_by_key: BTreeMap<u32, u64>,
    /// Patients' subject keyrings that open (erased patients' are not
    /// counted; one that does not open, and is not erased, is a failure).
    pub subjects_ok: u64,
    /// Patient data (records, notes, appointments, prescription bodies)
    /// that opens under its patient's keyring.
    pub patient_rows_ok: u64,
    /// Patient data under a key no live patient's keyring holds: an erased
    /// patient's (crypto-shredded), or forged. It opens for no one.
    pub patient_rows_unattributed: u64,
    /// What failed: `keyset NAME: why`, `document ID: why` or
    /// `row COLLECTION/ID: why`.
    pub failures: Vec<String>,
}

impl VerifyReport {
    /// Whether everything opened.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What replacing a compromised document key did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocumentKeyReport {
    /// The document.
    pub document: String,
    /// Its size in bytes, re-encrypted whole.
    pub size: u64,
    /// Whether the old blob, with the compromised key's wrapped copy, is
    /// gone (if not, collecting orphans deletes it later).
    pub old_blob_deleted: bool,
}

/// The checkpoint of a master-key rotation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KekJob {
    /// Each KMS key's version when the job started.
    from: BTreeMap<String, u32>,
    /// Keysets done.
    keysets_done: bool,
    /// The last document row done, in id order.
    cursor: Option<String>,
    documents: u64,
    documents_gone: u64,
}

/// Key rotation.
#[derive(Debug, Clone, Copy)]
pub struct Rotation<'a> {
    clinic: &'a Clinic,
}

impl Clinic {
    /// Key rotation: KMS master keys (and, later, data keys and compromise).
    pub fn rotation(&self) -> Rotation<'_> {
        Rotation { clinic: self }
    }
}

fn jobs() -> Result<Collection, CoreError> {
    Ok(Collection::new(JOBS_COLLECTION)?)
}

/// A job row's compare-and-swap lost: another run moved it (or ended it).
fn job_conflict(e: StorageError) -> CoreError {
    match e {
        StorageError::VersionConflict { .. } | StorageError::NotFound => {
            CoreError::Conflict("another run of this rotation is in progress")
        }
        e => e.into(),
    }
}

impl Inner {
    /// `row` sealed again holding `value`, as a compare-and-swap on the
    /// version read, its index entries kept.
    fn resealed<T: Serialize>(
        &self,
        coll: &Collection,
        row: &Row,
        value: &T,
    ) -> Result<Write, CoreError> {
        let mut data = rows::seal(&self.keys, coll, &row.id, value)?;
        data.indexes = row.indexes.clone();
        Ok(Write::Update {
            coll: coll.clone(),
            id: row.id.clone(),
            expected: row.version,
            data,
        })
    }

    /// Inserts job row `id` holding `job`; a second run of the same job
    /// meets it there and stops.
    async fn insert_job<T: Serialize>(&self, id: &str, job: &T) -> Result<Row, CoreError> {
        let coll = jobs()?;
        let id = RowId::new(id)?;
        let data = rows::seal(&self.keys, &coll, &id, job)?;
        match self.store.insert(&coll, &id, data).await {
            Ok(_) => {}
            Err(StorageError::DuplicateId) => {
                return Err(CoreError::Conflict(
                    "another run of this rotation is in progress",
                ));
            }
            Err(e) => return Err(e.into()),
        }
        self.get(&coll, &id).await?.ok_or(CoreError::NotFound)
    }

    /// Asks the policy whether `admin` may have key `key` of `keyring`
    /// replaced as compromised (audited as `keys:{keyring}:{key}
    /// compromised`, with ` dry-run` for a dry run).
    async fn decide_compromise(
        &self,
        admin: &Principal,
        keyring: &str,
        key: u32,
        dry_run: bool,
    ) -> Result<(), CoreError> {
        let what = format!(
            "keys:{keyring}:{key} compromised{}",
            if dry_run { " dry-run" } else { "" }
        );
        self.decide_system(admin, Action::RotateKeys, what).await
    }

    /// Whether job `name` is unfinished (its row exists).
    async fn job_exists(&self, name: &str) -> Result<bool, CoreError> {
        Ok(self.get(&jobs()?, &RowId::new(name)?).await?.is_some())
    }

    /// The unfinished job `name`: its row and checkpoint.
    async fn job<T: DeserializeOwned>(&self, name: &str) -> Result<Option<(Row, T)>, CoreError> {
        let coll = jobs()?;
        let Some(row) = self.get(&coll, &RowId::new(name)?).await? else {
            return Ok(None);
        };
        let job = rows::open::<T>(&self.keys.current(), &coll, &row)
            .ok_or(CoreError::Corrupt("rotation job row"))?;
        Ok(Some((row, job)))
    }

    /// The job row's update to `job`, for a commit of its own or with a
    /// page of work.
    fn job_write<T: Serialize>(&self, row: &Row, job: &T) -> Result<Write, CoreError> {
        self.resealed(&jobs()?, row, job)
    }

    /// Saves the job's progress (compare-and-swap on the row's version:
    /// two runs of one job at once stop one of them here).
    async fn save_job<T: Serialize>(&self, row: &mut Row, job: &T) -> Result<(), CoreError> {
        let write = self.job_write(row, job)?;
        let versions = self.store.commit(&[write]).await.map_err(job_conflict)?;
        row.version = versions.first().copied().unwrap_or(row.version + 1);
        Ok(())
    }

    /// Re-wraps one keyset under the current version of `kms_key`;
    /// `false` when it does not exist (yet).
    async fn rewrap_keyset(&self, name: &str, kms_key: &KmsKeyId) -> Result<bool, CoreError> {
        for _ in 0..RETRIES {
            let (version, sealed) = match self.keystore.load(name).await {
                Ok(found) => found,
                Err(StorageError::NotFound) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            let rewrapped = Keyring::rewrap_keyset(
                self.kms.as_ref(),
                &TrustedKeys::from(kms_key),
                &sealed,
                kms_key,
            )
            .await?;
            match self.keystore.store(name, Some(version), rewrapped).await {
                Ok(_) => return Ok(true),
                Err(StorageError::VersionConflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict("a keyset kept changing"))
    }

    /// Document row `row` with its data key re-wrapped under the current
    /// version of the documents' KMS key; `None` if its blob is gone.
    async fn rewrapped_doc(
        &self,
        coll: &Collection,
        row: &Row,
    ) -> Result<Option<Write>, CoreError> {
        let mut doc = rows::open::<DocRow>(&self.keys.current(), coll, row)
            .filter(|d| d.info.id == row.id.as_str())
            .ok_or(CoreError::Corrupt("a document's metadata does not open"))?;
        let key = self.documents_key()?;
        let ctx = doc_context(&doc.info.id);
        // Only the header is read: the time must not depend on the size.
        let Some(wrapped) = self.doc_wrapped_key(&doc, &key).await? else {
            return Ok(None);
        };
        let wrapped = self.kms.re_encrypt(&key, &wrapped, &ctx, &key).await?;
        doc.rewrapped = Some(hex::encode(wrapped.as_bytes()));
        Ok(Some(self.resealed(coll, row, &doc)?))
    }

    /// Re-wraps one document row, re-reading it while it keeps changing;
    /// `false` when it (or its blob) is gone.
    async fn rewrap_doc_alone(&self, coll: &Collection, id: &RowId) -> Result<bool, CoreError> {
        for _ in 0..RETRIES {
            let Some(row) = self.get(coll, id).await? else {
                return Ok(false);
            };
            let Some(write) = self.rewrapped_doc(coll, &row).await? else {
                return Ok(false);
            };
            match self.store.commit(&[write]).await {
                Ok(_) => return Ok(true),
                Err(StorageError::VersionConflict { .. }) => {}
                Err(StorageError::NotFound) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict("a document kept changing"))
    }

    async fn count(&self, coll: &Collection) -> Result<u64, CoreError> {
        let mut n = 0u64;
        let mut pages = self.pages(coll, 1000);
        while let Some(page) = pages.next().await? {
            n += page.len() as u64;
        }
        Ok(n)
    }
}

impl Rotation<'_> {
    /// KMS master-key rotation: a new version of every KMS key the clinic
    /// uses, then every sealed keyset and every document's data key
    /// re-wrapped under it (KMS `ReEncrypt`; no body is decrypted, no blob
    /// rewritten). Resumes a job an earlier run left unfinished. With
    /// `dry_run`, reports what it would touch and changes nothing.
    ///
    /// On AWS KMS each run is an on-demand rotation, which AWS caps per
    /// key; the KMS's own schedule ([`crate::medicloud::Medicloud::rotate_if_due`])
    /// is the routine path there, and old backing keys keep working.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for anyone but an administrator;
    /// [`CoreError::Conflict`] when another run of the job is progressing;
    /// [`CoreError::Corrupt`] for a document row that does not open (the
    /// job stops there and resumes from it); KMS and storage errors (run
    /// again to resume).
    pub async fn rotate_kek(
        &self,
        admin: &Principal,
        dry_run: bool,
        progress: OnProgress<'_>,
    ) -> Result<KekReport, CoreError> {
        let c = &self.clinic.inner;
        c.decide_system(
            admin,
            Action::RotateKeys,
            if dry_run {
                "keys:kek dry-run"
            } else {
                "keys:kek"
            }
            .into(),
        )
        .await?;
        let coll = docs()?;
        progress(Progress {
            phase: Phase::Counting,
            done: 0,
            total: 1,
        });
        let total_docs = c.count(&coll).await?;
        let mut report = KekReport {
            dry_run,
            ..KekReport::default()
        };
        let existing = c.job::<KekJob>(KEK_JOB).await?;
        if dry_run {
            for k in &c.kms_keys {
                let d = c.kms.describe(k).await?;
                report.kms_keys.push(KekChange {
                    key: k.as_str().to_owned(),
                    from_version: d.current_version,
                    to_version: d.current_version,
                });
            }
            report.resumed = existing.is_some();
            for (name, _) in &c.keysets {
                if c.keystore.load(name).await.is_ok() {
                    report.keysets += 1;
                }
            }
            report.documents = total_docs;
            return Ok(report);
        }
        let (mut row, mut job) = match existing {
            Some(found) => {
                report.resumed = true;
                found
            }
            None => self.start_kek_job().await?,
        };

        // 1. New versions, once: a key already past its version at the
        // start was rotated by this job before a crash (or by its schedule).
        for (i, k) in c.kms_keys.iter().enumerate() {
            progress(Progress {
                phase: Phase::RotateKmsKeys,
                done: i as u64,
                total: c.kms_keys.len() as u64,
            });
            let from = job.from.get(k.as_str()).copied().unwrap_or(0);
            let d = c.kms.describe(k).await?;
            let to = if d.current_version <= from {
                c.kms.rotate(k).await?.current_version
            } else {
                d.current_version
            };
            report.kms_keys.push(KekChange {
                key: k.as_str().to_owned(),
                from_version: from,
                to_version: to,
            });
        }

        // 2. The keysets.
        if !job.keysets_done {
            for (i, (name, kms_key)) in c.keysets.iter().enumerate() {
                progress(Progress {
                    phase: Phase::RewrapKeysets,
                    done: i as u64,
                    total: c.keysets.len() as u64,
                });
                if c.rewrap_keyset(name, kms_key).await? {
                    report.keysets += 1;
                }
            }
            job.keysets_done = true;
            c.save_job(&mut row, &job).await?;
        }

        // 3. The documents, a batch at a time, checkpointed after each.
        loop {
            progress(Progress {
                phase: Phase::RewrapDocuments,
                done: job.documents + job.documents_gone,
                total: total_docs.max(job.documents + job.documents_gone),
            });
            let after = job.cursor.as_deref().map(RowId::new).transpose()?;
            let page = c.store.list(&coll, after.as_ref(), BATCH).await?;
            let Some(last) = page.rows.last().map(|r| r.id.clone()) else {
                break;
            };
            let mut writes = Vec::with_capacity(page.rows.len());
            let mut gone = 0;
            for r in &page.rows {
                match c.rewrapped_doc(&coll, r).await? {
                    Some(w) => writes.push(w),
                    None => gone += 1,
                }
            }
            let committed = if writes.is_empty() {
                Ok(Vec::new())
            } else {
                c.store.commit(&writes).await
            };
            match committed {
                Ok(_) => {
                    job.documents += writes.len() as u64;
                    job.documents_gone += gone;
                }
                // A row changed or went meanwhile: one at a time.
                Err(StorageError::VersionConflict { .. } | StorageError::NotFound) => {
                    for r in &page.rows {
                        if c.rewrap_doc_alone(&coll, &r.id).await? {
                            job.documents += 1;
                        } else {
                            job.documents_gone += 1;
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
            job.cursor = Some(last.as_str().to_owned());
            c.save_job(&mut row, &job).await?;
        }
        // 4. What appeared meanwhile: a keyset made during the job (a new
        // bucket) and documents whose metadata came after the job passed
        // their place may be under the previous versions: once more.
        for (name, kms_key) in &c.keysets {
            c.rewrap_keyset(name, kms_key).await?;
        }
        let mut pages = c.pages(&coll, BATCH);
        while let Some(page) = pages.next().await? {
            for r in &page {
                let late = rows::open::<DocRow>(&c.keys.current(), &coll, r)
                    .is_some_and(|d| d.rewrapped.is_none());
                if late && c.rewrap_doc_alone(&coll, &r.id).await? {
                    job.documents += 1;
                }
            }
        }
        report.documents = job.documents;
        report.documents_gone = job.documents_gone;
        // On record before the job row goes: a failure here leaves a job to
        // resume, not one to start again.
        c.audit
            .record(AuditEvent::by(
                admin,
                "RotateKeys",
                format!(
                    "keys:kek done keysets={} documents={}",
                    report.keysets, report.documents
                ),
                Outcome::Allowed,
            ))
            .await?;
        c.store.delete(&jobs()?, &row.id, row.version).await?;
        tracing::info!(
            keysets = report.keysets,
            documents = report.documents,
            "KMS master keys rotated"
        );
        Ok(report)
    }

    async fn start_kek_job(&self) -> Result<(Row, KekJob), CoreError> {
        let c = &self.clinic.inner;
        let mut from = BTreeMap::new();
        for k in &c.kms_keys {
            from.insert(
                k.as_str().to_owned(),
                c.kms.describe(k).await?.current_version,
            );
        }
        let job = KekJob {
            from,
            keysets_done: false,
            cursor: None,
            documents: 0,
            documents_gone: 0,
        };
        let row = c.insert_job(KEK_JOB, &job).await?;
        Ok((row, job))
    }

    /// Compromise of one document's data key: the document is opened and
    /// sealed again under a fresh data key into a new blob (its SHA-256 and
    /// size checked against those recorded at upload), its metadata row is
    /// switched to the new blob with compare-and-swap, and the old blob, the
    /// compromised key's wrapped copy, is deleted. A crash at any instant
    /// leaves the document opening, under the old key or the new; the blob
    /// left behind is an orphan that [`crate::medicloud::Medicloud::collect_orphans`]
    /// deletes.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for anyone but an administrator;
    /// [`CoreError::NotFound`] for an unknown document; the crypto error
    /// (tampered, truncated) or [`CoreError::Corrupt`] (another hash) when
    /// the document does not open whole as recorded, and
    /// [`CoreError::Conflict`] when it changed or went meanwhile: in each
    /// case nothing changes.
    pub async fn document_key_compromised(
        &self,
        admin: &Principal,
        id: &str,
    ) -> Result<DocumentKeyReport, CoreError> {
        let c = &self.clinic.inner;
        c.decide_system(admin, Action::RotateKeys, format!("keys:document:{id}"))
            .await?;
        let coll = docs()?;
        let row_id = RowId::new(id).map_err(|_| CoreError::NotFound)?;
        let row = c.get(&coll, &row_id).await?.ok_or(CoreError::NotFound)?;
        let doc = rows::open::<DocRow>(&c.keys.current(), &coll, &row)
            .filter(|d| d.info.id == id)
            .ok_or(CoreError::Corrupt("a document's metadata does not open"))?;
        // Open the old, seal the new, in one stream.
        let (mut plain_in, plain_out) = tokio::io::duplex(1 << 20);
        let opening = async {
            let r = c.stream_document(id, &doc, &mut plain_in).await;
            drop(plain_in);
            r
        };
        let (opened, sealed) = tokio::join!(opening, c.seal_to_blob(id, plain_out));
        let (n, blob, hash) = match (opened, sealed) {
            (Ok(_), Ok(done)) => done,
            (opened, sealed) => {
                if let Ok((_, blob, _)) = &sealed {
                    let _ = c.blobs.delete(blob).await;
                }
                opened?;
                sealed?;
                return Err(CoreError::Corrupt("document re-encryption stopped"));
            }
        };
        if n != doc.info.size || hex::encode(hash) != doc.info.sha256 {
            let _ = c.blobs.delete(&blob).await;
            return Err(CoreError::Corrupt(
                "document differs from its recorded hash",
            ));
        }
        let old_blob = BlobId::parse(&doc.blob)?;
        let replaced = DocRow {
            info: doc.info,
            blob: blob.as_str().to_owned(),
            rewrapped: None,
        };
        let swapped = c.store.commit(&[c.resealed(&coll, &row, &replaced)?]).await;
        if let Err(e) = swapped {
            let _ = c.blobs.delete(&blob).await;
            return Err(match e {
                StorageError::VersionConflict { .. } | StorageError::NotFound => {
                    CoreError::Conflict("the document changed meanwhile; run again")
                }
                e => e.into(),
            });
        }
        let old_blob_deleted = matches!(
            c.blobs.delete(&old_blob).await,
            Ok(()) | Err(StorageError::NotFound)
        );
        c.audit
            .record(AuditEvent::by(
                admin,
                "RotateKeys",
                format!("keys:document:{id} re-encrypted old_blob_deleted={old_blob_deleted}"),
                Outcome::Allowed,
            ))
            .await?;
        Ok(DocumentKeyReport {
            document: id.to_owned(),
            size: n,
            old_blob_deleted,
        })
    }

    /// Whether a master-key rotation is unfinished (run it again to finish).
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for anyone but an administrator;
    /// storage errors.
    pub async fn pending(&self, admin: &Principal) -> Result<bool, CoreError> {
        let c = &self.clinic.inner;
        c.decide_system(admin, Action::RotateKeys, "keys:status".into())
            .await?;
        Ok(c.job::<KekJob>(KEK_JOB).await?.is_some())
    }

    /// Opens every sealed keyset and every document (whole, verified chunk
    /// by chunk) and compares each document with its recorded SHA-256.
    /// Changes nothing.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for anyone but an administrator;
    /// storage errors that stop the walk (what fails to open is reported,
    /// not an error).
    pub async fn verify(
        &self,
        admin: &Principal,
        progress: OnProgress<'_>,
    ) -> Result<VerifyReport, CoreError> {
        let c = &self.clinic.inner;
        c.decide_system(admin, Action::RotateKeys, "keys:verify".into())
            .await?;
        let mut report = VerifyReport::default();
        for (i, (name, kms_key)) in c.keysets.iter().enumerate() {
            progress(Progress {
                phase: Phase::VerifyKeysets,
                done: i as u64,
                total: c.keysets.len() as u64,
            });
            let sealed = match c.keystore.load(name).await {
                Ok((_, sealed)) => sealed,
                Err(StorageError::NotFound) => continue,
                Err(e) => return Err(e.into()),
            };
            match Keyring::open_keyset(c.kms.as_ref(), &TrustedKeys::from(kms_key), &sealed).await {
                Ok(_) => report.keysets_ok += 1,
                Err(e) => report.failures.push(format!("keyset {name}: {e}")),
            }
        }
        let coll = docs()?;
        let total = c.count(&coll).await?;
        let mut done = 0u64;
        let mut pages = c.pages(&coll, BATCH);
        while let Some(page) = pages.next().await? {
            for row in &page {
                progress(Progress {
                    phase: Phase::VerifyDocuments,
                    done,
                    total: total.max(done),
                });
                done += 1;
                let id = row.id.as_str();
                let Some(doc) =
                    rows::open::<DocRow>(&c.keys.current(), &coll, row).filter(|d| d.info.id == id)
                else {
                    report
                        .failures
                        .push(format!("document {id}: metadata does not open"));
                    continue;
                };
                let mut hashed = HashSink::default();
                match c.stream_document(id, &doc, &mut hashed).await {
                    Ok(n)
                        if n == doc.info.size
                            && hex::encode(hashed.0.finalize()) == doc.info.sha256 =>
                    {
                        report.documents_ok += 1;
                        if doc.rewrapped.is_some() {
                            report.documents_rewrapped += 1;
                        }
                    }
                    Ok(_) => report
                        .failures
                        .push(format!("document {id}: content differs from its hash")),
                    Err(e) => report.failures.push(format!("document {id}: {e}")),
                }
            }
        }
        c.verify_rows(&mut report, progress).await?;
        c.verify_patient_rows(&mut report, progress).await?;
        Ok(report)
    }
}

/// Hashes what is written to it.
#[derive(Default)]
struct HashSink(Sha256);

impl tokio::io::AsyncWrite for HashSink {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.update(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
