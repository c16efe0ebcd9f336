//! Deny by default: `authorize(principal, action, resource) -> Decision`.
//!
//! Actions and resources are enums, so a handler cannot ask about a string
//! nobody wrote a rule for. Each action applies to one kind of resource;
//! asking about another kind is denied. The full role × action matrix is in
//! `docs/policy.md`, which a test rebuilds by calling [`authorize`] for every
//! cell.
//!
//! ```
//! use careconnect_authz::{authorize, Action, Principal, Resource, Role, UserId};
//! let alice = UserId::new("https://idp.example", "alice").unwrap();
//! let bob = UserId::new("https://idp.example", "bob").unwrap();
//! let patient = Principal::new(alice.clone(), [Role::Patient].into_iter().collect());
//! assert!(authorize(&patient, Action::ReadHealthRecord, &Resource::patient(&alice)).is_allowed());
//! assert!(!authorize(&patient, Action::ReadHealthRecord, &Resource::patient(&bob)).is_allowed());
//! ```

use std::fmt;

use crate::principal::{Principal, Role, UserId};

/// Everything a user can ask to do, by subsystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// CareConnect / MedRecords: read a patient's health record and notes
    /// ([`Resource::Patient`]).
    ReadHealthRecord,
    /// CareConnect: a patient's appointments ([`Resource::Patient`]).
    ListAppointments,
    /// CareConnect: book an appointment for a patient ([`Resource::Patient`]).
    BookAppointment,
    /// CareConnect: cancel a patient's appointment ([`Resource::Patient`]).
    CancelAppointment,
    /// CareConnect: a patient's prescriptions ([`Resource::Patient`]).
    ListPrescriptions,
    /// CareConnect: pay a prescription ([`Resource::Prescription`]).
    PayPrescription,
    /// FinCare: list transactions ([`Resource::Finance`]).
    ListTransactions,
    /// FinCare: export transactions as CSV ([`Resource::Finance`]).
    ExportTransactions,
    /// MedRecords: the patient list ([`Resource::PatientDirectory`]).
    ListPatients,
    /// MedRecords: append a clinical note ([`Resource::Patient`]).
    AddClinicalNote,
    /// EPS: prescribe for a patient ([`Resource::Patient`]).
    Prescribe,
    /// EPS: prescriptions written by a prescriber ([`Resource::Prescriber`]).
    ListIssuedPrescriptions,
    /// EPS: cancel a prescription ([`Resource::Prescription`]).
    CancelPrescription,
    /// Medicloud: upload a document ([`Resource::DocumentStore`]).
    UploadDocument,
    /// Medicloud: list the documents one may see ([`Resource::DocumentStore`]).
    ListDocuments,
    /// Medicloud: download a document ([`Resource::Document`]).
    DownloadDocument,
    /// Medicloud: delete a document ([`Resource::Document`]).
    DeleteDocument,
    /// Medicloud: share a document with another user ([`Resource::Document`]).
    ShareDocument,
    /// Administration: assign or remove roles ([`Resource::System`]).
    AssignRoles,
    /// Administration: see the people directory with stored roles and care
    /// relationships ([`Resource::System`]).
    ReadDirectory,
    /// Administration: read the audit log ([`Resource::System`]).
    ReadAuditLog,
    /// Administration: rotate or retire keys, see their status ([`Resource::System`]).
    RotateKeys,
    /// Administration: erase a patient by crypto-shredding ([`Resource::System`]).
    ErasePatient,
    /// Administration: delete stored blobs that no document references
    /// (left by a crash mid-upload or mid-delete) ([`Resource::System`]).
    CollectOrphans,
}

impl Action {
    /// Every action, in the order of `docs/policy.md`.
    pub const ALL: [Action; 24] = [
        Action::ReadHealthRecord,
        Action::ListAppointments,
        Action::BookAppointment,
        Action::CancelAppointment,
        Action::ListPrescriptions,
        Action::PayPrescription,
        Action::ListTransactions,
        Action::ExportTransactions,
        Action::ListPatients,
        Action::AddClinicalNote,
        Action::Prescribe,
        Action::ListIssuedPrescriptions,
        Action::CancelPrescription,
        Action::UploadDocument,
        Action::ListDocuments,
        Action::DownloadDocument,
        Action::DeleteDocument,
        Action::ShareDocument,
        Action::AssignRoles,
        Action::ReadDirectory,
        Action::ReadAuditLog,
        Action::RotateKeys,
        Action::ErasePatient,
        Action::CollectOrphans,
    ];

