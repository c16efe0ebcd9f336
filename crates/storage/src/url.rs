//! Choosing a backend from one URL setting.

use std::sync::Arc;

use crate::blob::{BlobStore, FsBlobStore};
use crate::error::{Result, StorageError};
use crate::traits::{AuditLog, KeyStore, RecordStore};
use crate::{MemoryStore, PgStore, SqliteStore};

/// Everything a record backend provides.
pub trait Store: RecordStore + AuditLog + KeyStore {}

impl<T: RecordStore + AuditLog + KeyStore> Store for T {}

/// Opens the record store a URL names: `sqlite://path/to/file.db`,
/// `postgres://user@host/db` (or `postgresql://`), or `memory:`.
///
/// # Errors
///
/// [`StorageError::UnsupportedUrl`] for another scheme; backend errors.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    if url == "memory:" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteStore::open_url(url).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PgStore::connect(url, 16).await?));
    }
    Err(StorageError::UnsupportedUrl)
}

/// Opens the blob store a URL names: `file:///path/to/dir`, or (feature
/// `s3`) `s3://bucket/prefix` with credentials from the AWS environment.
///
/// # Errors
///
/// [`StorageError::UnsupportedUrl`] for another scheme; I/O errors.
pub async fn connect_blobs(url: &str) -> Result<Arc<dyn BlobStore>> {
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() {
            return Err(StorageError::UnsupportedUrl);
        }
        return Ok(Arc::new(FsBlobStore::open(path).await?));
    }
    #[cfg(feature = "s3")]
    if url.starts_with("s3://") {
        return Ok(Arc::new(crate::S3BlobStore::open(url)?));
    }
    Err(StorageError::UnsupportedUrl)
}
