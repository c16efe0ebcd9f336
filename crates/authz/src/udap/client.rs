//! The client side: software statements and client assertions, signed with
//! a community certificate's key, for registering with any UDAP server.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use serde_json::json;

use super::UdapError;
use super::assertion::{B2bExtension, JWT_BEARER};
use super::community::{LeafKey, leaf_info};
use super::registration::GrantType;

/// A certificate chain and its leaf's private key, signing UDAP JWTs with
/// an `x5c` header. The algorithm follows the key: RS256 for RSA, ES256 for
/// P-256, ES384 for P-384.
pub struct Signer {
    x5c: Vec<String>,
    key: EncodingKey,
    alg: Algorithm,
    san_uris: Vec<String>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .field("chain", &self.x5c.len())
            .field("san_uris", &self.san_uris)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer from a PEM chain (leaf first, then any intermediates) and
    /// the leaf's PKCS#8 private key (PEM). Checks that the key is the
    /// certificate's by signing and verifying a probe.
    ///
    /// # Errors
    /// [`UdapError::Config`] for unusable PEM, an unsupported key, or a key
    /// that is not the certificate's.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, UdapError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| UdapError::Config(format!("certificate chain: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| UdapError::Config("certificate chain: no certificate".into()))?;
        let info = leaf_info(leaf).map_err(|d| UdapError::Config(d.into()))?;
        let (alg, key) = match info.key {
            LeafKey::Rsa(_) => (Algorithm::RS256, EncodingKey::from_rsa_pem(key_pem)),
            LeafKey::P256(_) => (Algorithm::ES256, EncodingKey::from_ec_pem(key_pem)),
            LeafKey::P384(_) => (Algorithm::ES384, EncodingKey::from_ec_pem(key_pem)),
        };
        let key = key.map_err(|_| {
            UdapError::Config("private key: not a PKCS#8 key of the certificate's type".into())
        })?;
        let signer = Self {
            x5c: chain.iter().map(|c| STANDARD.encode(c)).collect(),
            key,
            alg,
            san_uris: info.san_uris,
        };
        signer.probe(&info.key)?;
        Ok(signer)
    }

    fn probe(&self, public: &LeafKey) -> Result<(), UdapError> {
        let msg = b"careconnect udap key check";
        let sig =
            jsonwebtoken::crypto::sign(msg, &self.key, self.alg).map_err(|_| UdapError::Signing)?;
        let dk = match public {
            LeafKey::Rsa(k) => jsonwebtoken::DecodingKey::from_rsa_der(k),
            LeafKey::P256(k) | LeafKey::P384(k) => jsonwebtoken::DecodingKey::from_ec_der(k),
        };
        match jsonwebtoken::crypto::verify(&sig, msg, &dk, self.alg) {
            Ok(true) => Ok(()),
            _ => Err(UdapError::Config(
                "private key: it is not the key of the chain's first certificate".into(),
            )),
        }
    }

    /// The JWS algorithm this signer uses.
    pub fn algorithm(&self) -> &'static str {
        match self.alg {
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            _ => "RS256",
        }
    }

    /// The leaf certificate's URI subject alternative names.
    pub fn san_uris(&self) -> &[String] {
        &self.san_uris
    }

    /// `claims` as a compact JWS with `alg` and `x5c` headers.
    ///
    /// # Errors
    /// [`UdapError::Signing`] when signing fails.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, UdapError> {
        let mut header = Header::new(self.alg);
        header.x5c = Some(self.x5c.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|_| UdapError::Signing)
    }
}

/// What a client registers as: the software statement's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    /// The client's name, for people.
    pub client_name: String,
    /// `[ClientCredentials]`, or `[AuthorizationCode]` with optional
    /// `RefreshToken`; empty to cancel a registration.
    pub grant_types: Vec<GrantType>,
    /// Scopes wanted.
    pub scopes: Vec<String>,
    /// Contact URIs (at least one `mailto:`).
    pub contacts: Vec<String>,
    /// https redirect URIs (authorization code only).
    pub redirect_uris: Vec<String>,
    /// https logo URI (authorization code only).
    pub logo_uri: Option<String>,
}

