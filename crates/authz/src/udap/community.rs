//! Trust communities: the anchors, intermediates and revocation lists that
//! decide whose certificates this server accepts.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::UdapError;

/// Certificates in one `x5c` chain, leaf included.
pub const MAX_CHAIN: usize = 5;
/// RSA keys shorter than this are refused in a leaf (webpki already refuses
/// them in signatures on certificates).
const MIN_RSA_BITS: usize = 2048;
/// Longer RSA keys are refused in a leaf: they cost more to verify than
/// they protect, and the JWS library refuses them anyway.
const MAX_RSA_BITS: usize = 4096;

/// The signature algorithms a certificate in a chain may be signed with.
static CHAIN_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    webpki::ring::ED25519,
];

/// A leaf certificate's public key, in the form a JWS signature is checked
/// against.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum LeafKey {
    /// PKCS#1 `RSAPublicKey` DER.
    Rsa(Vec<u8>),
    /// SEC1 point on P-256.
    P256(Vec<u8>),
    /// SEC1 point on P-384.
    P384(Vec<u8>),
}

impl fmt::Debug for LeafKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rsa(_) => "Rsa",
            Self::P256(_) => "P256",
            Self::P384(_) => "P384",
        })
    }
}

/// What a certificate says about its holder, read with `x509-parser`.
#[derive(Debug, Clone)]
pub(crate) struct LeafInfo {
    /// The URI subject alternative names, exactly as written.
    pub(crate) san_uris: Vec<String>,
    pub(crate) key: LeafKey,
    /// SHA-256 of the certificate's DER, hex.
    pub(crate) fingerprint: String,
    /// `notBefore` and `notAfter` (Unix seconds, clamped at 0).
    pub(crate) validity: (u64, u64),
}

/// Reads the leaf's URI SANs and public key. `Err` carries a description
/// for the client.
pub(crate) fn leaf_info(der: &[u8]) -> Result<LeafInfo, &'static str> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|_| "x5c[0] is not an X.509 certificate")?;
    if !rest.is_empty() {
        return Err("x5c[0] has bytes after the certificate");
    }
    let mut san_uris = Vec::new();
    match cert.subject_alternative_name() {
        Ok(Some(san)) => {
            for name in &san.value.general_names {
                if let GeneralName::URI(u) = name {
                    san_uris.push((*u).to_owned());
                }
            }
        }
        Ok(None) => {}
        Err(_) => return Err("the certificate's subjectAltName extension is malformed"),
    }
    let spki = cert.public_key();
    let key = match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let m = rsa.modulus;
            let m = &m[m.iter().take_while(|b| **b == 0).count()..];
            let bits = m
                .first()
                .map_or(0, |top| m.len() * 8 - top.leading_zeros() as usize);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err("the certificate's RSA key must be 2048 to 4096 bits");
            }
            LeafKey::Rsa(spki.subject_public_key.data.to_vec())
        }
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            if point.data().first() != Some(&0x04) {
                return Err("the certificate's EC key must be an uncompressed point");
            }
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => LeafKey::P256(point.data().to_vec()),
                Some("1.3.132.0.34") => LeafKey::P384(point.data().to_vec()),
                _ => return Err("the certificate's EC key is not on P-256 or P-384"),
            }
        }
        _ => return Err("the certificate's key is neither RSA nor EC"),
    };
    let secs = |t: i64| u64::try_from(t).unwrap_or(0);
    let validity = (
        secs(cert.validity().not_before.timestamp()),
        secs(cert.validity().not_after.timestamp()),
    );
    Ok(LeafInfo {
        san_uris,
        key,
        fingerprint: fingerprint(der),
        validity,
    })
}

/// SHA-256 of a certificate's DER, hex: how a presented certificate is
/// named in the log before anything it says is trusted.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Where fresh certificate revocation lists come from. [`CrlFiles`] reads
/// them from disk; an embedder can fetch them from the CRL distribution
/// points over HTTP and hand them to [`TrustCommunity::refresh_crls`].
#[async_trait]
pub trait CrlSource: Send + Sync + fmt::Debug {
    /// Every current CRL, DER or PEM (one or more `X509 CRL` blocks).
    ///
    /// # Errors
    /// Why the lists could not be fetched.
    async fn fetch(&self) -> Result<Vec<Vec<u8>>, UdapError>;
}

/// CRLs read from files (DER, or PEM with one or more lists each).
#[derive(Debug, Clone)]
pub struct CrlFiles(pub Vec<PathBuf>);

