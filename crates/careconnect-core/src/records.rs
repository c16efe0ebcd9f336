//! MedRecords (doctors): the patients in one's care, health records, and
//! clinical notes that are appended, never overwritten.
//!
//! A health record is one row per patient; each note is a row of its own
//! whose id is a keyed MAC of (patient, note number), so two doctors
//! appending at once get consecutive numbers and neither note is lost. An
//! amendment is a new note naming the one it amends: the history is the
//! list of notes itself. Everything is sealed under the patient's subject
//! keyring and bound to collection, row and field.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use careconnect_authz::{Action, Principal, Resource, Role, RoleSet, UserId};
use careconnect_crypto::Keyring;
use careconnect_storage::{Collection, StorageError, Write};
use serde::{Deserialize, Serialize};

use crate::clinic::{Clinic, Inner, MAX_NAME_CHARS, Person, text};
use crate::error::CoreError;
use crate::rows;
use crate::subjects::SUBJECT_CACHE_TTL;

/// The collection of health records (one per patient).
pub const RECORDS_COLLECTION: &str = "core_records";
/// The collection of clinical notes.
pub const NOTES_COLLECTION: &str = "core_notes";
/// The field a patient's record is sealed as, under the patient's keys.
pub(crate) const RECORD_FIELD: &str = "details";
/// The field a clinical note is sealed as, under the patient's keys.
pub(crate) const NOTE_FIELD: &str = "note";
/// Longest clinical note, in characters.
pub const MAX_NOTE_CHARS: usize = 10_000;
const PATIENT_INDEX: &str = "patient";
const BLOOD_TYPES: [&str; 9] = ["A+", "A-", "B+", "B-", "AB+", "AB-", "O+", "O-", "unknown"];

/// A patient's details, as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientDetails {
    /// Full name.
    pub name: String,
    /// Date of birth, `YYYY-MM-DD`.
    pub date_of_birth: String,
    /// ABO/Rh blood type (`A+` ... `O-`, or `unknown`).
    pub blood_type: String,
    /// Known allergies.
    pub allergies: Vec<String>,
}

impl PatientDetails {
    /// The details trimmed and checked: a name of 1 to 200 characters
    /// without control characters, a real `YYYY-MM-DD` date, a known blood
    /// type, at most 32 allergies of 1 to 100 characters.
    ///
    /// # Errors
    ///
    /// [`CoreError::Invalid`] naming the first field that fails.
    pub fn validated(&self) -> Result<Self, CoreError> {
        let dob = self.date_of_birth.trim();
        parse_date(dob).ok_or(CoreError::Invalid("date of birth"))?;
        if !BLOOD_TYPES.contains(&self.blood_type.trim()) {
            return Err(CoreError::Invalid("blood type"));
        }
        if self.allergies.len() > 32 {
            return Err(CoreError::Invalid("allergies"));
        }
        Ok(Self {
            name: text(&self.name, MAX_NAME_CHARS, "name", false)?,
            date_of_birth: dob.to_owned(),
            blood_type: self.blood_type.trim().to_owned(),
            allergies: self
                .allergies
                .iter()
                .map(|a| text(a, 100, "allergy", false))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// `YYYY-MM-DD` as a date.
pub(crate) fn parse_date(s: &str) -> Option<time::Date> {
    let mut parts = s.splitn(3, '-');
    let y: i32 = parts.next()?.parse().ok()?;
    let m: u8 = parts.next()?.parse().ok()?;
    let d: u8 = parts.next()?.parse().ok()?;
    if s.len() != 10 {
        return None;
    }
    time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecordRow {
    patient: UserId,
    details: PatientDetails,
    registered_at: u64,
}

/// One clinical note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// Its number in the patient's notes, from 1.
    pub seq: u32,
    /// The patient.
    pub patient: UserId,
    /// Who wrote it.
    pub author: UserId,
    /// When, Unix seconds.
    pub at: u64,
    /// The note.
    pub text: String,
    /// The earlier note this one amends, if any.
    pub amends: Option<u32>,
}

/// A health record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRecord {
    /// The patient.
    pub patient: UserId,
    /// Registered details.
    pub details: PatientDetails,
    /// Every note, oldest first.
    pub notes: Vec<Note>,
}

/// A line of the patient list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientSummary {
    /// The patient.
    pub patient: UserId,
    /// Their name.
    pub name: String,
    /// Their date of birth.
    pub date_of_birth: String,
}

/// MedRecords.
#[derive(Debug, Clone, Copy)]
pub struct MedRecords<'a> {
    clinic: &'a Clinic,
}

impl Clinic {
    /// MedRecords: the patient list, health records, clinical notes.
    pub fn records(&self) -> MedRecords<'_> {
        MedRecords { clinic: self }
    }
}

