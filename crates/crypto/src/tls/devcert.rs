//! A development PKI: a local CA, a server certificate for localhost, and a
//! client certificate for mTLS, made once and reused. Never for production.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use zeroize::Zeroizing;

use super::TlsError;
use super::pem::{CertPaths, load_certified_key, load_certs};

/// Leaves are reissued when they expire within this margin.
const RENEW_MARGIN: Duration = Duration::from_secs(7 * 24 * 3600);
const CA_DAYS: i64 = 365;
const LEAF_DAYS: i64 = 90;

/// The files of a development PKI in one directory. Keys are written with
/// mode 0600, atomically.
///
/// [`DevPki::load_or_create`] reuses what is there and valid: the CA (so
/// clients that trust it keep working) and the leaves (until a week before
/// they expire, and while they verify under the CA). Trust `ca_cert` in your
/// browser or `curl --cacert`: the CA can only name loopback (`localhost`,
/// `127.0.0.0/8`, `::1`, as name constraints), so for clients that enforce a
/// trust anchor's name constraints (webpki, OpenSSL, Chrome, Firefox, Go)
/// its key, which sits beside it, cannot vouch for any other site.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The directory.
    pub dir: PathBuf,
    /// The CA certificate (PEM): what clients trust.
    pub ca_cert: PathBuf,
    /// The CA private key (PEM, 0600).
    pub ca_key: PathBuf,
    /// Server certificate for `localhost`, `127.0.0.1` and `::1`, and its key.
    pub server: CertPaths,
    /// Client certificate (for mTLS) and its key.
    pub client: CertPaths,
}

impl DevPki {
    /// The file layout under `dir`, without touching the disk.
    pub fn paths(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let f = |name: &str| dir.join(name);
        Self {
            ca_cert: f("ca.pem"),
            ca_key: f("ca.key"),
            server: CertPaths {
                cert: f("server.pem"),
                key: f("server.key"),
            },
            client: CertPaths {
                cert: f("client.pem"),
                key: f("client.key"),
            },
            dir,
        }
    }

