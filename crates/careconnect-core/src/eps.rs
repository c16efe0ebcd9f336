//! EPS, the electronic prescription service (doctors): prescribe for a
//! patient in one's care, list one's own prescriptions, cancel an unpaid
//! one. Patients see theirs in CareConnect and pay them there.
//!
//! Each prescription is signed with the prescriber's own Ed25519 key
//! (`ed25519-dalek`; the private key is kept sealed under the clinic
//! keyring like any other key) over a domain-separated, length-prefixed
//! encoding of everything issued (id, patient, prescriber, drug, dosage,
//! frequency, notes, the signing key, time, charge). Every public key a
//! prescriber was given stays on record, so a prescription still verifies
//! after its prescriber's key is replaced; a key the clinic never gave that
//! prescriber verifies nothing. The signature protects prescriptions
//! against whoever can write the database but holds no keys; whoever holds
//! the clinic keyring can sign as any prescriber (keeping prescribers'
//! keys on their own devices is future work, see `docs/threat-model.md`). The signature is verified whenever a
//! prescription is read and the result is shown with it
//! ([`SignatureStatus`]); a prescription whose signature does not verify
//! cannot be paid.
//!
//! A prescription row is the prescription sealed under the patient's
//! subject keyring, wrapped in a small locator sealed under the clinic
//! keyring that names the patient's subject handle (never the patient), so
//! the prescriber can find the key to open it.

use std::time::Duration;

use careconnect_authz::{Action, Principal, Resource, UserId};
use careconnect_crypto::Keyring;
use careconnect_storage::{Collection, Row, RowData, RowId, StorageError, Write};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::clinic::{Clinic, Inner, new_id, text};
use crate::error::CoreError;
use crate::rows;

/// The collection of prescriptions.
pub const PRESCRIPTIONS_COLLECTION: &str = "core_prescriptions";
/// The collection of prescribers' signing keys.
pub const SIGNING_KEYS_COLLECTION: &str = "core_signing_keys";
/// The field a prescription body is sealed as, under the patient's keys.
pub(crate) const PRESCRIPTION_FIELD: &str = "prescription";
const SIGNED_LABEL: &[u8] = b"careconnect/prescription/v1";
const PATIENT_INDEX: &str = "patient";
const PRESCRIBER_INDEX: &str = "prescriber";

/// Verified signatures a node remembers (32 bytes each).
const VERIFIED_SIGNATURES: usize = 100_000;
/// How many prescribers' public keys a node keeps at most.
const PUBLIC_KEYS_KEPT: usize = 10_000;

/// What a doctor prescribes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrescriptionInput {
    /// The drug (1-200 characters).
    pub drug: String,
    /// The dosage, e.g. "500 mg" (1-100).
    pub dosage: String,
    /// How often, e.g. "twice daily" (1-100).
    pub frequency: String,
    /// Notes for the patient or pharmacist (0-2,000).
    pub notes: String,
}

/// Where a prescription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Issued, not paid.
    Issued,
    /// Paid (the finance transaction exists).
    Paid {
        /// When, Unix seconds.
        at: u64,
    },
    /// Cancelled by its prescriber.
    Cancelled {
        /// When, Unix seconds.
        at: u64,
    },
}

/// Whether a prescription's signature holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureStatus {
    /// Signed by the prescriber's key over exactly what is shown.
    Valid,
    /// The signature does not match what is shown: do not dispense.
    Invalid,
    /// The prescriber's key cannot be found or opened.
    UnknownKey,
}

/// A prescription as read, with its signature checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prescription {
    /// Its id.
    pub id: String,
    /// The patient.
    pub patient: UserId,
    /// The prescriber.
    pub prescriber: UserId,
    /// The drug.
    pub drug: String,
    /// The dosage.
    pub dosage: String,
    /// How often.
    pub frequency: String,
    /// Notes.
    pub notes: String,
    /// When issued, Unix seconds.
    pub issued_at: u64,
    /// The charge, in pence.
    pub amount_pence: u32,
    /// Where it stands.
    pub status: Status,
    /// Whether the signature holds.
    pub signature: SignatureStatus,
}

