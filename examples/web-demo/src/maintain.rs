//! Work in the background while the demo serves: the readiness check (so
//! `/readyz` costs nothing and a flood of probes cannot reach the KMS or
//! the provider), and now and then purging expired sessions and collecting
//! orphaned blobs (left by uploads cut off by a crash).

use std::sync::{PoisonError, Weak};
use std::time::Duration;

use careconnect::authz::{Principal, Role, UserId};
use careconnect::core::CoreError;
use tokio::sync::watch;

use crate::web::{App, Readiness};

/// How often readiness is checked.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How often sessions are purged and orphans collected.
const CLEAN_EVERY: Duration = Duration::from_secs(3600);

/// Checks what `/readyz` reports: the store, the KMS and the keyring (the
/// clinic), and the provider's discovery document.
async fn check(app: &App, http: &reqwest::Client, discovery: &str) -> Readiness {
    let mut failing = Vec::new();
    match app.clinic.ready().await {
        Ok(()) => {}
        Err(CoreError::Storage(_)) => failing.push("storage"),
        Err(CoreError::Crypto(_)) => failing.push("kms"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            failing.push("keys");
        }
    }
    let issuer_ok = http
        .get(discovery)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if !issuer_ok {
        failing.push("issuer");
    }
    Readiness {
        failing,
        checked: true,
    }
}

/// The principal the cleaning runs as (audited under this name).
fn maintenance() -> Result<Principal, careconnect::authz::AuthzError> {
    Ok(Principal::new(
        UserId::new("careconnect-web-demo", "maintenance")?,
        [Role::Admin].into_iter().collect(),
    ))
}

async fn clean(app: &App) {
    match app.sessions.purge_expired().await {
        Ok(n) => tracing::info!(sessions = n, "expired sessions purged"),
        Err(e) => tracing::warn!(error = %e, "purging sessions failed"),
    }
    match app.udap.server.purge().await {
        Ok(n) => tracing::info!(rows = n, "expired UDAP jtis and tokens purged"),
        Err(e) => tracing::warn!(error = %e, "purging UDAP rows failed"),
    }
    for (trust, source) in &app.udap.crls {
        // A list that cannot be read keeps the old one, which fails closed
        // once past its nextUpdate.
        match trust.refresh_crls(source).await {
            Ok(n) => tracing::info!(community = trust.name(), lists = n, "CRLs reloaded"),
            Err(e) => tracing::warn!(community = trust.name(), error = %e, "reloading CRLs failed"),
        }
    }
    let Ok(who) = maintenance() else { return };
    match app.clinic.medicloud().collect_orphans(&who).await {
        Ok(report) => tracing::info!(?report, "orphaned blobs collected"),
        Err(e) => tracing::warn!(error = %e, "collecting orphans failed"),
    }
}

/// Runs until `stop` turns true or the app is gone.
pub(crate) async fn run(
    app: Weak<App>,
    http: reqwest::Client,
    discovery: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_clean = tokio::time::Instant::now();
    loop {
        let Some(a) = app.upgrade() else { return };
        let r = check(&a, &http, &discovery).await;
        *a.readiness.lock().unwrap_or_else(PoisonError::into_inner) = r;
        if last_clean.elapsed() >= CLEAN_EVERY {
            last_clean = tokio::time::Instant::now();
            clean(&a).await;
        }
        drop(a);
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