    /// Loads the PKI under `dir`, creating or renewing what is missing,
    /// invalid or about to expire.
    ///
    /// # Errors
    ///
    /// [`TlsError::Write`] if the directory or a file cannot be written,
    /// [`TlsError::Generate`] if generation fails.
    pub fn load_or_create(dir: impl Into<PathBuf>) -> Result<Self, TlsError> {
        let pki = Self::paths(dir);
        std::fs::create_dir_all(&pki.dir).map_err(|source| TlsError::Write {
            path: pki.dir.clone(),
            source,
        })?;
        let (ca, ca_der) = match pki.load_ca() {
            Some(ca) => ca,
            None => pki.create_ca()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        for (paths, leaf) in [(&pki.server, Leaf::Server), (&pki.client, Leaf::Client)] {
            if !usable(paths, &ca_der, leaf, &provider) {
                pki.issue(&ca, paths, leaf)?;
            }
        }
        Ok(pki)
    }

    /// Issues a fresh server certificate (new key, new serial) from this CA
    /// into `out`, e.g. to rotate the server certificate.
    ///
    /// # Errors
    ///
    /// [`TlsError::Generate`] if the CA cannot be loaded or signing fails;
    /// [`TlsError::Write`].
    pub fn issue_server_cert(&self, out: &CertPaths) -> Result<(), TlsError> {
        let (ca, _) = self
            .load_ca()
            .ok_or_else(|| TlsError::Generate("the development CA is missing or invalid".into()))?;
        self.issue(&ca, out, Leaf::Server)
    }

    /// Issues a client certificate from this CA into `out`.
    ///
    /// # Errors
    ///
    /// As [`DevPki::issue_server_cert`].
    pub fn issue_client_cert(&self, out: &CertPaths) -> Result<(), TlsError> {
        let (ca, _) = self
            .load_ca()
            .ok_or_else(|| TlsError::Generate("the development CA is missing or invalid".into()))?;
        self.issue(&ca, out, Leaf::Client)
    }

    /// The CA on disk, if it is still good: not about to expire, its key
    /// the key of its certificate (a crash between writing the two must not
    /// leave a CA whose leaves never verify), and limited to loopback names
    /// (a CA made before that limit is replaced).
    fn load_ca(&self) -> Option<(Issuer<'static, KeyPair>, CertificateDer<'static>)> {
        let certs = load_certs(&self.ca_cert).ok()?;
        let ca = certs.into_iter().next()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(ca.as_ref()).ok()?;
        if parsed.validity().not_after.timestamp() < now_unix() + RENEW_MARGIN.as_secs() as i64 {
            return None;
        }
        let pem = Zeroizing::new(std::fs::read_to_string(&self.ca_key).ok()?);
        let key = KeyPair::from_pem(&pem).ok()?;
        if !loopback_only(&parsed)
            || parsed.public_key().subject_public_key.data.as_ref() != key.der_bytes()
        {
            return None;
        }
        let issuer = Issuer::from_ca_cert_der(&ca, key).ok()?;
        Some((issuer, ca))
    }

    fn create_ca(&self) -> Result<(Issuer<'static, KeyPair>, CertificateDer<'static>), TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "careconnect development CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // Trusting this CA (as the demo suggests) must not let its key, which
        // sits in the data directory, vouch for any real site: it can only
        // name loopback.
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![
                GeneralSubtree::DnsName("localhost".into()),
                GeneralSubtree::IpAddress(CidrSubnet::V4([127, 0, 0, 0], [255, 0, 0, 0])),
                GeneralSubtree::IpAddress(CidrSubnet::V6(
                    std::net::Ipv6Addr::LOCALHOST.octets(),
                    [0xff; 16],
                )),
            ],
            excluded_subtrees: vec![],
        });
        params.serial_number = Some(random_serial());
        let (from, to) = window(CA_DAYS);
        params.not_before = from;
        params.not_after = to;
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        write_private(&self.ca_key, Zeroizing::new(key.serialize_pem()).as_bytes())?;
        write_private(&self.ca_cert, cert.pem().as_bytes())?;
        let der = cert.der().clone();
        Ok((Issuer::new(params, key), der))
    }

    fn issue(&self, ca: &Issuer<'_, KeyPair>, out: &CertPaths, leaf: Leaf) -> Result<(), TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        match leaf {
            Leaf::Server => {
                params
                    .distinguished_name
                    .push(DnType::CommonName, "localhost");
                params.subject_alt_names = vec![
                    SanType::DnsName("localhost".try_into().map_err(gen_err)?),
                    SanType::IpAddress([127, 0, 0, 1].into()),
                    SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
                ];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Leaf::Client => {
                params
                    .distinguished_name
                    .push(DnType::CommonName, "careconnect development client");
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let (from, to) = window(LEAF_DAYS);
        params.not_before = from;
        params.not_after = to;
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, ca).map_err(gen_err)?;
        // Key first: a reader that sees the new certificate finds its key.
        write_private(&out.key, Zeroizing::new(key.serialize_pem()).as_bytes())?;
        write_private(&out.cert, cert.pem().as_bytes())?;
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Leaf {
    Server,
    Client,
}

/// Whether the CA's name constraints are exactly the loopback ones
/// `DevPki::create_ca` writes: `localhost`, `127.0.0.0/8` and `::1`, nothing
/// excluded.
fn loopback_only(ca: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(nc)) = ca.name_constraints() else {
        return false;
    };
    let (Some(permitted), None) = (&nc.value.permitted_subtrees, &nc.value.excluded_subtrees)
    else {
        return false;
    };
    let mut v6 = [0xff; 32];
    v6[..16].copy_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    let expected: [&[u8]; 2] = [&[127, 0, 0, 0, 255, 0, 0, 0], &v6];
    permitted.len() == 3
        && permitted.iter().all(|t| match &t.base {
            GeneralName::DNSName(name) => *name == "localhost",
            GeneralName::IPAddress(ip) => expected.contains(ip),
            _ => false,
        })
        && expected.iter().all(|e| {
            permitted
                .iter()
                .any(|t| matches!(&t.base, GeneralName::IPAddress(ip) if ip == e))
        })
}

/// Whether the leaf at `paths` can stay: it loads with its key, is not about
/// to expire, and verifies under the CA `ca` for its use (a leaf of an
/// earlier CA does not).
fn usable(
    paths: &CertPaths,
    ca: &CertificateDer<'static>,
    leaf: Leaf,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> bool {
    let Ok(key) = load_certified_key(paths, provider) else {
        return false;
    };
    let Some((ee, rest)) = key.cert.split_first() else {
        return false;
    };
    let fresh = super::pem::cert_info(ee)
        .is_ok_and(|i| i.not_after >= now_unix() + RENEW_MARGIN.as_secs() as i64);
    let mut roots = rustls::RootCertStore::empty();
    if !fresh || roots.add(ca.clone()).is_err() {
        return false;
    }
    let (roots, now) = (Arc::new(roots), UnixTime::now());
    match leaf {
        Leaf::Server => {
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .is_ok_and(|v| {
                    ["localhost", "127.0.0.1", "::1"].iter().all(|name| {
                        ServerName::try_from(*name).is_ok_and(|name| {
                            v.verify_server_cert(ee, rest, &name, &[], now).is_ok()
                        })
                    })
                })
        }
        Leaf::Client => {
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .is_ok_and(|v| v.verify_client_cert(ee, rest, now).is_ok())
        }
    }
}

fn now_unix() -> i64 {
    super::pem::unix_secs(std::time::SystemTime::now())
}

/// From an hour ago (clock skew) to `days` from now.
fn window(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(days),
    )
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    crate::rng::fill_os(&mut b);
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    crate::fsutil::write_atomic(path, bytes).map_err(|source| TlsError::Write {
        path: path.to_owned(),
        source,
    })
}

fn gen_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Generate(e.to_string())
}