/// The signed content and state, sealed under the patient's keyring.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Body {
    pub(crate) id: String,
    pub(crate) patient: UserId,
    pub(crate) prescriber: UserId,
    pub(crate) drug: String,
    pub(crate) dosage: String,
    pub(crate) frequency: String,
    pub(crate) notes: String,
    pub(crate) issued_at: u64,
    pub(crate) amount_pence: u32,
    /// The prescriber's public key it was signed with (hex), itself signed.
    pub(crate) signer: String,
    pub(crate) signature: String,
    pub(crate) status: Status,
}

impl Body {
    /// What the prescriber signs.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = SIGNED_LABEL.to_vec();
        for part in [
            self.id.as_str(),
            self.patient.issuer(),
            self.patient.subject(),
            self.prescriber.issuer(),
            self.prescriber.subject(),
            self.drug.as_str(),
            self.dosage.as_str(),
            self.frequency.as_str(),
            self.notes.as_str(),
            self.signer.as_str(),
        ] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out.extend_from_slice(&self.amount_pence.to_be_bytes());
        out
    }
}

/// A prescription row's clinic-sealed part: the patient's subject handle
/// and the body sealed under the patient's keys (hex).
#[derive(Serialize, Deserialize)]
pub(crate) struct Locator {
    pub(crate) handle: String,
    pub(crate) body: String,
}

#[derive(Serialize, Deserialize)]
struct SigningRow {
    doctor: UserId,
    secret: Zeroizing<String>,
    public: String,
    created_at: u64,
}

/// A prescription row opened: its row, subject keys and body.
pub(crate) struct Loaded {
    pub(crate) row: Row,
    pub(crate) keys: Keyring,
    pub(crate) body: Body,
}

/// EPS.
#[derive(Debug, Clone, Copy)]
pub struct Eps<'a> {
    clinic: &'a Clinic,
}

impl Clinic {
    /// EPS: prescribe, list one's own, cancel.
    pub fn eps(&self) -> Eps<'_> {
        Eps { clinic: self }
    }
}

impl Inner {
    /// The row of a prescriber's current signing key.
    fn signing_id(&self, doctor: &UserId) -> Result<RowId, CoreError> {
        self.keyed_id(&[b"signing-key", &crate::clinic::identity_bytes(doctor)])
    }

    /// The row of one of a prescriber's public keys: kept for good, so
    /// prescriptions signed with a key since replaced still verify.
    fn public_key_id(&self, doctor: &UserId, public: &str) -> Result<RowId, CoreError> {
        self.keyed_id(&[
            b"signing-public-key",
            &crate::clinic::identity_bytes(doctor),
            public.as_bytes(),
        ])
    }
}

#[derive(Serialize, Deserialize)]
struct PublicKeyRow {
    doctor: UserId,
    public: String,
    created_at: u64,
}

impl Inner {
    pub(crate) fn prescriptions(&self) -> Result<Collection, CoreError> {
        Ok(Collection::new(PRESCRIPTIONS_COLLECTION)?)
    }

    /// The row data for a prescription body.
    pub(crate) fn prescription_data(
        &self,
        keys: &Keyring,
        id: &RowId,
        body: &Body,
    ) -> Result<RowData, CoreError> {
        let coll = self.prescriptions()?;
        let inner = Self::seal_for(keys, &coll, id, PRESCRIPTION_FIELD, body)?;
        let locator = Locator {
            handle: self.subjects.handle(&body.patient)?.as_str().to_owned(),
            body: hex::encode(inner),
        };
        // The row's key id is the clinic keyring's (the outer envelope), as
        // a scan by key id for rotation expects.
        let mut data = rows::seal(&self.keys, &coll, id, &locator)?;
        data.indexes = vec![
            self.index(PATIENT_INDEX, &body.patient)?,
            self.index(PRESCRIBER_INDEX, &body.prescriber)?,
        ];
        Ok(data)
    }

