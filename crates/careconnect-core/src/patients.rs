//! CareConnect (patients): one's own record, appointments and
//! prescriptions; booking and cancelling appointments; paying a
//! prescription.
//!
//! A booking writes three rows in one atomic batch
//! ([`careconnect_storage::RecordStore::commit`]): the doctor's slot (id: a
//! keyed MAC of doctor and start time, so two bookings of one slot collide
//! and exactly one wins), the appointment (sealed under the patient's
//! keyring) and, the first time, the care relationship it creates. Paying
//! marks the prescription paid and inserts the finance transaction (id: a
//! keyed MAC of the prescription id) in one batch too: paying twice, or from
//! two tasks at once, makes exactly one payment and one transaction.

use std::time::Duration;

use careconnect_authz::{Action, Principal, Resource, Role, UserId};
use careconnect_storage::{Collection, RowId, StorageError, Write};
use serde::{Deserialize, Serialize};

use crate::clinic::{Clinic, Inner, identity_bytes, new_id, text};
use crate::eps::{Prescription, SignatureStatus, Status};
use crate::error::CoreError;
use crate::finance::{TRANSACTIONS_COLLECTION, Transaction};
use crate::records::HealthRecord;
use crate::rows;

/// The collection of appointments.
pub const APPOINTMENTS_COLLECTION: &str = "core_appointments";
/// The collection of booked slots.
pub const SLOTS_COLLECTION: &str = "core_slots";
/// The field an appointment is sealed as, under the patient's keys.
pub(crate) const APPOINTMENT_FIELD: &str = "appointment";
const PATIENT_INDEX: &str = "patient";

/// An appointment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appointment {
    /// Its id.
    pub id: String,
    /// The patient.
    pub patient: UserId,
    /// The doctor.
    pub doctor: UserId,
    /// Start, Unix seconds.
    pub starts_at: u64,
    /// Length in minutes.
    pub minutes: u16,
    /// The patient's reason (optional, up to 200 characters).
    pub reason: String,
    /// Cancelled, and when.
    pub cancelled_at: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct SlotRow {
    doctor: UserId,
    starts_at: u64,
    appointment: String,
}

/// CareConnect.
#[derive(Debug, Clone, Copy)]
pub struct CareConnect<'a> {
    clinic: &'a Clinic,
}

impl Clinic {
    /// CareConnect: a patient's own record, appointments and prescriptions.
    pub fn patients(&self) -> CareConnect<'_> {
        CareConnect { clinic: self }
    }
}

fn appointments() -> Result<Collection, CoreError> {
    Ok(Collection::new(APPOINTMENTS_COLLECTION)?)
}

fn slots() -> Result<Collection, CoreError> {
    Ok(Collection::new(SLOTS_COLLECTION)?)
}

impl Inner {
    fn slot_id(&self, doctor: &UserId, starts_at: u64) -> Result<RowId, CoreError> {
        self.keyed_id(&[b"slot", &identity_bytes(doctor), &starts_at.to_be_bytes()])
    }

    /// Checks a requested start against the clinic's hours.
    fn check_slot(&self, starts_at: u64) -> Result<(), CoreError> {
        let h = self.hours;
        let slot = u64::from(h.slot_minutes) * 60;
        let now = self.now();
        if starts_at <= now {
            return Err(CoreError::Conflict("that time has passed"));
        }
        if starts_at > now.saturating_add(u64::from(h.book_ahead_days) * 86_400) {
            return Err(CoreError::Invalid("too far ahead"));
        }
        let in_day = starts_at % 86_400;
        if !in_day.is_multiple_of(slot)
            || in_day < u64::from(h.opens) * 3600
            || in_day + slot > u64::from(h.closes) * 3600
        {
            return Err(CoreError::Invalid(
                "outside clinic hours or not a slot start",
            ));
        }
        Ok(())
    }
}

/// A patient's own page ([`CareConnect::overview`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overview {
    /// The health record with its notes.
    pub record: HealthRecord,
    /// Appointments, soonest first.
    pub appointments: Vec<Appointment>,
    /// Prescriptions, newest first, signatures checked.
    pub prescriptions: Vec<Prescription>,
}

