//! The demo clinic's people and data, seeded idempotently.
//!
//! [`demo`] registers three patients, two doctors, a finance user, an
//! external partner and an administrator under one issuer (the development
//! OpenID issuer's subjects), then books appointments, writes notes and
//! prescriptions and makes one payment. Every step checks what is there
//! first, so running it again (or after a crash half-way) adds nothing
//! twice.

use careconnect_authz::{Principal, Role, RoleSet, UserId};

use crate::clinic::Clinic;
use crate::eps::{PrescriptionInput, Status};
use crate::error::CoreError;
use crate::records::PatientDetails;

/// A demo user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoUser {
    /// The OpenID subject.
    pub subject: &'static str,
    /// Display name.
    pub name: &'static str,
    /// Their role.
    pub role: Role,
}

/// The demo users, as the development issuer should offer them.
pub const DEMO_USERS: [DemoUser; 8] = [
    DemoUser {
        subject: "patient-alice",
        name: "Alice Smith",
        role: Role::Patient,
    },
    DemoUser {
        subject: "patient-bob",
        name: "Bob Jones",
        role: Role::Patient,
    },
    DemoUser {
        subject: "patient-carol",
        name: "Carol White",
        role: Role::Patient,
    },
    DemoUser {
        subject: "doctor-grey",
        name: "Dr Meredith Grey",
        role: Role::Doctor,
    },
    DemoUser {
        subject: "doctor-shepherd",
        name: "Dr Derek Shepherd",
        role: Role::Doctor,
    },
    DemoUser {
        subject: "finance-fiona",
        name: "Fiona Banks",
        role: Role::Finance,
    },
    DemoUser {
        subject: "partner-pat",
        name: "Pat Lab (Northside Labs)",
        role: Role::External,
    },
    DemoUser {
        subject: "admin-adam",
        name: "Adam Admin",
        role: Role::Admin,
    },
];

/// What a seeding run added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seeded {
    /// People registered or updated.
    pub people: usize,
    /// Appointments booked.
    pub appointments: usize,
    /// Notes written.
    pub notes: usize,
    /// Prescriptions written.
    pub prescriptions: usize,
    /// Payments made.
    pub payments: usize,
}

fn details(name: &str, dob: &str, blood: &str, allergies: &[&str]) -> PatientDetails {
    PatientDetails {
        name: name.into(),
        date_of_birth: dob.into(),
        blood_type: blood.into(),
        allergies: allergies.iter().map(|a| (*a).to_owned()).collect(),
    }
}

/// Seeds the demo clinic for users of `issuer`. Idempotent.
///
/// # Errors
///
/// Storage, KMS and audit failures.
pub async fn demo(clinic: &Clinic, issuer: &str) -> Result<Seeded, CoreError> {
    let user = |s: &str| UserId::new(issuer, s);
    let seeder = Principal::new(
        user("careconnect-seed")?,
        [Role::Admin].into_iter().collect(),
    );
    let mut out = Seeded::default();
    let patients = [
        (
            "patient-alice",
            details("Alice Smith", "1984-03-12", "A+", &["penicillin"]),
        ),
        ("patient-bob", details("Bob Jones", "1957-11-02", "O-", &[])),
        (
            "patient-carol",
            details("Carol White", "2001-06-30", "B+", &["latex", "peanuts"]),
        ),
    ];
    for d in &DEMO_USERS {
        let u = user(d.subject)?;
        if d.role == Role::Patient {
            continue;
        }
        let want: RoleSet = [d.role].into_iter().collect();
        if clinic
            .person(&u)
            .await?
            .is_none_or(|p| p.roles != want || p.name != d.name)
        {
            clinic.admin().set_person(&seeder, &u, d.name, want).await?;
            out.people += 1;
        }
    }
    for (subject, det) in &patients {
        match clinic
            .records()
            .register(&seeder, &user(subject)?, det)
            .await
        {
            Ok(()) => out.people += 1,
            Err(CoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let grey = Principal::new(user("doctor-grey")?, [Role::Doctor].into_iter().collect());
    let shepherd = Principal::new(
        user("doctor-shepherd")?,
        [Role::Doctor].into_iter().collect(),
    );
    let plan = [
        (
            "patient-alice",
            &grey,
            "Seasonal asthma, well controlled. Peak flow 420 L/min.",
            PrescriptionInput {
                drug: "Salbutamol inhaler".into(),
                dosage: "100 micrograms, 2 puffs".into(),
                frequency: "as needed, up to 4 times daily".into(),
                notes: "Use a spacer.".into(),
            },
        ),
        (
            "patient-bob",
            &grey,
            "Hypertension follow-up: BP 142/90. Continue current plan.",
            PrescriptionInput {
                drug: "Amlodipine".into(),
                dosage: "5 mg".into(),
                frequency: "once daily".into(),
                notes: String::new(),
            },
        ),
        (
            "patient-carol",
            &shepherd,
            "Migraine with aura, 3 episodes this month.",
            PrescriptionInput {
                drug: "Sumatriptan".into(),
                dosage: "50 mg".into(),
                frequency: "at onset, max 2 in 24 h".into(),
                notes: "Not within 24 h of another triptan.".into(),
            },
        ),
    ];
    let slot = u64::from(clinic.inner.hours.slot_minutes) * 60;
    let tomorrow = (clinic.inner.now() / 86_400 + 1) * 86_400;
    let opens = u64::from(clinic.inner.hours.opens) * 3600;
    for (i, (subject, doctor, note, rx)) in plan.iter().enumerate() {
        let patient_id = user(subject)?;
        let patient = Principal::new(patient_id.clone(), [Role::Patient].into_iter().collect());
        let booked = clinic
            .patients()
            .appointments(&patient, &patient_id)
            .await?;
        if booked.is_empty() {
            let at = tomorrow + opens + slot * u64::try_from(i).unwrap_or(0);
            match clinic
                .patients()
                .book(&patient, &patient_id, &doctor.user, at, "Review")
                .await
            {
                Ok(_) => out.appointments += 1,
                Err(CoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if clinic
            .records()
            .record(doctor, &patient_id)
            .await?
            .notes
            .is_empty()
        {
            clinic
                .records()
                .add_note(doctor, &patient_id, note, None)
                .await?;
            out.notes += 1;
        }
        let mut prescriptions = clinic
            .patients()
            .prescriptions(&patient, &patient_id)
            .await?;
        if prescriptions.is_empty() {
            prescriptions.push(clinic.eps().prescribe(doctor, &patient_id, rx).await?);
            out.prescriptions += 1;
        }
        if i == 0
            && prescriptions.iter().all(|p| p.status == Status::Issued)
            && let Some(p) = prescriptions.first()
        {
            clinic.patients().pay(&patient, &p.id).await?;
            out.payments += 1;
        }
    }
    Ok(out)
}