    /// Opens a prescription row; `None` when it does not open (forged,
    /// moved, altered) or its patient was erased.
    pub(crate) async fn open_prescription(&self, row: Row) -> Result<Option<Loaded>, CoreError> {
        let coll = self.prescriptions()?;
        let Some(locator) = rows::open::<Locator>(&self.keys.current(), &coll, &row) else {
            return Ok(None);
        };
        let Ok(handle) = RowId::new(locator.handle) else {
            return Ok(None);
        };
        let keys = match self.subjects.keys_of_handle(&handle).await {
            Ok(k) => k,
            Err(CoreError::Erased | CoreError::Corrupt(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Ok(inner) = hex::decode(locator.body) else {
            return Ok(None);
        };
        let body = Self::open_for::<Body>(&keys, &coll, &row.id, PRESCRIPTION_FIELD, &inner)
            .filter(|b| {
                b.id == row.id.as_str()
                    && self.subjects.handle(&b.patient).is_ok_and(|h| h == handle)
            });
        Ok(body.map(|body| Loaded { row, keys, body }))
    }

    /// The prescription with id `id`, `None` for an id that names nothing
    /// openable.
    pub(crate) async fn load_prescription(&self, id: &str) -> Result<Option<Loaded>, CoreError> {
        let Ok(id) = RowId::new(id) else {
            return Ok(None);
        };
        match self.get(&self.prescriptions()?, &id).await? {
            Some(row) => self.open_prescription(row).await,
            None => Ok(None),
        }
    }

    /// `public` as a key of `doctor`'s, if the clinic issued it to them.
    async fn verifying_key(
        &self,
        doctor: &UserId,
        public: &str,
    ) -> Result<Option<VerifyingKey>, CoreError> {
        let coll = Collection::new(SIGNING_KEYS_COLLECTION)?;
        let id = self.public_key_id(doctor, public)?;
        // Public key rows are written once and never changed or removed.
        if let Some(k) = self
            .public_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
        {
            return Ok(Some(*k));
        }
        let Some(row) = self.get(&coll, &id).await? else {
            return Ok(None);
        };
        let key = rows::open::<PublicKeyRow>(&self.keys.current(), &coll, &row)
            .filter(|k| k.doctor == *doctor && k.public == public)
            .and_then(|k| hex::decode(&k.public).ok())
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok());
        if let Some(k) = key {
            let mut known = self
                .public_keys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if known.len() >= PUBLIC_KEYS_KEPT {
                known.clear();
            }
            known.insert(id, k);
        }
        Ok(key)
    }

    /// The doctor's signing key, made and stored on first use.
    async fn signing_key(&self, doctor: &UserId) -> Result<SigningKey, CoreError> {
        let coll = Collection::new(SIGNING_KEYS_COLLECTION)?;
        let id = self.signing_id(doctor)?;
        for _ in 0..4 {
            if let Some(row) = self.get(&coll, &id).await? {
                let stored = rows::open::<SigningRow>(&self.keys.current(), &coll, &row)
                    .filter(|s| s.doctor == *doctor)
                    .ok_or(CoreError::Corrupt("signing key"))?;
                let secret = Zeroizing::new(
                    hex::decode(stored.secret.as_str())
                        .map_err(|_| CoreError::Corrupt("signing key"))?,
                );
                let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(
                    secret
                        .as_slice()
                        .try_into()
                        .map_err(|_| CoreError::Corrupt("signing key"))?,
                );
                let key = SigningKey::from_bytes(&bytes);
                // Its public-key row must be on record, or nothing it signs
                // verifies: put it back if it went missing.
                let public = hex::encode(key.verifying_key().as_bytes());
                let public_id = self.public_key_id(doctor, &public)?;
                if self.get(&coll, &public_id).await?.is_none() {
                    let row = PublicKeyRow {
                        doctor: doctor.clone(),
                        public,
                        created_at: stored.created_at,
                    };
                    match self
                        .store
                        .insert(
                            &coll,
                            &public_id,
                            rows::seal(&self.keys, &coll, &public_id, &row)?,
                        )
                        .await
                    {
                        Ok(_) | Err(StorageError::DuplicateId) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                return Ok(key);
            }
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::fill(seed.as_mut()).map_err(|_| CoreError::Corrupt("random source"))?;
            let key = SigningKey::from_bytes(&seed);
            let row = SigningRow {
                doctor: doctor.clone(),
                secret: Zeroizing::new(hex::encode(seed.as_ref())),
                public: hex::encode(key.verifying_key().as_bytes()),
                created_at: self.now(),
            };
            let public_id = self.public_key_id(doctor, &row.public)?;
            let public = PublicKeyRow {
                doctor: doctor.clone(),
                public: row.public.clone(),
                created_at: row.created_at,
            };
            let writes = [
                Write::Insert {
                    coll: coll.clone(),
                    data: rows::seal(&self.keys, &coll, &id, &row)?,
                    id: id.clone(),
                },
                Write::Insert {
                    coll: coll.clone(),
                    data: rows::seal(&self.keys, &coll, &public_id, &public)?,
                    id: public_id,
                },
            ];
            match self.store.commit(&writes).await {
                Ok(_) => return Ok(key),
                Err(StorageError::DuplicateId) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict("signing key kept changing"))
    }

    /// Whether a signature with this digest verified before on this node.
    fn verified_signature(&self, digest: &[u8; 32]) -> bool {
        self.signatures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(digest)
    }

    /// Remembers a verified signature (a bounded set, emptied when full).
    fn remember_signature(&self, digest: [u8; 32]) {
        let mut set = self
            .signatures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if set.len() >= VERIFIED_SIGNATURES {
            set.clear();
        }
        set.insert(digest);
    }

    /// The prescription as shown, with its signature checked.
    pub(crate) async fn view(&self, body: &Body) -> Result<Prescription, CoreError> {
        use sha2::Digest as _;
        let signature = match self.verifying_key(&body.prescriber, &body.signer).await? {
            None => SignatureStatus::UnknownKey,
            Some(k) => {
                let sig = hex::decode(&body.signature)
                    .ok()
                    .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok());
                let signed = body.signed_bytes();
                // A signature verified once stays verified for exactly these
                // bytes under exactly this key: remembered by their digest.
                let seen = sha2::Sha256::new()
                    .chain_update(k.as_bytes())
                    .chain_update((signed.len() as u64).to_be_bytes())
                    .chain_update(&signed)
                    .chain_update(body.signature.as_bytes())
                    .finalize();
                let seen: [u8; 32] = seen.into();
                if self.verified_signature(&seen) {
                    SignatureStatus::Valid
                } else {
                    match sig {
                        Some(sig) if k.verify_strict(&signed, &sig).is_ok() => {
                            self.remember_signature(seen);
                            SignatureStatus::Valid
                        }
                        _ => SignatureStatus::Invalid,
                    }
                }
            }
        };
        Ok(Prescription {
            id: body.id.clone(),
            patient: body.patient.clone(),
            prescriber: body.prescriber.clone(),
            drug: body.drug.clone(),
            dosage: body.dosage.clone(),
            frequency: body.frequency.clone(),
            notes: body.notes.clone(),
            issued_at: body.issued_at,
            amount_pence: body.amount_pence,
            status: body.status,
            signature,
        })
    }

    /// Every openable prescription under index `name` for `user`, newest first.
    pub(crate) async fn prescriptions_by(
        &self,
        name: &str,
        user: &UserId,
        max_age: Duration,
    ) -> Result<Vec<Prescription>, CoreError> {
        let rows = self
            .recent
            .find_recent(&self.prescriptions()?, &self.index(name, user)?, max_age)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows.iter() {
            if let Some(l) = self.open_prescription(row.clone()).await? {
                let who = if name == PATIENT_INDEX {
                    &l.body.patient
                } else {
                    &l.body.prescriber
                };
                if who == user {
                    out.push(self.view(&l.body).await?);
                }
            }
        }
        out.sort_by(|a, b| b.issued_at.cmp(&a.issued_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// `patient`'s prescriptions (the caller has asked the gate), from rows
    /// read at most `max_age` ago ([`crate::recent`]).
    pub(crate) async fn prescriptions_of(
        &self,
        patient: &UserId,
        max_age: Duration,
    ) -> Result<Vec<Prescription>, CoreError> {
        self.prescriptions_by(PATIENT_INDEX, patient, max_age).await
    }
}

impl Eps<'_> {
    /// A doctor prescribes for a patient in their care (or under
    /// break-glass); the prescription is signed with the doctor's key.
    ///
    /// # Errors
    ///
    /// [`CoreError::Invalid`] for an empty or too long field;
    /// [`CoreError::Denied`] (audited); [`CoreError::NotFound`] for an
    /// unregistered patient; [`CoreError::Erased`].
    pub async fn prescribe(
        &self,
        doctor: &Principal,
        patient: &UserId,
        input: &PrescriptionInput,
    ) -> Result<Prescription, CoreError> {
        let c = &self.clinic.inner;
        let drug = text(&input.drug, 200, "drug", false)?;
        let dosage = text(&input.dosage, 100, "dosage", false)?;
        let frequency = text(&input.frequency, 100, "frequency", false)?;
        let notes = if input.notes.trim().is_empty() {
            String::new()
        } else {
            text(&input.notes, 2000, "notes", true)?
        };
        let _access = c.gate.patient(doctor, Action::Prescribe, patient).await?;
        let keys = c.existing_keys(patient).await?;
        if c.record_of(&keys, patient).await?.is_none() {
            return Err(CoreError::NotFound);
        }
        let signer = c.signing_key(&doctor.user).await?;
        let id = new_id()?;
        let mut body = Body {
            id: id.as_str().to_owned(),
            patient: patient.clone(),
            prescriber: doctor.user.clone(),
            drug,
            dosage,
            frequency,
            notes,
            issued_at: c.now(),
            amount_pence: c.charge_pence,
            signer: hex::encode(signer.verifying_key().as_bytes()),
            signature: String::new(),
            status: Status::Issued,
        };
        body.signature = hex::encode(signer.sign(&body.signed_bytes()).to_bytes());
        c.store
            .insert(
                &c.prescriptions()?,
                &id,
                c.prescription_data(&keys, &id, &body)?,
            )
            .await?;
        c.view(&body).await
    }

    /// The prescriptions `doctor` wrote, newest first, signatures checked.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for anyone but the doctor themselves
    /// (or an administrator, audited as an override).
    pub async fn issued(
        &self,
        doctor: &Principal,
        prescriber: &UserId,
    ) -> Result<Vec<Prescription>, CoreError> {
        let c = &self.clinic.inner;
        c.decide(
            doctor,
            Action::ListIssuedPrescriptions,
            &Resource::Prescriber(prescriber),
            "prescriptions:issued".into(),
        )
        .await?;
        c.prescriptions_by(PRESCRIBER_INDEX, prescriber, Duration::ZERO)
            .await
    }

    /// The prescriber cancels an unpaid prescription.
    ///
    /// # Errors
    ///
    /// [`CoreError::NotFound`] for an unknown id and for anyone but its
    /// prescriber (the denial is audited; the id's existence is not
    /// revealed); [`CoreError::Conflict`] if it is paid or cancelled already.
    pub async fn cancel(&self, doctor: &Principal, id: &str) -> Result<Prescription, CoreError> {
        let c = &self.clinic.inner;
        for _ in 0..8 {
            let Some(mut l) = c.load_prescription(id).await? else {
                c.refuse(doctor, Action::CancelPrescription, "prescription:?".into())
                    .await?;
                return Err(CoreError::NotFound);
            };
            c.decide_hidden(
                doctor,
                Action::CancelPrescription,
                &Resource::Prescription {
                    patient: &l.body.patient,
                    prescriber: &l.body.prescriber,
                },
                format!("prescription:{}", l.body.id),
            )
            .await?;
            if l.body.status != Status::Issued {
                return Err(CoreError::Conflict("paid or cancelled already"));
            }
            l.body.status = Status::Cancelled { at: c.now() };
            let data = c.prescription_data(&l.keys, &l.row.id, &l.body)?;
            match c
                .store
                .commit(&[Write::Update {
                    coll: c.prescriptions()?,
                    id: l.row.id.clone(),
                    expected: l.row.version,
                    data,
                }])
                .await
            {
                Ok(_) => return c.view(&l.body).await,
                Err(StorageError::VersionConflict { .. }) => {}
                Err(StorageError::NotFound) => return Err(CoreError::NotFound),
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict("prescription kept changing"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use careconnect_authz::Role;
    use careconnect_authz::session::ManualClock;

    use super::*;
    use crate::records::PatientDetails;
    use crate::{ClinicConfig, CoreError};

    fn who(s: &str, role: Role) -> Principal {
        Principal::new(
            UserId::new("https://idp.test", s).unwrap(),
            [role].into_iter().collect(),
        )
    }

    /// Someone holding the clinic's keys (not the prescriber's signing key)
    /// changes the drug of a sealed prescription: the row still opens, the
    /// signature says Invalid, and it cannot be paid.
    #[tokio::test]
    async fn a_prescription_altered_under_the_clinic_keys_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ClinicConfig::embedded(dir.path()).unwrap();
        config.subject_buckets = 2;
        let store = careconnect_storage::connect("memory:").await.unwrap();
        let clinic = Clinic::open_with(config, store, Arc::new(ManualClock::new(1_800_000_000)))
            .await
            .unwrap();
        let (admin, doctor, patient) = (
            who("admin", Role::Admin),
            who("doc", Role::Doctor),
            who("pat", Role::Patient),
        );
        clinic
            .records()
            .register(
                &admin,
                &patient.user,
                &PatientDetails {
                    name: "Pat Ient".into(),
                    date_of_birth: "1990-01-01".into(),
                    blood_type: "A+".into(),
                    allergies: vec![],
                },
            )
            .await
            .unwrap();
        clinic
            .admin()
            .assign_care(&admin, &doctor.user, &patient.user)
            .await
            .unwrap();
        let input = PrescriptionInput {
            drug: "Codeine".into(),
            dosage: "30 mg".into(),
            frequency: "every 6 hours".into(),
            notes: String::new(),
        };
        let p = clinic
            .eps()
            .prescribe(&doctor, &patient.user, &input)
            .await
            .unwrap();
        assert_eq!(p.signature, SignatureStatus::Valid);
        let c = &clinic.inner;
        let mut l = c.load_prescription(&p.id).await.unwrap().unwrap();
        l.body.dosage = "300 mg".into();
        let data = c.prescription_data(&l.keys, &l.row.id, &l.body).unwrap();
        c.store
            .update(&c.prescriptions().unwrap(), &l.row.id, l.row.version, data)
            .await
            .unwrap();
        let seen = clinic
            .patients()
            .prescriptions(&patient, &patient.user)
            .await
            .unwrap();
        assert_eq!(seen[0].dosage, "300 mg");
        assert_eq!(seen[0].signature, SignatureStatus::Invalid);
        assert!(matches!(
            clinic.patients().pay(&patient, &p.id).await,
            Err(CoreError::Conflict(_))
        ));
        // Signed with a key of the forger's own: not a key the clinic gave
        // that prescriber.
        let forger = SigningKey::from_bytes(&[7u8; 32]);
        let mut l = c.load_prescription(&p.id).await.unwrap().unwrap();
        l.body.signer = hex::encode(forger.verifying_key().as_bytes());
        l.body.signature = hex::encode(forger.sign(&l.body.signed_bytes()).to_bytes());
        let data = c.prescription_data(&l.keys, &l.row.id, &l.body).unwrap();
        c.store
            .update(&c.prescriptions().unwrap(), &l.row.id, l.row.version, data)
            .await
            .unwrap();
        let seen = clinic
            .patients()
            .prescriptions(&patient, &patient.user)
            .await
            .unwrap();
        assert_eq!(seen[0].signature, SignatureStatus::UnknownKey);
        // The prescriber's current key row deleted from the database: a new
        // key is made, and what the old one signed still verifies.
        let p2 = clinic
            .eps()
            .prescribe(&doctor, &patient.user, &input)
            .await
            .unwrap();
        let coll = Collection::new(SIGNING_KEYS_COLLECTION).unwrap();
        let current = c
            .store
            .get(&coll, &c.signing_id(&doctor.user).unwrap())
            .await
            .unwrap();
        c.store
            .delete(&coll, &current.id, current.version)
            .await
            .unwrap();
        let p3 = clinic
            .eps()
            .prescribe(&doctor, &patient.user, &input)
            .await
            .unwrap();
        // The current key's public-key row deleted: put back at the next
        // prescription, which verifies.
        let public = hex::encode(
            c.signing_key(&doctor.user)
                .await
                .unwrap()
                .verifying_key()
                .as_bytes(),
        );
        let row = c
            .store
            .get(&coll, &c.public_key_id(&doctor.user, &public).unwrap())
            .await
            .unwrap();
        c.store.delete(&coll, &row.id, row.version).await.unwrap();
        let p4 = clinic
            .eps()
            .prescribe(&doctor, &patient.user, &input)
            .await
            .unwrap();
        assert_eq!(p4.signature, SignatureStatus::Valid);
        let seen = clinic.eps().issued(&doctor, &doctor.user).await.unwrap();
        for id in [&p2.id, &p3.id] {
            let s = seen.iter().find(|p| &p.id == id).unwrap();
            assert_eq!(s.signature, SignatureStatus::Valid);
        }
    }
}