#[async_trait]
impl CrlSource for CrlFiles {
    async fn fetch(&self) -> Result<Vec<Vec<u8>>, UdapError> {
        let mut out = Vec::with_capacity(self.0.len());
        for p in &self.0 {
            out.push(
                std::fs::read(p)
                    .map_err(|e| UdapError::Config(format!("CRL {}: {e}", p.display())))?,
            );
        }
        Ok(out)
    }
}

/// One trust community: a name (its URI, as clients pass it in
/// `?community=`), the anchors (root CAs) its members chain to, intermediates
/// a client may leave out of its `x5c`, and revocation lists.
///
/// Path validation is `rustls-webpki`'s: signatures, validity at the given
/// time, basic constraints, name constraints, and the CRLs loaded here
/// (every certificate of the chain is checked against them; a list past
/// its `nextUpdate` fails every chain it covers, so a stale list fails
/// closed). A certificate whose issuer has no list loaded is accepted unless
/// [`TrustCommunity::require_revocation_data`] is set.
pub struct TrustCommunity {
    name: String,
    anchors: Vec<TrustAnchor<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
    /// Anchors and configured intermediates: who may sign a CRL.
    crl_issuers: Vec<CertificateDer<'static>>,
    crls: RwLock<Arc<Vec<LoadedCrl>>>,
    require_crls: bool,
}

impl fmt::Debug for TrustCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustCommunity")
            .field("name", &self.name)
            .field("anchors", &self.anchors.len())
            .field("intermediates", &self.intermediates.len())
            .field("crls", &self.crls.read().map(|c| c.len()).unwrap_or(0))
            .field("require_crls", &self.require_crls)
            .finish()
    }
}

fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, UdapError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UdapError::Config(format!("{what}: {e}")))?;
    Ok(certs)
}

impl TrustCommunity {
    /// A community named `name` (a URI) whose members chain to one of the
    /// certificates in `anchors_pem`.
    ///
    /// # Errors
    /// [`UdapError::Config`] when the name is empty or the PEM holds no
    /// usable certificate.
    pub fn new(name: &str, anchors_pem: &[u8]) -> Result<Self, UdapError> {
        if name.is_empty() || name.len() > 2048 || name.chars().any(char::is_control) {
            return Err(UdapError::Config("community name must be a URI".into()));
        }
        let certs = certs_from_pem(anchors_pem, "trust anchors")?;
        if certs.is_empty() {
            return Err(UdapError::Config(format!(
                "community {name}: no trust anchor"
            )));
        }
        let anchors = certs
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| UdapError::Config(format!("trust anchor: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.to_owned(),
            anchors,
            crl_issuers: certs,
            intermediates: Vec::new(),
            crls: RwLock::new(Arc::new(Vec::new())),
            require_crls: false,
        })
    }

    /// Adds intermediate CA certificates (PEM) that chains may use without
    /// sending them.
    ///
    /// # Errors
    /// [`UdapError::Config`] for PEM that does not parse.
    pub fn with_intermediates(mut self, pem: &[u8]) -> Result<Self, UdapError> {
        let certs = certs_from_pem(pem, "intermediates")?;
        self.crl_issuers.extend(certs.iter().cloned());
        self.intermediates.extend(certs);
        Ok(self)
    }

    /// Refuses every certificate whose issuer has no revocation list loaded.
    #[must_use]
    pub fn require_revocation_data(mut self, on: bool) -> Self {
        self.require_crls = on;
        self
    }

