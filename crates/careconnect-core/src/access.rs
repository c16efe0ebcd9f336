//! Who may touch which patient's data, decided and audited in one place.
//!
//! [`Gate::patient`] is the one door to a patient's clinical data: it reads
//! the care facts from storage (an administrator's assignment of a patient to
//! a doctor, a live break-glass declaration), asks the policy
//! ([`careconnect_authz::authorize`]), and writes an audit event whatever the
//! answer: allowed (flagged when it rests on an administrator override or on
//! break-glass) or denied. A caller gets an [`Access`] only when allowed; its
//! fields are private, so it cannot be made any other way.
//!
//! Break-glass (HIPAA 164.312(a)(2)(ii), emergency access): a doctor opens a
//! record outside their care by stating a reason. The declaration lasts a
//! bounded time ([`GateConfig::break_glass_for`], default one hour), every
//! access it allows is flagged in the audit log, and administrators have a
//! review list ([`Gate::break_glass_review`]).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use careconnect_authz::session::Clock;
use careconnect_authz::{
    Action, Basis, Care, Decision, DenyReason, Principal, Resource, Role, UserId, authorize,
};
use careconnect_crypto::SharedKeyring;
use careconnect_storage::{Collection, RecordStore, RowId, StorageError};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEvent, AuditTrail, Flag, MAX_REASON_CHARS, Outcome};
use crate::error::CoreError;
use crate::rows;

/// The collection of care assignments (doctor, patient).
pub const CARE_COLLECTION: &str = "core_care";
/// The collection of break-glass declarations (latest per doctor and patient).
pub const BREAK_GLASS_COLLECTION: &str = "core_break_glass";
/// Every break-glass declaration ever made, one row each (the review lists
/// them all; renewals are counted here).
pub const BREAK_GLASS_HISTORY_COLLECTION: &str = "core_break_glass_history";
/// The blind index of history rows: the (doctor, patient) pair.
const PAIR_INDEX: &str = "pair";
/// The shortest reason accepted for break-glass, in characters (after trimming).
pub const MIN_REASON_CHARS: usize = 10;

/// Settings of the [`Gate`].
#[derive(Debug, Clone, Copy)]
pub struct GateConfig {
    /// How long a break-glass declaration lasts. Default one hour.
    pub break_glass_for: Duration,
    /// Declarations one doctor may make for one patient in any 24 hours
    /// (the first and its renewals). Default 3.
    pub break_glass_per_day: u32,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            break_glass_for: Duration::from_secs(3600),
            break_glass_per_day: 3,
        }
    }
}

/// Proof that `principal` may do `action` to `patient`'s data, and that
/// the access was audited. Only [`Gate::patient`] makes one; it is not
/// `Clone`: use it for the one operation it was asked for, then drop it.
#[derive(Debug)]
pub struct Access {
    patient: UserId,
    action: Action,
    basis: Basis,
    audit_seq: u64,
}

impl Access {
    /// The patient whose data this opens.
    pub fn patient(&self) -> &UserId {
        &self.patient
    }

    /// The action it allows.
    pub fn action(&self) -> Action {
        self.action
    }

    /// Why it was allowed.
    pub fn basis(&self) -> Basis {
        self.basis
    }

