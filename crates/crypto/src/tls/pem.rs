//! Loading certificates and keys from PEM files, with typed errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use zeroize::Zeroizing;

use super::TlsError;

/// Reads every certificate in a PEM file, in order (leaf first for a chain).
///
/// # Errors
///
/// [`TlsError::Read`] if the file cannot be read, [`TlsError::NoCertificate`]
/// if it holds no `CERTIFICATE` block, [`TlsError::Pem`] if one is malformed.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from_pem(&read(path)?, path)
}

/// As [`load_certs`], from bytes; `origin` names them in errors.
///
/// # Errors
///
/// [`TlsError::NoCertificate`] or [`TlsError::Pem`].
pub fn certs_from_pem(
    bytes: &[u8],
    origin: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: origin.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(origin.to_owned()));
    }
    Ok(certs)
}

/// Reads every certificate revocation list in a PEM file (`X509 CRL`
/// blocks), for [`super::ServerTls::client_crls`].
///
/// # Errors
///
/// [`TlsError::Read`], [`TlsError::NoCrl`] or [`TlsError::Pem`].
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls = CertificateRevocationListDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if crls.is_empty() {
        return Err(TlsError::NoCrl(path.to_owned()));
    }
    Ok(crls)
}

/// Reads the first private key (PKCS#8, SEC1 or PKCS#1) in a PEM file.
///
/// The file's text is wiped from memory once parsed. The key returned is
/// not wiped on drop: call its `zeroize` when done if you keep it (rustls's
/// providers take it by value, so a key given to them is not wiped).
///
/// # Errors
///
/// [`TlsError::Read`], [`TlsError::NoPrivateKey`] or [`TlsError::Pem`].
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from_pem(&read(path)?, path)
}

/// As [`load_key`], from bytes; `origin` names them in errors.
///
/// # Errors
///
/// [`TlsError::NoPrivateKey`] or [`TlsError::Pem`].
pub fn key_from_pem(bytes: &[u8], origin: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey(origin.to_owned()),
        other => TlsError::Pem {
            path: origin.to_owned(),
            reason: other.to_string(),
        },
    })
}

/// The file's bytes, wiped when dropped: a key file's PEM is the key.
fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Where a server's certificate chain and key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
}

/// Loads a chain and key into a [`CertifiedKey`] and checks them: the key
/// type is one the provider can sign with, the key matches the leaf
/// certificate, and the leaf is currently valid.
///
/// Expired (or not yet valid) certificates are an **error**, not a warning:
/// a server that starts with one fails every strict client, and a reload to
/// one would take the service down, so both are refused up front.
///
/// # Errors
///
/// Every [`TlsError`] of [`load_certs`] and [`load_key`], plus
/// [`TlsError::UnsupportedKey`], [`TlsError::KeyMismatch`],
/// [`TlsError::Expired`], [`TlsError::NotYetValid`] and
/// [`TlsError::BadCertificate`].
pub fn load_certified_key(
    paths: &CertPaths,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(&paths.cert)?;
    let key = load_key(&paths.key)?;
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::NoCertificate(paths.cert.clone()))?;
    check_validity(&paths.cert, leaf, SystemTime::now())?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::UnsupportedKey {
                path: paths.key.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Err(TlsError::UnsupportedKey {
                path: paths.key.clone(),
                reason: "cannot compare this key type with the certificate".into(),
            })
        }
        Err(_) => Err(TlsError::KeyMismatch {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
        }),
    }
}

/// Facts about a leaf certificate, for logs and for tests of reloading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The serial number, big-endian bytes as encoded.
    pub serial: Vec<u8>,
    /// The subject, as a string (RFC 4514 style).
    pub subject: String,
    /// The end of validity, in seconds since the Unix epoch.
    pub not_after: i64,
}

/// Parses the facts of a DER certificate.
///
/// # Errors
///
/// [`TlsError::BadCertificate`] if it is not a parsable X.509 certificate.
pub fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    Ok(CertInfo {
        serial: cert.raw_serial().to_vec(),
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// `t` in whole seconds since the Unix epoch, as certificates count time
/// (0 before the epoch).
pub(super) fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn check_validity(path: &Path, leaf: &CertificateDer<'_>, now: SystemTime) -> Result<(), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let now = unix_secs(now);
    let validity = cert.validity();
    if now > validity.not_after.timestamp() {
        return Err(TlsError::Expired {
            path: path.to_owned(),
            not_after: validity.not_after.to_string(),
        });
    }
    if now < validity.not_before.timestamp() {
        return Err(TlsError::NotYetValid {
            path: path.to_owned(),
            not_before: validity.not_before.to_string(),
        });
    }
    Ok(())
}
