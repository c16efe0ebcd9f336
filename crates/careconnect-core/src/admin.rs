//! Administration: the people directory and stored roles, care
//! relationships, the audit log with its verification, break-glass review,
//! key status, and patient erasure. Every call is audited; every call is
//! refused (audited) to anyone but an administrator.

use careconnect_authz::{Action, Principal, Resource, Role, RoleSet, UserId};
use careconnect_crypto::{KeyDescription, KeyInfo};

use crate::access::BreakGlass;
use crate::audit::{AuditEvent, Flag, Outcome, Verification};
use crate::clinic::{Clinic, MAX_NAME_CHARS, text};
use crate::error::CoreError;
use crate::rows;
use crate::subjects::Erasure;

/// Administration.
#[derive(Debug, Clone, Copy)]
pub struct Admin<'a> {
    clinic: &'a Clinic,
}

/// A person in the directory ([`Admin::directory`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// Who, their name and stored roles.
    pub person: crate::clinic::Person,
    /// For a doctor, the patients in their care.
    pub in_care: Vec<UserId>,
}

/// A page of the audit log and the whole chain's verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditView {
    /// Entries `(seq, event)` asked for.
    pub entries: Vec<(u64, AuditEvent)>,
    /// The chain checked now: what was appended since the last intact
    /// verification on this node (the whole chain the first time;
    /// [`Admin::verify_audit`] walks it all).
    pub verification: Verification,
}

/// Keys and their states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// The clinic keyring's keys.
    pub clinic_keys: Vec<KeyInfo>,
    /// Each subject bucket's keyring's keys (buckets not used yet are
    /// left out). They seal patients' keyrings, never data.
    pub bucket_keys: Vec<(u16, Vec<KeyInfo>)>,
    /// The KMS keys the clinic uses, as the KMS describes them.
    pub kms_keys: Vec<KeyDescription>,
}

impl Clinic {
    /// Administration.
    pub fn admin(&self) -> Admin<'_> {
        Admin { clinic: self }
    }
}

