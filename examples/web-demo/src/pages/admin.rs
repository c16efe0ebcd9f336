//! Administration: people and their roles, care relationships, the audit
//! log with the chain's verification, break-glass review, patient erasure,
//! key and KMS status.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use careconnect::authz::Role;
use careconnect::core::CoreError;
use careconnect::core::audit::{Outcome, Verification};
use serde::{Deserialize, Serialize};

use crate::forms::{Care, Erase, SetPerson};
use crate::web::{self, AppError, Post, User};

/// Audit entries per page.
const AUDIT_PAGE: usize = 50;

pub(super) fn routes() -> Router<web::State> {
    Router::new()
        .route("/admin", get(page))
        .route("/admin/people", post(set_person))
        .route("/admin/care", post(care))
        .route("/admin/erase", post(erase))
}

#[derive(Serialize)]
struct PersonView {
    subject: String,
    name: String,
    roles: Vec<&'static str>,
    in_care: Vec<String>,
}

#[derive(Serialize)]
struct AuditRow {
    seq: u64,
    at: u64,
    actor: String,
    roles: String,
    action: String,
    resource: String,
    outcome: &'static str,
    flags: String,
    reason: String,
}

#[derive(Serialize)]
struct BreakGlassView {
    doctor: String,
    patient: String,
    reason: String,
    declared_at: u64,
    expires_at: u64,
}

#[derive(Serialize)]
struct KeyView {
    id: String,
    state: String,
    created: u64,
}

#[derive(Serialize)]
struct KmsKeyView {
    key: String,
    current_version: u32,
    enabled: usize,
    destroyed: usize,
    since: Option<u64>,
}

#[derive(Serialize)]
struct UdapClientView {
    name: String,
    iss: String,
    client_id: String,
    grants: String,
    scopes: String,
    contacts: String,
    registered_at: u64,
    updated_at: u64,
}

/// UDAP clients shown at most.
const UDAP_CLIENTS: usize = 200;

#[derive(Serialize)]
struct Page {
    me: web::Me,
    people: Vec<PersonView>,
    audit: Vec<AuditRow>,
    audit_from: u64,
    audit_prev: Option<u64>,
    audit_next: Option<u64>,
    audit_latest: u64,
    chain_ok: bool,
    chain_entries: u64,
    chain_problem: String,
    break_glass: Vec<BreakGlassView>,
    clinic_keys: Vec<KeyView>,
    bucket_keys: usize,
    kms_keys: Vec<KmsKeyView>,
    udap_clients: Vec<UdapClientView>,
    udap_communities: String,
    udap_register: String,
}

#[derive(Debug, Default, Deserialize)]
struct AuditQuery {
    from: Option<u64>,
    /// `?verify=all`: walk the whole chain (the page load otherwise
    /// verifies what was appended since the last verification).
    verify: Option<String>,
}

