//! Property: random sequences of operations by random principals never let
//! data cross the ownership and care rules. A small model tracks who is in
//! whose care and which prescriptions exist; every outcome is checked
//! against it (allowed exactly when the rules say so, and what is returned
//! belongs to whom it should).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use careconnect_authz::session::ManualClock;
use careconnect_authz::{Principal, Role, UserId};
use careconnect_core::eps::{PrescriptionInput, Status};
use careconnect_core::finance::DateRange;
use careconnect_core::records::PatientDetails;
use careconnect_core::{Clinic, ClinicConfig, CoreError};
use proptest::prelude::*;

const START: u64 = 1_799_046_000; // Monday 2027-01-04 07:00 UTC
const ACTORS: [(&str, Role); 7] = [
    ("patient-alice", Role::Patient),
    ("patient-bob", Role::Patient),
    ("doctor-grey", Role::Doctor),
    ("doctor-shepherd", Role::Doctor),
    ("finance-fiona", Role::Finance),
    ("partner-pat", Role::External),
    ("admin-adam", Role::Admin),
];
const PATIENTS: [usize; 2] = [0, 1];
const DOCTORS: [usize; 2] = [2, 3];

fn principal(i: usize) -> Principal {
    let (s, r) = ACTORS[i];
    Principal::new(
        UserId::new("https://idp.test", s).unwrap(),
        [r].into_iter().collect(),
    )
}