impl Inner {
    /// `patient`'s appointments under their keyring `keys`, soonest first.
    /// No access check: the caller's.
    async fn appointments_of(
        &self,
        keys: &careconnect_crypto::Keyring,
        patient: &UserId,
        max_age: Duration,
    ) -> Result<Vec<Appointment>, CoreError> {
        let coll = appointments()?;
        let rows = self
            .recent
            .find_recent(&coll, &self.index(PATIENT_INDEX, patient)?, max_age)
            .await?;
        let mut out: Vec<Appointment> = rows
            .iter()
            .filter_map(|r| {
                Inner::open_for::<Appointment>(keys, &coll, &r.id, APPOINTMENT_FIELD, &r.envelope)
            })
            .filter(|a| a.patient == *patient)
            .collect();
        out.sort_by_key(|a| a.starts_at);
        Ok(out)
    }
}

impl CareConnect<'_> {
    /// The patient's own health record (MedRecords' reader, same rules).
    ///
    /// # Errors
    ///
    /// As [`crate::records::MedRecords::record`].
    pub async fn record(&self, who: &Principal) -> Result<HealthRecord, CoreError> {
        self.clinic.records().record(who, &who.user).await
    }

    /// Books `patient` with `doctor` at `starts_at` (Unix seconds, a slot
    /// start within clinic hours, in the future). Only the patient books
    /// for themselves.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for anyone else;
    /// [`CoreError::Invalid`] for an unknown doctor, a time outside hours or
    /// a bad reason; [`CoreError::Conflict`] for a past time or a slot
    /// taken; [`CoreError::NotFound`] for an unregistered patient.
    pub async fn book(
        &self,
        who: &Principal,
        patient: &UserId,
        doctor: &UserId,
        starts_at: u64,
        reason: &str,
    ) -> Result<Appointment, CoreError> {
        let c = &self.clinic.inner;
        let reason = if reason.trim().is_empty() {
            String::new()
        } else {
            text(reason, 200, "reason", false)?
        };
        // No one books themselves as their own doctor (a booking puts the
        // patient in the doctor's care).
        c.gate
            .refuse_self_treatment(who, "BookAppointment", doctor, patient)
            .await?;
        let _access = c
            .gate
            .patient(who, Action::BookAppointment, patient)
            .await?;
        c.check_slot(starts_at)?;
        if !self
            .clinic
            .person(doctor)
            .await?
            .is_some_and(|p| p.roles.contains(Role::Doctor))
        {
            return Err(CoreError::Invalid("doctor"));
        }
        let keys = c.existing_keys(patient).await?;
        let (appts, slots) = (appointments()?, slots()?);
        for _ in 0..4 {
            let id = new_id()?;
            let appointment = Appointment {
                id: id.as_str().to_owned(),
                patient: patient.clone(),
                doctor: doctor.clone(),
                starts_at,
                minutes: c.hours.slot_minutes,
                reason: reason.clone(),
                cancelled_at: None,
            };
            let slot_id = c.slot_id(doctor, starts_at)?;
            let slot = SlotRow {
                doctor: doctor.clone(),
                starts_at,
                appointment: appointment.id.clone(),
            };
            let mut writes = vec![
                Write::Insert {
                    coll: slots.clone(),
                    data: rows::seal(&c.keys, &slots, &slot_id, &slot)?,
                    id: slot_id.clone(),
                },
                Write::Insert {
                    coll: appts.clone(),
                    data: Inner::patient_row(
                        &keys,
                        &appts,
                        &id,
                        APPOINTMENT_FIELD,
                        &appointment,
                        vec![c.index(PATIENT_INDEX, patient)?],
                    )?,
                    id,
                },
            ];
            writes.push(
                c.gate
                    .care_write(doctor, patient, &who.user, &appointment.id)
                    .await?,
            );
            match c.store.commit(&writes).await {
                Ok(_) => {
                    c.gate.forget(doctor, patient);
                    return Ok(appointment);
                }
                Err(
                    StorageError::DuplicateId
                    | StorageError::VersionConflict { .. }
                    | StorageError::NotFound,
                ) => {
                    if c.get(&slots, &slot_id).await?.is_some() {
                        return Err(CoreError::Conflict("slot taken"));
                    }
                    // The care row changed meanwhile: build the batch again.
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict("booking kept changing"))
    }

    /// `patient`'s appointments, soonest first.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited).
    pub async fn appointments(
        &self,
        who: &Principal,
        patient: &UserId,
    ) -> Result<Vec<Appointment>, CoreError> {
        let c = &self.clinic.inner;
        let _access = c
            .gate
            .patient(who, Action::ListAppointments, patient)
            .await?;
        let keys = c.existing_keys(patient).await?;
        c.appointments_of(&keys, patient, Duration::ZERO).await
    }

    /// What the patient's own page shows, in one step: the health record,
    /// appointments and prescriptions. Decided as reading one's own record
    /// (the policy allows the other two for exactly the same principals,
    /// checked too) and audited as that one access. Every call decides,
    /// audits and opens (decrypts) afresh; the sealed rows may come from
    /// this node's reads within [`crate::ClinicConfig::read_cache`] when
    /// nothing was written to them through this node since.
    ///
    /// # Errors
    ///
    /// As [`CareConnect::record`]: [`CoreError::Denied`] (audited),
    /// [`CoreError::NotFound`] for someone with no record,
    /// [`CoreError::Erased`].
    pub async fn overview(&self, who: &Principal) -> Result<Overview, CoreError> {
        let c = &self.clinic.inner;
        let patient = &who.user;
        let _access = c
            .gate
            .patient(who, Action::ReadHealthRecord, patient)
            .await?;
        for action in [Action::ListAppointments, Action::ListPrescriptions] {
            if let careconnect_authz::Decision::Deny(reason) =
                careconnect_authz::authorize(who, action, &Resource::patient(patient))
            {
                c.refuse(who, action, "overview".into()).await?;
                return Err(CoreError::Denied(reason));
            }
        }
        let keys = c.existing_keys(patient).await?;
        Ok(Overview {
            record: c.health_record(&keys, patient).await?,
            appointments: c.appointments_of(&keys, patient, c.read_cache).await?,
            prescriptions: c.prescriptions_of(patient, c.read_cache).await?,
        })
    }

    /// The patient cancels an own future appointment; the slot is freed.
    ///
    /// # Errors
    ///
    /// [`CoreError::NotFound`] for an id that is not one of the patient's
    /// appointments (audited); [`CoreError::Conflict`] for one cancelled
    /// already or in the past.
    pub async fn cancel(&self, who: &Principal, appointment: &str) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        let coll = appointments()?;
        // The id comes from the request: another patient's row is "not
        // yours" (its blind index is not this patient's), not a tamper
        // alarm; only a row indexed as this patient's that does not open is
        // one, logged without the id the request chose.
        let mine = c.index(PATIENT_INDEX, &who.user)?;
        let found = match (RowId::new(appointment), c.existing_keys(&who.user).await) {
            (Ok(id), Ok(keys)) => c
                .get(&coll, &id)
                .await?
                .filter(|row| row.indexes.contains(&mine))
                .and_then(|row| {
                    let opened = rows::try_open_json::<Appointment>(
                        &keys,
                        &crate::clinic::field_context(&coll, &row.id, APPOINTMENT_FIELD),
                        &row.envelope,
                    )
                    .filter(|a| a.id == row.id.as_str() && a.patient == who.user);
                    if opened.is_none() {
                        tracing::warn!(
                            collection = coll.as_str(),
                            "a patient's own row does not open (altered, or under a destroyed key): refused"
                        );
                    }
                    opened.map(|a| (row, keys.clone(), a))
                }),
            _ => None,
        };
        let Some((row, keys, mut appt)) = found else {
            c.refuse(who, Action::CancelAppointment, "appointment:?".into())
                .await?;
            return Err(CoreError::NotFound);
        };
        let _access = c
            .gate
            .patient(who, Action::CancelAppointment, &appt.patient)
            .await?;
        if appt.cancelled_at.is_some() {
            return Err(CoreError::Conflict("cancelled already"));
        }
        if appt.starts_at <= c.now() {
            return Err(CoreError::Conflict("that time has passed"));
        }
        appt.cancelled_at = Some(c.now());
        let slots = slots()?;
        let slot_id = c.slot_id(&appt.doctor, appt.starts_at)?;
        let mut writes = vec![Write::Update {
            coll: coll.clone(),
            id: row.id.clone(),
            expected: row.version,
            data: Inner::patient_row(
                &keys,
                &coll,
                &row.id,
                APPOINTMENT_FIELD,
                &appt,
                vec![c.index(PATIENT_INDEX, &appt.patient)?],
            )?,
        }];
        if let Some(slot) = c.get(&slots, &slot_id).await?
            && rows::open::<SlotRow>(&c.keys.current(), &slots, &slot)
                .is_some_and(|s| s.appointment == appt.id)
        {
            writes.push(Write::Delete {
                coll: slots,
                id: slot_id,
                expected: slot.version,
            });
        }
        // The care this booking made ends with it, or moves to another
        // booking of the patient with the same doctor.
        let next = c
            .store
            .find(&coll, &c.index(PATIENT_INDEX, &appt.patient)?)
            .await?
            .into_iter()
            .filter(|r| r.id != row.id)
            .find_map(|r| {
                Inner::open_for::<Appointment>(&keys, &coll, &r.id, APPOINTMENT_FIELD, &r.envelope)
                    .filter(|a| {
                        a.doctor == appt.doctor
                            && a.patient == appt.patient
                            && a.cancelled_at.is_none()
                            && a.id == r.id.as_str()
                    })
                    .map(|a| (a.id, r))
            });
        if let Some(release) = c
            .gate
            .care_release(
                &appt.doctor,
                &appt.patient,
                &appt.id,
                next.as_ref().map(|(id, _)| id.as_str()),
            )
            .await?
        {
            writes.push(release);
            // The care moves to that booking only if it is still as read
            // (not cancelled meanwhile).
            if let Some((_, next_row)) = next {
                writes.push(crate::access::unchanged(&coll, next_row));
            }
        }
        let result = c.store.commit(&writes).await;
        c.gate.forget(&appt.doctor, &appt.patient);
        match result {
            Ok(_) => Ok(()),
            Err(StorageError::VersionConflict { .. } | StorageError::NotFound) => {
                Err(CoreError::Conflict("changed meanwhile; try again"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `patient`'s prescriptions, newest first, signatures checked.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited).
    pub async fn prescriptions(
        &self,
        who: &Principal,
        patient: &UserId,
    ) -> Result<Vec<Prescription>, CoreError> {
        let c = &self.clinic.inner;
        let _access = c
            .gate
            .patient(who, Action::ListPrescriptions, patient)
            .await?;
        c.prescriptions_of(patient, Duration::ZERO).await
    }

    /// The patient pays an own, issued prescription: it is marked paid and
    /// the finance transaction is created in one atomic step.
    ///
    /// # Errors
    ///
    /// [`CoreError::NotFound`] for an unknown id and for another patient's
    /// prescription (the denial is audited; the id's existence is not
    /// revealed); [`CoreError::Conflict`] if paid or cancelled already, or its
    /// signature does not verify.
    pub async fn pay(&self, who: &Principal, prescription: &str) -> Result<Transaction, CoreError> {
        let c = &self.clinic.inner;
        let txs = Collection::new(TRANSACTIONS_COLLECTION)?;
        let Some(mut l) = c.load_prescription(prescription).await? else {
            c.refuse(who, Action::PayPrescription, "prescription:?".into())
                .await?;
            return Err(CoreError::NotFound);
        };
        c.decide_hidden(
            who,
            Action::PayPrescription,
            &Resource::Prescription {
                patient: &l.body.patient,
                prescriber: &l.body.prescriber,
            },
            format!("prescription:{}", l.body.id),
        )
        .await?;
        for _ in 0..8 {
            if l.body.status != Status::Issued {
                return Err(CoreError::Conflict("paid or cancelled already"));
            }
            if c.view(&l.body).await?.signature != SignatureStatus::Valid {
                return Err(CoreError::Conflict("signature does not verify"));
            }
            let at = c.now();
            l.body.status = Status::Paid { at };
            let tx_id = c.keyed_id(&[b"payment", l.row.id.as_str().as_bytes()])?;
            let tx = Transaction {
                id: tx_id.as_str().to_owned(),
                // The day only (see [`Transaction::at`]).
                at: crate::finance::day_of(at),
                amount_pence: l.body.amount_pence,
                description: "Prescription charge".into(),
                pseudonym: c.pseudonym(&l.body.patient),
            };
            let writes = [
                Write::Update {
                    coll: c.prescriptions()?,
                    id: l.row.id.clone(),
                    expected: l.row.version,
                    data: c.prescription_data(&l.keys, &l.row.id, &l.body)?,
                },
                Write::Insert {
                    coll: txs.clone(),
                    data: rows::seal(&c.keys, &txs, &tx_id, &tx)?,
                    id: tx_id,
                },
            ];
            match c.store.commit(&writes).await {
                Ok(_) => return Ok(tx),
                Err(StorageError::VersionConflict { .. } | StorageError::DuplicateId) => {
                    // Someone else changed it: look again (a payment that
                    // won shows as paid).
                    match c.load_prescription(prescription).await? {
                        Some(again) => l = again,
                        None => return Err(CoreError::NotFound),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict("prescription kept changing"))
    }
}
