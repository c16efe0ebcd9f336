//! MedRecords (patients in a doctor's care, their records, notes and
//! break-glass) and EPS (prescribing, a doctor's own prescriptions,
//! cancelling).

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use careconnect::core::eps::PrescriptionInput;
use serde::Serialize;

use super::patient::{NoteView, PrescriptionView};
use crate::forms::{BreakGlass, NewNote, NewPrescription};
use crate::web::{self, AppError, Empty, Post, User};

pub(super) fn routes() -> Router<web::State> {
    Router::new()
        .route("/medrecords", get(list))
        .route("/medrecords/break-glass", post(break_glass))
        .route("/medrecords/patients/{subject}", get(record))
        .route("/medrecords/patients/{subject}/notes", post(add_note))
        .route("/eps", get(eps))
        .route("/eps/prescriptions", post(prescribe))
        .route("/eps/prescriptions/{id}/cancel", post(cancel))
}

#[derive(Serialize)]
struct PatientView {
    subject: String,
    name: String,
    date_of_birth: String,
}

async fn patients(app: &web::App, user: &User) -> Result<Vec<PatientView>, AppError> {
    Ok(app
        .clinic
        .records()
        .patients(&user.principal)
        .await?
        .into_iter()
        .map(|p| PatientView {
            subject: p.patient.subject().to_owned(),
            name: p.name,
            date_of_birth: p.date_of_birth,
        })
        .collect())
}

#[derive(Serialize)]
struct ListPage {
    me: web::Me,
    patients: Vec<PatientView>,
}

async fn list(State(app): State<web::State>, user: User) -> Result<Response, AppError> {
    let patients = patients(&app, &user).await?;
    app.render(
        "medrecords.html",
        ListPage {
            me: user.view(),
            patients,
        },
    )
}

#[derive(Serialize)]
struct RecordPage {
    me: web::Me,
    subject: String,
    name: String,
    date_of_birth: String,
    blood_type: String,
    allergies: Vec<String>,
    notes: Vec<NoteView>,
}

async fn record(
    State(app): State<web::State>,
    web::Path(subject): web::Path<String>,
    user: User,
) -> Result<Response, AppError> {
    let patient = app.user_id(&subject)?;
    let r = app
        .clinic
        .records()
        .record(&user.principal, &patient)
        .await?;
    app.render(
        "patient.html",
        RecordPage {
            me: user.view(),
            subject,
            name: r.details.name.clone(),
            date_of_birth: r.details.date_of_birth.clone(),
            blood_type: r.details.blood_type.clone(),
            allergies: r.details.allergies.clone(),
            notes: r.notes.iter().map(NoteView::from).collect(),
        },
    )
}

async fn add_note(
    State(app): State<web::State>,
    web::Path(subject): web::Path<String>,
    post: Post<NewNote>,
) -> Result<Response, AppError> {
    let patient = app.user_id(&subject)?;
    let amends = match post.form.amends.trim() {
        "" => None,
        n => Some(n.parse().map_err(|_| AppError::BadRequest("amends"))?),
    };
    app.clinic
        .records()
        .add_note(&post.user.principal, &patient, &post.form.text, amends)
        .await?;
    Ok(web::see_other(&format!(
        "/medrecords/patients/{subject}#notes"
    )))
}

async fn break_glass(
    State(app): State<web::State>,
    post: Post<BreakGlass>,
) -> Result<Response, AppError> {
    let patient = app.user_id(&post.form.patient)?;
    app.clinic
        .records()
        .declare_break_glass(&post.user.principal, &patient, &post.form.reason)
        .await?;
    Ok(web::see_other(&format!(
        "/medrecords/patients/{}",
        patient.subject()
    )))
}

#[derive(Serialize)]
struct EpsPage {
    me: web::Me,
    patients: Vec<PatientView>,
    prescriptions: Vec<PrescriptionView>,
}

async fn eps(State(app): State<web::State>, user: User) -> Result<Response, AppError> {
    let issued = app
        .clinic
        .eps()
        .issued(&user.principal, &user.principal.user)
        .await?;
    let patients = patients(&app, &user).await?;
    app.render(
        "eps.html",
        EpsPage {
            me: user.view(),
            patients,
            prescriptions: issued.iter().map(PrescriptionView::from).collect(),
        },
    )
}

async fn prescribe(
    State(app): State<web::State>,
    post: Post<NewPrescription>,
) -> Result<Response, AppError> {
    let f = post.form;
    let patient = app.user_id(&f.patient)?;
    app.clinic
        .eps()
        .prescribe(
            &post.user.principal,
            &patient,
            &PrescriptionInput {
                drug: f.drug,
                dosage: f.dosage,
                frequency: f.frequency,
                notes: f.notes,
            },
        )
        .await?;
    Ok(web::see_other("/eps#issued"))
}

async fn cancel(
    State(app): State<web::State>,
    web::Path(id): web::Path<String>,
    post: Post<Empty>,
) -> Result<Response, AppError> {
    app.clinic.eps().cancel(&post.user.principal, &id).await?;
    Ok(web::see_other("/eps#issued"))
}
