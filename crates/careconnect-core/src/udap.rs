//! UDAP for the clinic: apps from trusted communities register themselves
//! and get `client_credentials` tokens; every registration, token and
//! refusal is in the audit log, tokens with the purpose of use the app
//! stated (`hl7-b2b`).
//!
//! `careconnect_authz::udap` shows a whole registration and token exchange;
//! [`Clinic::udap`] runs the same over the clinic's store and keyring.

use careconnect_authz::udap::{
    IssuedToken, Refusal, RegisteredClient, Registration, ServerCommunity, UdapConfig, UdapError,
    UdapServer,
};
use careconnect_authz::{Action, Principal};

use crate::audit::{AuditEvent, Outcome};
use crate::clinic::Clinic;
use crate::error::CoreError;

/// The clinic's UDAP server: [`UdapServer`] over the clinic's store and
/// keyring, audited.
#[derive(Debug)]
pub struct ClinicUdap {
    clinic: Clinic,
    server: UdapServer,
    /// Refusals audited in the current minute: `(minute, count)`.
    refusals: std::sync::Mutex<(u64, u32)>,
}

/// Refused requests not signed by a community's certificate, audited per
/// minute and node at most: anyone can cause them. Past this, one entry
/// says that more go unrecorded (they are still logged). Refusals of
/// members' requests are always audited.
pub const MAX_AUDITED_REFUSALS_PER_MINUTE: u32 = 120;

impl Clinic {
    /// A UDAP server for `config` and `communities`, keeping clients,
    /// `jti`s and tokens as sealed rows in the clinic's store (rotated with
    /// its keyring) and auditing to its log.
    ///
    /// # Errors
    /// [`CoreError::Authz`] for a configuration [`UdapServer::new`] refuses.
    pub fn udap(
        &self,
        config: UdapConfig,
        communities: Vec<ServerCommunity>,
    ) -> Result<ClinicUdap, CoreError> {
        let server = UdapServer::new(
            config,
            communities,
            self.inner.store.clone(),
            self.inner.keys.clone(),
            self.inner.clock.clone(),
        )
        .map_err(careconnect_authz::AuthzError::from)?;
        Ok(ClinicUdap {
            clinic: self.clone(),
            server,
            refusals: std::sync::Mutex::new((0, 0)),
        })
    }
}

fn client_resource(client_id: &str) -> String {
    format!("udap-client:{client_id}")
}

impl ClinicUdap {
    /// The server underneath (metadata, introspection).
    pub fn server(&self) -> &UdapServer {
        &self.server
    }

    /// The metadata document for `community` ([`UdapServer::metadata`]).
    ///
    /// # Errors
    /// As [`UdapServer::metadata`].
    pub fn metadata(&self, community: Option<&str>) -> Result<serde_json::Value, UdapError> {
        self.server.metadata(community)
    }

    async fn audit(&self, event: AuditEvent) -> Result<(), UdapError> {
        // An action the log cannot record is not done: the caller answers
        // with a server error.
        self.clinic
            .audit()
            .record(event)
            .await
            .map(drop)
            .map_err(|e| {
                tracing::warn!(error = %e, "udap: audit failed");
                UdapError::Config("audit log unavailable".into())
            })
    }

    /// Audits a refusal. One signed with a community's certificate (a
    /// member: a revoked certificate, a replay, a scope too wide) is always
    /// audited, naming the signer. Any other can come from anyone with a
    /// key: those are audited up to [`MAX_AUDITED_REFUSALS_PER_MINUTE`],
    /// then counted in the log only.
    async fn refused(&self, action: &str, r: &Refusal) -> Result<(), UdapError> {
        let code = r.error.code();
        let (resource, reason) = match &r.signer {
            Some(who) => (
                format!("udap-client:{who}"),
                serde_json::json!({ "error": code, "signer": "community member" }),
            ),
            None => {
                let minute = self.clinic.inner.clock.now() / 60;
                let n = {
                    let mut c = self
                        .refusals
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if c.0 != minute {
                        *c = (minute, 0);
                    }
                    c.1 = c.1.saturating_add(1);
                    c.1
                };
                let reason = if n <= MAX_AUDITED_REFUSALS_PER_MINUTE {
                    serde_json::json!({ "error": code })
                } else if n == MAX_AUDITED_REFUSALS_PER_MINUTE + 1 {
                    serde_json::json!({
                        "error": code,
                        "throttled": "further unsigned refusals this minute are not recorded",
                    })
                } else {
                    tracing::warn!(action, code, "udap refusal not audited (throttled)");
                    return Ok(());
                };
                ("udap-client:?".to_owned(), reason)
            }
        };
        let mut event = AuditEvent::system(action, resource).because(&reason.to_string());
        event.outcome = Outcome::Denied;
        self.audit(event).await
    }

