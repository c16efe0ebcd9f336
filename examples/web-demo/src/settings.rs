//! What the demo runs on: a TOML settings file, command-line flags and
//! environment variables, over embedded defaults (SQLite, local KMS, the
//! development OpenID issuer, a development certificate, all under one data
//! directory).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use careconnect::core::config::ClinicFile;
use serde::Deserialize;

/// The largest upload limit accepted (1 GiB).
pub const MAX_UPLOAD_LIMIT: u64 = 1 << 30;

/// The settings file (`--config FILE`). Every table is optional.
///
/// ```toml
/// listen = "0.0.0.0:8443"
/// public_url = "https://clinic.example"
/// role_rules = "/etc/careconnect/roles.toml"
///
/// [clinic]                      # careconnect_core::config::ClinicFile
/// data_dir = "/var/lib/careconnect"
/// storage_url = "postgres://careconnect@db.internal/careconnect"
/// blobs_url = "s3://clinic-documents/medicloud"
/// [clinic.kms]
/// kind = "aws"
/// region = "eu-west-2"
///
/// [tls]                         # default: a development certificate
/// cert = "/etc/careconnect/tls/cert.pem"
/// key = "/etc/careconnect/tls/key.pem"
///
/// [oidc]                        # default: the built-in development issuer
/// issuer = "https://accounts.google.com"
/// client_id = "1234.apps.googleusercontent.com"
/// # the secret comes from CARECONNECT_OIDC_CLIENT_SECRET, never from this file
///
/// [udap]                        # default: a development community under data_dir/udap
/// scopes = ["system/Patient.read", "system/Appointment.read"]
/// [[udap.community]]            # one or more; the first is the default
/// name = "urn:example:community"
/// anchors = "/etc/careconnect/udap/anchors.pem"
/// intermediates = "/etc/careconnect/udap/intermediates.pem"
/// crls = ["/etc/careconnect/udap/intermediate.crl"]
/// cert = "/etc/careconnect/udap/server-chain.pem"   # SAN URI = public_url
/// key = "/etc/careconnect/udap/server-key.pem"
///
/// [limits]                      # what one client may hold (defaults shown)
/// request_secs = 30
/// body_idle_secs = 10
/// idle_secs = 60
/// connections_per_client = 256
/// uploads_per_user = 2
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    /// Where to listen.
    pub listen: Option<SocketAddr>,
    /// The URL browsers use (default `https://` and `listen`).
    pub public_url: Option<String>,
    /// Role rules (TOML, `careconnect_authz::mapper::RoleMapper`).
    pub role_rules: Option<PathBuf>,
    /// Seed the demo clinic's people and data (default: only with the
    /// development issuer).
    pub seed: Option<bool>,
    /// Where the development issuer listens (default `127.0.0.1:8444`).
    pub dev_issuer: Option<SocketAddr>,
    /// Largest Medicloud upload in bytes (default 25 MiB, at most 1 GiB).
    pub max_upload_bytes: Option<u64>,
    /// Allow the development issuer (which signs anyone in as anyone)
    /// over a database or KMS that is not the embedded one.
    pub dev_issuer_with_real_data: Option<bool>,
    /// Allow the development UDAP community (whose intermediate key sits in
    /// the data directory: whoever reads it can mint members) over a
    /// database or KMS that is not the embedded one, when `[udap]` names no
    /// community.
    pub dev_udap_with_real_data: Option<bool>,
    /// The clinic's stores and KMS.
    pub clinic: Option<ClinicFile>,
    /// The server certificate.
    pub tls: Option<TlsFile>,
    /// A real OpenID provider.
    pub oidc: Option<OidcFile>,
    /// UDAP trust communities and scopes.
    pub udap: Option<crate::udap::UdapFile>,
    /// Deadlines and per-client caps.
    pub limits: Option<Limits>,
}

