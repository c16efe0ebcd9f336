//! Trusted dynamic client registration: the software statement's rules.

use serde::{Deserialize, Serialize};

use super::UdapError;
use super::jws::{self, Fault};

/// The most scopes one client may register.
const MAX_SCOPES: usize = 64;
/// The most redirect URIs or contacts one client may register.
const MAX_LIST: usize = 16;
/// The longest single value (URI, name, scope, contact).
const MAX_VALUE: usize = 2048;

/// A grant type a UDAP client registers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    /// The authorization code flow (consumer-facing or B2B user apps).
    AuthorizationCode,
    /// Refresh tokens, only beside `authorization_code`.
    RefreshToken,
    /// Server-to-server (B2B) access.
    ClientCredentials,
}

impl GrantType {
    fn parse(s: &str) -> Result<Self, UdapError> {
        match s {
            "authorization_code" => Ok(Self::AuthorizationCode),
            "refresh_token" => Ok(Self::RefreshToken),
            "client_credentials" => Ok(Self::ClientCredentials),
            _ => Err(UdapError::InvalidClientMetadata(
                "grant_types may hold only authorization_code, refresh_token or client_credentials",
            )),
        }
    }

    /// The OAuth name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
        }
    }
}

/// A software statement's claims, as sent.
#[derive(Debug, Deserialize)]
pub(crate) struct StatementClaims {
    #[serde(flatten)]
    jwt: jws::JwtClaims,
    #[serde(default)]
    client_name: Option<String>,
    #[serde(default)]
    redirect_uris: Option<Vec<String>>,
    #[serde(default)]
    contacts: Option<Vec<String>>,
    #[serde(default)]
    logo_uri: Option<String>,
    #[serde(default)]
    grant_types: Option<Vec<String>>,
    #[serde(default)]
    response_types: Option<Vec<String>>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// What a client asked to be registered as, after every rule held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientMetadata {
    /// The client's name, for people.
    pub client_name: String,
    /// Empty for a cancellation.
    pub grant_types: Vec<GrantType>,
    /// https URIs (only with `authorization_code`).
    pub redirect_uris: Vec<String>,
    /// `["code"]` with `authorization_code`, empty otherwise.
    pub response_types: Vec<String>,
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// Contact URIs; at least one `mailto:`.
    pub contacts: Vec<String>,
    /// https logo URI (only with `authorization_code`).
    pub logo_uri: Option<String>,
}

/// A statement that passed every check, with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct CheckedStatement {
    pub(crate) iss: String,
    pub(crate) jti: String,
    pub(crate) exp: u64,
    pub(crate) metadata: ClientMetadata,
    pub(crate) fingerprint: String,
}

fn value(s: &str, what: &'static str) -> Result<(), UdapError> {
    if s.len() > MAX_VALUE || !jws::printable(s) {
        return Err(UdapError::InvalidClientMetadata(what));
    }
    Ok(())
}

fn https(u: &str) -> bool {
    // Exact, unnormalised comparison elsewhere; here the scheme and a host
    // are required, and no fragment (RFC 6749 3.1.2), user info, space or
    // invisible character.
    jws::printable(u)
        && !u.contains(|c: char| c.is_whitespace() || c == '#')
        && u.strip_prefix("https://").is_some_and(|rest| {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            !authority.is_empty() && !authority.contains('@')
        })
}

/// The refusal for a statement addressed to another endpoint.
pub(crate) const AUD_RULE: &str = "aud must be this server's registration endpoint";

