//! rustls configurations that are safe by default (cargo feature `tls`, on by default).
//!
//! - **TLS 1.3 only**, with exactly the seed's suites that rustls offers, in
//!   this default order: `TLS13_AES_256_GCM_SHA384`,
//!   `TLS13_CHACHA20_POLY1305_SHA256`, `TLS13_AES_128_GCM_SHA256`. The seed also
//!   lists `TLS_AES_128_CCM_SHA256` and `TLS_AES_128_CCM_8_SHA256`; rustls
//!   implements neither, so a client offering only those cannot connect.
//! - The order is configurable ([`ServerTls::suites`]); anything outside
//!   the list is refused.
//! - TLS 1.2 only by the explicit [`ServerTls::allow_tls12`] /
//!   [`ClientTls::allow_tls12`], and then only ECDHE key exchange with AEAD
//!   suites (the only TLS 1.2 suites rustls's providers have), with the
//!   extended master secret (RFC 7627) required.
//! - **Key exchange**: with the `aws-lc` feature, the post-quantum hybrid
//!   `X25519MLKEM768` first, then `X25519`, `secp256r1` and `secp384r1`
//!   for classical clients ([`DEFAULT_GROUPS`]); without it the same list
//!   minus the hybrid (rustls's `ring` provider has no ML-KEM). Configurable
//!   ([`ServerTls::key_exchange`]); [`Negotiated`] tells the application
//!   what a connection settled on.
//! - **FIPS 140-3** (feature `fips`): `ServerTls::fips` / `ClientTls::fips`
//!   restrict to approved suites and groups on AWS-LC's validated module and
//!   refuse to build otherwise.
//! - ALPN `h2` and `http/1.1`.
//! - Client certificates (mTLS): [`ClientAuth::Off`], `Optional` or
//!   `Required`, verified against the trust anchors you give. After the
//!   handshake the verified chain is `ServerConnection::peer_certificates()`;
//!   [`cert_info`] turns its leaf into subject and serial. Revocation lists
//!   ([`ServerTls::client_crls`], [`load_crls`]) refuse revoked clients,
//!   failing closed; with client certificates on, sessions never resume.
//! - Certificates from PEM files with typed errors ([`load_certified_key`]),
//!   reloaded without restart ([`ReloadingCertResolver`]), and a development
//!   PKI for localhost ([`DevPki`]).
//!
//! ```
//! use careconnect_crypto::tls::{ClientAuth, DevPki, ServerTls, ClientTls};
//! # fn main() -> Result<(), careconnect_crypto::tls::TlsError> {
//! let dir = tempfile::tempdir().map_err(|e| careconnect_crypto::tls::TlsError::Config(e.to_string()))?;
//! let pki = DevPki::load_or_create(dir.path())?;
//! let (server, _resolver) = ServerTls::new().build_reloading(pki.server.clone())?;
//! assert_eq!(server.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
//! let client = ClientTls::new().trust_pem(&pki.ca_cert)?.build()?;
//! # let _ = (client, ClientAuth::Off);
//! # Ok(()) }
//! ```

mod devcert;
mod pem;
mod reload;

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::crypto::SupportedKxGroup;
use rustls::pki_types::CertificateRevocationListDer;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::{
    CipherSuite, ClientConfig, NamedGroup, ProtocolVersion, RootCertStore, ServerConfig,
    SupportedCipherSuite,
};

pub use self::devcert::DevPki;
pub use self::pem::{
    CertInfo, CertPaths, cert_info, certs_from_pem, key_from_pem, load_certified_key, load_certs,
    load_crls, load_key,
};
pub use self::reload::{EXPIRY_WARNING, ReloadingCertResolver};

/// The seed's TLS 1.3 suites that rustls offers, in the default preference order.
pub const SEED_SUITES: [CipherSuite; 3] = [
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS13_AES_128_GCM_SHA256,
];