    /// The audit entry that records it.
    pub fn audit_seq(&self) -> u64 {
        self.audit_seq
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct CareRow {
    doctor: UserId,
    patient: UserId,
    by: UserId,
    at: u64,
    /// The booking that made it (`None`: an administrator's assignment).
    #[serde(default)]
    appointment: Option<String>,
}

/// How long a care fact read from storage is trusted in memory. Changes
/// made through this gate take effect at once; changes made by another
/// node sharing the database take effect within this time.
pub const CARE_CACHE_TTL: Duration = Duration::from_secs(5);
const CARE_CACHE_MAX: usize = 50_000;

type CareCache = std::sync::Mutex<HashMap<(UserId, UserId), (Instant, Care, u64)>>;

/// A break-glass declaration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BreakGlass {
    /// The doctor who declared it.
    pub doctor: UserId,
    /// The patient it opens.
    pub patient: UserId,
    /// The stated reason.
    pub reason: String,
    /// When it was declared, Unix seconds.
    pub declared_at: u64,
    /// When it ends, Unix seconds.
    pub expires_at: u64,
}

/// The door to patients' clinical data: care facts, policy and audit.
#[derive(Clone)]
pub struct Gate {
    store: Arc<dyn RecordStore>,
    keys: SharedKeyring,
    audit: AuditTrail,
    clock: Arc<dyn Clock>,
    config: GateConfig,
    care: Collection,
    glass: Collection,
    glass_log: Collection,
    doctor_index: Option<Arc<careconnect_crypto::mac::MacKey>>,
    pseudonyms: Option<Arc<careconnect_crypto::mac::MacKey>>,
    cache: Arc<CareCache>,
    /// Bumped by every forget: a read that started before one is not cached.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

/// `row` written back as it is: a compare-and-swap that makes a batch fail
/// if the row changed since it was read.
pub(crate) fn unchanged(
    coll: &Collection,
    row: careconnect_storage::Row,
) -> careconnect_storage::Write {
    careconnect_storage::Write::Update {
        coll: coll.clone(),
        expected: row.version,
        data: careconnect_storage::RowData {
            key_id: row.key_id,
            envelope: row.envelope,
            indexes: row.indexes,
        },
        id: row.id,
    }
}

/// The blind-index name on care rows holding the doctor's MAC.
const DOCTOR_INDEX: &str = "doctor";

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn pair_id(kind: &[u8], doctor: &UserId, patient: &UserId) -> Result<RowId, CoreError> {
    Ok(RowId::digest(&[
        kind,
        doctor.issuer().as_bytes(),
        doctor.subject().as_bytes(),
        patient.issuer().as_bytes(),
        patient.subject().as_bytes(),
    ]))
}

impl Gate {
    /// A gate over `store`, sealing its rows with `keys` (a keyring, or a
    /// [`SharedKeyring`] a rotation replaces while this runs), auditing to
    /// `audit`.
    ///
    /// # Errors
    ///
    /// Never in practice (the collection names are valid constants).
    pub fn new(
        store: Arc<dyn RecordStore>,
        keys: impl Into<SharedKeyring>,
        audit: AuditTrail,
        clock: Arc<dyn Clock>,
        config: GateConfig,
    ) -> Result<Self, CoreError> {
        Ok(Self {
            store,
            keys: keys.into(),
            audit,
            clock,
            config,
            care: Collection::new(CARE_COLLECTION)?,
            glass: Collection::new(BREAK_GLASS_COLLECTION)?,
            glass_log: Collection::new(BREAK_GLASS_HISTORY_COLLECTION)?,
            doctor_index: None,
            pseudonyms: None,
            cache: Arc::default(),
            generation: Arc::default(),
        })
    }

    /// Names patients in the audit log by a pseudonym under `key` (a keyed
    /// MAC of the identity) instead of their identity, so the log names no
    /// one and an erased patient stays unnamed in it.
    #[must_use]
    pub fn with_pseudonyms(mut self, key: careconnect_crypto::mac::MacKey) -> Self {
        self.pseudonyms = Some(Arc::new(key));
        self
    }

    /// How the audit log names `patient`.
    fn audit_name(&self, patient: &UserId) -> String {
        match &self.pseudonyms {
            Some(k) => format!("patient:{}", crate::clinic::pseudonym_with(k, patient)),
            None => format!("patient:{patient}"),
        }
    }

    /// Indexes care rows by doctor under `key` (a keyed MAC of the
    /// doctor's identity), so [`Gate::patients_in_care`] need not scan, and
    /// names care and break-glass rows by a keyed MAC of the pair, so the
    /// database does not show who treats whom to someone who can hash
    /// identities.
    #[must_use]
    pub fn with_doctor_index(mut self, key: careconnect_crypto::mac::MacKey) -> Self {
        self.doctor_index = Some(Arc::new(key));
        self
    }

    /// The row id of a (doctor, patient) fact of `kind`.
    fn pair(&self, kind: &[u8], doctor: &UserId, patient: &UserId) -> Result<RowId, CoreError> {
        let Some(k) = &self.doctor_index else {
            return pair_id(kind, doctor, patient);
        };
        let mut msg = b"pair\0".to_vec();
        msg.extend_from_slice(kind);
        msg.push(0);
        msg.extend_from_slice(&crate::clinic::identity_bytes(doctor));
        msg.extend_from_slice(&crate::clinic::identity_bytes(patient));
        Ok(RowId::new(hex::encode(&k.tag(&msg)[..20]))?)
    }