/// Checks a verified statement's claims for `registration_endpoint`, with
/// the scopes this server allows. The chain and signature were checked by
/// [`jws::verify`]; `authorization_code` says whether this server supports
/// that grant.
pub(crate) fn check_statement(
    v: jws::Verified<StatementClaims>,
    registration_endpoint: &str,
    allowed_scopes: &[String],
    authorization_code: bool,
    now: u64,
) -> Result<CheckedStatement, UdapError> {
    let c = v.claims;
    let jwt = c.jwt;
    let bad = UdapError::InvalidSoftwareStatement;
    if jwt.iss.len() > MAX_VALUE || !jws::printable(&jwt.iss) || !jwt.iss.contains(':') {
        return Err(bad("iss must be a URI of printable characters"));
    }
    if !v.leaf.san_uris.contains(&jwt.iss) {
        return Err(bad(
            "iss is not a URI subject alternative name of the certificate",
        ));
    }
    if jwt.sub != jwt.iss {
        return Err(bad("sub must equal iss"));
    }
    let exp = jwt
        .check(registration_endpoint, AUD_RULE, now)
        .map_err(bad)?;

    let meta = UdapError::InvalidClientMetadata;
    let grants = c
        .grant_types
        .ok_or(meta("grant_types is required"))?
        .iter()
        .map(|g| GrantType::parse(g))
        .collect::<Result<Vec<_>, _>>()?;
    let client_name = c.client_name.ok_or(meta("client_name is required"))?;
    value(
        &client_name,
        "client_name must be 1 to 2048 printable characters",
    )?;
    if grants.is_empty() {
        // A cancellation: nothing else matters.
        return Ok(CheckedStatement {
            iss: jwt.iss,
            jti: jwt.jti,
            exp,
            metadata: ClientMetadata {
                client_name,
                grant_types: vec![],
                redirect_uris: vec![],
                response_types: vec![],
                scopes: vec![],
                contacts: vec![],
                logo_uri: None,
            },
            fingerprint: v.leaf.fingerprint,
        });
    }
    let has = |g| grants.contains(&g);
    let code = has(GrantType::AuthorizationCode);
    let cc = has(GrantType::ClientCredentials);
    let mut unique = grants.clone();
    unique.sort_by_key(|g| g.as_str());
    unique.dedup();
    if unique.len() != grants.len() {
        return Err(meta("grant_types lists a grant twice"));
    }
    if code == cc {
        return Err(meta(
            "grant_types must hold exactly one of authorization_code and client_credentials",
        ));
    }
    if has(GrantType::RefreshToken) && !code {
        return Err(meta("refresh_token requires authorization_code"));
    }
    let contacts = c.contacts.ok_or(meta("contacts is required"))?;
    if contacts.len() > MAX_LIST {
        return Err(meta("contacts holds more than 16 entries"));
    }
    for x in &contacts {
        value(x, "each contact must be 1 to 2048 printable characters")?;
    }
    if !contacts
        .iter()
        .any(|x| x.starts_with("mailto:") && x.len() > 7)
    {
        return Err(meta("contacts must hold at least one mailto: URI"));
    }
    match c.token_endpoint_auth_method.as_deref() {
        Some("private_key_jwt") => {}
        _ => return Err(meta("token_endpoint_auth_method must be private_key_jwt")),
    }
    let scope = c.scope.ok_or(meta("scope is required"))?;
    // UDAP Security IG STU 2 7.3: the subset this server offers is
    // registered (and echoed in the response); none of them is an error.
    let scopes: Vec<String> = parse_scopes(&scope)
        .ok_or(meta("scope must list 1 to 64 scopes"))?
        .into_iter()
        .filter(|s| allowed_scopes.contains(s))
        .collect();
    if scopes.is_empty() {
        return Err(meta("scope requests no scope this server offers"));
    }
    let (redirect_uris, response_types, logo_uri) = if code {
        let uris = c.redirect_uris.unwrap_or_default();
        if uris.is_empty() {
            return Err(UdapError::InvalidRedirectUri(
                "authorization_code requires at least one redirect URI",
            ));
        }
        if uris.len() > MAX_LIST {
            return Err(UdapError::InvalidRedirectUri("more than 16 redirect URIs"));
        }
        if !uris.iter().all(|u| u.len() <= MAX_VALUE && https(u)) {
            return Err(UdapError::InvalidRedirectUri(
                "redirect URIs must be absolute https URIs without a fragment",
            ));
        }
        if c.response_types.as_deref() != Some(&["code".to_owned()][..]) {
            return Err(meta(
                "response_types must be [\"code\"] with authorization_code",
            ));
        }
        let logo = c
            .logo_uri
            .ok_or(meta("logo_uri is required with authorization_code"))?;
        if logo.len() > MAX_VALUE || !https(&logo) {
            return Err(meta("logo_uri must be an https URI"));
        }
        (uris, vec!["code".to_owned()], Some(logo))
    } else {
        if c.redirect_uris.is_some_and(|u| !u.is_empty()) {
            return Err(UdapError::InvalidRedirectUri(
                "redirect URIs are not allowed with client_credentials",
            ));
        }
        if c.response_types.is_some_and(|r| !r.is_empty()) {
            return Err(meta(
                "response_types is not allowed with client_credentials",
            ));
        }
        (vec![], vec![], None)
    };
    // Checked last, so a client learns of every rule its statement broke
    // before learning what this server offers.
    if code && !authorization_code {
        return Err(meta(
            "this server supports only the client_credentials grant",
        ));
    }
    Ok(CheckedStatement {
        iss: jwt.iss,
        jti: jwt.jti,
        exp,
        metadata: ClientMetadata {
            client_name,
            grant_types: grants,
            redirect_uris,
            response_types,
            scopes,
            contacts,
            logo_uri,
        },
        fingerprint: v.leaf.fingerprint,
    })
}

/// A space-separated scope list: 1 to 64 distinct, printable scopes, in
/// the order given. `None` otherwise.
pub(crate) fn parse_scopes(s: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for x in s.split(' ').filter(|x| !x.is_empty()) {
        if !jws::printable(x) || x.len() > 256 {
            return None;
        }
        if !out.iter().any(|o| o == x) {
            out.push(x.to_owned());
        }
    }
    (!out.is_empty() && out.len() <= MAX_SCOPES).then_some(out)
}

/// Maps a JWT fault for the registration endpoint.
pub(crate) fn registration_fault(f: Fault) -> UdapError {
    match f {
        Fault::Invalid(d) => UdapError::InvalidSoftwareStatement(d),
        Fault::Untrusted(d) | Fault::Member(d) => UdapError::UnapprovedSoftwareStatement(d),
    }
}

/// The registration request body. `certifications` and any other member
/// are ignored (the IG: unsupported certifications are ignored).
#[derive(Debug, Deserialize)]
pub(crate) struct RegistrationRequest {
    pub(crate) software_statement: String,
    pub(crate) udap: String,
}

impl RegistrationRequest {
    /// Parses a registration request body: at most
    /// [`MAX_REGISTRATION_BODY`](super::MAX_REGISTRATION_BODY), JSON,
    /// `udap` = `"1"`.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, UdapError> {
        if body.len() > super::MAX_REGISTRATION_BODY {
            return Err(UdapError::InvalidClientMetadata(
                "the registration request is larger than 64 KiB",
            ));
        }
        let req: Self = serde_json::from_slice(body).map_err(|_| {
            UdapError::InvalidClientMetadata(
                "the body must be JSON with software_statement and udap",
            )
        })?;
        if req.udap != "1" {
            return Err(UdapError::InvalidClientMetadata("udap must be \"1\""));
        }
        Ok(req)
    }
}
