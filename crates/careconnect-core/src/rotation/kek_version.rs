//! Compromise of one version of a KMS key (kind 3 for a KEK version): the
//! master-key rotation (kind 1) moves every keyset and document data key
//! the clinic uses off it, a check proves none is still wrapped under it,
//! and the version is destroyed. See `docs/key-rotation.md`.

use careconnect_authz::{Action, Principal};
use careconnect_crypto::document::{DocumentHeader, OpenOptions};
use careconnect_crypto::format::{Header, KeyRef, MAX_HEADER_LEN};
use careconnect_crypto::{KmsKeyId, WrappedKey};
use careconnect_storage::{BlobId, StorageError};
use serde::Serialize;

use super::{KekReport, OnProgress, Rotation, docs};
use crate::audit::{AuditEvent, Outcome};
use crate::clinic::Inner;
use crate::error::CoreError;
use crate::medicloud::DocRow;
use crate::rows;

/// What the compromise of a KMS key version did (or, in a dry run, found).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KekVersionReport {
    /// The KMS key.
    pub key: String,
    /// The compromised version.
    pub version: u32,
    /// Nothing was changed.
    pub dry_run: bool,
    /// The master-key rotation that moved everything off the version.
    pub rotation: Option<KekReport>,
    /// What is wrapped under the version (in a dry run: before; otherwise
    /// empty, or the job stopped): `keyset NAME` or `document ID`.
    pub wrapped_under: Vec<String>,
    /// Whether the version is destroyed.
    pub destroyed: bool,
}

impl Inner {
    /// The wrapped data key a document opens with: the one a rotation left
    /// in its metadata row, else its blob header's; `None` if the blob is gone.
    pub(super) async fn doc_wrapped_key(
        &self,
        doc: &DocRow,
        key: &KmsKeyId,
    ) -> Result<Option<WrappedKey>, CoreError> {
        if let Some(w) = doc.rewrapped_key()? {
            return Ok(Some(w));
        }
        let head = match self
            .blobs
            .get_head(&BlobId::parse(&doc.blob)?, MAX_HEADER_LEN)
            .await
        {
            Ok(b) => b,
            Err(StorageError::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let header = DocumentHeader::read_from(&mut head.as_slice(), &OpenOptions::trusting(key))?;
        match &header.header().key_ref {
            KeyRef::Kms {
                key: named,
                wrapped,
            } if named == key.as_str() => Ok(Some(WrappedKey::new(wrapped.clone())?)),
            _ => Err(CoreError::Corrupt("a document's header")),
        }
    }

    /// Everything the clinic keeps wrapped under `version` of `key`, and
    /// anything whose version the KMS cannot tell.
    async fn wrapped_under(&self, key: &KmsKeyId, version: u32) -> Result<Vec<String>, CoreError> {
        let mut out = Vec::new();
        let mut check = |what: String, wrapped: &WrappedKey| match self.kms.version_of(wrapped) {
            Some(v) if v != version => {}
            Some(_) => out.push(what),
            None => out.push(format!("{what} (version unknown)")),
        };
        for (name, _) in self.keysets.iter().filter(|(_, k)| k == key) {
            let sealed = match self.keystore.load(name).await {
                Ok((_, sealed)) => sealed,
                Err(StorageError::NotFound) => continue,
                Err(e) => return Err(e.into()),
            };
            let (header, _) = Header::parse(&sealed).map_err(careconnect_crypto::Error::from)?;
            let KeyRef::Kms { wrapped, .. } = &header.key_ref else {
                return Err(CoreError::Corrupt("a keyset's header"));
            };
            check(format!("keyset {name}"), &WrappedKey::new(wrapped.clone())?);
        }
        if key == &self.documents_key()? {
            let coll = docs()?;
            let mut pages = self.pages(&coll, 100);
            while let Some(page) = pages.next().await? {
                for row in &page {
                    let doc = rows::open::<DocRow>(&self.keys.current(), &coll, row)
                        .filter(|d| d.info.id == row.id.as_str())
                        .ok_or(CoreError::Corrupt("a document's metadata does not open"))?;
                    if let Some(w) = self.doc_wrapped_key(&doc, key).await? {
                        check(format!("document {}", doc.info.id), &w);
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Rotation<'_> {
    /// Compromise of version `version` of the clinic's KMS key `key`: a
    /// master-key rotation ([`Rotation::rotate_kek`], resumed if one is
    /// unfinished) moves every keyset and document data key off it; a check
    /// of every wrapped key's version must then find none under it; only
    /// then is the version destroyed. With `dry_run`, lists what is wrapped
    /// under it and changes nothing.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited); [`CoreError::Invalid`] for a key the
    /// clinic does not use, a version that is not enabled, or a KMS that
    /// cannot destroy versions (AWS KMS: see `docs/erasure.md`);
    /// [`CoreError::Conflict`] when something is still wrapped under the
    /// version after the rotation (nothing destroyed: run again); the
    /// rotation's errors.
    pub async fn kek_version_compromised(
        &self,
        admin: &Principal,
        key: &str,
        version: u32,
        dry_run: bool,
        progress: OnProgress<'_>,
    ) -> Result<KekVersionReport, CoreError> {
        let c = &self.clinic.inner;
        let what = format!(
            "keys:kms:{key}:v{version} compromised{}",
            if dry_run { " dry-run" } else { "" }
        );
        c.decide_system(admin, Action::RotateKeys, what).await?;
        let kms_key = c
            .kms_keys
            .iter()
            .find(|k| k.as_str() == key)
            .cloned()
            .ok_or(CoreError::Invalid("KMS key: not one the clinic uses"))?;
        if !c.kms.can_destroy_versions() {
            return Err(CoreError::Invalid(
                "KMS key version: this KMS cannot destroy versions",
            ));
        }
        if !c
            .kms
            .describe(&kms_key)
            .await?
            .enabled_versions
            .contains(&version)
        {
            return Err(CoreError::Invalid(
                "KMS key version: not an enabled version of the key",
            ));
        }
        let mut report = KekVersionReport {
            key: key.to_owned(),
            version,
            dry_run,
            rotation: None,
            wrapped_under: Vec::new(),
            destroyed: false,
        };
        if dry_run {
            report.wrapped_under = c.wrapped_under(&kms_key, version).await?;
            return Ok(report);
        }
        report.rotation = Some(self.rotate_kek(admin, false, progress).await?);
        report.wrapped_under = c.wrapped_under(&kms_key, version).await?;
        if !report.wrapped_under.is_empty() {
            return Err(CoreError::Conflict(
                "something is still wrapped under that KMS key version: run again",
            ));
        }
        c.kms.destroy_version(&kms_key, version).await?;
        report.destroyed = true;
        c.audit
            .record(AuditEvent::by(
                admin,
                "RotateKeys",
                format!("keys:kms:{key}:v{version} destroyed"),
                Outcome::Allowed,
            ))
            .await?;
        Ok(report)
    }
}