    /// Drops what this gate remembers about (doctor, patient).
    pub(crate) fn forget(&self, doctor: &UserId, patient: &UserId) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(doctor.clone(), patient.clone()));
    }

    fn doctor_token(&self, doctor: &UserId) -> Option<careconnect_storage::IndexEntry> {
        self.doctor_index
            .as_ref()
            .map(|k| careconnect_storage::IndexEntry {
                name: DOCTOR_INDEX.into(),
                token: k.tag(&crate::clinic::identity_bytes(doctor)).to_vec(),
            })
    }

    /// The row that puts `patient` in `doctor`'s care, recorded as made by
    /// `by`, for a caller that writes it in a batch with other rows (a
    /// booking). When the patient is in the doctor's care already, the
    /// existing row rewritten unchanged: the batch then fails if that care
    /// ends meanwhile (a concurrent cancel), instead of leaving the booking
    /// without care.
    pub(crate) async fn care_write(
        &self,
        doctor: &UserId,
        patient: &UserId,
        by: &UserId,
        appointment: &str,
    ) -> Result<careconnect_storage::Write, CoreError> {
        // (Callers refuse this first, audited; never written regardless.)
        if doctor == patient {
            return Err(CoreError::Denied(DenyReason::SelfTreatment));
        }
        let id = self.pair(b"care", doctor, patient)?;
        if let Some(row) = self.get(&self.care, &id).await? {
            return Ok(unchanged(&self.care, row));
        }
        Ok(careconnect_storage::Write::Insert {
            coll: self.care.clone(),
            data: self.care_data(&id, doctor, patient, by, Some(appointment))?,
            id,
        })
    }

    /// The write that ends the care a cancelled `appointment` made: moved
    /// to `next` (another booking of the patient with this doctor) or
    /// removed. `None` when the care rests on something else (an
    /// administrator's assignment, another booking).
    pub(crate) async fn care_release(
        &self,
        doctor: &UserId,
        patient: &UserId,
        appointment: &str,
        next: Option<&str>,
    ) -> Result<Option<careconnect_storage::Write>, CoreError> {
        let id = self.pair(b"care", doctor, patient)?;
        let Some(row) = self.get(&self.care, &id).await? else {
            return Ok(None);
        };
        let Some(current) = rows::open::<CareRow>(&self.keys.current(), &self.care, &row) else {
            return Ok(None);
        };
        if current.appointment.as_deref() != Some(appointment) {
            return Ok(None);
        }
        Ok(Some(match next {
            Some(n) => careconnect_storage::Write::Update {
                coll: self.care.clone(),
                data: self.care_data(&id, doctor, patient, &current.by, Some(n))?,
                id,
                expected: row.version,
            },
            None => careconnect_storage::Write::Delete {
                coll: self.care.clone(),
                id,
                expected: row.version,
            },
        }))
    }

    fn care_data(
        &self,
        id: &RowId,
        doctor: &UserId,
        patient: &UserId,
        by: &UserId,
        appointment: Option<&str>,
    ) -> Result<careconnect_storage::RowData, CoreError> {
        let row = CareRow {
            doctor: doctor.clone(),
            patient: patient.clone(),
            by: by.clone(),
            at: self.clock.now(),
            appointment: appointment.map(str::to_owned),
        };
        let mut data = rows::seal(&self.keys, &self.care, id, &row)?;
        data.indexes.extend(self.doctor_token(doctor));
        Ok(data)
    }