    /// The kind of resource this action applies to.
    pub fn resource_kind(self) -> ResourceKind {
        use Action as A;
        match self {
            A::ReadHealthRecord
            | A::ListAppointments
            | A::BookAppointment
            | A::CancelAppointment
            | A::ListPrescriptions
            | A::AddClinicalNote
            | A::Prescribe => ResourceKind::Patient,
            A::PayPrescription | A::CancelPrescription => ResourceKind::Prescription,
            A::ListTransactions | A::ExportTransactions => ResourceKind::Finance,
            A::ListPatients => ResourceKind::PatientDirectory,
            A::ListIssuedPrescriptions => ResourceKind::Prescriber,
            A::UploadDocument | A::ListDocuments => ResourceKind::DocumentStore,
            A::DownloadDocument | A::DeleteDocument | A::ShareDocument => ResourceKind::Document,
            A::AssignRoles
            | A::ReadDirectory
            | A::ReadAuditLog
            | A::RotateKeys
            | A::ErasePatient
            | A::CollectOrphans => ResourceKind::System,
        }
    }

    /// Whether the action only reads (admins may read everywhere, audited).
    pub fn is_read(self) -> bool {
        use Action as A;
        matches!(
            self,
            A::ReadHealthRecord
                | A::ListAppointments
                | A::ListPrescriptions
                | A::ListTransactions
                | A::ExportTransactions
                | A::ListPatients
                | A::ListIssuedPrescriptions
                | A::ListDocuments
                | A::DownloadDocument
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What an action is about, with the facts the rules need (owner, author,
/// grants). Built by the domain layer from stored rows, never from request
/// parameters alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A patient's record, appointments, notes and prescriptions.
    Patient {
        /// The patient.
        patient: &'a UserId,
        /// How the acting principal stands to this patient (read from
        /// storage by the domain layer: appointments, assignments, a live
        /// break-glass declaration).
        care: Care,
    },
    /// One prescription.
    Prescription {
        /// The patient it is for.
        patient: &'a UserId,
        /// The doctor who wrote it.
        prescriber: &'a UserId,
    },
    /// The prescriptions a doctor has written.
    Prescriber(&'a UserId),
    /// The list of patients.
    PatientDirectory,
    /// Finance transactions (pseudonymous).
    Finance,
    /// The document store as a whole (upload, list).
    DocumentStore,
    /// One document.
    Document {
        /// Who uploaded it.
        owner: &'a UserId,
        /// Users it was explicitly shared with.
        shared_with: &'a [UserId],
    },
    /// Administration.
    System,
}

impl<'a> Resource<'a> {
    /// [`Resource::Patient`] with no care relationship (what a patient's own
    /// access, or anyone's access to a stranger, looks like).
    pub fn patient(patient: &'a UserId) -> Self {
        Resource::Patient {
            patient,
            care: Care::None,
        }
    }
}

/// How a clinician stands to a patient: least privilege for clinical data.
/// Doctors read and write the records of patients in their care; anything
/// else is an emergency, declared with a reason and time-limited by the
/// domain layer, and always flagged in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Care {
    /// No relationship on record.
    #[default]
    None,
    /// The patient is in the principal's care: an appointment with them, or
    /// an assignment by an administrator.
    InCare,
    /// The principal declared an emergency for this patient (break-glass,
    /// HIPAA 164.312(a)(2)(ii)), with a stated reason, not yet expired.
    BreakGlass,
}

/// The kinds of [`Resource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// [`Resource::Patient`].
    Patient,
    /// [`Resource::Prescription`].
    Prescription,
    /// [`Resource::Prescriber`].
    Prescriber,
    /// [`Resource::PatientDirectory`].
    PatientDirectory,
    /// [`Resource::Finance`].
    Finance,
    /// [`Resource::DocumentStore`].
    DocumentStore,
    /// [`Resource::Document`].
    Document,
    /// [`Resource::System`].
    System,
}

impl Resource<'_> {
    /// Its kind.
    pub fn kind(&self) -> ResourceKind {
        match self {
            Resource::Patient { .. } => ResourceKind::Patient,
            Resource::Prescription { .. } => ResourceKind::Prescription,
            Resource::Prescriber(_) => ResourceKind::Prescriber,
            Resource::PatientDirectory => ResourceKind::PatientDirectory,
            Resource::Finance => ResourceKind::Finance,
            Resource::DocumentStore => ResourceKind::DocumentStore,
            Resource::Document { .. } => ResourceKind::Document,
            Resource::System => ResourceKind::System,
        }
    }
}

/// Why an action was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The role may do this to any resource of the kind.
    Role(Role),
    /// The resource is the principal's own (a patient's own data, a doctor's
    /// own prescription list).
    Ownership,
    /// The principal wrote or uploaded it.
    Authorship,
    /// It was shared with the principal.
    Grant,
    /// An administrator looking in: allowed, and must be audited as such.
    AdminOverride,
    /// The patient is in the principal's care.
    Care,
    /// Emergency access outside a care relationship: allowed, and must be
    /// flagged in the audit log for review.
    BreakGlass,
}