/// Deadlines and per-client caps: what one slow, idle or greedy client can
/// hold. Every field has a default (`[limits]` in the settings file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Seconds a request may take, body included, before its answer
    /// starts: `408` past it (uploads, which stream for as long as data
    /// keeps coming, excepted).
    pub request_secs: u64,
    /// Seconds a request body may go without a byte arriving, on every
    /// route, uploads included.
    pub body_idle_secs: u64,
    /// Seconds a connection may stay open with no new request (HTTP/2
    /// answers pings, so it needs its own; requests in flight finish).
    pub idle_secs: u64,
    /// Connections open at once from one client address (an IPv6 address
    /// counts by its /64); more are closed on accept. Clients behind one
    /// NAT share it.
    pub connections_per_client: usize,
    /// Uploads in progress at once per signed-in user (the server takes
    /// 16 in all).
    pub uploads_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_secs: 30,
            body_idle_secs: 10,
            idle_secs: 60,
            connections_per_client: 256,
            uploads_per_user: 2,
        }
    }
}

impl Limits {
    /// Checks that every limit is usable.
    ///
    /// # Errors
    /// A zero, or a deadline over an hour.
    pub fn validate(&self) -> Result<()> {
        let secs = [self.request_secs, self.body_idle_secs, self.idle_secs];
        if secs.iter().any(|s| *s == 0 || *s > 3600) {
            bail!("[limits] deadlines must be 1 to 3600 seconds");
        }
        if self.connections_per_client == 0 || self.uploads_per_user == 0 {
            bail!("[limits] caps must be at least 1");
        }
        Ok(())
    }
}

/// A certificate and key in PEM files (reloaded when they change).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// A real OpenID provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcFile {
    /// The issuer URL, exactly as the provider names itself.
    pub issuer: String,
    /// This application's client id there.
    pub client_id: String,
    /// Extra trust anchors for a provider with a private CA.
    pub ca_pem: Option<PathBuf>,
}

