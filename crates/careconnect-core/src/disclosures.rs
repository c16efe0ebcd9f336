//! "Who has seen my record": a patient's own view of the audit log, every
//! access to their data by someone else, newest first (the accounting of
//! disclosures HIPAA 164.528 and the NHS DSPT ask a clinic to give; Nordic
//! patient portals show it). Read from the tamper-evident audit chain, so
//! it shows what was recorded, not what a page chose to show.
//!
//! A patient sees only entries that name them (by their audit pseudonym),
//! never another patient's, and no internal id: who (a doctor's display
//! name, "An administrator", a partner organisation), when, what, and on
//! what basis (care, break-glass, administrator override).

use careconnect_authz::{Action, Principal, UserId};
use serde::Serialize;

use crate::audit::{AuditEvent, Flag, Outcome, PSEUDONYM_ISSUER};
use crate::clinic::Clinic;
use crate::error::CoreError;

/// Entries read per probe of the log, going back.
const WINDOW: u64 = 500;
/// Entries one page may read at most before it stops and offers the rest
/// as a next page (a patient seen rarely in a long log).
const MAX_SCAN: u64 = 20_000;

/// On what basis someone saw or changed the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessBasis {
    /// The patient is in the doctor's care.
    Care,
    /// An emergency declared by the doctor (break-glass), flagged for
    /// review.
    BreakGlass,
    /// An administrator looked in (an audited override).
    AdminOverride,
    /// The clinic's own processes (erasure, for example).
    Clinic,
    /// An administrator granted or ended a doctor's care of the patient.
    Assignment,
}

/// One access to the patient's data by someone else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disclosure {
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// Who, as the patient may see it: a doctor's display name, "An
    /// administrator", "The clinic".
    pub who: String,
    /// What, in plain words.
    pub what: String,
    /// On what basis.
    pub basis: AccessBasis,
}

/// A page of disclosures, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disclosures {
    /// The entries.
    pub entries: Vec<Disclosure>,
    /// Pass as `before` for the next (older) page; `None` at the start of
    /// the log.
    pub next_before: Option<u64>,
}

/// The plain words for an audited action on a patient's data; `None` for
/// actions a patient's view leaves out.
fn what(action: &str) -> Option<&'static str> {
    Some(match action {
        "ReadHealthRecord" => "Opened your health record",
        "AddClinicalNote" => "Added a clinical note",
        "Prescribe" => "Prescribed",
        "ListAppointments" => "Looked at your appointments",
        "ListPrescriptions" => "Looked at your prescriptions",
        "CancelAppointment" => "Cancelled an appointment",
        "ErasePatient" => "Erasure of your data",
        _ => return None,
    })
}

impl Clinic {
    /// `who`'s own disclosures: accesses to their data by others, newest
    /// first, at most `limit`, from before audit sequence `before` (`None`:
    /// from the newest). Reading them is itself an access to the patient's
    /// own data (audited as reading their record).
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for anyone but the patient; storage
    /// failures.
    pub async fn disclosures(
        &self,
        who: &Principal,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Disclosures, CoreError> {
        let c = &self.inner;
        let access = c
            .gate
            .patient(who, Action::ReadHealthRecord, &who.user)
            .await?;
        let patient = access.patient().clone();
        let mine = c.audit_name(&patient);
        let audit = &c.audit;
        // The newest entry to look at: the one before this very read, which
        // is the log's head a moment ago (no probe for it needed).
        let top = before
            .unwrap_or(access.audit_seq())
            .saturating_sub(1)
            .min(access.audit_seq().saturating_sub(1));
        let floor = top.saturating_sub(MAX_SCAN);
        let mut entries = Vec::new();
        let mut names = std::collections::HashMap::new();
        let mut next = top;
        while next > floor && entries.len() < limit {
            let from = next.saturating_sub(WINDOW - 1).max(floor + 1).max(1);
            let count = usize::try_from(next - from + 1).unwrap_or(usize::MAX);
            let mut window = audit.read(from, count).await?;
            window.reverse();
            let mut full = false;
            for (seq, event) in window {
                if seq > next {
                    continue;
                }
                if entries.len() == limit {
                    full = true;
                    break;
                }
                next = seq - 1;
                if let Some(d) = self.disclosure(&event, &mine, &patient, &mut names).await? {
                    entries.push(d);
                }
            }
            if !full {
                next = from - 1;
            }
        }
        Ok(Disclosures {
            entries,
            next_before: (next >= 1).then_some(next + 1),
        })
    }

    /// `event` as the patient named `mine` may see it, if it is someone
    /// else's allowed access to their data.
    async fn disclosure(
        &self,
        event: &AuditEvent,
        mine: &str,
        patient: &UserId,
        names: &mut std::collections::HashMap<UserId, String>,
    ) -> Result<Option<Disclosure>, CoreError> {
        if event.resource != mine || event.outcome != Outcome::Allowed {
            return Ok(None);
        }
        // Who granted a basis: an administrator's care assignment.
        if matches!(event.action.as_str(), "AssignCare" | "RevokeCare") {
            let doctor = event
                .reason
                .as_deref()
                .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
                .and_then(|v| v.get("doctor")?.as_str().map(str::to_owned))
                .and_then(|d| UserId::new(patient.issuer(), d).ok());
            let name = match doctor {
                Some(d) => self.name_of(&d, names).await?,
                None => "a doctor".to_owned(),
            };
            let what = if event.action == "AssignCare" {
                format!("Put you in the care of {name}")
            } else {
                format!("Ended {name}'s care of you")
            };
            return Ok(Some(Disclosure {
                at_ms: event.at_ms,
                who: "An administrator".to_owned(),
                what,
                basis: AccessBasis::Assignment,
            }));
        }
        let Some(what) = what(&event.action) else {
            return Ok(None);
        };
        // The patient's own actions (named by their pseudonym, or by their
        // identity when they hold other roles too) are not disclosures.
        if event
            .actor
            .as_ref()
            .is_some_and(|a| a == patient || a.issuer() == PSEUDONYM_ISSUER)
        {
            return Ok(None);
        }
        let basis = if event.flags.contains(&Flag::BreakGlass) {
            AccessBasis::BreakGlass
        } else if event.flags.contains(&Flag::AdminOverride) {
            AccessBasis::AdminOverride
        } else if event.actor.is_none() {
            AccessBasis::Clinic
        } else {
            AccessBasis::Care
        };
        let who = match (&event.actor, basis) {
            (_, AccessBasis::AdminOverride) => "An administrator".to_owned(),
            (None, _) => "The clinic".to_owned(),
            (Some(actor), _) => self.name_of(actor, names).await?,
        };
        Ok(Some(Disclosure {
            at_ms: event.at_ms,
            who,
            what: what.to_owned(),
            basis,
        }))
    }

    /// `user`'s display name from the directory (remembered in `names`
    /// for the page), or "A member of staff".
    async fn name_of(
        &self,
        user: &UserId,
        names: &mut std::collections::HashMap<UserId, String>,
    ) -> Result<String, CoreError> {
        if let Some(n) = names.get(user) {
            return Ok(n.clone());
        }
        let n = self
            .person(user)
            .await?
            .map_or_else(|| "A member of staff".to_owned(), |p| p.name);
        names.insert(user.clone(), n.clone());
        Ok(n)
    }
}