    /// The patients in `doctor`'s care (assignments and appointments; not
    /// break-glass), from storage. Not audited: the caller audits the
    /// listing it serves.
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn patients_in_care(&self, doctor: &UserId) -> Result<Vec<UserId>, CoreError> {
        let rows = match self.doctor_token(doctor) {
            Some(token) => self.store.find(&self.care, &token).await?,
            None => {
                let mut out = Vec::new();
                let mut after = None;
                loop {
                    let page = self.store.list(&self.care, after.as_ref(), 1000).await?;
                    out.extend(page.rows);
                    match page.next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                out
            }
        };
        let mut patients: Vec<UserId> = rows
            .iter()
            .filter_map(|r| rows::open::<CareRow>(&self.keys.current(), &self.care, r))
            .filter(|c| c.doctor == *doctor)
            .map(|c| c.patient)
            .collect();
        patients.sort();
        patients.dedup();
        Ok(patients)
    }

    /// Audits a decision on the system itself and turns a denial into an error.
    async fn system_action(
        &self,
        who: &Principal,
        action: Action,
        resource: String,
    ) -> Result<u64, CoreError> {
        self.system_fact(who, action, &format!("{action:?}"), resource, None)
            .await
    }

    /// An administration action decided by the policy as `action` on the
    /// system, recorded under its own name `label` (so assigning and
    /// revoking, say, read apart in the log) with the facts an auditor
    /// needs in `facts` (sealed with the entry's reason).
    pub(crate) async fn system_fact(
        &self,
        who: &Principal,
        action: Action,
        label: &str,
        resource: String,
        facts: Option<serde_json::Value>,
    ) -> Result<u64, CoreError> {
        let decision = authorize(who, action, &Resource::System);
        let outcome = if decision.is_allowed() {
            Outcome::Allowed
        } else {
            Outcome::Denied
        };
        let mut event = AuditEvent::by(who, label, resource, outcome);
        if let Some(f) = facts {
            event = event.because(&f.to_string());
        }
        let seq = self.audit.record(event).await?;
        match decision {
            Decision::Allow(_) => Ok(seq),
            Decision::Deny(reason) => Err(CoreError::Denied(reason)),
        }
    }

    /// Records `who`'s `action` on `resource` as refused for `reason` (the
    /// reason named in the entry) and returns the refusal to give.
    pub(crate) async fn refuse(
        &self,
        who: &Principal,
        action: &str,
        resource: String,
        reason: DenyReason,
    ) -> CoreError {
        let why = match reason {
            DenyReason::SelfTreatment => "self-treatment: the actor is the patient",
            DenyReason::SelfGrant => "self-grant: another administrator must",
            _ => "not permitted",
        };
        let event = AuditEvent::by(who, action, resource, Outcome::Denied).because(why);
        match self.audit.record(event).await {
            Ok(_) => CoreError::Denied(reason),
            Err(e) => e,
        }
    }

    /// Refuses (audited) an action that would make someone their own
    /// doctor: `doctor` is `patient`. The one check for bookings, care
    /// assignments and break-glass; notes and prescriptions are refused by
    /// the policy ([`DenyReason::SelfTreatment`]).
    pub(crate) async fn refuse_self_treatment(
        &self,
        who: &Principal,
        action: &str,
        doctor: &UserId,
        patient: &UserId,
    ) -> Result<(), CoreError> {
        if doctor != patient {
            return Ok(());
        }
        let resource = self.audit_name(patient);
        Err(self
            .refuse(who, action, resource, DenyReason::SelfTreatment)
            .await)
    }

    /// An administrator puts `patient` in `doctor`'s care (an explicit
    /// assignment; appointments make one as well). No one is put in their
    /// own care, and an administrator does not put patients in their own
    /// care (another administrator must): both refused, audited.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] unless `admin` may assign roles (audited
    /// either way), or for care of oneself
    /// ([`DenyReason::SelfTreatment`]) or by oneself
    /// ([`DenyReason::SelfGrant`]); storage failures.
    pub async fn assign_care(
        &self,
        admin: &Principal,
        doctor: &UserId,
        patient: &UserId,
    ) -> Result<(), CoreError> {
        self.refuse_self_treatment(admin, "AssignCare", doctor, patient)
            .await?;
        let id = self.pair(b"care", doctor, patient)?;
        if admin.user == *doctor {
            let resource = self.audit_name(patient);
            return Err(self
                .refuse(admin, "AssignCare", resource, DenyReason::SelfGrant)
                .await);
        }
        // Named by the patient's pseudonym, with the doctor: the patient's
        // accounting shows who put them in whose care.
        self.system_fact(
            admin,
            Action::AssignRoles,
            "AssignCare",
            self.audit_name(patient),
            Some(serde_json::json!({ "doctor": doctor.subject(), "basis": "assignment" })),
        )
        .await?;
        let data = self.care_data(&id, doctor, patient, &admin.user, None)?;
        self.put(&self.care, &id, data).await?;
        self.forget(doctor, patient);
        Ok(())
    }

    /// Writes `data` as row `id`, inserting or replacing (compare-and-swap,
    /// retried when another writer got in between).
    async fn put(
        &self,
        coll: &Collection,
        id: &RowId,
        data: careconnect_storage::RowData,
    ) -> Result<(), CoreError> {
        for _ in 0..8 {
            let written = match self.get(coll, id).await? {
                None => self.store.insert(coll, id, data.clone()).await,
                Some(current) => {
                    self.store
                        .update(coll, id, current.version, data.clone())
                        .await
                }
            };
            match written {
                Ok(_) => return Ok(()),
                Err(
                    StorageError::DuplicateId
                    | StorageError::VersionConflict { .. }
                    | StorageError::NotFound,
                ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Storage(StorageError::Unavailable(
            "row kept changing under concurrent writers".into(),
        )))
    }

    /// An administrator ends an assignment.
    ///
    /// # Errors
    ///
    /// As [`Gate::assign_care`].
    pub async fn revoke_care(
        &self,
        admin: &Principal,
        doctor: &UserId,
        patient: &UserId,
    ) -> Result<(), CoreError> {
        let id = self.pair(b"care", doctor, patient)?;
        self.system_fact(
            admin,
            Action::AssignRoles,
            "RevokeCare",
            self.audit_name(patient),
            Some(serde_json::json!({ "doctor": doctor.subject() })),
        )
        .await?;
        for _ in 0..8 {
            let current = match self.store.get(&self.care, &id).await {
                Ok(r) => r,
                Err(StorageError::NotFound) => {
                    self.forget(doctor, patient);
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            match self.store.delete(&self.care, &id, current.version).await {
                Ok(()) | Err(StorageError::NotFound) => {
                    self.forget(doctor, patient);
                    return Ok(());
                }
                Err(StorageError::VersionConflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Storage(StorageError::Unavailable(
            "care row kept changing under concurrent writers".into(),
        )))
    }

    /// A doctor declares an emergency for `patient`, stating `reason`.
    ///
    /// # Errors
    ///
    /// [`CoreError::ReasonRequired`] for a reason of fewer than
    /// [`MIN_REASON_CHARS`] visible characters, or one holding a control or
    /// format character (zero-width, bidirectional: one line of plain text;
    /// nothing is stored or opened);
    /// [`CoreError::Denied`] for anyone but a doctor (audited); storage
    /// failures.
    pub async fn declare_break_glass(
        &self,
        doctor: &Principal,
        patient: &UserId,
        reason: &str,
    ) -> Result<BreakGlass, CoreError> {
        let reason = reason.trim();
        let id = self.pair(b"break-glass", &doctor.user, patient)?;
        let resource = format!("break-glass:{}", id.as_str());
        // Visible characters count; control and format characters (ten
        // zero-width spaces, a bidirectional override) make no reason.
        let visible = reason
            .chars()
            .filter(|c| !c.is_whitespace() && !careconnect_authz::is_invisible(*c))
            .count();
        let hidden = reason
            .chars()
            .any(|c| c != ' ' && careconnect_authz::is_invisible(c));
        if visible < MIN_REASON_CHARS || hidden {
            // Refused, and the attempt is on record.
            self.audit
                .record(AuditEvent::by(
                    doctor,
                    "DeclareBreakGlass",
                    resource,
                    Outcome::Denied,
                ))
                .await?;
            return Err(CoreError::ReasonRequired);
        }
        if !doctor.roles.contains(Role::Doctor) {
            self.audit
                .record(
                    AuditEvent::by(doctor, "DeclareBreakGlass", resource, Outcome::Denied)
                        .because(reason),
                )
                .await?;
            return Err(CoreError::Denied(DenyReason::NoRule));
        }
        self.refuse_self_treatment(doctor, "DeclareBreakGlass", &doctor.user, patient)
            .await?;
        let now = self.clock.now();
        // Renewals are bounded: a standing "emergency" is not one.
        let pair_index = careconnect_storage::IndexEntry::new(
            PAIR_INDEX,
            self.pair(b"break-glass-history", &doctor.user, patient)?
                .as_str()
                .as_bytes()
                .to_vec(),
        )?;
        let recent = self
            .store
            .find(&self.glass_log, &pair_index)
            .await?
            .iter()
            .filter_map(|r| rows::open::<BreakGlass>(&self.keys.current(), &self.glass_log, r))
            .filter(|b| {
                b.doctor == doctor.user
                    && b.patient == *patient
                    && b.declared_at.saturating_add(86_400) > now
            })
            .count();
        if recent >= self.config.break_glass_per_day as usize {
            self.audit
                .record(
                    AuditEvent::by(doctor, "DeclareBreakGlass", resource, Outcome::Denied).because(
                        &format!(
                            "renewals exhausted: {recent} declarations for this patient in 24 hours"
                        ),
                    ),
                )
                .await?;
            return Err(CoreError::Conflict(
                "break-glass was declared too often for this patient in the last 24 hours",
            ));
        }
        let declaration = BreakGlass {
            doctor: doctor.user.clone(),
            patient: patient.clone(),
            reason: reason.chars().take(MAX_REASON_CHARS).collect(),
            declared_at: now,
            expires_at: now.saturating_add(self.config.break_glass_for.as_secs()),
        };
        // Audited first: an emergency access nobody can see is not allowed.
        self.audit
            .record(
                AuditEvent::by(doctor, "DeclareBreakGlass", resource, Outcome::Allowed)
                    .flagged(Flag::BreakGlass)
                    .because(reason),
            )
            .await?;
        // Kept for good first (the review lists every declaration), then
        // made the live one for the pair.
        let log_id = crate::clinic::new_id()?;
        let mut logged = rows::seal(&self.keys, &self.glass_log, &log_id, &declaration)?;
        logged.indexes = vec![pair_index];
        self.store.insert(&self.glass_log, &log_id, logged).await?;
        let data = rows::seal(&self.keys, &self.glass, &id, &declaration)?;
        self.put(&self.glass, &id, data).await?;
        self.forget(&doctor.user, patient);
        Ok(declaration)
    }

    /// How `doctor` stands to `patient` now, from storage.
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn care(&self, doctor: &UserId, patient: &UserId) -> Result<Care, CoreError> {
        let now = self.clock.now();
        let key = (doctor.clone(), patient.clone());
        if let Some((at, care, until)) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied()
            && at.elapsed() < CARE_CACHE_TTL
            && (care != Care::BreakGlass || now < until)
        {
            return Ok(care);
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let (care, until) = self.care_from_storage(doctor, patient, now).await?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        // A change made through this gate while we read may be newer than
        // what we read: then it is not remembered.
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
            if cache.len() >= CARE_CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), care, until));
        }
        Ok(care)
    }

    async fn care_from_storage(
        &self,
        doctor: &UserId,
        patient: &UserId,
        now: u64,
    ) -> Result<(Care, u64), CoreError> {
        let care_id = self.pair(b"care", doctor, patient)?;
        if let Some(row) = self.get(&self.care, &care_id).await? {
            let assigned: Option<CareRow> = rows::open(&self.keys.current(), &self.care, &row);
            if assigned.is_some_and(|c| c.doctor == *doctor && c.patient == *patient) {
                return Ok((Care::InCare, 0));
            }
        }
        let glass_id = self.pair(b"break-glass", doctor, patient)?;
        if let Some(row) = self.get(&self.glass, &glass_id).await? {
            let declared: Option<BreakGlass> = rows::open(&self.keys.current(), &self.glass, &row);
            if let Some(b) = declared
                && b.doctor == *doctor
                && b.patient == *patient
                && now < b.expires_at
            {
                return Ok((Care::BreakGlass, b.expires_at));
            }
        }
        Ok((Care::None, 0))
    }

    async fn get(
        &self,
        coll: &Collection,
        id: &RowId,
    ) -> Result<Option<careconnect_storage::Row>, CoreError> {
        match self.store.get(coll, id).await {
            Ok(r) => Ok(Some(r)),
            Err(StorageError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The one door to `patient`'s clinical data for `who` doing `action`:
    /// reads the care facts, asks the policy, audits the outcome (flagged
    /// for administrator overrides and break-glass), and returns the proof.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited as denied); storage failures.
    pub async fn patient(
        &self,
        who: &Principal,
        action: Action,
        patient: &UserId,
    ) -> Result<Access, CoreError> {
        let care = if who.roles.contains(Role::Doctor) {
            self.care(&who.user, patient).await?
        } else {
            Care::None
        };
        let decision = authorize(who, action, &Resource::Patient { patient, care });
        let resource = self.audit_name(patient);
        let mut event = AuditEvent::by(
            who,
            format!("{action:?}"),
            resource,
            if decision.is_allowed() {
                Outcome::Allowed
            } else {
                Outcome::Denied
            },
        );
        if decision.is_admin_override() {
            event = event.flagged(Flag::AdminOverride);
        }
        if decision.is_break_glass() {
            event = event.flagged(Flag::BreakGlass);
        }
        let audit_seq = self.audit.record(event).await?;
        match decision {
            Decision::Allow(basis) => Ok(Access {
                patient: patient.clone(),
                action,
                basis,
                audit_seq,
            }),
            Decision::Deny(reason) => Err(CoreError::Denied(reason)),
        }
    }

    /// Deletes every care row, live break-glass declaration and kept
    /// declaration that names `patient` (an erasure: they name the patient,
    /// and a declaration carries its clinical reason, under the clinic
    /// keyring that outlives the erasure). Rows that do not open are left
    /// (they name no one anyone can read). Returns how many were deleted.
    pub(crate) async fn erase_patient_rows(&self, patient: &UserId) -> Result<usize, CoreError> {
        #[derive(serde::Deserialize)]
        struct Names {
            patient: UserId,
        }
        let mut deleted = 0;
        for coll in [&self.care, &self.glass, &self.glass_log] {
            let mut after = None;
            loop {
                let page = self.store.list(coll, after.as_ref(), 500).await?;
                for row in &page.rows {
                    let names: Option<Names> = rows::open(&self.keys.current(), coll, row);
                    if names.is_some_and(|n| n.patient == *patient) {
                        match self.store.delete(coll, &row.id, row.version).await {
                            Ok(()) => deleted += 1,
                            Err(StorageError::NotFound | StorageError::VersionConflict { .. }) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(_, p), _| p != patient);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(deleted)
    }

    /// Every break-glass declaration on record (each one, renewals
    /// included), newest first, for an administrator's review. Reading it is
    /// audited.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] unless `admin` may read the audit log; storage
    /// failures.
    pub async fn break_glass_review(
        &self,
        admin: &Principal,
    ) -> Result<Vec<BreakGlass>, CoreError> {
        self.system_action(admin, Action::ReadAuditLog, "break-glass:review".into())
            .await?;
        // Every declaration kept, and the live ones (declarations made
        // before the history was kept are only there).
        let mut out = Vec::new();
        for coll in [&self.glass_log, &self.glass] {
            let mut after = None;
            loop {
                let page = self.store.list(coll, after.as_ref(), 500).await?;
                out.extend(
                    page.rows
                        .iter()
                        .filter_map(|r| rows::open::<BreakGlass>(&self.keys.current(), coll, r)),
                );
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        out.sort_by(|a, b| {
            b.declared_at
                .cmp(&a.declared_at)
                .then_with(|| a.doctor.cmp(&b.doctor))
                .then_with(|| a.patient.cmp(&b.patient))
        });
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Anchor;
    use careconnect_authz::session::ManualClock;
    use careconnect_crypto::Keyring;
    use careconnect_storage::{MemoryStore, RowData};

    /// A genuine, live declaration for (house, bob) copied under the row of
    /// (house, alice) or (mallory, bob) opens nothing there.
    #[tokio::test]
    async fn a_declaration_moved_to_another_pair_opens_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let keys = Keyring::generate();
        let audit = AuditTrail::new(
            store.clone(),
            keys.clone(),
            Anchor::at(dir.path().join("a")),
        );
        let gate = Gate::new(
            store.clone(),
            keys,
            audit,
            Arc::new(ManualClock::new(1_800_000_000)),
            GateConfig::default(),
        )
        .unwrap();
        let u = |s: &str| UserId::new("https://idp.test", s).unwrap();
        let house = Principal::new(u("house"), [Role::Doctor].into_iter().collect());
        gate.declare_break_glass(&house, &u("bob"), "cardiac arrest in the lobby")
            .await
            .unwrap();
        assert_eq!(
            gate.care(&u("house"), &u("bob")).await.unwrap(),
            Care::BreakGlass
        );
        let genuine = store
            .get(
                &gate.glass,
                &pair_id(b"break-glass", &u("house"), &u("bob")).unwrap(),
            )
            .await
            .unwrap();
        for (doctor, patient) in [("house", "alice"), ("mallory", "bob")] {
            let id = pair_id(b"break-glass", &u(doctor), &u(patient)).unwrap();
            store
                .insert(
                    &gate.glass,
                    &id,
                    RowData {
                        key_id: genuine.key_id,
                        envelope: genuine.envelope.clone(),
                        indexes: vec![],
                    },
                )
                .await
                .unwrap();
            assert_eq!(
                gate.care(&u(doctor), &u(patient)).await.unwrap(),
                Care::None
            );
        }
    }
}