/// Why an action was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// No role of the principal has a rule for this action.
    NoRule,
    /// A rule exists, but it needs ownership, authorship or a grant the
    /// principal lacks.
    NotPermittedOnThisResource,
    /// The resource is not the kind the action applies to.
    WrongResource,
    /// The actor is the patient: no one is their own doctor (care,
    /// break-glass, notes, prescriptions, a booking with oneself), however
    /// the care facts read.
    SelfTreatment,
    /// An administrator granting themselves a clinical role or a care
    /// relationship: another administrator must (separation of duties).
    SelfGrant,
}

/// The outcome of [`authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow(Basis),
    /// Refuse.
    Deny(DenyReason),
}

impl Decision {
    /// Whether it is an allow.
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// Whether the access must be audited as an administrator override
    /// (the domain layer audits every patient-data access anyway).
    pub fn is_admin_override(self) -> bool {
        matches!(self, Decision::Allow(Basis::AdminOverride))
    }

    /// Whether the access rests on a break-glass declaration (flag it).
    pub fn is_break_glass(self) -> bool {
        matches!(self, Decision::Allow(Basis::BreakGlass))
    }
}

/// What one role may do for one action. The matrix in `docs/policy.md`.
fn rule(role: Role, action: Action) -> Rule {
    use Action as A;
    use Role as R;
    match (role, action) {
        // Patients: their own data only.
        (
            R::Patient,
            A::ReadHealthRecord
            | A::ListAppointments
            | A::BookAppointment
            | A::CancelAppointment
            | A::ListPrescriptions,
        ) => Rule::Own,
        (R::Patient, A::PayPrescription) => Rule::Own,
        // Doctors: clinical work on patients in their care (or in a declared
        // emergency); their own prescriptions; documents they uploaded or
        // that were shared with them. The patient list itself is open to
        // doctors (the domain layer lists those in one's care).
        (
            R::Doctor,
            A::ReadHealthRecord
            | A::ListAppointments
            | A::ListPrescriptions
            | A::AddClinicalNote
            | A::Prescribe,
        ) => Rule::InCare,
        (R::Doctor, A::ListPatients | A::UploadDocument | A::ListDocuments) => Rule::Any,
        (R::Doctor, A::ListIssuedPrescriptions) => Rule::Own,
        (R::Doctor, A::CancelPrescription | A::DeleteDocument | A::ShareDocument) => Rule::Author,
        (R::Doctor, A::DownloadDocument) => Rule::Granted,
        // Finance: pseudonymous transactions only.
        (R::Finance, A::ListTransactions | A::ExportTransactions) => Rule::Any,
        // External partners: documents they uploaded or were given.
        (R::External, A::UploadDocument | A::ListDocuments) => Rule::Any,
        (R::External, A::DownloadDocument) => Rule::Granted,
        (R::External, A::DeleteDocument | A::ShareDocument) => Rule::Author,
        // Admins: administration, and looking (not acting) everywhere.
        (
            R::Admin,
            A::AssignRoles
            | A::ReadDirectory
            | A::ReadAuditLog
            | A::RotateKeys
            | A::ErasePatient
            | A::CollectOrphans,
        ) => Rule::Any,
        (R::Admin, a) if a.is_read() => Rule::Audited,
        _ => Rule::None,
    }
}

/// A cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    None,
    Any,
    Own,
    Author,
    Granted,
    Audited,
    InCare,
}

