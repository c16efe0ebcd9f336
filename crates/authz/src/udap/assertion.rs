//! JWT client authentication (`private_key_jwt` with `x5c`) and the
//! `hl7-b2b` authorization extension.

use serde::{Deserialize, Serialize};

use super::UdapError;
use super::jws::{self, Fault};

/// `client_assertion_type` for a JWT client assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The `hl7-b2b` authorization extension (HL7 UDAP Security IG, B2B 5.2.1.1):
/// who the request is for and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct B2bExtension {
    /// Always `"1"`.
    pub version: String,
    /// The person the request is made for, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_name: Option<String>,
    /// Their identifier (e.g. an NPI), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_id: Option<String>,
    /// Their role, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_role: Option<String>,
    /// The requesting organisation's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_name: Option<String>,
    /// The requesting organisation, as a URI.
    pub organization_id: String,
    /// Why: codes such as `urn:oid:2.16.840.1.113883.5.8#TREAT`.
    pub purpose_of_use: Vec<String>,
    /// Consent policies, as URIs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consent_policy: Vec<String>,
    /// Consent documents, as URLs (only with a consent policy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consent_reference: Vec<String>,
}

impl B2bExtension {
    /// The extension for `organization_id` and `purpose_of_use`, version 1.
    pub fn new(organization_id: impl Into<String>, purpose_of_use: Vec<String>) -> Self {
        Self {
            version: "1".into(),
            subject_name: None,
            subject_id: None,
            subject_role: None,
            organization_name: None,
            organization_id: organization_id.into(),
            purpose_of_use,
            consent_policy: vec![],
            consent_reference: vec![],
        }
    }

    /// Checks the IG's rules. `Err` describes the broken one.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        let printable = jws::printable;
        if self.version != "1" {
            return Err("hl7-b2b version must be \"1\"");
        }
        if !printable(&self.organization_id) || !self.organization_id.contains(':') {
            return Err("hl7-b2b organization_id must be a URI");
        }
        if self.purpose_of_use.is_empty()
            || self.purpose_of_use.len() > 16
            || !self.purpose_of_use.iter().all(|p| printable(p))
        {
            return Err("hl7-b2b purpose_of_use must hold 1 to 16 codes");
        }
        let optional = [
            &self.subject_name,
            &self.subject_id,
            &self.subject_role,
            &self.organization_name,
        ];
        if optional
            .iter()
            .any(|o| o.as_deref().is_some_and(|s| !printable(s)))
        {
            return Err("hl7-b2b subject and organization names must be printable");
        }
        if self.consent_policy.len() > 16
            || self.consent_reference.len() > 16
            || !self
                .consent_policy
                .iter()
                .chain(&self.consent_reference)
                .all(|p| printable(p))
        {
            return Err("hl7-b2b consent_policy and consent_reference must hold at most 16 URIs");
        }
        if !self.consent_reference.is_empty() && self.consent_policy.is_empty() {
            return Err("hl7-b2b consent_reference requires consent_policy");
        }
        Ok(())
    }
}

/// An authentication token's claims, as sent. The extensions are read
/// after the client is authenticated, so a malformed `hl7-b2b` is
/// `invalid_grant` like any other broken rule of it, not `invalid_client`.
#[derive(Debug, Deserialize)]
pub(crate) struct AssertionClaims {
    #[serde(flatten)]
    jwt: jws::JwtClaims,
    #[serde(default)]
    extensions: Option<serde_json::Value>,
}

/// The `hl7-b2b` member of `extensions`: absent (`Ok(None)`), or an
/// extension whose required members are present with their types.
fn b2b_of(extensions: Option<serde_json::Value>) -> Result<Option<B2bExtension>, &'static str> {
    let Some(ext) = extensions else {
        return Ok(None);
    };
    let serde_json::Value::Object(mut ext) = ext else {
        return Err("extensions must be a JSON object");
    };
    match ext.remove("hl7-b2b") {
        None => Ok(None),
        Some(b2b) => serde_json::from_value(b2b)
            .map(Some)
            .map_err(|_| "hl7-b2b is missing a required member or has one of the wrong type"),
    }
}

/// An assertion whose claims held.
#[derive(Debug)]
pub(crate) struct CheckedAssertion {
    pub(crate) jti: String,
    pub(crate) exp: u64,
    /// The `hl7-b2b` extension: absent, or why it does not parse.
    pub(crate) b2b: Result<Option<B2bExtension>, &'static str>,
    pub(crate) san_uris: Vec<String>,
}

/// The refusal for an assertion addressed to another endpoint.
pub(crate) const AUD_RULE: &str = "aud must be this server's token endpoint";

/// Checks a verified assertion: `iss` = `sub` = `client_id`, `aud` the
/// token endpoint, times, `jti` well formed.
pub(crate) fn check_assertion(
    v: jws::Verified<AssertionClaims>,
    client_id: &str,
    token_endpoint: &str,
    now: u64,
) -> Result<CheckedAssertion, UdapError> {
    let c = v.claims;
    let bad = UdapError::InvalidClient;
    if c.jwt.iss != client_id || c.jwt.sub != client_id {
        return Err(bad("iss and sub must both be the client_id"));
    }
    let exp = c.jwt.check(token_endpoint, AUD_RULE, now).map_err(bad)?;
    Ok(CheckedAssertion {
        jti: c.jwt.jti,
        exp,
        b2b: b2b_of(c.extensions),
        san_uris: v.leaf.san_uris,
    })
}

/// Maps a JWT fault for the token endpoint: every one is `invalid_client`.
pub(crate) fn assertion_fault(f: Fault) -> UdapError {
    match f {
        Fault::Invalid(d) | Fault::Untrusted(d) | Fault::Member(d) => UdapError::InvalidClient(d),
    }
}