/// Key-exchange groups offered and accepted by default, in preference order:
/// the post-quantum hybrid first when the `aws-lc` feature provides it,
/// then classical groups for clients without it.
#[cfg(feature = "aws-lc")]
pub const DEFAULT_GROUPS: &[NamedGroup] = &[
    NamedGroup::X25519MLKEM768,
    NamedGroup::X25519,
    NamedGroup::secp256r1,
    NamedGroup::secp384r1,
];
/// Key-exchange groups offered and accepted by default, in preference order
/// (the `aws-lc` feature adds the post-quantum hybrid `X25519MLKEM768` first).
#[cfg(not(feature = "aws-lc"))]
pub const DEFAULT_GROUPS: &[NamedGroup] = &[
    NamedGroup::X25519,
    NamedGroup::secp256r1,
    NamedGroup::secp384r1,
];

/// The TLS 1.3 suites of [`ServerTls::fips`]: the seed's AES-GCM suites
/// (ChaCha20-Poly1305 is not a FIPS 140-3 approved algorithm).
#[cfg(feature = "fips")]
pub const FIPS_SUITES: [CipherSuite; 2] = [
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_AES_128_GCM_SHA256,
];

/// The key-exchange groups of [`ServerTls::fips`]: the hybrid first (approved
/// under SP 800-56C because ML-KEM-768 comes first in it), then P-256 and
/// P-384 (X25519 is not approved).
#[cfg(feature = "fips")]
pub const FIPS_GROUPS: [NamedGroup; 3] = [
    NamedGroup::X25519MLKEM768,
    NamedGroup::secp256r1,
    NamedGroup::secp384r1,
];

/// Every group a configuration may name: [`DEFAULT_GROUPS`]. Others (plain
/// ML-KEM, finite-field groups) are refused with [`TlsError::UnsupportedGroup`].
fn allowed_group(g: NamedGroup) -> bool {
    DEFAULT_GROUPS.contains(&g)
}

/// ALPN protocols offered and accepted, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// What went wrong setting up TLS. Paths are named; key bytes never are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no PEM `CERTIFICATE` block.
    #[error("no certificate in {0}")]
    NoCertificate(std::path::PathBuf),
    /// The file holds no PEM private key.
    #[error("no private key in {0}")]
    NoPrivateKey(std::path::PathBuf),
    /// The file holds no PEM certificate revocation list.
    #[error("no revocation list in {0}")]
    NoCrl(std::path::PathBuf),
    /// A PEM block is malformed.
    #[error("malformed PEM in {path}: {reason}")]
    Pem {
        /// The file.
        path: std::path::PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The private key is of a type the provider cannot sign with.
    #[error("unsupported private key in {path}: {reason}")]
    UnsupportedKey {
        /// The key file.
        path: std::path::PathBuf,
        /// What the provider said.
        reason: String,
    },
    /// The private key does not belong to the leaf certificate.
    #[error("the key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// The key file.
        key: std::path::PathBuf,
    },
    /// The leaf certificate has expired.
    #[error("the certificate in {path} expired at {not_after}")]
    Expired {
        /// The certificate file.
        path: std::path::PathBuf,
        /// Its notAfter.
        not_after: String,
    },
    /// The leaf certificate is not valid yet.
    #[error("the certificate in {path} is not valid before {not_before}")]
    NotYetValid {
        /// The certificate file.
        path: std::path::PathBuf,
        /// Its notBefore.
        not_before: String,
    },
    /// A certificate is not parsable X.509.
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    /// A cipher suite outside [`SEED_SUITES`] (or the TLS 1.2 AEAD suites when allowed).
    #[error("cipher suite {0} is not allowed")]
    UnsupportedSuite(String),
    /// A configuration asked for FIPS mode ([`ServerTls::fips`]) is not a
    /// FIPS configuration: a suite or group outside the approved lists, or
    /// the FIPS module failed its power-on self tests.
    #[error("not a FIPS 140-3 configuration: {0}")]
    NotFips(&'static str),
    /// A key-exchange group outside [`DEFAULT_GROUPS`], or none at all.
    #[error("key exchange group {0} is not allowed")]
    UnsupportedGroup(String),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Config(String),
    /// Generating a development certificate failed.
    #[error("certificate generation: {0}")]
    Generate(String),
}