impl ClientRequest {
    /// A B2B client using `client_credentials` for `scopes`.
    pub fn b2b(
        client_name: impl Into<String>,
        contact: impl Into<String>,
        scopes: &[&str],
    ) -> Self {
        Self {
            client_name: client_name.into(),
            grant_types: vec![GrantType::ClientCredentials],
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            contacts: vec![contact.into()],
            redirect_uris: vec![],
            logo_uri: None,
        }
    }
}

/// A UDAP client: its identity (`iss`, a URI SAN of its certificate) and
/// the signer that proves it.
///
/// ```
/// # #[cfg(feature = "dev-issuer")] {
/// use careconnect_authz::udap::{ClientRequest, UdapClient, dev::{DevCommunity, KeyKind}};
/// let community = DevCommunity::generate("urn:example:community").unwrap();
/// let app = community.issue("https://app.example/udap", KeyKind::P256, 1).unwrap();
/// let client = UdapClient::from_pem(&app.chain_pem, app.key_pem.as_bytes(), "https://app.example/udap").unwrap();
/// let body = client
///     .registration_request(
///         "https://fhir.example/register",
///         &ClientRequest::b2b("Lab sync", "mailto:ops@app.example", &["system/Patient.read"]),
///         1_700_000_000,
///     )
///     .unwrap();
/// assert_eq!(body["udap"], "1");
/// # }
/// ```
#[derive(Debug)]
pub struct UdapClient {
    iss: String,
    signer: Signer,
}

impl UdapClient {
    /// A client whose identity is `iss`, which must be a URI subject
    /// alternative name of the chain's first certificate.
    ///
    /// # Errors
    /// [`UdapError::Config`] as for [`Signer::from_pem`], or when `iss` is
    /// not a SAN of the certificate.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8], iss: &str) -> Result<Self, UdapError> {
        let signer = Signer::from_pem(chain_pem, key_pem)?;
        if !signer.san_uris().iter().any(|u| u == iss) {
            return Err(UdapError::Config(format!(
                "{iss} is not a URI subject alternative name of the certificate"
            )));
        }
        Ok(Self {
            iss: iss.to_owned(),
            signer,
        })
    }

    /// The client's identity (`iss`).
    pub fn iss(&self) -> &str {
        &self.iss
    }

    /// A software statement for `registration_endpoint`, issued at `now`
    /// (Unix seconds), valid for 5 minutes.
    ///
    /// # Errors
    /// [`UdapError::Signing`] or [`UdapError::Random`].
    pub fn software_statement(
        &self,
        registration_endpoint: &str,
        req: &ClientRequest,
        now: u64,
    ) -> Result<String, UdapError> {
        let mut claims = json!({
            "iss": self.iss,
            "sub": self.iss,
            "aud": registration_endpoint,
            "iat": now,
            "exp": now.saturating_add(300),
            "jti": super::random_id()?,
            "client_name": req.client_name,
            "contacts": req.contacts,
            "grant_types": req.grant_types.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            "token_endpoint_auth_method": "private_key_jwt",
            "scope": req.scopes.join(" "),
        });
        if req.grant_types.contains(&GrantType::AuthorizationCode) {
            claims["redirect_uris"] = json!(req.redirect_uris);
            claims["response_types"] = json!(["code"]);
            if let Some(l) = &req.logo_uri {
                claims["logo_uri"] = json!(l);
            }
        }
        self.signer.sign(&claims)
    }

    /// The JSON body of a registration request (`software_statement`,
    /// `udap: "1"`).
    ///
    /// # Errors
    /// As [`UdapClient::software_statement`].
    pub fn registration_request(
        &self,
        registration_endpoint: &str,
        req: &ClientRequest,
        now: u64,
    ) -> Result<serde_json::Value, UdapError> {
        Ok(json!({
            "software_statement": self.software_statement(registration_endpoint, req, now)?,
            "udap": "1",
        }))
    }

    /// A client assertion (authentication token) for `client_id` at
    /// `token_endpoint`, valid for 5 minutes, with the `hl7-b2b` extension
    /// when given.
    ///
    /// # Errors
    /// [`UdapError::Signing`] or [`UdapError::Random`].
    pub fn client_assertion(
        &self,
        client_id: &str,
        token_endpoint: &str,
        b2b: Option<&B2bExtension>,
        now: u64,
    ) -> Result<String, UdapError> {
        let mut claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": token_endpoint,
            "iat": now,
            "exp": now.saturating_add(300),
            "jti": super::random_id()?,
        });
        if let Some(b) = b2b {
            claims["extensions"] = json!({ "hl7-b2b": b });
        }
        self.signer.sign(&claims)
    }

    /// The form fields of a `client_credentials` token request.
    ///
    /// # Errors
    /// As [`UdapClient::client_assertion`].
    pub fn token_request(
        &self,
        client_id: &str,
        token_endpoint: &str,
        b2b: &B2bExtension,
        scope: Option<&str>,
        now: u64,
    ) -> Result<Vec<(&'static str, String)>, UdapError> {
        let mut form = vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_assertion_type", JWT_BEARER.to_owned()),
            (
                "client_assertion",
                self.client_assertion(client_id, token_endpoint, Some(b2b), now)?,
            ),
            ("udap", "1".to_owned()),
        ];
        if let Some(s) = scope {
            form.push(("scope", s.to_owned()));
        }
        Ok(form)
    }
}

