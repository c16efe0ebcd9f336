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
use std::net::IpAddr;

use crate::audit::{AuditEvent, Outcome};
use crate::clinic::Clinic;
use crate::error::CoreError;

/// The clinic's UDAP server: [`UdapServer`] over the clinic's store and
/// keyring, audited.
#[derive(Debug)]
pub struct ClinicUdap {
    clinic: Clinic,
    server: UdapServer,
    /// Refusals audited in the current minute.
    refusals: std::sync::Mutex<Throttle>,
}

/// Refused requests not proven to be signed by a community's certificate,
/// audited per minute and node at most: anyone can cause them. Past this,
/// one entry says that more go unrecorded (they are still logged).
pub const MAX_AUDITED_REFUSALS_PER_MINUTE: u32 = 120;

/// Of those, at most this many per minute from one client address (an
/// IPv6 address counts by its /64) and per presented certificate, so one
/// source cannot use up the minute's entries.
pub const MAX_AUDITED_REFUSALS_PER_SOURCE: u32 = 10;

/// Refusals of one member's requests (a certificate proven to be a
/// community's: revoked, expired, a replay, a scope too wide) audited per
/// minute and node, naming the member; past this, one entry says that more
/// go unrecorded. A member's statement or assertion replayed while it is
/// valid cannot grow the log without bound.
pub const MAX_AUDITED_MEMBER_REFUSALS_PER_MINUTE: u32 = 30;

/// Who a refusal is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    /// A client address (IPv6 by its /64).
    Addr(IpAddr),
    /// The presented leaf certificate (SHA-256, hex), unproven.
    Leaf(String),
    /// A member's certificate (SHA-256, hex) or, without one, its name.
    Member(String),
}

/// What to write for one refusal.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Audit,
    /// Audit once, saying that more go unrecorded this minute.
    AuditThrottled,
    Skip,
}

/// Per-minute counts of audited refusals. Only sources that were audited
/// are tracked, so the map holds at most the minute's bound of unproven
/// sources (plus the members, whom no one can mint).
#[derive(Debug, Default)]
struct Throttle {
    minute: u64,
    unproven: u32,
    unproven_marked: bool,
    per_source: std::collections::HashMap<Source, u32>,
    members_marked: std::collections::HashSet<String>,
}

impl Throttle {
    fn roll(&mut self, minute: u64) {
        if self.minute != minute {
            *self = Self {
                minute,
                ..Self::default()
            };
        }
    }

    fn member(&mut self, minute: u64, who: &str) -> Verdict {
        self.roll(minute);
        let n = self
            .per_source
            .entry(Source::Member(who.to_owned()))
            .or_insert(0);
        if *n < MAX_AUDITED_MEMBER_REFUSALS_PER_MINUTE {
            *n += 1;
            Verdict::Audit
        } else if self.members_marked.insert(who.to_owned()) {
            Verdict::AuditThrottled
        } else {
            Verdict::Skip
        }
    }

    fn unproven(&mut self, minute: u64, sources: &[Source]) -> Verdict {
        self.roll(minute);
        let within = self.unproven < MAX_AUDITED_REFUSALS_PER_MINUTE
            && sources.iter().all(|s| {
                self.per_source.get(s).copied().unwrap_or(0) < MAX_AUDITED_REFUSALS_PER_SOURCE
            });
        if within {
            self.unproven += 1;
            for s in sources {
                *self.per_source.entry(s.clone()).or_insert(0) += 1;
            }
            Verdict::Audit
        } else if !self.unproven_marked {
            self.unproven_marked = true;
            Verdict::AuditThrottled
        } else {
            Verdict::Skip
        }
    }
}