/// Client-certificate authentication on a server. With it on, sessions never
/// resume, so every connection's certificate is verified (and, with
/// [`ServerTls::client_crls`], checked for revocation) in its own handshake.
#[derive(Debug, Clone, Default)]
pub enum ClientAuth {
    /// No client certificates are requested.
    #[default]
    Off,
    /// Requested; a client without one connects anonymously, a client with
    /// one not chaining to these anchors is refused.
    Optional(Vec<rustls::pki_types::CertificateDer<'static>>),
    /// Required, chaining to these trust anchors.
    Required(Vec<rustls::pki_types::CertificateDer<'static>>),
}

impl ClientAuth {
    /// [`ClientAuth::Required`] with the anchors in a PEM file.
    ///
    /// # Errors
    ///
    /// As [`load_certs`].
    pub fn required_from_pem(path: &Path) -> Result<Self, TlsError> {
        Ok(Self::Required(load_certs(path)?))
    }

    /// [`ClientAuth::Optional`] with the anchors in a PEM file.
    ///
    /// # Errors
    ///
    /// As [`load_certs`].
    pub fn optional_from_pem(path: &Path) -> Result<Self, TlsError> {
        Ok(Self::Optional(load_certs(path)?))
    }
}

/// rustls's provider underneath: aws-lc-rs (with ML-KEM) under the `aws-lc`
/// feature, ring otherwise.
fn base_provider() -> CryptoProvider {
    #[cfg(feature = "aws-lc")]
    {
        rustls::crypto::aws_lc_rs::default_provider()
    }
    #[cfg(not(feature = "aws-lc"))]
    {
        rustls::crypto::ring::default_provider()
    }
}

/// The rustls provider with exactly `suites` (checked against the allowed
/// list) plus, if `tls12`, the provider's TLS 1.2 suites (all ECDHE + AEAD),
/// and exactly `groups` (checked against [`DEFAULT_GROUPS`]).
fn provider(
    suites: &[CipherSuite],
    tls12: bool,
    groups: &[NamedGroup],
) -> Result<Arc<CryptoProvider>, TlsError> {
    let base = base_provider();
    let mut chosen: Vec<SupportedCipherSuite> = Vec::new();
    for s in suites {
        if !SEED_SUITES.contains(s) {
            return Err(TlsError::UnsupportedSuite(format!("{s:?}")));
        }
        let found = base
            .cipher_suites
            .iter()
            .find(|c| c.suite() == *s)
            .ok_or_else(|| TlsError::UnsupportedSuite(format!("{s:?}")))?;
        if !chosen.iter().any(|c| c.suite() == *s) {
            chosen.push(*found);
        }
    }
    if chosen.is_empty() {
        return Err(TlsError::UnsupportedSuite("(none)".into()));
    }
    if tls12 {
        chosen.extend(
            base.cipher_suites
                .iter()
                .filter(|c| c.version() == &rustls::version::TLS12),
        );
    }
    let mut kx: Vec<&'static dyn SupportedKxGroup> = Vec::new();
    for g in groups {
        let found = all_kx_groups()
            .iter()
            .find(|k| k.name() == *g)
            .filter(|_| allowed_group(*g))
            .ok_or_else(|| TlsError::UnsupportedGroup(format!("{g:?}")))?;
        if !kx.iter().any(|k| k.name() == *g) {
            kx.push(*found);
        }
    }
    if kx.is_empty() {
        return Err(TlsError::UnsupportedGroup("(none)".into()));
    }
    Ok(Arc::new(CryptoProvider {
        cipher_suites: chosen,
        kx_groups: kx,
        ..base
    }))
}

fn all_kx_groups() -> &'static [&'static dyn SupportedKxGroup] {
    #[cfg(feature = "aws-lc")]
    {
        rustls::crypto::aws_lc_rs::ALL_KX_GROUPS
    }
    #[cfg(not(feature = "aws-lc"))]
    {
        rustls::crypto::ring::ALL_KX_GROUPS
    }
}

/// The build step of a `fips()` configuration: rustls must report it FIPS.
fn fips_or_refuse(is_fips: bool) -> Result<(), TlsError> {
    if is_fips {
        Ok(())
    } else {
        Err(TlsError::NotFips(
            "a suite or group is not approved, or the module is not in FIPS mode",
        ))
    }
}

/// What a TLS connection settled on, for the application to show or log
/// (never secret). From any rustls connection once its handshake is done:
///
/// ```
/// # use careconnect_crypto::tls::Negotiated;
/// # fn show(conn: &rustls::ServerConnection) {
/// if let Some(n) = Negotiated::of(conn) {
///     println!("{n}"); // e.g. "TLS 1.3, X25519MLKEM768, TLS13_AES_256_GCM_SHA384"
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The protocol version.
    pub version: ProtocolVersion,
    /// The cipher suite.
    pub suite: CipherSuite,
    /// The key-exchange group (`None` only on a resumed TLS 1.2 session).
    pub group: Option<NamedGroup>,
}