impl Inner {
    fn records(&self) -> Result<Collection, CoreError> {
        Ok(Collection::new(RECORDS_COLLECTION)?)
    }

    fn notes(&self) -> Result<Collection, CoreError> {
        Ok(Collection::new(NOTES_COLLECTION)?)
    }

    /// The keyring of a patient the clinic knows; never makes one.
    pub(crate) async fn existing_keys(&self, patient: &UserId) -> Result<Keyring, CoreError> {
        match self
            .subjects
            .keys_of_handle(&self.subjects.handle(patient)?)
            .await
        {
            Err(CoreError::Corrupt("subject handle")) => Err(CoreError::NotFound),
            other => other,
        }
    }

    /// The patient's record row opened, `None` when there is none.
    pub(crate) async fn record_of(
        &self,
        keys: &Keyring,
        patient: &UserId,
    ) -> Result<Option<PatientDetails>, CoreError> {
        let cached = self
            .details
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(patient)
            .filter(|(at, _)| at.elapsed() < SUBJECT_CACHE_TTL)
            .map(|(_, d)| d.clone());
        if cached.is_some() {
            return Ok(cached);
        }
        let coll = self.records()?;
        let id = self.keyed_id(&[b"record", &crate::clinic::identity_bytes(patient)])?;
        let found = self.get(&coll, &id).await?.and_then(|row| {
            Self::open_for::<RecordRow>(keys, &coll, &id, RECORD_FIELD, &row.envelope)
                .filter(|r| r.patient == *patient)
                .map(|r| r.details)
        });
        if let Some(d) = &found {
            let mut cache = self.details.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= 10_000 {
                cache.clear();
            }
            cache.insert(patient.clone(), (Instant::now(), d.clone()));
        }
        Ok(found)
    }

    /// Forgets what this node remembers of `patient` (an erasure).
    pub(crate) fn forget_patient(&self, patient: &UserId) {
        self.details
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(patient);
        self.forget_notes(patient);
    }

    /// `patient`'s record and notes under their keyring `keys`. No access
    /// check: the caller's.
    pub(crate) async fn health_record(
        &self,
        keys: &Keyring,
        patient: &UserId,
    ) -> Result<HealthRecord, CoreError> {
        let details = self
            .record_of(keys, patient)
            .await?
            .ok_or(CoreError::NotFound)?;
        let notes = self.notes_cached(keys, patient).await?;
        Ok(HealthRecord {
            patient: patient.clone(),
            details,
            notes: notes.as_ref().clone(),
        })
    }

    /// The patient's notes, from memory when read within
    /// [`crate::ClinicConfig::read_cache`].
    pub(crate) async fn notes_cached(
        &self,
        keys: &Keyring,
        patient: &UserId,
    ) -> Result<Arc<Vec<Note>>, CoreError> {
        if self.read_cache.is_zero() {
            return Ok(Arc::new(self.notes_of(keys, patient).await?));
        }
        let hit = self
            .notes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(patient)
            .filter(|(at, _)| at.elapsed() < self.read_cache)
            .map(|(_, n)| n.clone());
        if let Some(n) = hit {
            return Ok(n);
        }
        let generation = self.notes_generation.load(Ordering::SeqCst);
        let fresh = Arc::new(self.notes_of(keys, patient).await?);
        let mut cache = self.notes.lock().unwrap_or_else(PoisonError::into_inner);
        if self.notes_generation.load(Ordering::SeqCst) == generation {
            if cache.len() >= 10_000 {
                cache.clear();
            }
            cache.insert(patient.clone(), (Instant::now(), fresh.clone()));
        }
        Ok(fresh)
    }

    fn forget_notes(&self, patient: &UserId) {
        self.notes_generation.fetch_add(1, Ordering::SeqCst);
        self.notes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(patient);
    }