/// The address a client is counted by, for refusals here and for a
/// server's per-client caps: `addr`, an IPv6 address cut to its /64 (one
/// host usually holds a whole /64) and an IPv4-mapped one as IPv4.
pub fn client_source(addr: IpAddr) -> IpAddr {
    use std::net::Ipv6Addr;
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

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
            refusals: std::sync::Mutex::new(Throttle::default()),
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

    /// Audits a refusal. One proven to be signed with a community's
    /// certificate (a member: a revoked certificate, a replay, a scope too
    /// wide) is audited naming the signer, up to
    /// [`MAX_AUDITED_MEMBER_REFUSALS_PER_MINUTE`] per member. Any other can
    /// come from anyone with a key: it names only the certificate presented
    /// (its SHA-256), never what the request claims, and is audited up to
    /// [`MAX_AUDITED_REFUSALS_PER_SOURCE`] per client address and
    /// certificate and [`MAX_AUDITED_REFUSALS_PER_MINUTE`] in all; past a
    /// bound, one entry says so and the rest are only logged.
    async fn refused(&self, action: &str, r: &Refusal, peer: IpAddr) -> Result<(), UdapError> {
        let code = r.error.code();
        let minute = self.clinic.inner.clock.now() / 60;
        let throttle = || {
            self.refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let (resource, mut reason, verdict) = match &r.signer {
            Some(who) => {
                let key = r.leaf_sha256.as_deref().unwrap_or(who);
                let verdict = throttle().member(minute, key);
                (
                    client_resource(who),
                    serde_json::json!({ "error": code, "signer": "community member" }),
                    verdict,
                )
            }
            None => {
                let mut sources = vec![Source::Addr(client_source(peer))];
                if let Some(fp) = &r.leaf_sha256 {
                    sources.push(Source::Leaf(fp.clone()));
                }
                let verdict = throttle().unproven(minute, &sources);
                let mut reason = serde_json::json!({ "error": code });
                if let Some(fp) = &r.leaf_sha256 {
                    reason["certificate_sha256"] = fp.as_str().into();
                }
                ("udap-client:?".to_owned(), reason, verdict)
            }
        };
        match verdict {
            Verdict::Audit => {}
            Verdict::AuditThrottled => {
                reason["throttled"] =
                    "further refusals like this one are not recorded this minute".into();
            }
            Verdict::Skip => {
                tracing::warn!(action, code, "udap refusal not audited (throttled)");
                return Ok(());
            }
        }
        let mut event = AuditEvent::system(action, resource).because(&reason.to_string());
        event.outcome = Outcome::Denied;
        self.audit(event).await
    }

    /// Registers, updates or cancels a client. The request is checked
    /// ([`UdapServer::prepare_registration`]), audited as `udap_register`,
    /// and only then stored: a registration the log cannot record is not
    /// made. A refusal is audited as denied with its error code (throttled,
    /// per `peer`, the client's address, among others: see
    /// [`MAX_AUDITED_REFUSALS_PER_SOURCE`]); a failure to store after the
    /// audit, as failed.
    ///
    /// # Errors
    /// The RFC 7591 error to answer with.
    pub async fn register(&self, body: &[u8], peer: IpAddr) -> Result<Registration, UdapError> {
        let pending = match self.server.prepare_registration(body).await {
            Ok(p) => p,
            Err(r) => {
                self.refused("udap_register", &r, peer).await?;
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
    /// refusal is audited as denied, throttled as for
    /// [`ClinicUdap::register`] (`peer` is the client's address).
    ///
    /// # Errors
    /// The RFC 6749 error to answer with.
    pub async fn token(
        &self,
        form: &[(String, String)],
        peer: IpAddr,
    ) -> Result<IssuedToken, UdapError> {
        let pending = match self.server.authenticate(form).await {
            Ok(p) => p,
            Err(r) => {
                self.refused("udap_token", &r, peer).await?;
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
    use super::*;

    #[test]
    fn unproven_refusals_are_bounded_per_source_and_per_minute() {
        let mut t = Throttle::default();
        let addr = |i: u8| Source::Addr(IpAddr::from([10, 0, 0, i]));
        let leaf = |i: u32| Source::Leaf(format!("{i:064x}"));
        // One address, fresh certificates: the address's bound, then one
        // marker, then nothing.
        let verdicts: Vec<Verdict> = (0..50)
            .map(|i| t.unproven(7, &[addr(1), leaf(i)]))
            .collect();
        let audited = verdicts.iter().filter(|v| **v == Verdict::Audit).count();
        assert_eq!(audited, MAX_AUDITED_REFUSALS_PER_SOURCE as usize);
        assert_eq!(
            verdicts
                .iter()
                .filter(|v| **v == Verdict::AuditThrottled)
                .count(),
            1
        );
        // One certificate from many addresses: the certificate's bound.
        let n = (0..50)
            .filter(|i| t.unproven(7, &[addr(2 + *i as u8), leaf(999)]) == Verdict::Audit)
            .count();
        assert_eq!(n, MAX_AUDITED_REFUSALS_PER_SOURCE as usize);
        // Everyone: the minute's bound in all.
        let n = (0..100u32)
            .flat_map(|a| (0..20u32).map(move |l| (a, l)))
            .filter(|(a, l)| {
                let ip = IpAddr::from([10, 1, (*a >> 8) as u8, *a as u8]);
                t.unproven(7, &[Source::Addr(ip), leaf(a * 100 + l + 5000)]) == Verdict::Audit
            })
            .count();
        assert_eq!(
            n + 2 * MAX_AUDITED_REFUSALS_PER_SOURCE as usize,
            MAX_AUDITED_REFUSALS_PER_MINUTE as usize
        );
        assert!(t.per_source.len() <= 2 * MAX_AUDITED_REFUSALS_PER_MINUTE as usize + 2);
        // The next minute starts afresh.
        assert_eq!(t.unproven(8, &[addr(1), leaf(0)]), Verdict::Audit);
    }

    #[test]
    fn a_members_refusals_are_bounded_per_member() {
        let mut t = Throttle::default();
        let count = |t: &mut Throttle, who: &str, v: Verdict| {
            (0..100).filter(|_| t.member(1, who) == v).count()
        };
        assert_eq!(
            count(&mut t, "a", Verdict::Audit),
            MAX_AUDITED_MEMBER_REFUSALS_PER_MINUTE as usize
        );
        assert_eq!(count(&mut t, "a", Verdict::AuditThrottled), 0);
        // Another member is not silenced by the first.
        assert_eq!(t.member(1, "b"), Verdict::Audit);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(client_source(a), client_source(b));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_source(mapped), IpAddr::from([192, 0, 2, 1]));
    }

    #[test]
    fn rotation_knows_the_udap_collections() {
        use careconnect_authz::udap::{CLIENTS_COLLECTION, JTI_COLLECTION, TOKENS_COLLECTION};
        assert_eq!(
            crate::rotation::data_key_udap_collections(),
            [CLIENTS_COLLECTION, JTI_COLLECTION, TOKENS_COLLECTION]
        );
    }
}