impl Negotiated {
    /// What `conn` negotiated; `None` before its handshake settled.
    pub fn of(conn: &rustls::CommonState) -> Option<Self> {
        Some(Self {
            version: conn.protocol_version()?,
            suite: conn.negotiated_cipher_suite()?.suite(),
            group: conn.negotiated_key_exchange_group().map(|g| g.name()),
        })
    }

    /// Whether the key exchange resists a quantum computer recording the
    /// traffic today (a hybrid with ML-KEM).
    pub fn is_post_quantum(&self) -> bool {
        matches!(
            self.group,
            Some(NamedGroup::X25519MLKEM768 | NamedGroup::secp256r1MLKEM768)
        )
    }
}

impl std::fmt::Display for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            ProtocolVersion::TLSv1_3 => f.write_str("TLS 1.3")?,
            ProtocolVersion::TLSv1_2 => f.write_str("TLS 1.2")?,
            v => write!(f, "{v:?}")?,
        }
        if let Some(g) = self.group {
            write!(f, ", {g:?}")?;
        }
        write!(f, ", {:?}", self.suite)
    }
}

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS13_AND_12: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if tls12 { &TLS13_AND_12 } else { &TLS13_ONLY }
}

fn roots(
    anchors: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for a in anchors {
        store
            .add(a.clone())
            .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    }
    Ok(store)
}

/// Refuses two revocation lists from one issuer, and lists that do not parse.
fn one_list_per_issuer(crls: &[CertificateRevocationListDer<'_>]) -> Result<(), TlsError> {
    let mut issuers = std::collections::HashSet::new();
    for crl in crls {
        let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref())
            .map_err(|e| TlsError::Config(format!("revocation list: {e}")))?;
        if !issuers.insert(parsed.tbs_cert_list.issuer.as_raw().to_vec()) {
            return Err(TlsError::Config(format!(
                "two revocation lists for {}: give only the newest",
                parsed.tbs_cert_list.issuer
            )));
        }
    }
    Ok(())
}

/// Builds a rustls [`ServerConfig`]. Defaults: TLS 1.3, [`SEED_SUITES`] in
/// order, [`DEFAULT_GROUPS`] in order, [`ALPN`], no client certificates.
#[derive(Debug, Clone)]
pub struct ServerTls {
    suites: Vec<CipherSuite>,
    groups: Vec<NamedGroup>,
    fips: bool,
    tls12: bool,
    client_auth: ClientAuth,
    client_crls: Vec<CertificateRevocationListDer<'static>>,
    alpn: Vec<Vec<u8>>,
}

impl Default for ServerTls {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerTls {
    /// The safe defaults.
    pub fn new() -> Self {
        Self {
            suites: SEED_SUITES.to_vec(),
            groups: DEFAULT_GROUPS.to_vec(),
            fips: false,
            tls12: false,
            client_auth: ClientAuth::Off,
            client_crls: Vec::new(),
            alpn: ALPN.iter().map(|p| p.to_vec()).collect(),
        }
    }

    /// Revocation lists for client certificates ([`ClientAuth`]), one per
    /// issuer (the build refuses two: the verifier would consult only the
    /// first, and an older list could hide a revocation). A client whose
    /// certificate a list revokes is refused. With lists given, the check
    /// fails closed: a certificate of the chain whose issuer has no list, or
    /// whose list is past its next update, is refused too. Lists are read at
    /// build: build again with each new list, before the old one's next
    /// update, or every client is refused.
    #[must_use]
    pub fn client_crls(mut self, crls: Vec<CertificateRevocationListDer<'static>>) -> Self {
        self.client_crls = crls;
        self
    }

