//! A clinic's settings as a TOML file holds them, for the binaries (the
//! rotation tool, the web demo): the stores, the KMS and its keys. Which
//! KMS implementation to build stays the binary's choice
//! ([`KmsFile::Aws`] needs the AWS SDK), so [`ClinicFile::into_config`]
//! takes the KMS it built.
//!
//! ```
//! # fn main() -> Result<(), careconnect_core::CoreError> {
//! use careconnect_core::config::{ClinicFile, KmsFile};
//! let file = ClinicFile::from_toml(r#"
//!     data_dir = "/var/lib/clinic"
//!     storage_url = "postgres://clinic@db.internal/clinic"
//!     blobs_url = "s3://clinic-documents/medicloud"
//!     clinic_kms_key = "alias/clinic"
//!     keyring_recheck_ms = 2000
//!     [kms]
//!     kind = "aws"
//!     region = "eu-west-2"
//! "#)?;
//! assert!(matches!(file.kms, KmsFile::Aws { .. }));
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::clinic::{BlobConfig, ClinicConfig, KmsConfig};
use crate::error::CoreError;

/// A clinic's settings file. Everything but `data_dir` is optional; what
/// is left out takes [`ClinicConfig::embedded`]'s value for `data_dir`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClinicFile {
    /// Where the embedded pieces live (SQLite file, local KMS, blobs,
    /// audit anchor) unless set below.
    pub data_dir: PathBuf,
    /// `sqlite://path` or `postgres://...`.
    pub storage_url: Option<String>,
    /// `file:///dir` or `s3://bucket/prefix`.
    pub blobs_url: Option<String>,
    /// The audit anchor file.
    pub audit_anchor: Option<PathBuf>,
    /// The KMS key wrapping the clinic keyring.
    pub clinic_kms_key: Option<String>,
    /// The KMS key wrapping documents' data keys.
    pub documents_kms_key: Option<String>,
    /// Subject-key buckets (fixed for a clinic's life).
    pub subject_buckets: Option<u16>,
    /// Prefix of the bucket KMS keys' names.
    pub subject_key_prefix: Option<String>,
    /// [`ClinicConfig::keyring_recheck`], in milliseconds: the same on
    /// every node and in the rotation tool.
    pub keyring_recheck_ms: Option<u64>,
    /// The KMS.
    #[serde(default)]
    pub kms: KmsFile,
}

/// Which KMS a [`ClinicFile`] names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum KmsFile {
    /// The local KMS: `kms.bin` and `kms-root.key` in the data directory.
    #[default]
    Local,
    /// AWS KMS (credentials from the AWS environment).
    Aws {
        /// The region (default: the AWS environment's).
        region: Option<String>,
        /// Another endpoint (a test server, a VPC endpoint).
        endpoint: Option<String>,
    },
}