impl Rule {
    fn apply(self, role: Role, me: &UserId, resource: &Resource<'_>) -> Option<Basis> {
        match (self, resource) {
            (Rule::None, _) => None,
            (Rule::Any, _) => Some(Basis::Role(role)),
            (Rule::Audited, _) => Some(Basis::AdminOverride),
            (Rule::Own, Resource::Patient { patient: p, .. } | Resource::Prescriber(p)) => {
                (*p == me).then_some(Basis::Ownership)
            }
            // No one is their own doctor, whatever the care facts say.
            (Rule::InCare, Resource::Patient { patient, .. }) if *patient == me => None,
            (Rule::InCare, Resource::Patient { care, .. }) => match care {
                Care::InCare => Some(Basis::Care),
                Care::BreakGlass => Some(Basis::BreakGlass),
                Care::None => None,
            },
            (Rule::Own, Resource::Prescription { patient, .. }) => {
                (*patient == me).then_some(Basis::Ownership)
            }
            (Rule::Author, Resource::Prescription { prescriber, .. }) => {
                (*prescriber == me).then_some(Basis::Authorship)
            }
            (Rule::Author, Resource::Document { owner, .. }) => {
                (*owner == me).then_some(Basis::Authorship)
            }
            (Rule::Granted, Resource::Document { owner, shared_with }) => {
                if *owner == me {
                    Some(Basis::Authorship)
                } else {
                    shared_with.contains(me).then_some(Basis::Grant)
                }
            }
            _ => None,
        }
    }
}