/// The endpoints a server's `signed_metadata` vouches for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SignedEndpoints {
    /// The token endpoint.
    pub token_endpoint: String,
    /// The registration endpoint.
    pub registration_endpoint: String,
    /// The authorization endpoint, if the server offers one.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
}

#[derive(serde::Deserialize)]
struct MetadataClaims {
    iss: String,
    sub: String,
    iat: i64,
    exp: i64,
    #[serde(flatten)]
    endpoints: SignedEndpoints,
}

/// Verifies a server's `signed_metadata` as a client must before trusting
/// its endpoints: the chain validates in `community` at `now`, `iss` = `sub`
/// = `base_url` and is a URI SAN of the certificate, the JWT has not
/// expired and lives at most a year. Compare the returned endpoints with
/// the unsigned ones before using either.
///
/// # Errors
/// [`UdapError::UnapprovedSoftwareStatement`] for an untrusted chain,
/// [`UdapError::InvalidSoftwareStatement`] for anything else.
pub fn verify_signed_metadata(
    jwt: &str,
    community: &super::TrustCommunity,
    base_url: &str,
    now: u64,
) -> Result<SignedEndpoints, UdapError> {
    let v = super::jws::verify::<MetadataClaims>(jwt, community, now)
        .map_err(super::registration::registration_fault)?;
    let bad = UdapError::InvalidSoftwareStatement;
    let c = v.claims;
    if c.iss != base_url || c.sub != base_url {
        return Err(bad(
            "signed_metadata: iss and sub must be the server's base URL",
        ));
    }
    if !v.leaf.san_uris.contains(&c.iss) {
        return Err(bad(
            "signed_metadata: iss is not a URI SAN of the server's certificate",
        ));
    }
    let (Ok(iat), Ok(exp)) = (u64::try_from(c.iat), u64::try_from(c.exp)) else {
        return Err(bad("signed_metadata: iat and exp must be positive"));
    };
    if exp <= now || exp < iat || exp - iat > 366 * 24 * 3600 {
        return Err(bad(
            "signed_metadata: expired, or valid for more than a year",
        ));
    }
    Ok(c.endpoints)
}
