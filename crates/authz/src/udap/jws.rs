//! Compact JWS with an `x5c` chain: parsed, chain-validated and
//! signature-checked before any claim is read.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use ring::signature::{self, VerificationAlgorithm};
use serde::de::DeserializeOwned;

use super::community::{LeafInfo, LeafKey, Refused, TrustCommunity};

/// The longest JWT accepted (a chain of five 2 KiB certificates in base64
/// plus claims fits comfortably).
pub const MAX_JWT_LEN: usize = 32 * 1024;

/// The signature algorithms accepted in UDAP JWTs: RS256 (which the IG
/// requires), ES256 and ES384 (which it permits).
pub const ALGORITHMS: &[&str] = &["RS256", "ES256", "ES384"];

/// A JWT whose chain validated and whose signature is the leaf's.
#[derive(Debug)]
pub(crate) struct Verified<C> {
    pub(crate) claims: C,
    pub(crate) leaf: LeafInfo,
}

/// Why a JWT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Not a well-formed UDAP JWT, or its signature does not verify.
    Invalid(&'static str),
    /// Well formed, but its chain is not trusted by the community.
    Untrusted(&'static str),
    /// Its chain leads to one of the community's anchors, but is refused
    /// (revoked, expired...): a member's certificate.
    Member(&'static str),
}

impl From<Refused> for Fault {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Malformed(d) => Self::Invalid(d),
            Refused::Untrusted(d) => Self::Untrusted(d),
            Refused::Member(d) => Self::Member(d),
        }
    }
}

/// A JWT whose signature verified with its `x5c` leaf's key; its chain is
/// not validated yet.
#[derive(Debug)]
pub(crate) struct Signed {
    claims: serde_json::Value,
    chain: Vec<Vec<u8>>,
}

impl Signed {
    /// The `iss` the signer claims (not yet vouched for by a chain), for
    /// the audit log: `?` when absent or not printable.
    pub(crate) fn claimed_iss(&self) -> String {
        self.claims
            .get("iss")
            .and_then(serde_json::Value::as_str)
            .filter(|s| printable(s))
            .unwrap_or("?")
            .to_owned()
    }

    /// SHA-256 of the presented leaf certificate (hex): how an unproven
    /// signer is named in the log, never by what it claims.
    pub(crate) fn leaf_sha256(&self) -> String {
        self.chain
            .first()
            .map(|c| super::community::fingerprint(c))
            .unwrap_or_default()
    }

    /// The registered claims checked before any chain is built (cheap, and
    /// so that an expired or misdirected JWT, replayed as often as anyone
    /// likes, costs no path building and is never a member's): `aud` is
    /// `audience`, the times hold, `jti` is well formed. `Err` describes
    /// the broken rule (`aud_rule` for the audience).
    pub(crate) fn precheck(
        &self,
        audience: &str,
        aud_rule: &'static str,
        now: u64,
    ) -> Result<(), &'static str> {
        let jwt = <JwtClaims as serde::Deserialize>::deserialize(&self.claims)
            .map_err(|_| "a claim is missing or has the wrong type")?;
        jwt.check(audience, aud_rule, now).map(drop)
    }

    /// Validates the chain in `community` at `now` and decodes the claims.
    pub(crate) fn in_community<C: DeserializeOwned>(
        &self,
        community: &TrustCommunity,
        now: u64,
    ) -> Result<Verified<C>, Fault> {
        let leaf = community.verify_chain(&self.chain, now)?;
        let claims = serde_json::from_value(self.claims.clone())
            .map_err(|_| Fault::Invalid("a claim is missing or has the wrong type"))?;
        Ok(Verified { claims, leaf })
    }
}