    /// ALPN protocols to accept, in preference order (default [`ALPN`]).
    /// Offer only what the application speaks: a server without HTTP/2
    /// passes `&[b"http/1.1"]`.
    #[must_use]
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// The TLS 1.3 suites, in the server's preference order; each must be in
    /// [`SEED_SUITES`] (checked by the build).
    #[must_use]
    pub fn suites(mut self, suites: &[CipherSuite]) -> Self {
        self.suites = suites.to_vec();
        self
    }

    /// The key-exchange groups, in the server's preference order; each must
    /// be in [`DEFAULT_GROUPS`] (checked by the build). A server that must
    /// refuse classical clients passes `&[NamedGroup::X25519MLKEM768]`.
    #[must_use]
    pub fn key_exchange(mut self, groups: &[NamedGroup]) -> Self {
        self.groups = groups.to_vec();
        self
    }

    /// FIPS 140-3 mode (cargo feature `fips`, which links AWS-LC's validated
    /// module): TLS 1.3 only (with [`ServerTls::allow_tls12`] the build
    /// fails: its ChaCha20 suites are not approved), [`FIPS_SUITES`] and
    /// [`FIPS_GROUPS`], and the build fails with
    /// [`TlsError::NotFips`] unless rustls reports the configuration as FIPS
    /// (every suite, group, signature algorithm and the random source from
    /// the module, which passed its self tests). Set suites or groups after
    /// this only to narrow them.
    #[cfg(feature = "fips")]
    #[must_use]
    pub fn fips(mut self) -> Self {
        self.suites = FIPS_SUITES.to_vec();
        self.groups = FIPS_GROUPS.to_vec();
        self.fips = true;
        self
    }

    /// Also accept TLS 1.2, with ECDHE + AEAD suites only. For old clients
    /// that cannot be upgraded; leave off otherwise.
    #[must_use]
    pub fn allow_tls12(mut self) -> Self {
        self.tls12 = true;
        self
    }

    /// Client-certificate authentication.
    #[must_use]
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = auth;
        self
    }

    /// Builds the configuration around a certificate resolver.
    ///
    /// # Errors
    ///
    /// [`TlsError::UnsupportedSuite`], [`TlsError::Config`], or a bad trust anchor.
    pub fn build(
        &self,
        resolver: Arc<dyn ResolvesServerCert>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        self.build_with(resolver, provider(&self.suites, self.tls12, &self.groups)?)
    }

    fn build_with(
        &self,
        resolver: Arc<dyn ResolvesServerCert>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions(self.tls12))
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_auth {
            ClientAuth::Off => builder.with_no_client_auth(),
            ClientAuth::Optional(anchors) | ClientAuth::Required(anchors) => {
                let mut v = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(anchors)?),
                    provider,
                );
                if matches!(self.client_auth, ClientAuth::Optional(_)) {
                    v = v.allow_unauthenticated();
                }
                if !self.client_crls.is_empty() {
                    one_list_per_issuer(&self.client_crls)?;
                    v = v
                        .with_crls(self.client_crls.iter().cloned())
                        .enforce_revocation_expiration();
                }
                builder.with_client_cert_verifier(
                    v.build().map_err(|e| TlsError::Config(e.to_string()))?,
                )
            }
        };
        let mut config = builder.with_cert_resolver(resolver);
        if !matches!(self.client_auth, ClientAuth::Off) {
            // A resumed session keeps the identity it was made with, without
            // the certificate (or its revocation) being checked again: with
            // client certificates, every connection is a full handshake.
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        config.alpn_protocols = self.alpn.clone();
        config.ignore_client_order = true;
        // TLS 1.2, where allowed, only with the extended master secret
        // (RFC 7627): without it a man in the middle can synchronise two
        // sessions' keys (the triple handshake attack).
        config.require_ems = self.tls12 || self.fips;
        if self.fips {
            fips_or_refuse(config.fips())?;
        }
        Ok(Arc::new(config))
    }

    /// Builds the configuration serving the certificate at `paths`, with a
    /// [`ReloadingCertResolver`] returned for reloads.
    ///
    /// # Errors
    ///
    /// As [`load_certified_key`] and [`ServerTls::build`].
    pub fn build_reloading(
        &self,
        paths: CertPaths,
    ) -> Result<(Arc<ServerConfig>, Arc<ReloadingCertResolver>), TlsError> {
        let provider = provider(&self.suites, self.tls12, &self.groups)?;
        let resolver = ReloadingCertResolver::new(paths, Arc::clone(&provider))?;
        let config = self.build_with(
            Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>,
            provider,
        )?;
        Ok((config, resolver))
    }

    /// The provider this builder would use (for tests and benchmarks).
    ///
    /// # Errors
    ///
    /// [`TlsError::UnsupportedSuite`].
    pub fn crypto_provider(&self) -> Result<Arc<CryptoProvider>, TlsError> {
        provider(&self.suites, self.tls12, &self.groups)
    }
}

