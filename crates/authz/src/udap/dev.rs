//! A development trust community: a root CA, an intermediate, and leaf
//! certificates for servers and clients, generated with `rcgen`. For tests,
//! the web demo's embedded defaults and trying the `udap-register` example;
//! a real deployment joins a real community (see `docs/udap.md`).

use std::fmt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use super::UdapError;

const NAME_FILE: &str = "community-name.txt";
const ANCHOR_FILE: &str = "anchor.pem";
const INT_FILE: &str = "intermediate.pem";
const INT_KEY_FILE: &str = "intermediate-key.pem";

/// Serials start at a random 48-bit offset, so leaves issued after a
/// reload never reuse a serial (a CRL names serials).
fn random_serial_base() -> Result<u64, UdapError> {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).map_err(|_| UdapError::Random)?;
    Ok(b.iter().fold(1u64, |acc, x| (acc << 8) | u64::from(*x)))
}

/// Writes `bytes` to `path`, readable by the owner only, replacing it.
///
/// # Errors
/// [`UdapError::Config`] when the file cannot be written.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), UdapError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(cfg)?;
    f.write_all(bytes).map_err(cfg)?;
    f.sync_all().map_err(cfg)?;
    std::fs::rename(&tmp, path).map_err(cfg)
}

impl IssuedCert {
    /// Writes `chain.pem` and `key.pem` (owner-only) to `dir`.
    ///
    /// # Errors
    /// [`UdapError::Config`] when a file cannot be written.
    pub fn save(&self, dir: &Path) -> Result<(), UdapError> {
        std::fs::create_dir_all(dir).map_err(cfg)?;
        write_private(&dir.join("key.pem"), self.key_pem.as_bytes())?;
        std::fs::write(dir.join("chain.pem"), &self.chain_pem).map_err(cfg)
    }
}

/// The key a leaf certificate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048 (RS256: what the IG requires every party to support, and
    /// what signed metadata uses).
    Rsa2048,
    /// ECDSA P-256 (ES256).
    P256,
    /// ECDSA P-384 (ES384).
    P384,
}

/// What is wrong with a [`self_made`] certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// Valid in 2020 only.
    Expired,
    /// `CA:TRUE`, used as a leaf.
    Ca,
    /// An extended key usage of `serverAuth` only.
    ServerAuthOnly,
}

/// A P-256 certificate for `san_uri` that no community issued: self-signed,
/// with `flaw`, a reason of its own to be refused that webpki finds before
/// it looks for an issuer. Anyone can make one; for tests that such
/// certificates are nobody's.
///
/// # Errors
/// [`UdapError::Config`] if generation fails.
pub fn self_made(san_uri: &str, flaw: Flaw) -> Result<IssuedCert, UdapError> {
    let key = key_pair(KeyKind::P256)?;
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, san_uri);
    p.subject_alt_names = vec![SanType::URI(san_uri.try_into().map_err(cfg)?)];
    match flaw {
        Flaw::Expired => {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        Flaw::Ca => p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained),
        Flaw::ServerAuthOnly => {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        }
    }
    let cert = p.self_signed(&key).map_err(cfg)?;
    Ok(IssuedCert {
        chain_pem: cert.pem().into_bytes(),
        key_pem: Zeroizing::new(key.serialize_pem()),
        serial: 0,
    })
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
        KeyKind::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(cfg),
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
    p
}