async fn page(
    State(app): State<web::State>,
    user: User,
    web::Query(q): web::Query<AuditQuery>,
) -> Result<Response, AppError> {
    let who = &user.principal;
    let admin = app.clinic.admin();
    let people = match admin.directory(who).await {
        Err(CoreError::AuditTampered) if who.roles.contains(Role::Admin) => {
            return audit_broken(&app, &user).await;
        }
        other => other?,
    };
    let from = q.from.unwrap_or(0);
    let mut audit = admin.audit_log(who, from, AUDIT_PAGE).await?;
    let verified_all = q.verify.as_deref() == Some("all");
    if verified_all {
        audit.verification = admin.verify_audit(who).await?;
    }
    let (chain_ok, chain_entries, chain_problem) = match &audit.verification {
        Verification::Intact { entries } => (true, *entries, String::new()),
        Verification::Broken { seq, problem } => {
            (false, *seq, format!("{problem:?} at entry {seq}"))
        }
    };
    let page_len = AUDIT_PAGE as u64;
    let keys = admin.key_status(who).await?;
    let glass = admin.break_glass_review(who).await?;
    let last_seq = audit.entries.last().map(|(s, _)| *s);
    let udap_clients = app.udap.server.clients(who, UDAP_CLIENTS).await?;
    app.render(
        "admin.html",
        Page {
            me: user.view(),
            people: people
                .into_iter()
                .map(|e| PersonView {
                    subject: e.person.user.subject().to_owned(),
                    name: e.person.name,
                    roles: e.person.roles.iter().map(|r| r.as_str()).collect(),
                    in_care: e.in_care.iter().map(|u| u.subject().to_owned()).collect(),
                })
                .collect(),
            audit: audit
                .entries
                .iter()
                .map(|(seq, e)| AuditRow {
                    seq: *seq,
                    at: e.at_ms / 1000,
                    actor: e
                        .actor
                        .as_ref()
                        .map_or_else(|| "system".into(), |a| a.subject().to_owned()),
                    roles: e.roles.clone(),
                    action: e.action.clone(),
                    resource: e.resource.clone(),
                    outcome: match e.outcome {
                        Outcome::Allowed => "allowed",
                        Outcome::Denied => "denied",
                        Outcome::Failed => "failed",
                    },
                    flags: e
                        .flags
                        .iter()
                        .map(|f| format!("{f:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    reason: e.reason.clone().unwrap_or_default(),
                })
                .collect(),
            audit_from: from,
            audit_prev: (from > 0).then(|| from.saturating_sub(page_len)),
            audit_next: last_seq.filter(|s| *s + 1 < chain_entries).map(|s| s + 1),
            audit_latest: chain_entries.saturating_sub(page_len),
            chain_ok,
            chain_entries,
            chain_problem,
            break_glass: glass
                .into_iter()
                .map(|b| BreakGlassView {
                    doctor: b.doctor.subject().to_owned(),
                    patient: b.patient.subject().to_owned(),
                    reason: b.reason,
                    declared_at: b.declared_at,
                    expires_at: b.expires_at,
                })
                .collect(),
            clinic_keys: keys
                .clinic_keys
                .iter()
                .map(|k| KeyView {
                    id: k.id.to_string(),
                    state: format!("{:?}", k.state).to_lowercase(),
                    created: k.created,
                })
                .collect(),
            bucket_keys: keys.bucket_keys.len(),
            kms_keys: keys
                .kms_keys
                .iter()
                .map(|k| KmsKeyView {
                    key: k.key.to_string(),
                    current_version: k.current_version,
                    enabled: k.enabled_versions.len(),
                    destroyed: k.destroyed_versions.len(),
                    since: k.current_since,
                })
                .collect(),
            udap_clients: udap_clients
                .into_iter()
                .map(|c| UdapClientView {
                    name: c.metadata.client_name,
                    iss: c.iss,
                    client_id: c.client_id,
                    grants: c
                        .metadata
                        .grant_types
                        .iter()
                        .map(|g| g.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    scopes: c.metadata.scopes.join(" "),
                    contacts: c.metadata.contacts.join(", "),
                    registered_at: c.registered_at,
                    updated_at: c.updated_at,
                })
                .collect(),
            udap_communities: app
                .udap
                .server
                .server()
                .communities()
                .map(|c| c.name().to_owned())
                .collect::<Vec<_>>()
                .join(", "),
            udap_register: app
                .udap
                .server
                .server()
                .config()
                .registration_endpoint
                .clone(),
        },
    )
}

async fn set_person(
    State(app): State<web::State>,
    post: Post<SetPerson>,
) -> Result<Response, AppError> {
    let user = app
        .user_id(post.form.subject.trim())
        .map_err(|_| AppError::BadRequest("subject"))?;
    let roles = post.form.role_set()?;
    app.clinic
        .admin()
        .set_person(&post.user.principal, &user, &post.form.name, roles)
        .await?;
    Ok(web::see_other("/admin#people"))
}

async fn care(State(app): State<web::State>, post: Post<Care>) -> Result<Response, AppError> {
    let doctor = app
        .user_id(post.form.doctor.trim())
        .map_err(|_| AppError::BadRequest("doctor"))?;
    let patient = app
        .user_id(post.form.patient.trim())
        .map_err(|_| AppError::BadRequest("patient"))?;
    let admin = app.clinic.admin();
    if post.form.assigns()? {
        admin
            .assign_care(&post.user.principal, &doctor, &patient)
            .await?;
    } else {
        admin
            .revoke_care(&post.user.principal, &doctor, &patient)
            .await?;
    }
    Ok(web::see_other("/admin#people"))
}

async fn erase(State(app): State<web::State>, post: Post<Erase>) -> Result<Response, AppError> {
    let patient = app
        .user_id(post.form.confirmed()?)
        .map_err(|_| AppError::BadRequest("patient"))?;
    app.clinic
        .admin()
        .erase_patient(&post.user.principal, &patient, &post.form.reason)
        .await?;
    Ok(web::see_other("/admin#erase"))
}

/// For an administrator while the audit log refuses every append: what
/// `verify` found and the documented recovery (`rotate re-anchor`).
async fn audit_broken(app: &web::State, user: &User) -> Result<Response, AppError> {
    #[derive(Serialize)]
    struct Broken {
        me: web::Me,
        seq: u64,
        problem: String,
    }
    let (seq, problem) = match app.clinic.audit().verify().await? {
        Verification::Broken { seq, problem } => (seq, format!("{problem:?}")),
        Verification::Intact { .. } => (0, "the anchored entry is missing or changed".to_owned()),
    };
    let mut r = app.render(
        "audit_broken.html",
        Broken {
            me: user.view(),
            seq,
            problem,
        },
    )?;
    *r.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    Ok(r)
}