impl Admin<'_> {
    async fn system(&self, who: &Principal, action: Action, what: String) -> Result<(), CoreError> {
        self.clinic.inner.decide_system(who, action, what).await
    }

    /// Adds `user` to the directory as `name` with stored `roles` (replacing
    /// their stored roles; claim rules still add theirs at sign-in). For
    /// patients use [`crate::records::MedRecords::register`], which also
    /// makes the health record.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited); [`CoreError::Invalid`] for a bad name.
    pub async fn set_person(
        &self,
        admin: &Principal,
        user: &UserId,
        name: &str,
        roles: RoleSet,
    ) -> Result<(), CoreError> {
        let name = text(name, MAX_NAME_CHARS, "name", false)?;
        self.refuse_self_grant(admin, std::iter::once((user, roles)))
            .await?;
        self.record_roles(admin, user, roles).await?;
        self.write_person(user, &name, roles).await
    }

    /// Decides and records a change of `user`'s stored roles as `SetRoles`,
    /// with the roles before and after (a patient named by their
    /// pseudonym, anyone else by subject).
    async fn record_roles(
        &self,
        admin: &Principal,
        user: &UserId,
        after: RoleSet,
    ) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        let before = self
            .clinic
            .person(user)
            .await?
            .map_or(RoleSet::EMPTY, |p| p.roles);
        let resource = if before.contains(Role::Patient) || after.contains(Role::Patient) {
            c.audit_name(user)
        } else {
            format!("roles:{}", user.subject())
        };
        let list = |r: RoleSet| r.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        c.gate
            .system_fact(
                admin,
                Action::AssignRoles,
                "SetRoles",
                resource,
                Some(serde_json::json!({ "before": list(before), "after": list(after) })),
            )
            .await
            .map(drop)
    }

    /// After the patient's keys are destroyed: deletes the rows that name
    /// them under keys that outlive the erasure: their directory entry
    /// (name, roles), stored role assignment, care relationships, break-glass
    /// declarations (with their reasons) and sessions.
    async fn erase_named_rows(&self, patient: &UserId) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        c.assignments.set(patient, RoleSet::EMPTY).await?;
        let id = c.person_id(patient)?;
        for _ in 0..8 {
            let Some(row) = c.get(&c.people, &id).await? else {
                break;
            };
            match c.store.delete(&c.people, &id, row.version).await {
                Ok(()) | Err(careconnect_storage::StorageError::NotFound) => break,
                Err(careconnect_storage::StorageError::VersionConflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        c.forget_roles();
        c.gate.erase_patient_rows(patient).await?;
        self.clinic
            .sessions(careconnect_authz::session::SessionConfig::default())?
            .logout_everywhere(patient)
            .await?;
        Ok(())
    }

    /// Refuses (audited) an administrator giving themselves a clinical role
    /// they do not hold yet: another administrator must (separation of
    /// duties). Keeping a role they hold, or changing anything else of
    /// their own, is allowed.
    async fn refuse_self_grant<'u>(
        &self,
        admin: &Principal,
        people: impl Iterator<Item = (&'u UserId, RoleSet)>,
    ) -> Result<(), CoreError> {
        for (user, roles) in people {
            if *user != admin.user || !roles.contains(Role::Doctor) {
                continue;
            }
            let held = self
                .clinic
                .person(user)
                .await?
                .is_some_and(|p| p.roles.contains(Role::Doctor));
            if !held {
                let c = &self.clinic.inner;
                return Err(c
                    .gate
                    .refuse(
                        admin,
                        "AssignRoles",
                        format!("roles:{}", user.subject()),
                        careconnect_authz::DenyReason::SelfGrant,
                    )
                    .await);
            }
        }
        Ok(())
    }

    /// Everyone in the directory, by name, with their stored roles and, for
    /// doctors, the patients in their care: what an administrator manages.
    /// Audited ([`Action::ReadDirectory`]).
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited); storage failures.
    pub async fn directory(&self, admin: &Principal) -> Result<Vec<DirectoryEntry>, CoreError> {
        self.system(admin, Action::ReadDirectory, "directory".into())
            .await?;
        let c = &self.clinic.inner;
        let mut people: Vec<crate::clinic::Person> = c
            .all(&c.people)
            .await?
            .iter()
            .filter_map(|r| rows::open(&c.keys.current(), &c.people, r))
            .collect();
        people.sort_by(|a, b| a.name.cmp(&b.name).then(a.user.cmp(&b.user)));
        let mut out = Vec::with_capacity(people.len());
        for person in people {
            let in_care = if person.roles.contains(Role::Doctor) {
                c.gate.patients_in_care(&person.user).await?
            } else {
                Vec::new()
            };
            out.push(DirectoryEntry { person, in_care });
        }
        Ok(out)
    }

    /// A directory import: [`Admin::set_person`] for each of `people`, up
    /// to 49 of them per storage commit, audited as one event. Every name
    /// is checked first: one bad name or a person named twice changes
    /// nothing. Returns how many were written.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited); [`CoreError::Invalid`] for a bad
    /// name or a duplicate; storage errors (people in earlier batches stay
    /// written: run the import again).
    pub async fn import_people(
        &self,
        admin: &Principal,
        people: &[(UserId, String, RoleSet)],
    ) -> Result<usize, CoreError> {
        let mut checked = Vec::with_capacity(people.len());
        let mut seen = std::collections::HashSet::with_capacity(people.len());
        for (user, name, roles) in people {
            if !seen.insert(user) {
                return Err(CoreError::Invalid("import: a person named twice"));
            }
            checked.push((user, text(name, MAX_NAME_CHARS, "name", false)?, *roles));
        }
        self.refuse_self_grant(admin, checked.iter().map(|(u, _, r)| (*u, *r)))
            .await?;
        self.system(
            admin,
            Action::AssignRoles,
            format!("roles:import people={}", checked.len()),
        )
        .await?;
        // Each person's change on record too, with the roles before and
        // after (a count alone tells an auditor nothing).
        for (user, _, roles) in &checked {
            self.record_roles(admin, user, *roles).await?;
        }
        let c = &self.clinic.inner;
        // A person is two rows: directory entry and stored roles.
        for chunk in checked.chunks(careconnect_storage::MAX_WRITES / 2) {
            let mut writes = Vec::with_capacity(chunk.len() * 2);
            for (user, name, roles) in chunk {
                let (_, role_write) = c.assignments.write(user, |_| *roles).await?;
                writes.push(
                    self.clinic
                        .directory_write(user, Some(name.clone()), *roles)
                        .await?,
                );
                writes.extend(role_write);
            }
            let committed = c.store.commit(&writes).await;
            c.forget_roles();
            match committed {
                Ok(_) => {}
                // Someone changed one of them meanwhile: one at a time.
                Err(
                    careconnect_storage::StorageError::VersionConflict { .. }
                    | careconnect_storage::StorageError::DuplicateId,
                ) => {
                    for (user, name, roles) in chunk {
                        self.write_person(user, name, *roles).await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(checked.len())
    }

    /// Writes one person's directory entry and stored roles together,
    /// re-reading while they keep changing.
    async fn write_person(
        &self,
        user: &UserId,
        name: &str,
        roles: RoleSet,
    ) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        for _ in 0..8 {
            // Directory and stored roles change together, or not at all.
            let (_, role_write) = c.assignments.write(user, |_| roles).await?;
            let mut writes = vec![
                self.clinic
                    .directory_write(user, Some(name.to_owned()), roles)
                    .await?,
            ];
            writes.extend(role_write);
            let committed = c.store.commit(&writes).await;
            c.forget_roles();
            match committed {
                Ok(_) => return Ok(()),
                Err(
                    careconnect_storage::StorageError::VersionConflict { .. }
                    | careconnect_storage::StorageError::DuplicateId,
                ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict("directory kept changing"))
    }

    /// Puts `patient` in `doctor`'s care.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited).
    pub async fn assign_care(
        &self,
        admin: &Principal,
        doctor: &UserId,
        patient: &UserId,
    ) -> Result<(), CoreError> {
        self.clinic
            .inner
            .gate
            .assign_care(admin, doctor, patient)
            .await
    }

    /// Ends an assignment.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited).
    pub async fn revoke_care(
        &self,
        admin: &Principal,
        doctor: &UserId,
        patient: &UserId,
    ) -> Result<(), CoreError> {
        self.clinic
            .inner
            .gate
            .revoke_care(admin, doctor, patient)
            .await
    }

    /// Up to `limit` audit entries from `from`, with the whole chain's
    /// verification.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited); storage failures.
    pub async fn audit_log(
        &self,
        admin: &Principal,
        from: u64,
        limit: usize,
    ) -> Result<AuditView, CoreError> {
        self.system(admin, Action::ReadAuditLog, "audit".into())
            .await?;
        let c = &self.clinic.inner;
        Ok(AuditView {
            entries: c.audit.read(from, limit).await?,
            verification: c.audit.verify_recent().await?,
        })
    }

    /// Walks the whole audit chain ([`crate::audit::AuditTrail::verify`]): what the admin
    /// page's "verify everything" button asks for (its page load verifies
    /// only what was appended since, [`crate::audit::AuditTrail::verify_recent`]).
    /// Audited.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited); storage failures.
    pub async fn verify_audit(&self, admin: &Principal) -> Result<Verification, CoreError> {
        self.system(admin, Action::ReadAuditLog, "audit:verify-all".into())
            .await?;
        self.clinic.inner.audit.verify().await
    }

    /// Every break-glass declaration, newest first.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited).
    pub async fn break_glass_review(
        &self,
        admin: &Principal,
    ) -> Result<Vec<BreakGlass>, CoreError> {
        self.clinic.inner.gate.break_glass_review(admin).await
    }

    /// The clinic keyring's keys and the KMS keys' versions.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited); KMS failures.
    pub async fn key_status(&self, admin: &Principal) -> Result<KeyStatus, CoreError> {
        self.system(admin, Action::RotateKeys, "keys:status".into())
            .await?;
        let c = &self.clinic.inner;
        let mut kms_keys = Vec::with_capacity(c.kms_keys.len());
        for k in &c.kms_keys {
            kms_keys.push(c.kms.describe(k).await?);
        }
        let bucket_keys = c
            .subjects
            .bucket_keyrings()
            .await?
            .into_iter()
            .map(|(b, ring)| (b, ring.keys().collect()))
            .collect();
        Ok(KeyStatus {
            clinic_keys: c.keys.current().keys().collect(),
            bucket_keys,
            kms_keys,
        })
    }

    /// Erases `patient` by crypto-shredding (`docs/erasure.md`), stating
    /// `reason`, which stays in the audit log. Safe to run again after a
    /// crash; erasing an erased patient does nothing.
    ///
    /// # Errors
    ///
    /// [`CoreError::NotFound`] (audited as denied) for someone who is not a
    /// patient (a doctor, an unknown id): nothing is destroyed;
    /// [`CoreError::ReasonRequired`] for a reason under ten characters;
    /// [`CoreError::Denied`] (audited); KMS failures (AWS KMS cannot
    /// destroy single key versions: see `docs/erasure.md`).
    pub async fn erase_patient(
        &self,
        admin: &Principal,
        patient: &UserId,
        reason: &str,
    ) -> Result<Option<Erasure>, CoreError> {
        let c = &self.clinic.inner;
        let reason = reason.trim();
        if reason.chars().count() < crate::access::MIN_REASON_CHARS {
            return Err(CoreError::ReasonRequired);
        }
        let resource = c.audit_name(patient);
        let decision = careconnect_authz::authorize(admin, Action::ErasePatient, &Resource::System);
        // Only a patient (registered, or erased already: a rerun after a
        // crash) can be erased; anyone else is not found, and nothing is
        // destroyed.
        let patient_known = c.subjects.known(patient).await?
            || self
                .clinic
                .person(patient)
                .await?
                .is_some_and(|p| p.roles.contains(Role::Patient));
        let outcome = if decision.is_allowed() && patient_known {
            Outcome::Allowed
        } else {
            Outcome::Denied
        };
        // On record before anything is destroyed.
        c.audit
            .record(
                AuditEvent::by(admin, "ErasePatient", resource, outcome)
                    .flagged(Flag::AdminOverride)
                    .because(reason),
            )
            .await?;
        if let careconnect_authz::Decision::Deny(r) = decision {
            return Err(CoreError::Denied(r));
        }
        if !patient_known {
            return Err(CoreError::NotFound);
        }
        c.forget_patient(patient);
        let mut done = c.subjects.erase(patient).await;
        if done.is_ok() {
            // The keys are gone; now every row that still names the patient
            // under keys that outlive them (run again on a rerun after a
            // crash, so nothing is left half-done).
            if let Err(e) = self.erase_named_rows(patient).await {
                done = Err(e);
            }
        }
        c.forget_patient(patient);
        if done.is_err() {
            c.audit
                .record(AuditEvent::by(
                    admin,
                    "ErasePatient",
                    c.audit_name(patient),
                    Outcome::Failed,
                ))
                .await?;
        }
        done
    }
}
