//! CareConnect: a patient's own record, appointments and prescriptions.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use careconnect::core::disclosures::AccessBasis;
use careconnect::core::eps::{Prescription, SignatureStatus, Status};
use careconnect::core::patients::Appointment;
use careconnect::core::records::Note;
use serde::Serialize;

use crate::forms::Booking;
use crate::web::{self, AppError, Empty, Post, User};

pub(super) fn routes() -> Router<web::State> {
    Router::new()
        .route("/careconnect", get(page))
        .route("/careconnect/appointments", post(book))
        .route("/careconnect/appointments/{id}/cancel", post(cancel))
        .route("/careconnect/prescriptions/{id}/pay", post(pay))
}

/// A note as pages show it.
#[derive(Serialize)]
pub(super) struct NoteView {
    seq: u32,
    author: String,
    at: u64,
    text: String,
    amends: Option<u32>,
}

impl From<&Note> for NoteView {
    fn from(n: &Note) -> Self {
        Self {
            seq: n.seq,
            author: n.author.subject().to_owned(),
            at: n.at,
            text: n.text.clone(),
            amends: n.amends,
        }
    }
}

/// A prescription as pages show it.
#[derive(Serialize)]
pub(super) struct PrescriptionView {
    id: String,
    patient: String,
    prescriber: String,
    drug: String,
    dosage: String,
    frequency: String,
    notes: String,
    issued_at: u64,
    amount_pence: u32,
    status: &'static str,
    status_at: Option<u64>,
    signature: &'static str,
}

impl From<&Prescription> for PrescriptionView {
    fn from(p: &Prescription) -> Self {
        let (status, status_at) = match p.status {
            Status::Issued => ("issued", None),
            Status::Paid { at } => ("paid", Some(at)),
            Status::Cancelled { at } => ("cancelled", Some(at)),
        };
        Self {
            id: p.id.clone(),
            patient: p.patient.subject().to_owned(),
            prescriber: p.prescriber.subject().to_owned(),
            drug: p.drug.clone(),
            dosage: p.dosage.clone(),
            frequency: p.frequency.clone(),
            notes: p.notes.clone(),
            issued_at: p.issued_at,
            amount_pence: p.amount_pence,
            status,
            status_at,
            signature: match p.signature {
                SignatureStatus::Valid => "valid",
                SignatureStatus::Invalid => "INVALID",
                SignatureStatus::UnknownKey => "unknown key",
            },
        }
    }
}

#[derive(Serialize)]
struct AppointmentView {
    id: String,
    doctor: String,
    starts_at: u64,
    minutes: u16,
    reason: String,
    cancelled: bool,
    upcoming: bool,
}

#[derive(Serialize)]
struct DoctorView {
    subject: String,
    name: String,
}

/// One access to the patient's data by someone else, as the page shows it.
#[derive(Serialize)]
struct SeenView {
    at_ms: u64,
    who: String,
    what: String,
    basis: &'static str,
    flagged: bool,
}

/// `?seen_before=N`: the older page of "Who has seen my record".
#[derive(serde::Deserialize)]
struct SeenQuery {
    seen_before: Option<u64>,
}

/// Entries of "Who has seen my record" per page.
const SEEN_PAGE: usize = 10;

#[derive(Serialize)]
struct Page {
    me: web::Me,
    seen: Vec<SeenView>,
    seen_older: Option<u64>,
    name: String,
    date_of_birth: String,
    blood_type: String,
    allergies: Vec<String>,
    notes: Vec<NoteView>,
    appointments: Vec<AppointmentView>,
    prescriptions: Vec<PrescriptionView>,
    doctors: Vec<DoctorView>,
    today: String,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn page(
    State(app): State<web::State>,
    user: User,
    web::Query(q): web::Query<SeenQuery>,
) -> Result<Response, AppError> {
    let overview = app.clinic.patients().overview(&user.principal).await?;
    let seen = app
        .clinic
        .disclosures(&user.principal, q.seen_before, SEEN_PAGE)
        .await?;
    let (record, appointments, prescriptions) = (
        overview.record,
        overview.appointments,
        overview.prescriptions,
    );
    let doctors = app.clinic.doctors().await?;
    let name_of = |a: &Appointment| {
        doctors
            .iter()
            .find(|d| d.user == a.doctor)
            .map_or_else(|| a.doctor.subject().to_owned(), |d| d.name.clone())
    };
    let t = now();
    app.render(
        "careconnect.html",
        Page {
            me: user.view(),
            seen: seen
                .entries
                .iter()
                .map(|d| SeenView {
                    at_ms: d.at_ms,
                    who: d.who.clone(),
                    what: d.what.clone(),
                    basis: match d.basis {
                        AccessBasis::Care => "your care",
                        AccessBasis::BreakGlass => "emergency (break-glass)",
                        AccessBasis::AdminOverride => "administrator override",
                        AccessBasis::Clinic => "the clinic",
                        AccessBasis::Assignment => "care assignment",
                    },
                    flagged: matches!(
                        d.basis,
                        AccessBasis::BreakGlass | AccessBasis::AdminOverride
                    ),
                })
                .collect(),
            seen_older: seen.next_before,
            name: record.details.name.clone(),
            date_of_birth: record.details.date_of_birth.clone(),
            blood_type: record.details.blood_type.clone(),
            allergies: record.details.allergies.clone(),
            notes: record.notes.iter().map(NoteView::from).collect(),
            appointments: appointments
                .iter()
                .map(|a| AppointmentView {
                    id: a.id.clone(),
                    doctor: name_of(a),
                    starts_at: a.starts_at,
                    minutes: a.minutes,
                    reason: a.reason.clone(),
                    cancelled: a.cancelled_at.is_some(),
                    upcoming: a.cancelled_at.is_none() && a.starts_at > t,
                })
                .collect(),
            prescriptions: prescriptions.iter().map(PrescriptionView::from).collect(),
            doctors: doctors
                .iter()
                .map(|d| DoctorView {
                    subject: d.user.subject().to_owned(),
                    name: d.name.clone(),
                })
                .collect(),
            today: super::day(t),
        },
    )
}

async fn book(State(app): State<web::State>, post: Post<Booking>) -> Result<Response, AppError> {
    let who = &post.user.principal;
    let f = &post.form;
    let doctor = app
        .user_id(&f.doctor)
        .map_err(|_| AppError::BadRequest("doctor"))?;
    let at = f.starts_at()?;
    app.clinic
        .patients()
        .book(who, &who.user, &doctor, at, &f.reason)
        .await?;
    Ok(web::see_other("/careconnect#appointments"))
}

async fn cancel(
    State(app): State<web::State>,
    web::Path(id): web::Path<String>,
    post: Post<Empty>,
) -> Result<Response, AppError> {
    app.clinic
        .patients()
        .cancel(&post.user.principal, &id)
        .await?;
    Ok(web::see_other("/careconnect#appointments"))
}

async fn pay(
    State(app): State<web::State>,
    web::Path(id): web::Path<String>,
    post: Post<Empty>,
) -> Result<Response, AppError> {
    app.clinic.patients().pay(&post.user.principal, &id).await?;
    Ok(web::see_other("/careconnect#prescriptions"))
}