#[derive(Debug, Clone)]
enum Op {
    Record {
        actor: usize,
        patient: usize,
    },
    Appointments {
        actor: usize,
        patient: usize,
    },
    Book {
        actor: usize,
        patient: usize,
        doctor: usize,
        slot: u8,
    },
    Note {
        actor: usize,
        patient: usize,
    },
    Prescribe {
        actor: usize,
        patient: usize,
    },
    Pay {
        actor: usize,
        rx: usize,
    },
    Cancel {
        actor: usize,
        rx: usize,
    },
    Assign {
        actor: usize,
        doctor: usize,
        patient: usize,
    },
    Finance {
        actor: usize,
    },
    Prescriptions {
        actor: usize,
        patient: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let a = 0..ACTORS.len();
    let p = prop::sample::select(PATIENTS.to_vec());
    let d = prop::sample::select(DOCTORS.to_vec());
    prop_oneof![
        (a.clone(), p.clone()).prop_map(|(actor, patient)| Op::Record { actor, patient }),
        (a.clone(), p.clone()).prop_map(|(actor, patient)| Op::Appointments { actor, patient }),
        (a.clone(), p.clone(), d.clone(), 0u8..4).prop_map(|(actor, patient, doctor, slot)| {
            Op::Book {
                actor,
                patient,
                doctor,
                slot,
            }
        }),
        (a.clone(), p.clone()).prop_map(|(actor, patient)| Op::Note { actor, patient }),
        (a.clone(), p.clone()).prop_map(|(actor, patient)| Op::Prescribe { actor, patient }),
        (a.clone(), 0usize..6).prop_map(|(actor, rx)| Op::Pay { actor, rx }),
        (a.clone(), 0usize..6).prop_map(|(actor, rx)| Op::Cancel { actor, rx }),
        (a.clone(), d, p.clone()).prop_map(|(actor, doctor, patient)| Op::Assign {
            actor,
            doctor,
            patient
        }),
        a.clone().prop_map(|actor| Op::Finance { actor }),
        (a, p).prop_map(|(actor, patient)| Op::Prescriptions { actor, patient }),
    ]
}

#[derive(Default)]
struct Model {
    care: BTreeSet<(usize, usize)>,
    /// Prescriptions: (id, patient, prescriber, paid or cancelled).
    rx: Vec<(String, usize, usize, bool)>,
    paid: usize,
}

impl Model {
    fn role(i: usize) -> Role {
        ACTORS[i].1
    }
    /// May `actor` read `patient`'s clinical data?
    fn reads(&self, actor: usize, patient: usize) -> bool {
        actor == patient
            || Self::role(actor) == Role::Admin
            || (Self::role(actor) == Role::Doctor && self.care.contains(&(actor, patient)))
    }
    fn writes(&self, actor: usize, patient: usize) -> bool {
        Self::role(actor) == Role::Doctor && self.care.contains(&(actor, patient))
    }
}

fn allowed_iff<T: std::fmt::Debug>(r: &Result<T, CoreError>, rule: bool, what: &str) {
    match (r, rule) {
        (Ok(_), true) | (Err(CoreError::Denied(_)), false) => {}
        (Err(CoreError::Conflict(_) | CoreError::NotFound), _) if !rule => {}
        (Err(CoreError::Conflict(_)), true) => {}
        _ => panic!("{what}: rule says {rule}, got {r:?}"),
    }
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ClinicConfig::embedded(dir.path()).unwrap();
    config.subject_buckets = 2;
    let store = careconnect_storage::connect("memory:").await.unwrap();
    let clinic = Clinic::open_with(config, store, Arc::new(ManualClock::new(START)))
        .await
        .unwrap();
    let admin = principal(6);
    for (i, (subject, role)) in ACTORS.iter().enumerate() {
        let p = principal(i);
        if *role == Role::Patient {
            clinic
                .records()
                .register(
                    &admin,
                    &p.user,
                    &PatientDetails {
                        name: format!("Name of {subject}"),
                        date_of_birth: "1990-05-05".into(),
                        blood_type: "AB-".into(),
                        allergies: vec![],
                    },
                )
                .await
                .unwrap();
        } else {
            clinic
                .admin()
                .set_person(&admin, &p.user, subject, p.roles)
                .await
                .unwrap();
        }
    }
    let mut m = Model::default();
    let mut slots: BTreeMap<(usize, u8), ()> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Record { actor, patient } => {
                let r = clinic
                    .records()
                    .record(&principal(actor), &principal(patient).user)
                    .await;
                allowed_iff(&r, m.reads(actor, patient), "record");
                if let Ok(rec) = r {
                    assert_eq!(rec.patient, principal(patient).user);
                    assert_eq!(rec.details.name, format!("Name of {}", ACTORS[patient].0));
                    assert!(rec.notes.iter().all(|n| n.patient == rec.patient));
                }
            }
            Op::Appointments { actor, patient } => {
                let r = clinic
                    .patients()
                    .appointments(&principal(actor), &principal(patient).user)
                    .await;
                allowed_iff(&r, m.reads(actor, patient), "appointments");
                if let Ok(list) = r {
                    assert!(list.iter().all(|a| a.patient == principal(patient).user));
                }
            }
            Op::Prescriptions { actor, patient } => {
                let r = clinic
                    .patients()
                    .prescriptions(&principal(actor), &principal(patient).user)
                    .await;
                allowed_iff(&r, m.reads(actor, patient), "prescriptions");
                if let Ok(list) = r {
                    assert!(list.iter().all(|p| p.patient == principal(patient).user));
                    let mine = m.rx.iter().filter(|r| r.1 == patient).count();
                    assert_eq!(list.len(), mine);
                }
            }
            Op::Book {
                actor,
                patient,
                doctor,
                slot,
            } => {
                let at = (START / 86_400 + 1) * 86_400 + (9 + u64::from(slot)) * 3600;
                let r = clinic
                    .patients()
                    .book(
                        &principal(actor),
                        &principal(patient).user,
                        &principal(doctor).user,
                        at,
                        "",
                    )
                    .await;
                let free = !slots.contains_key(&(doctor, slot));
                allowed_iff(&r, actor == patient && free, "book");
                if r.is_ok() {
                    slots.insert((doctor, slot), ());
                    m.care.insert((doctor, patient));
                }
            }
            Op::Note { actor, patient } => {
                let r = clinic
                    .records()
                    .add_note(
                        &principal(actor),
                        &principal(patient).user,
                        "observed",
                        None,
                    )
                    .await;
                allowed_iff(&r, m.writes(actor, patient), "note");
            }
            Op::Prescribe { actor, patient } => {
                let input = PrescriptionInput {
                    drug: "Paracetamol".into(),
                    dosage: "1 g".into(),
                    frequency: "4 times daily".into(),
                    notes: String::new(),
                };
                let r = clinic
                    .eps()
                    .prescribe(&principal(actor), &principal(patient).user, &input)
                    .await;
                allowed_iff(&r, m.writes(actor, patient), "prescribe");
                if let Ok(p) = r {
                    assert_eq!(p.prescriber, principal(actor).user);
                    m.rx.push((p.id, patient, actor, false));
                }
            }
            Op::Pay { actor, rx } => {
                let Some((id, patient, _, done)) = m.rx.get(rx).cloned() else {
                    continue;
                };
                let r = clinic.patients().pay(&principal(actor), &id).await;
                allowed_iff(&r, actor == patient && !done, "pay");
                if r.is_ok() {
                    m.rx[rx].3 = true;
                    m.paid += 1;
                }
            }
            Op::Cancel { actor, rx } => {
                let Some((id, _, prescriber, done)) = m.rx.get(rx).cloned() else {
                    continue;
                };
                let r = clinic.eps().cancel(&principal(actor), &id).await;
                allowed_iff(&r, actor == prescriber && !done, "cancel");
                if let Ok(p) = r {
                    assert!(matches!(p.status, Status::Cancelled { .. }));
                    m.rx[rx].3 = true;
                }
            }
            Op::Assign {
                actor,
                doctor,
                patient,
            } => {
                let r = clinic
                    .admin()
                    .assign_care(
                        &principal(actor),
                        &principal(doctor).user,
                        &principal(patient).user,
                    )
                    .await;
                allowed_iff(&r, Model::role(actor) == Role::Admin, "assign");
                if r.is_ok() {
                    m.care.insert((doctor, patient));
                }
            }
            Op::Finance { actor } => {
                let r = clinic
                    .finance()
                    .transactions(&principal(actor), &DateRange::default())
                    .await;
                let role = Model::role(actor);
                allowed_iff(&r, role == Role::Finance || role == Role::Admin, "finance");
                if let Ok(txs) = r {
                    assert_eq!(txs.len(), m.paid);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn no_operation_crosses_ownership_or_care(ops in prop::collection::vec(op(), 1..40)) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}
