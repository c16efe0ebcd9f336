//! A development trust community: a root CA, an intermediate, and leaf
//! certificates for servers and clients, generated with `rcgen`. For tests,
//! the web demo's embedded defaults and trying the `udap-register` example;
//! a real deployment joins a real community (see `docs/udap.md`).

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use super::UdapError;

/// The key a leaf certificate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048 (RS256: what the IG requires every party to support, and
    /// what signed metadata uses).
    Rsa2048,
    /// ECDSA P-256 (ES256).
    P256,
}

/// A leaf certificate and its key.
pub struct IssuedCert {
    /// Leaf then intermediate, PEM: what goes in `x5c`.
    pub chain_pem: Vec<u8>,
    /// The leaf's PKCS#8 private key, PEM.
    pub key_pem: Zeroizing<String>,
    /// The leaf's serial number (for revocation).
    pub serial: u64,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

fn cfg(e: impl fmt::Display) -> UdapError {
    UdapError::Config(e.to_string())
}

fn key_pair(kind: KeyKind) -> Result<KeyPair, UdapError> {
    match kind {
        KeyKind::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cfg),
        KeyKind::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(cfg)?;
            let der = key.to_pkcs8_der().map_err(cfg)?;
            KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(der.as_bytes()),
                &rcgen::PKCS_RSA_SHA256,
            )
            .map_err(cfg)
        }
    }
}

fn ca_params(cn: &str, constrained: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match constrained {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method = KeyIdMethod::Sha256;
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(3650);
    p
}

/// A generated community: root → intermediate → leaves.
pub struct DevCommunity {
    name: String,
    root_pem: String,
    intermediate_pem: String,
    intermediate: Issuer<'static, KeyPair>,
    next_serial: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for DevCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCommunity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl DevCommunity {
    /// A fresh community called `name` (P-256 CAs).
    ///
    /// # Errors
    /// [`UdapError::Config`] if generation fails.
    pub fn generate(name: &str) -> Result<Self, UdapError> {
        let root_key = key_pair(KeyKind::P256)?;
        let root_params = ca_params(&format!("{name} root CA"), None);
        let root_cert = root_params.self_signed(&root_key).map_err(cfg)?;
        let root = Issuer::new(root_params, root_key);
        let int_key = key_pair(KeyKind::P256)?;
        let int_params = ca_params(&format!("{name} intermediate CA"), Some(0));
        let int_cert = int_params.signed_by(&int_key, &root).map_err(cfg)?;
        Ok(Self {
            name: name.to_owned(),
            root_pem: root_cert.pem(),
            intermediate_pem: int_cert.pem(),
            intermediate: Issuer::new(int_params, int_key),
            next_serial: std::sync::atomic::AtomicU64::new(1000),
        })
    }

    /// The community's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root CA certificate (PEM): the trust anchor.
    pub fn anchor_pem(&self) -> &str {
        &self.root_pem
    }

    /// The intermediate CA certificate (PEM).
    pub fn intermediate_pem(&self) -> &str {
        &self.intermediate_pem
    }

    /// A leaf for `san_uri` with a `kind` key, valid from yesterday for
    /// `days` days (0 or negative: already expired).
    ///
    /// # Errors
    /// [`UdapError::Config`] if generation fails.
    pub fn issue(&self, san_uri: &str, kind: KeyKind, days: i64) -> Result<IssuedCert, UdapError> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(
            san_uri,
            kind,
            now - Duration::days(2),
            now + Duration::days(days) - Duration::hours(1),
        )
    }

    /// A leaf for `san_uri` valid from `not_before` to `not_after`.
    ///
    /// # Errors
    /// [`UdapError::Config`] if generation fails.
    pub fn issue_between(
        &self,
        san_uri: &str,
        kind: KeyKind,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, UdapError> {
        let key = key_pair(kind)?;
        let serial = self
            .next_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, san_uri);
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::URI(san_uri.try_into().map_err(cfg)?)];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.serial_number = Some(SerialNumber::from(serial));
        p.not_before = not_before;
        p.not_after = not_after;
        let cert = p.signed_by(&key, &self.intermediate).map_err(cfg)?;
        let mut chain_pem = cert.pem().into_bytes();
        chain_pem.extend_from_slice(self.intermediate_pem.as_bytes());
        let key_pem = Zeroizing::new(key.serialize_pem());
        // Round-trip check: the PEM must read back as PKCS#8.
        PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).map_err(cfg)?;
        Ok(IssuedCert {
            chain_pem,
            key_pem,
            serial,
        })
    }

    /// A CRL from the intermediate revoking `serials`, valid for a day (PEM).
    ///
    /// # Errors
    /// [`UdapError::Config`] if signing fails.
    pub fn crl(&self, serials: &[u64]) -> Result<String, UdapError> {
        self.crl_valid(serials, Duration::days(1))
    }

    /// A CRL revoking `serials` whose `nextUpdate` is `valid` from now
    /// (negative: already stale).
    ///
    /// # Errors
    /// [`UdapError::Config`] if signing fails.
    pub fn crl_valid(&self, serials: &[u64], valid: Duration) -> Result<String, UdapError> {
        let now = OffsetDateTime::now_utc();
        let p = CertificateRevocationListParams {
            this_update: now - Duration::days(2),
            next_update: now + valid,
            crl_number: SerialNumber::from(now.unix_timestamp().unsigned_abs()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - Duration::hours(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        p.signed_by(&self.intermediate)
            .map_err(cfg)?
            .pem()
            .map_err(cfg)
    }
}