    /// The community's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Loads revocation lists (each DER, or PEM with one or more lists),
    /// one per issuer and signing key: a list replaces the loaded one of
    /// the same issuer only if it is newer (a later `thisUpdate`, or the
    /// same with a higher `crlNumber`), so a replayed older list cannot undo
    /// a revocation, and an issuer missing from `lists` keeps its loaded
    /// list (which fails closed once past its `nextUpdate`). A list is
    /// accepted only if an anchor or configured intermediate with the
    /// issuer's name (and `cRLSign`, if it has a key usage) signed it, its
    /// `thisUpdate` is not in the future, and it is complete (no issuing
    /// distribution point). Lists that pass are loaded even when others are
    /// refused. Returns how many lists are loaded.
    ///
    /// # Errors
    /// [`UdapError::Config`] naming every refused list (the others were
    /// loaded).
    pub fn set_crls(&self, lists: &[Vec<u8>]) -> Result<usize, UdapError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let mut fresh = Vec::new();
        let mut refused = Vec::new();
        for bytes in lists {
            let ders: Vec<Vec<u8>> = if bytes.starts_with(b"-----") {
                match CertificateRevocationListDer::pem_slice_iter(bytes)
                    .map(|r| r.map(|d| d.as_ref().to_vec()))
                    .collect::<Result<_, _>>()
                {
                    Ok(d) => d,
                    Err(e) => {
                        refused.push(format!("CRL PEM: {e}"));
                        continue;
                    }
                }
            } else {
                vec![bytes.clone()]
            };
            for der in ders {
                match LoadedCrl::parse(der, &self.crl_issuers, now) {
                    Ok(c) => fresh.push(c),
                    Err(e) => refused.push(e.to_string()),
                }
            }
        }
        let mut guard = match self.crls.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut merged: Vec<LoadedCrl> = guard.as_ref().clone();
        for crl in fresh {
            match merged
                .iter_mut()
                .find(|c| c.issuer == crl.issuer && c.signer == crl.signer)
            {
                Some(old) if crl.newer_than(old) => *old = crl,
                Some(_) => tracing::warn!(
                    community = %self.name,
                    "a revocation list older than the loaded one was ignored"
                ),
                None => merged.push(crl),
            }
        }
        let n = merged.len();
        *guard = Arc::new(merged);
        drop(guard);
        if refused.is_empty() {
            Ok(n)
        } else {
            for why in &refused {
                tracing::warn!(community = %self.name, why, "revocation list refused");
            }
            Err(UdapError::Config(refused.join("; ")))
        }
    }

    /// Fetches fresh lists from `source` and loads them (see
    /// [`TrustCommunity::set_crls`]).
    ///
    /// # Errors
    /// What fetching or parsing failed with; the old lists stay.
    pub async fn refresh_crls(&self, source: &dyn CrlSource) -> Result<usize, UdapError> {
        let lists = source.fetch().await?;
        self.set_crls(&lists)
    }

    fn crls(&self) -> Arc<Vec<LoadedCrl>> {
        match self.crls.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Validates `chain` (DER, leaf first) to one of this community's
    /// anchors at `now` (Unix seconds), against the loaded revocation
    /// lists, and reads the leaf. `Err` is a description for the client.
    pub(crate) fn verify_chain(&self, chain: &[Vec<u8>], now: u64) -> Result<LeafInfo, Refused> {
        let (leaf, rest) = chain
            .split_first()
            .ok_or(Refused::Malformed("x5c is empty"))?;
        if chain.len() > MAX_CHAIN {
            return Err(Refused::Malformed("x5c holds more than 5 certificates"));
        }
        // (Read again here so a caller cannot validate one chain and use
        // another's leaf.)
        let info = leaf_info(leaf).map_err(Refused::Malformed)?;
        let leaf_der = CertificateDer::from(leaf.as_slice());
        let ee = EndEntityCert::try_from(&leaf_der)
            .map_err(|_| Refused::Malformed("x5c[0] is not a usable end-entity certificate"))?;
        let mut intermediates: Vec<CertificateDer<'_>> = rest
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        intermediates.extend(self.intermediates.iter().cloned());
        let crls = self.crls();
        let crl_refs: Vec<&CertRevocationList<'_>> = crls.iter().map(|c| c.list.as_ref()).collect();
        let revocation = match RevocationOptionsBuilder::new(&crl_refs) {
            Ok(b) => Some(
                b.with_depth(RevocationCheckDepth::Chain)
                    .with_status_policy(if self.require_crls {
                        UnknownStatusPolicy::Deny
                    } else {
                        UnknownStatusPolicy::Allow
                    })
                    .with_expiration_policy(ExpirationPolicy::Enforce)
                    .build(),
            ),
            Err(_) => None,
        };
        let at = |secs: u64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
        let verify = |time, revocation| {
            ee.verify_for_usage(
                CHAIN_ALGS,
                &self.anchors,
                &intermediates,
                time,
                KeyUsage::required_if_present(EKU_CLIENT_AUTH),
                revocation,
                None,
            )
            .map(drop)
        };
        if let Err(e) = verify(at(now), revocation) {
            // A path to an anchor is proven only by validating one: without
            // revocation data, at a time the leaf was valid. webpki checks a
            // certificate's own validity, CA flag and key usage before it
            // looks for an issuer, so only a refusal that comes after path
            // building (a time or revocation failure) can be a member's, and
            // only if the path really validates.
            let after_path = matches!(
                e,
                webpki::Error::CertExpired { .. }
                    | webpki::Error::CertNotValidYet { .. }
                    | webpki::Error::CertRevoked
                    | webpki::Error::UnknownRevocationStatus
                    | webpki::Error::CrlExpired { .. }
            );
            let (from, until) = info.validity;
            let proven = after_path
                && [now, from, until]
                    .into_iter()
                    .any(|t| verify(at(t), None).is_ok());
            let why = describe(&e);
            return Err(if proven {
                Refused::Member(why)
            } else {
                Refused::Untrusted(why)
            });
        }
        // Required revocation data, and none loaded: refused, but only for
        // a chain that is this community's (so another community's
        // members are not turned away as if revoked here).
        if self.require_crls && revocation.is_none() {
            return Err(Refused::Member("no revocation data for the certificate"));
        }
        Ok(info)
    }
}