    async fn notes_of(&self, keys: &Keyring, patient: &UserId) -> Result<Vec<Note>, CoreError> {
        let coll = self.notes()?;
        let rows = self
            .store
            .find(&coll, &self.index(PATIENT_INDEX, patient)?)
            .await?;
        let mut notes: Vec<Note> = rows
            .iter()
            .filter_map(|r| Self::open_for::<Note>(keys, &coll, &r.id, NOTE_FIELD, &r.envelope))
            .filter(|n| n.patient == *patient)
            .collect();
        notes.sort_by_key(|n| n.seq);
        Ok(notes)
    }
}

impl MedRecords<'_> {
    /// An administrator registers `patient` with `details`: the health
    /// record, the directory entry and the stored patient role.
    ///
    /// # Errors
    ///
    /// [`CoreError::Invalid`] for bad details; [`CoreError::Denied`] for
    /// anyone but an administrator; [`CoreError::Conflict`] if the patient
    /// is registered already; [`CoreError::Erased`] for an erased patient.
    pub async fn register(
        &self,
        admin: &Principal,
        patient: &UserId,
        details: &PatientDetails,
    ) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        let details = details.validated()?;
        c.decide(
            admin,
            Action::AssignRoles,
            &Resource::System,
            c.audit_name(patient),
        )
        .await?;
        let keys = c.subjects.keys(patient).await?;
        let coll = c.records()?;
        let id = c.keyed_id(&[b"record", &crate::clinic::identity_bytes(patient)])?;
        let row = RecordRow {
            patient: patient.clone(),
            details,
            registered_at: c.now(),
        };
        let data = Inner::patient_row(&keys, &coll, &id, RECORD_FIELD, &row, vec![])?;
        // The record, the directory entry and the stored patient role in
        // one atomic batch; a concurrent change of either of the last two
        // makes it fail, and it is built again from what is stored then.
        for _ in 0..8 {
            let (roles, role_write) = c
                .assignments
                .write(patient, |r| r.union([Role::Patient].into_iter().collect()))
                .await?;
            let mut writes = vec![Write::Insert {
                coll: coll.clone(),
                id: id.clone(),
                data: data.clone(),
            }];
            writes.push(self.clinic.directory_write(patient, None, roles).await?);
            writes.extend(role_write);
            let committed = c.store.commit(&writes).await;
            c.forget_roles();
            match committed {
                Ok(_) => return Ok(()),
                Err(StorageError::DuplicateId | StorageError::VersionConflict { .. }) => {
                    if c.get(&coll, &id).await?.is_some() {
                        return Err(CoreError::Conflict("registered already"));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict("directory kept changing"))
    }

    /// The patients `who` may list: a doctor's patients in care (not
    /// break-glass ones), or every patient for an administrator (audited as
    /// an override). By name.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] for other roles; storage failures.
    pub async fn patients(&self, who: &Principal) -> Result<Vec<PatientSummary>, CoreError> {
        let c = &self.clinic.inner;
        c.decide(
            who,
            Action::ListPatients,
            &Resource::PatientDirectory,
            "patients".into(),
        )
        .await?;
        let ids = if who.has(Role::Doctor) {
            c.gate.patients_in_care(&who.user).await?
        } else {
            c.all(&c.people)
                .await?
                .iter()
                .filter_map(|r| rows::open::<Person>(&c.keys.current(), &c.people, r))
                .filter(|p| p.roles.contains(Role::Patient))
                .map(|p| p.user)
                .collect()
        };
        let mut out = Vec::with_capacity(ids.len());
        for patient in ids {
            let Ok(keys) = c.existing_keys(&patient).await else {
                continue; // erased, or never registered
            };
            if let Some(d) = c.record_of(&keys, &patient).await? {
                out.push(PatientSummary {
                    patient,
                    name: d.name,
                    date_of_birth: d.date_of_birth,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `patient`'s health record with every note, for `who` (the patient,
    /// a doctor in care or under break-glass, an administrator).
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited); [`CoreError::NotFound`] for a
    /// patient with no record; [`CoreError::Erased`].
    pub async fn record(
        &self,
        who: &Principal,
        patient: &UserId,
    ) -> Result<HealthRecord, CoreError> {
        let c = &self.clinic.inner;
        let _access = c
            .gate
            .patient(who, Action::ReadHealthRecord, patient)
            .await?;
        let keys = c.existing_keys(patient).await?;
        c.health_record(&keys, patient).await
    }

    /// A doctor appends a note to `patient`'s record (`amends` names an
    /// earlier note it corrects; that note stays as it was).
    ///
    /// # Errors
    ///
    /// [`CoreError::Invalid`] for an empty or too long note or an unknown
    /// `amends`; [`CoreError::Denied`] (audited) outside care and
    /// break-glass; [`CoreError::NotFound`] for an unregistered patient.
    pub async fn add_note(
        &self,
        doctor: &Principal,
        patient: &UserId,
        note: &str,
        amends: Option<u32>,
    ) -> Result<Note, CoreError> {
        let c = &self.clinic.inner;
        let body = text(note, MAX_NOTE_CHARS, "note", true)?;
        let _access = c
            .gate
            .patient(doctor, Action::AddClinicalNote, patient)
            .await?;
        let keys = c.existing_keys(patient).await?;
        if c.record_of(&keys, patient).await?.is_none() {
            return Err(CoreError::NotFound);
        }
        let coll = c.notes()?;
        let who = crate::clinic::identity_bytes(patient);
        let existing = c.notes_of(&keys, patient).await?;
        if amends.is_some_and(|a| !existing.iter().any(|n| n.seq == a)) {
            return Err(CoreError::Invalid("amends"));
        }
        // The next number after the last readable note; a number taken (by
        // a concurrent writer, or by a row that does not open) is skipped.
        let mut seq = existing.last().map_or(1, |n| n.seq.saturating_add(1)).max(
            u32::try_from(existing.len())
                .unwrap_or(u32::MAX)
                .saturating_add(1),
        );
        for _ in 0..64 {
            let id = c.keyed_id(&[b"note", &who, &seq.to_be_bytes()])?;
            let n = Note {
                seq,
                patient: patient.clone(),
                author: doctor.user.clone(),
                at: c.now(),
                text: body.clone(),
                amends,
            };
            let data = Inner::patient_row(
                &keys,
                &coll,
                &id,
                NOTE_FIELD,
                &n,
                vec![c.index(PATIENT_INDEX, patient)?],
            )?;
            match c.store.insert(&coll, &id, data).await {
                Ok(_) => {
                    c.forget_notes(patient);
                    return Ok(n);
                }
                Err(StorageError::DuplicateId) => seq = seq.saturating_add(1),
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict("notes kept changing"))
    }
}

impl MedRecords<'_> {
    /// A doctor opens `patient`'s record outside their care in an
    /// emergency, stating `reason` (break-glass: it lasts a bounded time,
    /// every access it allows is flagged in the audit log, administrators
    /// review it).
    ///
    /// # Errors
    ///
    /// [`CoreError::ReasonRequired`] for a reason under ten characters;
    /// [`CoreError::Denied`] for anyone but a doctor (audited either way).
    pub async fn declare_break_glass(
        &self,
        doctor: &Principal,
        patient: &UserId,
        reason: &str,
    ) -> Result<crate::access::BreakGlass, CoreError> {
        self.clinic
            .inner
            .gate
            .declare_break_glass(doctor, patient, reason)
            .await
    }
}

impl Clinic {
    /// The directory write for `user` (insert or compare-and-swap update).
    pub(crate) async fn directory_write(
        &self,
        user: &UserId,
        name: Option<String>,
        roles: RoleSet,
    ) -> Result<Write, CoreError> {
        let c = &self.inner;
        let id = c.person_id(user)?;
        let current = c.get(&c.people, &id).await?;
        let name = match (name, &current) {
            (Some(n), _) => n,
            // An entry that does not open is not overwritten with no name.
            (None, Some(row)) => rows::open::<Person>(&c.keys.current(), &c.people, row)
                .map(|p| p.name)
                .ok_or(CoreError::Corrupt("directory entry"))?,
            (None, None) => String::new(),
        };
        let data = rows::seal(
            &c.keys,
            &c.people,
            &id,
            &Person {
                user: user.clone(),
                name,
                roles,
            },
        )?;
        Ok(match current {
            Some(row) => Write::Update {
                coll: c.people.clone(),
                id,
                expected: row.version,
                data,
            },
            None => Write::Insert {
                coll: c.people.clone(),
                id,
                data,
            },
        })
    }
}