impl ClinicFile {
    /// The embedded defaults under `data_dir`: SQLite, the local KMS.
    pub fn at(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            storage_url: None,
            blobs_url: None,
            audit_anchor: None,
            clinic_kms_key: None,
            documents_kms_key: None,
            subject_buckets: None,
            subject_key_prefix: None,
            keyring_recheck_ms: None,
            kms: KmsFile::Local,
        }
    }

    /// The KMS this file names, connected, for [`ClinicFile::into_config`]:
    /// `None` for the local KMS (the clinic opens or makes it in the data
    /// directory), the AWS KMS client for [`KmsFile::Aws`] (with the
    /// `aws-kms` feature; credentials from the AWS environment).
    ///
    /// # Errors
    ///
    /// [`CoreError::Config`] for AWS KMS in a build without `aws-kms`.
    pub async fn connect_kms(
        &self,
    ) -> Result<Option<std::sync::Arc<dyn careconnect_crypto::Kms>>, CoreError> {
        match &self.kms {
            KmsFile::Local => Ok(None),
            #[cfg(feature = "aws-kms")]
            KmsFile::Aws { region, endpoint } => {
                use careconnect_crypto::kms::{AwsKms, AwsKmsConfig};
                Ok(Some(std::sync::Arc::new(
                    AwsKms::connect(&AwsKmsConfig {
                        region: region.clone(),
                        endpoint: endpoint.clone(),
                        ..AwsKmsConfig::default()
                    })
                    .await,
                )))
            }
            #[cfg(not(feature = "aws-kms"))]
            KmsFile::Aws { .. } => Err(CoreError::Config(
                "this build has no AWS KMS: build with the `aws` feature".into(),
            )),
        }
    }

    /// Parses a settings file.
    ///
    /// # Errors
    ///
    /// [`CoreError::Config`] naming what is wrong (a missing or unknown
    /// field, a wrong type).
    pub fn from_toml(text: &str) -> Result<Self, CoreError> {
        toml::from_str(text).map_err(|e| CoreError::Config(e.message().to_owned()))
    }

    /// The clinic configuration, on `kms` (built by the caller from
    /// [`ClinicFile::kms`]; `None` for the local KMS in the data directory).
    ///
    /// # Errors
    ///
    /// Reading or making the local KMS's root secret file;
    /// [`CoreError::Config`] for a zero recheck interval.
    pub fn into_config(self, kms: Option<KmsConfig>) -> Result<ClinicConfig, CoreError> {
        let mut config = ClinicConfig::embedded(&self.data_dir)?;
        if let Some(kms) = kms {
            config.kms = kms;
        }
        if let Some(url) = self.storage_url {
            config.storage_url = url;
        }
        if let Some(url) = self.blobs_url {
            config.blobs = BlobConfig::Url(url);
        }
        if let Some(path) = self.audit_anchor {
            config.audit_anchor = path;
        }
        if let Some(key) = self.clinic_kms_key {
            config.clinic_kms_key = key;
        }
        if let Some(key) = self.documents_kms_key {
            config.medicloud.kms_key = key;
        }
        if let Some(n) = self.subject_buckets {
            config.subject_buckets = n;
        }
        if let Some(prefix) = self.subject_key_prefix {
            config.subject_key_prefix = prefix;
        }
        if let Some(ms) = self.keyring_recheck_ms {
            if ms == 0 {
                return Err(CoreError::Config(
                    "keyring_recheck_ms must be above 0".into(),
                ));
            }
            config.keyring_recheck = Duration::from_millis(ms);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_zero_recheck_are_refused_with_a_reason() {
        let unknown = ClinicFile::from_toml("data_dir = \"d\"\nstorage = \"x\"");
        assert!(matches!(unknown, Err(CoreError::Config(m)) if m.contains("storage")));
        assert!(matches!(
            ClinicFile::from_toml("storage_url = \"sqlite://x\""),
            Err(CoreError::Config(m)) if m.contains("data_dir")
        ));
        let kind = ClinicFile::from_toml("data_dir = \"d\"\n[kms]\nkind = \"vault\"");
        assert!(matches!(kind, Err(CoreError::Config(_))));
        let dir = tempfile::tempdir().unwrap();
        let zero = ClinicFile::from_toml(&format!(
            "data_dir = {:?}\nkeyring_recheck_ms = 0",
            dir.path()
        ))
        .unwrap();
        assert!(matches!(zero.into_config(None), Err(CoreError::Config(_))));
    }

    #[test]
    fn what_is_set_overrides_the_embedded_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = ClinicFile::from_toml(&format!(
            "data_dir = {:?}\nstorage_url = \"postgres://db/clinic\"\nblobs_url = \"file:///srv/blobs\"\nsubject_buckets = 4\nkeyring_recheck_ms = 250",
            dir.path()
        ))
        .unwrap();
        let c = file.into_config(None).unwrap();
        assert_eq!(c.storage_url, "postgres://db/clinic");
        assert!(matches!(c.blobs, BlobConfig::Url(ref u) if u == "file:///srv/blobs"));
        assert_eq!(c.subject_buckets, 4);
        assert_eq!(c.keyring_recheck, Duration::from_millis(250));
        assert_eq!(c.audit_anchor, dir.path().join("audit.anchor"));
    }
}