/// Everything the demo needs to start. Its Debug output leaves the client
/// secret out.
#[derive(Clone)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The origin browsers use, without a trailing slash.
    pub public_url: String,
    /// The clinic.
    pub clinic: ClinicFile,
    /// Role rules text.
    pub role_rules: String,
    /// Seed demo data.
    pub seed: bool,
    /// Where the development issuer listens (when `oidc` is `None`).
    pub dev_issuer: SocketAddr,
    /// Largest Medicloud upload in bytes (`None`: the clinic's default).
    pub max_upload_bytes: Option<u64>,
    /// See [`SettingsFile::dev_issuer_with_real_data`].
    pub dev_issuer_with_real_data: bool,
    /// See [`SettingsFile::dev_udap_with_real_data`].
    pub dev_udap_with_real_data: bool,
    /// The certificate (`None`: a development certificate under the data
    /// directory).
    pub tls: Option<TlsFile>,
    /// A real provider and its client secret (`None`: the development
    /// issuer).
    pub oidc: Option<(OidcFile, Option<String>)>,
    /// UDAP communities (`None`: a development community under the data
    /// directory).
    pub udap: Option<crate::udap::UdapFile>,
    /// Deadlines and per-client caps.
    pub limits: Limits,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("clinic", &self.clinic)
            .field("seed", &self.seed)
            .field("dev_issuer", &self.dev_issuer)
            .field("tls", &self.tls)
            .field("oidc", &self.oidc.as_ref().map(|(o, _)| o))
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The embedded defaults under `data_dir`, listening on `listen`.
    pub fn embedded(data_dir: &Path, listen: SocketAddr) -> Self {
        Self {
            listen,
            public_url: format!("https://{listen}"),
            clinic: ClinicFile::at(data_dir),
            role_rules: String::new(),
            seed: true,
            dev_issuer: SocketAddr::from(([127, 0, 0, 1], 8444)),
            max_upload_bytes: None,
            dev_issuer_with_real_data: false,
            dev_udap_with_real_data: false,
            tls: None,
            oidc: None,
            udap: None,
            limits: Limits::default(),
        }
    }

    /// Settings from a file's text over the embedded defaults; `data_dir`
    /// is used when the file names no clinic.
    ///
    /// # Errors
    ///
    /// A file that does not parse; unreadable role rules or CA files.
    pub fn from_file(text: &str, data_dir: &Path) -> Result<Self> {
        let file: SettingsFile = toml::from_str(text).context("settings file")?;
        let listen = file
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)));
        let mut s = Self::embedded(data_dir, listen);
        if let Some(url) = file.public_url {
            s.public_url = url;
        }
        if let Some(clinic) = file.clinic {
            s.clinic = clinic;
        }
        if let Some(path) = file.role_rules {
            s.role_rules = std::fs::read_to_string(&path)
                .with_context(|| format!("reading role rules {}", path.display()))?;
        }
        if let Some(addr) = file.dev_issuer {
            s.dev_issuer = addr;
        }
        s.max_upload_bytes = file.max_upload_bytes;
        s.dev_issuer_with_real_data = file.dev_issuer_with_real_data.unwrap_or(false);
        s.dev_udap_with_real_data = file.dev_udap_with_real_data.unwrap_or(false);
        s.tls = file.tls;
        s.seed = file.seed.unwrap_or(file.oidc.is_none());
        s.oidc = file.oidc.map(|o| (o, None));
        s.udap = file.udap;
        s.limits = file.limits.unwrap_or_default();
        Ok(s)
    }

    /// Checks what cannot work, before anything starts.
    ///
    /// # Errors
    ///
    /// A public URL that is not an https origin.
    pub fn validate(&self) -> Result<()> {
        let ok = self.public_url.starts_with("https://")
            && !self.public_url.ends_with('/')
            && self.public_url[8..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
        if !ok {
            bail!(
                "public_url must be an https origin without a path (got {})",
                self.public_url
            );
        }
        if self.public_url != self.public_url.to_ascii_lowercase()
            || self.public_url.ends_with(":443")
            || self.public_url.starts_with("https://0.0.0.0")
            || self.public_url.starts_with("https://[::]")
        {
            bail!(
                "public_url must be the origin browsers send: lower case, no :443, not an unspecified address (got {}; set --public-url)",
                self.public_url
            );
        }
        if self
            .max_upload_bytes
            .is_some_and(|n| n == 0 || n > MAX_UPLOAD_LIMIT)
        {
            bail!("max_upload_bytes must be between 1 and {MAX_UPLOAD_LIMIT}");
        }
        self.limits.validate()?;
        let loopback_issuer = self.oidc.as_ref().is_none_or(|(o, _)| {
            o.issuer.starts_with("http://127.0.0.1:") || o.issuer.starts_with("http://localhost:")
        });
        if self.seed && !loopback_issuer {
            bail!(
                "seed = true gives the demo users' subjects roles; only with a development issuer on loopback, never at a real provider"
            );
        }
        let real_data = self
            .clinic
            .storage_url
            .as_deref()
            .is_some_and(|u| !u.starts_with("sqlite:"))
            || !matches!(self.clinic.kms, careconnect::core::config::KmsFile::Local);
        if self.oidc.is_none() && real_data && !self.dev_issuer_with_real_data {
            bail!(
                "the development issuer signs anyone in as anyone: configure [oidc] for a shared database or KMS (or set dev_issuer_with_real_data = true for a test)"
            );
        }
        let dev_udap = self.udap.as_ref().is_none_or(|u| u.community.is_empty());
        if dev_udap && real_data && !self.dev_udap_with_real_data {
            bail!(
                "the development UDAP community's CA key sits in the data directory (whoever reads it can register apps): configure [[udap.community]] for a shared database or KMS (or set dev_udap_with_real_data = true for a test)"
            );
        }
        Ok(())
    }

    /// Where the development UDAP community lives.
    pub fn dev_udap_dir(&self) -> PathBuf {
        self.clinic.data_dir.join("udap")
    }

    /// Where the development certificate lives.
    pub fn dev_tls_dir(&self) -> PathBuf {
        self.clinic.data_dir.join("tls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_the_defaults() {
        let s = Settings::from_file(
            r#"
            listen = "127.0.0.1:9443"
            [clinic]
            data_dir = "/tmp/clinic"
            storage_url = "postgres://x@127.0.0.1/test"
            [oidc]
            issuer = "https://accounts.google.com"
            client_id = "abc"
            [[udap.community]]
            name = "urn:example:community"
            anchors = "/etc/anchors.pem"
            cert = "/etc/server.pem"
            key = "/etc/server-key.pem"
            "#,
            Path::new("data"),
        )
        .unwrap();
        assert_eq!(s.public_url, "https://127.0.0.1:9443");
        assert_eq!(
            s.clinic.storage_url.as_deref(),
            Some("postgres://x@127.0.0.1/test")
        );
        assert!(!s.seed, "no demo data for a real issuer unless asked");
        assert!(s.validate().is_ok());
    }

    #[test]
    fn unknown_fields_and_bad_urls_are_refused() {
        assert!(Settings::from_file("lisen = \"1\"", Path::new("d")).is_err());
        let mut s = Settings::embedded(Path::new("d"), "127.0.0.1:1".parse().unwrap());
        for bad in [
            "http://x",
            "https://x/",
            "https://x/path",
            "https://a\"b",
            "https://Clinic.example",
            "https://clinic.example:443",
            "https://0.0.0.0:8443",
        ] {
            s.public_url = bad.into();
            assert!(s.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn demo_users_and_the_dev_issuer_stay_away_from_real_data() {
        let google = "[oidc]\nissuer = \"https://accounts.google.com\"\nclient_id = \"abc\"\n";
        let s = Settings::from_file(&format!("seed = true\n{google}"), Path::new("d")).unwrap();
        assert!(s.validate().is_err(), "demo roles at a real provider");
        let s = Settings::from_file(
            "[clinic]\ndata_dir = \"d\"\nstorage_url = \"postgres://x@db/clinic\"\n",
            Path::new("d"),
        )
        .unwrap();
        assert!(
            s.validate().is_err(),
            "the dev issuer over a shared database"
        );
        let s = Settings::from_file(
            "dev_issuer_with_real_data = true\n[clinic]\ndata_dir = \"d\"\nstorage_url = \"postgres://x@db/clinic\"\n",
            Path::new("d"),
        )
        .unwrap();
        assert!(
            s.validate().is_err(),
            "the development UDAP community over a shared database"
        );
        let s = Settings::from_file(
            "dev_issuer_with_real_data = true\ndev_udap_with_real_data = true\n[clinic]\ndata_dir = \"d\"\nstorage_url = \"postgres://x@db/clinic\"\n",
            Path::new("d"),
        )
        .unwrap();
        assert!(s.validate().is_ok());
        let s = Settings::from_file("max_upload_bytes = 2000000000000", Path::new("d")).unwrap();
        assert!(s.validate().is_err(), "an upload limit past 1 GiB");
    }

    #[test]
    fn limits_have_defaults_and_refuse_zero() {
        let s = Settings::from_file("[limits]\nidle_secs = 5\n", Path::new("d")).unwrap();
        assert_eq!(s.limits.idle_secs, 5);
        assert_eq!(s.limits.request_secs, Limits::default().request_secs);
        assert!(s.validate().is_ok());
        for bad in [
            "body_idle_secs = 0",
            "uploads_per_user = 0",
            "request_secs = 86400",
        ] {
            let s = Settings::from_file(&format!("[limits]\n{bad}\n"), Path::new("d")).unwrap();
            assert!(s.validate().is_err(), "{bad}");
        }
        assert!(Settings::from_file("[limits]\nidle = 5\n", Path::new("d")).is_err());
    }
}
