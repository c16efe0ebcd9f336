//! Blob stores for Medicloud documents (sealed streams). Names are made by
//! the store, never taken from user input.

use std::path::{Path, PathBuf};
use std::pin::Pin;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use tokio::io::{AsyncRead, AsyncWriteExt};

use crate::error::{Result, StorageError};

/// A blob's name: 32 lowercase hex digits (128 random bits), made by the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(String);

impl BlobId {
    pub(crate) fn random() -> Result<Self> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| {
            StorageError::Unavailable(Box::new(std::io::Error::other(e.to_string())))
        })?;
        Ok(Self(b.iter().map(|x| format!("{x:02x}")).collect()))
    }

    /// Parses a stored id (e.g. from a database row).
    ///
    /// # Errors
    ///
    /// [`StorageError::Invalid`] for anything but 32 lowercase hex digits, so
    /// no string from outside can become a path.
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(StorageError::Invalid {
                what: "blob id",
                why: "32 lowercase hex digits",
            })
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A readable blob.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// A complete blob as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    /// Its id.
    pub id: BlobId,
    /// When it was last written, Unix seconds, by the store's clock. On S3
    /// a multipart upload's time is when the upload began: a slow upload
    /// looks older than it is.
    pub modified: u64,
}

/// The blobs of a store, one at a time.
pub type BlobList<'a> = BoxStream<'a, Result<BlobEntry>>;

/// Unix seconds; a time before 1970 reads as "just now" (never old).
fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(u64::MAX, |d| d.as_secs())
}

/// Streaming blob storage.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Streams `data` into a new blob; it becomes visible only when complete.
    ///
    /// # Errors
    ///
    /// I/O or backend errors; nothing is visible then.
    async fn put(&self, data: &mut (dyn AsyncRead + Send + Unpin)) -> Result<BlobId>;

    /// Streams a blob out.
    ///
    /// # Errors
    ///
    /// [`StorageError::NotFound`].
    async fn get(&self, id: &BlobId) -> Result<BlobReader>;

    /// Deletes a blob.
    ///
    /// # Errors
    ///
    /// [`StorageError::NotFound`].
    async fn delete(&self, id: &BlobId) -> Result<()>;

    /// Whether a blob exists.
    ///
    /// # Errors
    ///
    /// Backend errors.
    async fn exists(&self, id: &BlobId) -> Result<bool>;

    /// Every complete blob (never one still being written), in no
    /// particular order, streamed so a large store is not held in memory:
    /// what a collector of unreferenced blobs walks.
    fn list(&self) -> BlobList<'_>;
}

/// Blobs as files in one directory: written to a temporary file, fsynced,
/// renamed into place, directory fsynced, so a crash never leaves a partial
/// blob under a real name. Files are mode 0600.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    dir: PathBuf,
}

const TMP_PREFIX: &str = ".tmp-";
/// Read and write size for blob files.
const IO_BUF: usize = 1 << 20;

impl FsBlobStore {
    /// Opens (creating) the directory and removes temporary files of uploads
    /// interrupted more than an hour ago (younger ones may be in progress in
    /// another process).
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        tokio::fs::create_dir_all(&dir).await?;
        let mut entries = tokio::fs::read_dir(&dir).await?;
        while let Some(e) = entries.next_entry().await? {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let old = e
                    .metadata()
                    .await?
                    .modified()?
                    .elapsed()
                    .is_ok_and(|age| age.as_secs() > 3600);
                if old {
                    let _ = tokio::fs::remove_file(e.path()).await;
                }
            }
        }
        Ok(Self { dir })
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(id.as_str())
    }
}

async fn sync_dir(dir: &Path) -> Result<()> {
    let d = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&d).and_then(|f| f.sync_all()))
        .await
        .map_err(|e| StorageError::Unavailable(Box::new(e)))??;
    Ok(())
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, data: &mut (dyn AsyncRead + Send + Unpin)) -> Result<BlobId> {
        let id = BlobId::random()?;
        let tmp = self.dir.join(format!("{TMP_PREFIX}{}", id.as_str()));
        let result = async {
            let mut opts = tokio::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            opts.mode(0o600);
            let f = opts.open(&tmp).await?;
            // Large reads and writes: each file write is a blocking-pool
            // round trip, so tokio::io::copy's 8 KiB steps cost more than
            // the encryption in front of them.
            let mut out = tokio::io::BufWriter::with_capacity(IO_BUF, f);
            let mut input = tokio::io::BufReader::with_capacity(IO_BUF, data);
            tokio::io::copy_buf(&mut input, &mut out).await?;
            out.flush().await?;
            let f = out.into_inner();
            f.sync_all().await?;
            drop(f);
            tokio::fs::rename(&tmp, self.path(&id)).await?;
            sync_dir(&self.dir).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result.map(|()| id)
    }

    async fn get(&self, id: &BlobId) -> Result<BlobReader> {
        match tokio::fs::File::open(self.path(id)).await {
            Ok(f) => Ok(Box::pin(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, id: &BlobId) -> Result<()> {
        match tokio::fs::remove_file(self.path(id)).await {
            Ok(()) => sync_dir(&self.dir).await,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    async fn exists(&self, id: &BlobId) -> Result<bool> {
        Ok(tokio::fs::try_exists(self.path(id)).await?)
    }

    fn list(&self) -> BlobList<'_> {
        let dir = self.dir.clone();
        let entries = async move { tokio::fs::read_dir(dir).await };
        futures::stream::once(entries)
            .map(|opened| match opened {
                Ok(rd) => futures::stream::try_unfold(rd, next_blob).boxed(),
                Err(e) => futures::stream::once(async { Err(e.into()) }).boxed(),
            })
            .flatten()
            .boxed()
    }
}

/// The next complete blob in a directory (temporary files and anything
/// else not named like a blob are skipped).
async fn next_blob(mut rd: tokio::fs::ReadDir) -> Result<Option<(BlobEntry, tokio::fs::ReadDir)>> {
    while let Some(e) = rd.next_entry().await? {
        let Ok(id) = BlobId::parse(&e.file_name().to_string_lossy()) else {
            continue;
        };
        // Only regular files are blobs (a directory or link named like one
        // is not the store's).
        let meta = match tokio::fs::symlink_metadata(e.path()).await {
            Ok(m) if !m.is_file() => continue,
            Ok(m) => m,
            // Deleted since the directory was read.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err.into()),
        };
        let modified = unix_secs(meta.modified()?);
        return Ok(Some((BlobEntry { id, modified }, rd)));
    }
    Ok(None)
}