    /// Registers, updates or cancels a client. The request is checked
    /// ([`UdapServer::prepare_registration`]), audited as `udap_register`,
    /// and only then stored: a registration the log cannot record is not
    /// made. A refusal is audited as denied with its error code; a failure
    /// to store after the audit, as failed.
    ///
    /// # Errors
    /// The RFC 7591 error to answer with.
    pub async fn register(&self, body: &[u8]) -> Result<Registration, UdapError> {
        let pending = match self.server.prepare_registration(body).await {
            Ok(p) => p,
            Err(r) => {
                self.refused("udap_register", &r).await?;
                return Err(r.error);
            }
        };
        let resource = client_resource(&pending.client_id);
        // Structured, so a value the client chose cannot pose as another
        // field.
        let reason = serde_json::json!({
            "iss": pending.iss(),
            "community": pending.community,
            "cancel": pending.cancels(),
        })
        .to_string();
        self.audit(AuditEvent::system("udap_register", resource.clone()).because(&reason))
            .await?;
        let done = self.server.complete_registration(pending).await;
        if let Err(e) = &done {
            let mut event = AuditEvent::system("udap_register", resource)
                .because(&serde_json::json!({ "error": e.code() }).to_string());
            event.outcome = if e.status() >= 500 {
                Outcome::Failed
            } else {
                Outcome::Denied
            };
            self.audit(event).await?;
        }
        done
    }

    /// Issues a `client_credentials` token: the request is authenticated
    /// ([`UdapServer::authenticate`]), audited as `udap_token` with the
    /// organisation, purpose of use and scopes, and only then issued. A
    /// refusal is audited as denied.
    ///
    /// # Errors
    /// The RFC 6749 error to answer with.
    pub async fn token(&self, form: &[(String, String)]) -> Result<IssuedToken, UdapError> {
        let pending = match self.server.authenticate(form).await {
            Ok(p) => p,
            Err(r) => {
                self.refused("udap_token", &r).await?;
                return Err(r.error);
            }
        };
        let b = &pending.b2b;
        let reason = serde_json::json!({
            "purpose_of_use": b.purpose_of_use,
            "organization_id": b.organization_id,
            "scope": pending.scopes.join(" "),
        })
        .to_string();
        let resource = client_resource(&pending.client_id);
        self.audit(AuditEvent::system("udap_token", resource.clone()).because(&reason))
            .await?;
        let issued = self.server.issue(pending).await;
        if let Err(e) = &issued {
            let mut event = AuditEvent::system("udap_token", resource)
                .because(&serde_json::json!({ "error": e.code() }).to_string());
            event.outcome = Outcome::Failed;
            self.audit(event).await?;
        }
        issued
    }

    /// The registered clients, for an administrator (audited as reading the
    /// directory).
    ///
    /// # Errors
    /// [`CoreError::Denied`] (audited) for anyone else; a storage failure.
    pub async fn clients(
        &self,
        admin: &Principal,
        limit: usize,
    ) -> Result<Vec<RegisteredClient>, CoreError> {
        self.clinic
            .inner
            .decide_system(admin, Action::ReadDirectory, "udap:clients".into())
            .await?;
        self.server
            .clients(limit)
            .await
            .map_err(|e| CoreError::Authz(e.into()))
    }

    /// Deletes expired `jti`s and tokens ([`UdapServer::purge`]).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn purge(&self) -> Result<usize, CoreError> {
        self.server
            .purge()
            .await
            .map_err(|e| CoreError::Authz(e.into()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rotation_knows_the_udap_collections() {
        use careconnect_authz::udap::{CLIENTS_COLLECTION, JTI_COLLECTION, TOKENS_COLLECTION};
        assert_eq!(
            crate::rotation::data_key_udap_collections(),
            [CLIENTS_COLLECTION, JTI_COLLECTION, TOKENS_COLLECTION]
        );
    }
}