/// Builds a rustls [`ClientConfig`] that trusts only the anchors given.
#[derive(Debug, Clone)]
pub struct ClientTls {
    suites: Vec<CipherSuite>,
    groups: Vec<NamedGroup>,
    fips: bool,
    tls12: bool,
    anchors: Vec<rustls::pki_types::CertificateDer<'static>>,
    client_cert: Option<CertPaths>,
}

impl Default for ClientTls {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientTls {
    /// TLS 1.3, [`SEED_SUITES`], [`DEFAULT_GROUPS`], no anchors yet.
    pub fn new() -> Self {
        Self {
            suites: SEED_SUITES.to_vec(),
            groups: DEFAULT_GROUPS.to_vec(),
            fips: false,
            tls12: false,
            anchors: Vec::new(),
            client_cert: None,
        }
    }

    /// Offer only these suites, in this order.
    #[must_use]
    pub fn suites(mut self, suites: &[CipherSuite]) -> Self {
        self.suites = suites.to_vec();
        self
    }

    /// Offer only these key-exchange groups, in this order (each in
    /// [`DEFAULT_GROUPS`]). The first one gets a key share in the hello.
    #[must_use]
    pub fn key_exchange(mut self, groups: &[NamedGroup]) -> Self {
        self.groups = groups.to_vec();
        self
    }

    /// FIPS 140-3 mode, as [`ServerTls::fips`].
    #[cfg(feature = "fips")]
    #[must_use]
    pub fn fips(mut self) -> Self {
        self.suites = FIPS_SUITES.to_vec();
        self.groups = FIPS_GROUPS.to_vec();
        self.fips = true;
        self
    }

    /// Also speak TLS 1.2 (ECDHE + AEAD).
    #[must_use]
    pub fn allow_tls12(mut self) -> Self {
        self.tls12 = true;
        self
    }

    /// Trusts the certificates in a PEM file.
    ///
    /// # Errors
    ///
    /// As [`load_certs`].
    pub fn trust_pem(mut self, path: &Path) -> Result<Self, TlsError> {
        self.anchors.extend(load_certs(path)?);
        Ok(self)
    }

    /// Presents this client certificate (mTLS).
    #[must_use]
    pub fn client_cert(mut self, paths: CertPaths) -> Self {
        self.client_cert = Some(paths);
        self
    }

    /// Builds the configuration.
    ///
    /// # Errors
    ///
    /// [`TlsError::Config`] with no trust anchors; suite, anchor and
    /// client-certificate errors.
    pub fn build(&self) -> Result<Arc<ClientConfig>, TlsError> {
        if self.anchors.is_empty() {
            return Err(TlsError::Config(
                "a client needs at least one trust anchor".into(),
            ));
        }
        let provider = provider(&self.suites, self.tls12, &self.groups)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(&self.anchors)?),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions(self.tls12))
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_webpki_verifier(verifier);
        let mut config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some(paths) => {
                let key = load_certified_key(paths, &provider)?;
                builder
                    .with_client_auth_cert(key.cert.clone(), load_key(&paths.key)?)
                    .map_err(|e| TlsError::Config(e.to_string()))?
            }
        };
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // As on the server: TLS 1.2 only with the extended master secret.
        config.require_ems = self.tls12 || self.fips;
        if self.fips {
            fips_or_refuse(config.fips())?;
        }
        Ok(Arc::new(config))
    }
}
