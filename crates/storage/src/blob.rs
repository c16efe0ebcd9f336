//! Blob stores for Medicloud documents (sealed streams). Names are made by
//! the store, never taken from user input.

use std::path::{Path, PathBuf};
use std::pin::Pin;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};

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

/// Pieces a blob reader keeps ready ahead of its consumer.
const READ_AHEAD: usize = 2;

/// A reader over `pieces`, pulled by a task of its own up to
/// [`READ_AHEAD`] pieces ahead, so fetching the next piece overlaps with
/// whatever the consumer does with this one. Dropping the reader stops the
/// task; an error ends the stream.
pub(crate) fn read_ahead<S>(pieces: S) -> BlobReader
where
    S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        let mut pieces = std::pin::pin!(pieces);
        while let Some(piece) = pieces.next().await {
            let last = piece.is_err();
            if tx.send(piece).await.is_err() || last {
                break;
            }
        }
    });
    Box::pin(tokio_util::io::StreamReader::new(futures::stream::poll_fn(
        move |cx| rx.poll_recv(cx),
    )))
}

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

    /// The first `len` bytes of a blob (fewer if it is shorter), without
    /// reading the rest: a document's header, say.
    ///
    /// # Errors
    ///
    /// [`StorageError::NotFound`].
    async fn get_head(&self, id: &BlobId, len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.get(id)
            .await?
            .take(len as u64)
            .read_to_end(&mut out)
            .await?;
        Ok(out)
    }

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
/// How often a blob file being written is synced to disk.
const SYNC_EVERY: u64 = 4 << 20;

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

/// Copies `data` into `file` in large steps (each file write is a
/// blocking-pool round trip, so small ones cost more than the encryption
/// in front of them): the next buffer fills while the blocking pool writes
/// the last, and buffers move to it rather than being copied.
async fn write_overlapped(
    file: std::fs::File,
    data: &mut (dyn AsyncRead + Send + Unpin),
) -> Result<std::fs::File> {
    use std::io::Write;
    type Written = std::io::Result<(std::fs::File, Vec<u8>)>;
    let mut file = Some(file);
    let mut next = Vec::with_capacity(IO_BUF);
    let mut spare = Vec::with_capacity(IO_BUF);
    let mut writing: Option<tokio::task::JoinHandle<Written>> = None;
    let mut written = 0u64;
    loop {
        while next.len() < IO_BUF && data.read_buf(&mut next).await? > 0 {}
        if let Some(w) = writing.take() {
            let (f, mut done) = w
                .await
                .map_err(|e| StorageError::Unavailable(Box::new(e)))??;
            done.clear();
            file = Some(f);
            spare = done;
        }
        if next.is_empty() {
            break;
        }
        let mut f = file
            .take()
            .ok_or_else(|| StorageError::Unavailable(Box::new(std::io::Error::other("no file"))))?;
        let buf = std::mem::replace(&mut next, std::mem::take(&mut spare));
        written += buf.len() as u64;
        // Flushing to disk as it goes, beside the work in front, leaves
        // the final sync little to do.
        let flush = written % SYNC_EVERY < buf.len() as u64;
        writing = Some(tokio::task::spawn_blocking(move || {
            f.write_all(&buf)?;
            if flush {
                f.sync_data()?;
            }
            Ok((f, buf))
        }));
    }
    file.ok_or_else(|| StorageError::Unavailable(Box::new(std::io::Error::other("no file"))))
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
            let f = opts.open(&tmp).await?.into_std().await;
            let f = write_overlapped(f, data).await?;
            tokio::task::spawn_blocking(move || f.sync_all())
                .await
                .map_err(|e| StorageError::Unavailable(Box::new(e)))??;
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
        let file = match tokio::fs::File::open(self.path(id)).await {
            Ok(f) => f.into_std().await,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound);
            }
            Err(e) => return Err(e.into()),
        };
        // Large reads on the blocking pool, straight into the buffers
        // handed on.
        let pieces = futures::stream::try_unfold(file, |mut f| async move {
            let (f, buf) = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut buf = Vec::with_capacity(IO_BUF);
                (&mut f).take(IO_BUF as u64).read_to_end(&mut buf)?;
                Ok::<_, std::io::Error>((f, buf))
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok((!buf.is_empty()).then(|| (bytes::Bytes::from(buf), f)))
        });
        Ok(read_ahead(pieces))
    }

    async fn get_head(&self, id: &BlobId, len: usize) -> Result<Vec<u8>> {
        let path = self.path(id);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let f = std::fs::File::open(path)?;
            let mut out = Vec::with_capacity(len.min(IO_BUF));
            f.take(len as u64).read_to_end(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })
        .await
        .map_err(|e| StorageError::Unavailable(Box::new(e)))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StorageError::NotFound,
            _ => e.into(),
        })
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
