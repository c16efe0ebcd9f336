//! Blobs on S3-compatible object storage (cargo feature `s3`), through the
//! `object_store` crate. Uploads are multipart and become visible only when
//! completed, so an interrupted upload never shows as an object.

use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use std::str::FromStr;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::blob::{BlobEntry, BlobId, BlobList, BlobReader, BlobStore};
use crate::error::{Result, StorageError};

/// Blobs under a prefix of an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

/// Upload part size (S3's minimum for all but the last part is 5 MiB).
const PART: usize = 8 << 20;

fn backend(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound,
        other => StorageError::Unavailable(Box::new(other)),
    }
}

impl S3BlobStore {
    /// Opens `s3://bucket/prefix`. Credentials, region and endpoint come from
    /// the standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`, ...); `AWS_ALLOW_HTTP=true` permits a plain-HTTP
    /// endpoint on loopback for tests.
    ///
    /// # Errors
    ///
    /// [`StorageError::UnsupportedUrl`] for another URL; backend configuration errors.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, std::iter::empty::<(&str, &str)>())
    }

    /// As [`S3BlobStore::open`], with explicit settings on top of the
    /// environment: `object_store`'s S3 keys such as `aws_endpoint`,
    /// `aws_region`, `aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_allow_http`.
    ///
    /// # Errors
    ///
    /// As [`S3BlobStore::open`], and [`StorageError::Invalid`] for an unknown key.
    pub fn open_with<'a>(
        url: &str,
        config: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or(StorageError::UnsupportedUrl)?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StorageError::UnsupportedUrl);
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (k, v) in config {
            let key = AmazonS3ConfigKey::from_str(k).map_err(|_| StorageError::Invalid {
                what: "s3 setting",
                why: "not an object_store S3 configuration key",
            })?;
            builder = builder.with_config(key, v);
        }
        let store = builder.build().map_err(backend)?;
        Ok(Self {
            store: Arc::new(store),
            prefix: Path::from(prefix),
        })
    }

    fn path(&self, id: &BlobId) -> Path {
        self.prefix.clone().join(id.as_str())
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, data: &mut (dyn AsyncRead + Send + Unpin)) -> Result<BlobId> {
        let id = BlobId::random()?;
        let upload = self
            .store
            .put_multipart(&self.path(&id))
            .await
            .map_err(backend)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match data.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e.into());
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(4).await {
                let _ = writer.abort().await;
                return Err(backend(e));
            }
            writer.write(buf.get(..n).unwrap_or_default());
        }
        writer.finish().await.map_err(backend)?;
        Ok(id)
    }

    async fn get(&self, id: &BlobId) -> Result<BlobReader> {
        let got = self.store.get(&self.path(id)).await.map_err(backend)?;
        let stream = got
            .into_stream()
            .map_err(|e| std::io::Error::other(e.to_string()));
        Ok(crate::blob::read_ahead(stream))
    }

    async fn get_head(&self, id: &BlobId, len: usize) -> Result<Vec<u8>> {
        let path = self.path(id);
        let size = self.store.head(&path).await.map_err(backend)?.size;
        let end = size.min(len as u64);
        if end == 0 {
            return Ok(Vec::new());
        }
        let bytes = self.store.get_range(&path, 0..end).await.map_err(backend)?;
        Ok(bytes.to_vec())
    }

    async fn delete(&self, id: &BlobId) -> Result<()> {
        // S3 deletes of missing keys succeed; look first so callers learn.
        self.store.head(&self.path(id)).await.map_err(backend)?;
        self.store.delete(&self.path(id)).await.map_err(backend)
    }

    async fn exists(&self, id: &BlobId) -> Result<bool> {
        match self.store.head(&self.path(id)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }

    fn list(&self) -> BlobList<'_> {
        self.store
            .list(Some(&self.prefix))
            .map_err(backend)
            // Only names the store makes, directly under the prefix (the
            // listing is recursive).
            .try_filter_map(|m| {
                let direct = m
                    .location
                    .prefix_match(&self.prefix)
                    .is_some_and(|rest| rest.count() == 1);
                let id = m.location.filename().and_then(|f| BlobId::parse(f).ok());
                let entry = id.filter(|_| direct).map(|id| BlobEntry {
                    id,
                    // A date before 1970 reads as "just now": never old.
                    modified: u64::try_from(m.last_modified.timestamp()).unwrap_or(u64::MAX),
                });
                async move { Ok(entry) }
            })
            .boxed()
    }
}