/// Decides whether `principal` may do `action` to `resource`. Deny by
/// default: allowed only when one of the principal's roles has a rule for the
/// action and the rule's condition (ownership, authorship, grant) holds. A
/// role's own rule wins over an admin override, so an admin who is also the
/// patient is not audited as an override when reading their own record.
/// Clinical rules never apply to the principal's own record: a doctor who
/// is also the patient is refused with [`DenyReason::SelfTreatment`] (as a
/// patient, they still read their own).
pub fn authorize(principal: &Principal, action: Action, resource: &Resource<'_>) -> Decision {
    if resource.kind() != action.resource_kind() {
        return Decision::Deny(DenyReason::WrongResource);
    }
    let mut had_rule = false;
    let mut self_treatment = false;
    let mut override_ = None;
    for role in principal.roles.iter() {
        let r = rule(role, action);
        if r == Rule::None {
            continue;
        }
        had_rule = true;
        if r == Rule::InCare
            && matches!(resource, Resource::Patient { patient, .. } if **patient == principal.user)
        {
            self_treatment = true;
        }
        match r.apply(role, &principal.user, resource) {
            Some(Basis::AdminOverride) => override_ = Some(Basis::AdminOverride),
            Some(basis) => return Decision::Allow(basis),
            None => {}
        }
    }
    match (override_, had_rule) {
        (Some(b), _) => Decision::Allow(b),
        (None, true) if self_treatment => Decision::Deny(DenyReason::SelfTreatment),
        (None, true) => Decision::Deny(DenyReason::NotPermittedOnThisResource),
        (None, false) => Decision::Deny(DenyReason::NoRule),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::RoleSet;

    fn user(s: &str) -> UserId {
        UserId::new("https://idp.test", s).unwrap()
    }

    fn as_(role: Role, who: &UserId) -> Principal {
        Principal::new(who.clone(), [role].into_iter().collect())
    }

    #[test]
    fn doctors_reach_patients_in_their_care_or_by_break_glass_only() {
        let (doc, pat) = (user("doc"), user("pat"));
        let d = as_(Role::Doctor, &doc);
        let with = |care| Resource::Patient {
            patient: &pat,
            care,
        };
        for a in [
            Action::ReadHealthRecord,
            Action::AddClinicalNote,
            Action::Prescribe,
            Action::ListAppointments,
            Action::ListPrescriptions,
        ] {
            assert_eq!(
                authorize(&d, a, &with(Care::None)),
                Decision::Deny(DenyReason::NotPermittedOnThisResource)
            );
            assert_eq!(
                authorize(&d, a, &with(Care::InCare)),
                Decision::Allow(Basis::Care)
            );
            let glass = authorize(&d, a, &with(Care::BreakGlass));
            assert!(glass.is_break_glass() && !glass.is_admin_override());
        }
        // A patient's own access does not depend on care facts.
        let p = as_(Role::Patient, &pat);
        assert!(authorize(&p, Action::ReadHealthRecord, &with(Care::None)).is_allowed());
        // Nor can a care fact open another patient's data to a patient.
        let other = as_(Role::Patient, &doc);
        assert!(!authorize(&other, Action::ReadHealthRecord, &with(Care::InCare)).is_allowed());
        assert!(!authorize(&other, Action::ReadHealthRecord, &with(Care::BreakGlass)).is_allowed());
    }

    #[test]
    fn no_one_is_their_own_doctor() {
        let me = user("doc");
        let both = Principal::new(
            me.clone(),
            [Role::Doctor, Role::Patient].into_iter().collect(),
        );
        let doctor = as_(Role::Doctor, &me);
        for care in [Care::None, Care::InCare, Care::BreakGlass] {
            let own = Resource::Patient { patient: &me, care };
            for a in [Action::AddClinicalNote, Action::Prescribe] {
                assert_eq!(
                    authorize(&both, a, &own),
                    Decision::Deny(DenyReason::SelfTreatment),
                    "{a:?} {care:?}"
                );
                assert_eq!(
                    authorize(&doctor, a, &own),
                    Decision::Deny(DenyReason::SelfTreatment)
                );
            }
            // As a patient, they read their own record (not as its doctor).
            assert_eq!(
                authorize(&both, Action::ReadHealthRecord, &own),
                Decision::Allow(Basis::Ownership)
            );
        }
    }

    #[test]
    fn no_roles_no_access() {
        let me = user("me");
        let p = Principal::new(me.clone(), RoleSet::EMPTY);
        for a in Action::ALL {
            let r = match a.resource_kind() {
                ResourceKind::Patient => Resource::patient(&me),
                ResourceKind::Prescriber => Resource::Prescriber(&me),
                ResourceKind::Prescription => Resource::Prescription {
                    patient: &me,
                    prescriber: &me,
                },
                ResourceKind::PatientDirectory => Resource::PatientDirectory,
                ResourceKind::Finance => Resource::Finance,
                ResourceKind::DocumentStore => Resource::DocumentStore,
                ResourceKind::Document => Resource::Document {
                    owner: &me,
                    shared_with: &[],
                },
                ResourceKind::System => Resource::System,
            };
            assert_eq!(authorize(&p, a, &r), Decision::Deny(DenyReason::NoRule));
        }
    }

    #[test]
    fn wrong_resource_kind_is_denied_even_for_admin() {
        let me = user("me");
        let admin = as_(Role::Admin, &me);
        assert_eq!(
            authorize(&admin, Action::ReadAuditLog, &Resource::patient(&me)),
            Decision::Deny(DenyReason::WrongResource)
        );
    }

    #[test]
    fn authorship_and_grants() {
        let (d1, d2, ext) = (user("d1"), user("d2"), user("ext"));
        let pat = user("pat");
        let rx = Resource::Prescription {
            patient: &pat,
            prescriber: &d1,
        };
        assert!(authorize(&as_(Role::Doctor, &d1), Action::CancelPrescription, &rx).is_allowed());
        assert!(!authorize(&as_(Role::Doctor, &d2), Action::CancelPrescription, &rx).is_allowed());
        let shared = [ext.clone()];
        let doc = Resource::Document {
            owner: &d1,
            shared_with: &shared,
        };
        assert_eq!(
            authorize(&as_(Role::External, &ext), Action::DownloadDocument, &doc),
            Decision::Allow(Basis::Grant)
        );
        assert!(!authorize(&as_(Role::External, &ext), Action::DeleteDocument, &doc).is_allowed());
        assert!(!authorize(&as_(Role::Doctor, &d2), Action::DownloadDocument, &doc).is_allowed());
    }

    #[test]
    fn admins_look_but_do_not_act() {
        let (a, pat) = (user("a"), user("pat"));
        let admin = as_(Role::Admin, &a);
        assert_eq!(
            authorize(&admin, Action::ReadHealthRecord, &Resource::patient(&pat)),
            Decision::Allow(Basis::AdminOverride)
        );
        assert!(!authorize(&admin, Action::Prescribe, &Resource::patient(&pat)).is_allowed());
        // An admin who is also a patient reads their own record as a patient.
        let both = Principal::new(
            pat.clone(),
            [Role::Admin, Role::Patient].into_iter().collect(),
        );
        assert_eq!(
            authorize(&both, Action::ReadHealthRecord, &Resource::patient(&pat)),
            Decision::Allow(Basis::Ownership)
        );
    }
}