/// Verifies `token`'s form and signature: size, header (`alg` one of
/// [`ALGORITHMS`] and matching the leaf's key, `x5c` present, no `crit`),
/// then the signature with the `x5c` leaf's key (`ring`: RSASSA-PKCS1-v1_5
/// with SHA-256 and a 2048-8192-bit key, or ECDSA in the JWS fixed-width
/// form). The chain is left to
/// [`Signed::in_community`]: chains are public (every statement carries
/// one), so path building and revocation checks are only spent on JWTs
/// their leaf's key really signed. No claim is checked here.
pub(crate) fn verify_signature(token: &str) -> Result<Signed, Fault> {
    if token.len() > MAX_JWT_LEN {
        return Err(Fault::Invalid("the JWT is longer than 32 KiB"));
    }
    if token.split('.').count() != 3 {
        return Err(Fault::Invalid(
            "not a compact JWS (three dot-separated parts)",
        ));
    }
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| Fault::Invalid("the JWT header is malformed or names an unsupported alg"))?;
    let alg = match header.alg {
        Algorithm::RS256 | Algorithm::ES256 | Algorithm::ES384 => header.alg,
        _ => return Err(Fault::Invalid("alg must be RS256, ES256 or ES384")),
    };
    if header.crit.is_some() {
        return Err(Fault::Invalid(
            "crit names extensions this server does not understand",
        ));
    }
    let chain = header
        .x5c_der()
        .map_err(|_| Fault::Invalid("x5c is not base64 (RFC 7515 4.1.6)"))?
        .ok_or(Fault::Invalid("the JWT header has no x5c"))?;
    let first = chain.first().ok_or(Fault::Invalid("x5c is empty"))?;
    if chain.len() > super::community::MAX_CHAIN {
        return Err(Fault::Invalid("x5c holds more than 5 certificates"));
    }
    let leaf_key = super::community::leaf_info(first)
        .map_err(Fault::Invalid)?
        .key;
    let (alg, key): (&dyn VerificationAlgorithm, &[u8]) = match (alg, &leaf_key) {
        (Algorithm::RS256, LeafKey::Rsa(k)) => (&signature::RSA_PKCS1_2048_8192_SHA256, k),
        (Algorithm::ES256, LeafKey::P256(k)) => (&signature::ECDSA_P256_SHA256_FIXED, k),
        (Algorithm::ES384, LeafKey::P384(k)) => (&signature::ECDSA_P384_SHA384_FIXED, k),
        _ => return Err(Fault::Invalid("alg does not match the certificate's key")),
    };
    // RFC 7515 5.2: the signature is over the first two parts as sent.
    let (signing_input, sig) = token.rsplit_once('.').ok_or(Fault::Invalid(
        "not a compact JWS (three dot-separated parts)",
    ))?;
    let payload = signing_input
        .split_once('.')
        .map(|(_, p)| p)
        .ok_or(Fault::Invalid(
            "not a compact JWS (three dot-separated parts)",
        ))?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| Fault::Invalid("the signature is not base64url"))?;
    signature::UnparsedPublicKey::new(alg, key)
        .verify(signing_input.as_bytes(), &sig)
        .map_err(|_| Fault::Invalid("the signature does not verify with the certificate's key"))?;
    let claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(serde_json::Value::is_object)
        .ok_or(Fault::Invalid(
            "the JWT claims are not a base64url JSON object",
        ))?;
    Ok(Signed { claims, chain })
}

/// [`verify_signature`], then [`Signed::in_community`] (one community).
pub(crate) fn verify<C: DeserializeOwned>(
    token: &str,
    community: &TrustCommunity,
    now: u64,
) -> Result<Verified<C>, Fault> {
    verify_signature(token)?.in_community(community, now)
}

/// The registered claims every UDAP JWT carries (RFC 7519 4.1), flattened
/// into each kind's own claims.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct JwtClaims {
    pub(crate) iss: String,
    pub(crate) sub: String,
    aud: Audience,
    exp: i64,
    iat: i64,
    pub(crate) jti: String,
}

impl JwtClaims {
    /// `aud` is exactly `audience` (else `aud_rule`), the times hold
    /// ([`check_times`]) and `jti` is well formed. Returns `exp`.
    pub(crate) fn check(
        &self,
        audience: &str,
        aud_rule: &'static str,
        now: u64,
    ) -> Result<u64, &'static str> {
        if !self.aud.is(audience) {
            return Err(aud_rule);
        }
        let exp = check_times(self.iat, self.exp, now)?;
        check_jti(&self.jti)?;
        Ok(exp)
    }
}

/// `aud` as a string, or an array holding exactly one string.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    /// Whether this audience is `expected` byte for byte, or differs from
    /// it only by one trailing slash (UDAP Security IG STU 2 7.1.5: a
    /// client may write the endpoint's URL either way).
    pub(crate) fn is(&self, expected: &str) -> bool {
        let same = |a: &str| {
            a == expected
                || a.strip_suffix('/') == Some(expected)
                || expected.strip_suffix('/') == Some(a)
        };
        match self {
            Self::One(a) => same(a),
            Self::Many(v) => v.len() == 1 && same(&v[0]),
        }
    }
}

/// Clock skew allowed on `iat` (seconds into the future).
pub const MAX_SKEW: u64 = 60;
/// The longest lifetime (`exp - iat`) of a software statement or client
/// assertion.
pub const MAX_LIFETIME: u64 = 300;

/// The time claims every UDAP JWT carries, checked: `exp` in the future,
/// at most [`MAX_LIFETIME`] after `iat`, `iat` not more than [`MAX_SKEW`]
/// ahead of `now`. Returns `exp`.
fn check_times(iat: i64, exp: i64, now: u64) -> Result<u64, &'static str> {
    let (Ok(iat), Ok(exp)) = (u64::try_from(iat), u64::try_from(exp)) else {
        return Err("iat and exp must be positive");
    };
    if exp <= now {
        return Err("the JWT has expired (exp)");
    }
    if iat > now.saturating_add(MAX_SKEW) {
        return Err("iat is in the future");
    }
    if exp < iat || exp - iat > MAX_LIFETIME {
        return Err("exp must be no more than 5 minutes after iat");
    }
    Ok(exp)
}

/// A `jti`: 1 to 256 printable characters.
fn check_jti(jti: &str) -> Result<(), &'static str> {
    if jti.len() > 256 || !printable(jti) {
        return Err("jti must be 1 to 256 printable characters");
    }
    Ok(())
}

/// Whether `s` is 1 to 2048 characters with no control, format, line or
/// paragraph separator, or private-use character (Unicode categories Cc,
/// Cf, Zl, Zp, Co): bidirectional overrides, zero-width and tag characters
/// and the like could make a value read differently in a log or a page.
pub(crate) fn printable(s: &str) -> bool {
    !s.is_empty() && s.len() <= 2048 && !s.chars().any(crate::text::is_invisible)
}