/// A generated community: root → intermediate → leaves.
pub struct DevCommunity {
    name: String,
    root_pem: String,
    intermediate_pem: String,
    intermediate: Issuer<'static, KeyPair>,
    /// The root's key: only in a community generated in this process
    /// (never saved), for root-signed revocation lists in tests.
    root: Option<Issuer<'static, KeyPair>>,
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
        let now = OffsetDateTime::now_utc();
        Self::generate_between(name, now - Duration::days(1), now + Duration::days(3650))
    }

    /// A fresh community whose CAs are valid from `not_before` to
    /// `not_after` (for a fixed clock, as in the fuzz target).
    ///
    /// # Errors
    /// [`UdapError::Config`] if generation fails.
    pub fn generate_between(
        name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Self, UdapError> {
        let validity = |mut p: CertificateParams| {
            p.not_before = not_before;
            p.not_after = not_after;
            p
        };
        let root_key = key_pair(KeyKind::P256)?;
        let root_params = validity(ca_params(&format!("{name} root CA"), None));
        let root_cert = root_params.self_signed(&root_key).map_err(cfg)?;
        let root = Issuer::new(root_params, root_key);
        let int_key = key_pair(KeyKind::P256)?;
        let int_params = validity(ca_params(&format!("{name} intermediate CA"), Some(0)));
        let int_cert = int_params.signed_by(&int_key, &root).map_err(cfg)?;
        Ok(Self {
            name: name.to_owned(),
            root_pem: root_cert.pem(),
            intermediate_pem: int_cert.pem(),
            intermediate: Issuer::new(int_params, int_key),
            root: Some(root),
            next_serial: std::sync::atomic::AtomicU64::new(random_serial_base()?),
        })
    }

    /// The community saved in `dir` (see [`DevCommunity::save`]), or a new
    /// one called `name`, saved there.
    ///
    /// # Errors
    /// [`UdapError::Config`] for unreadable or unwritable files.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<Self, UdapError> {
        let read = |f: &str| std::fs::read_to_string(dir.join(f));
        match (
            read(NAME_FILE),
            read(ANCHOR_FILE),
            read(INT_FILE),
            read(INT_KEY_FILE),
        ) {
            (Ok(name), Ok(root_pem), Ok(intermediate_pem), Ok(key)) => {
                let key = Zeroizing::new(key);
                let kp = KeyPair::from_pem(&key).map_err(cfg)?;
                let intermediate = Issuer::from_ca_cert_pem(&intermediate_pem, kp).map_err(cfg)?;
                Ok(Self {
                    name: name.trim().to_owned(),
                    root_pem,
                    intermediate_pem,
                    intermediate,
                    root: None,
                    next_serial: std::sync::atomic::AtomicU64::new(random_serial_base()?),
                })
            }
            _ => {
                let c = Self::generate(name)?;
                c.save(dir)?;
                Ok(c)
            }
        }
    }

    /// Writes the community's name, anchor, intermediate and the
    /// intermediate's key (owner-only) to `dir`. The root's key is not
    /// kept: new leaves come from the intermediate.
    ///
    /// # Errors
    /// [`UdapError::Config`] when a file cannot be written.
    pub fn save(&self, dir: &Path) -> Result<(), UdapError> {
        std::fs::create_dir_all(dir).map_err(cfg)?;
        write_private(
            &dir.join(INT_KEY_FILE),
            self.intermediate.key().serialize_pem().as_bytes(),
        )?;
        std::fs::write(dir.join(INT_FILE), &self.intermediate_pem).map_err(cfg)?;
        std::fs::write(dir.join(ANCHOR_FILE), &self.root_pem).map_err(cfg)?;
        std::fs::write(dir.join(NAME_FILE), &self.name).map_err(cfg)?;
        Ok(())
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
        Self::crl_by(&self.intermediate, serials, valid, 0)
    }

    /// A CRL from the intermediate revoking `serials`, issued `age` seconds
    /// earlier than [`DevCommunity::crl`] would be (an older list).
    ///
    /// # Errors
    /// [`UdapError::Config`] if signing fails.
    pub fn crl_older(&self, serials: &[u64], age: i64) -> Result<String, UdapError> {
        Self::crl_by(&self.intermediate, serials, Duration::days(1), age)
    }

    /// A CRL from the root (covering the intermediate) revoking nothing.
    ///
    /// # Errors
    /// [`UdapError::Config`] when this community was loaded from disk (the
    /// root's key is not kept) or signing fails.
    pub fn root_crl(&self) -> Result<String, UdapError> {
        let root = self
            .root
            .as_ref()
            .ok_or_else(|| UdapError::Config("the root key is not kept on disk".into()))?;
        Self::crl_by(root, &[], Duration::days(1), 0)
    }

    fn crl_by(
        issuer: &Issuer<'static, KeyPair>,
        serials: &[u64],
        valid: Duration,
        age: i64,
    ) -> Result<String, UdapError> {
        let now = OffsetDateTime::now_utc() - Duration::seconds(age);
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
        p.signed_by(issuer).map_err(cfg)?.pem().map_err(cfg)
    }
}