/// `id-kp-clientAuth` (1.3.6.1.5.5.7.3.2), content octets only: a leaf with
/// an extended key usage extension must list client authentication; one
/// without the extension is accepted (UDAP leaves often carry none).
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// One issuer's revocation list, with what orders it against another.
#[derive(Clone)]
struct LoadedCrl {
    /// The signing CA's public key (a renewed CA under the same name has
    /// lists of its own).
    signer: Vec<u8>,
    issuer: Vec<u8>,
    this_update: i64,
    number: Vec<u8>,
    list: Arc<CertRevocationList<'static>>,
}

impl LoadedCrl {
    /// Parses `der` and checks it before it may replace anything: signed by
    /// one of `issuers` (the community's anchors and configured
    /// intermediates) under that issuer's name, `thisUpdate` not in the
    /// future, and a complete list (no issuing distribution point, which
    /// would scope it to part of the issuer's certificates).
    fn parse(der: Vec<u8>, issuers: &[CertificateDer<'_>], now: i64) -> Result<Self, UdapError> {
        use x509_parser::revocation_list::CertificateRevocationList as Parsed;
        let bad = |why: &str| UdapError::Config(format!("CRL: {why}"));
        let (signer, issuer, this_update, number) = {
            let (_, p) = Parsed::from_der(&der).map_err(|e| bad(&e.to_string()))?;
            if p.extensions()
                .iter()
                .any(|e| e.oid.to_id_string() == "2.5.29.28")
            {
                return Err(bad(
                    "partitioned lists (issuing distribution point) are not supported",
                ));
            }
            let this_update = p.last_update().timestamp();
            if this_update > now + 300 {
                return Err(bad("thisUpdate is in the future"));
            }
            let signer = issuers.iter().find_map(|c| {
                let (_, cert) = X509Certificate::from_der(c).ok()?;
                let may_sign = match cert.key_usage() {
                    Ok(Some(ku)) => ku.value.crl_sign(),
                    Ok(None) => true,
                    Err(_) => false,
                };
                (may_sign
                    && cert.subject().as_raw() == p.issuer().as_raw()
                    && p.verify_signature(cert.public_key()).is_ok())
                .then(|| cert.public_key().raw.to_vec())
            });
            let Some(signer) = signer else {
                return Err(bad(
                    "not signed by an anchor or configured intermediate of the community",
                ));
            };
            (
                signer,
                p.issuer().as_raw().to_vec(),
                this_update,
                p.crl_number().map(|n| n.to_bytes_be()).unwrap_or_default(),
            )
        };
        let list = OwnedCertRevocationList::from_der(&der).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            signer,
            issuer,
            this_update,
            number,
            list: Arc::new(CertRevocationList::from(list)),
        })
    }

    fn newer_than(&self, old: &Self) -> bool {
        let num = |n: &[u8]| {
            let n = &n[n.iter().take_while(|b| **b == 0).count()..];
            (n.len(), n.to_vec())
        };
        (self.this_update, num(&self.number)) > (old.this_update, num(&old.number))
    }
}

/// The refusal for a chain to none of a community's anchors.
pub(crate) const UNKNOWN_ISSUER: &str =
    "the certificate does not chain to a trust anchor of this community";

/// Why a chain was refused: malformed (the JWT's fault), not trusted, or
/// refused although a path to one of the community's anchors was proven
/// (revoked, expired, no revocation data): only the last concerns a
/// member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Malformed(&'static str),
    Untrusted(&'static str),
    Member(&'static str),
}

fn describe(e: &webpki::Error) -> &'static str {
    use webpki::Error as E;
    match e {
        E::CertExpired { .. } => "the certificate has expired",
        E::CertNotValidYet { .. } => "the certificate is not valid yet",
        E::CertRevoked => "the certificate has been revoked",
        E::UnknownIssuer => UNKNOWN_ISSUER,
        E::UnknownRevocationStatus => "no revocation data for the certificate",
        E::CrlExpired { .. } => "the community's revocation list is out of date",
        E::InvalidSignatureForPublicKey
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "a certificate in the chain has an invalid or unsupported signature"
        }
        E::RequiredEkuNotFoundContext(_) => {
            "the certificate's extended key usage does not allow client authentication"
        }
        E::CaUsedAsEndEntity => "x5c[0] is a CA certificate",
        E::NameConstraintViolation => "the certificate violates its issuer's name constraints",
        _ => "the certificate chain is not valid",
    }
}
