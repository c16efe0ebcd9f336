//! Medicloud (doctors, external partners): documents, each encrypted with
//! a data key of its own from the KMS (the wrapped key travels in the
//! document's header), streamed from the upload through the envelope into
//! the blob store and back, never as a plaintext file.
//!
//! - **Upload**: the first bytes are sniffed (magic numbers, not the name)
//!   against the allowed types; the size limit is enforced while streaming,
//!   so an oversized upload stores nothing; the plaintext's SHA-256 and size
//!   are taken on the way. The metadata (owner, display name, types, size,
//!   hash, time, blob) is a row sealed under the clinic keyring, bound to
//!   its id. File names are display data only ([`display_name`]); blob
//!   names are made by the store.
//! - **Access**: the owner, and users the owner shared the document with
//!   (read-only, optionally until a time), each share a sealed row of its
//!   own; administrators look in (audited). Every upload, listing,
//!   download, share, revoke and delete is audited.
//! - **Download** verifies each chunk before writing it out: only `Ok`
//!   means the whole file was written.
//! - **Delete** removes the metadata first (the document is unreachable at
//!   once, and any data key a rotation re-wrapped there is gone), then its
//!   shares and its blob, which holds the original wrapped data key. A crash in between leaves an orphan blob
//!   that nothing references; so does a crash between an upload's blob and
//!   its metadata. [`Medicloud::collect_orphans`] deletes those, and
//!   nothing at all if any document's metadata fails to open.
//! - **Scheduled rotation** of the documents' KMS key (90 days by default):
//!   [`Medicloud::rotate_if_due`] rotates the local KMS's key when due, and
//!   turns on a KMS's own schedule where it keeps one (AWS KMS).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use careconnect_authz::{Action, Principal, Resource, Role, UserId};
use careconnect_crypto::document::{DocumentHeader, DocumentSealer, OpenOptions};
use careconnect_crypto::kms::RotationSchedule;
use careconnect_crypto::{EncryptionContext, KmsKeyId, WrappedKey};
use careconnect_storage::{BlobId, Collection, IndexEntry, Row, RowId, StorageError, Write};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::audit::{AuditEvent, Outcome};
use crate::clinic::{Clinic, Inner, new_id};
use crate::error::CoreError;
use crate::rows;

/// The collection of document metadata.
pub const DOCUMENTS_COLLECTION: &str = "core_documents";
/// The collection of shares.
pub const SHARES_COLLECTION: &str = "core_document_shares";
/// Medicloud's own state (the last rotation of the documents' key).
pub(crate) const STATE_COLLECTION: &str = "core_medicloud_state";

#[derive(Serialize, Deserialize)]
struct Rotated {
    version: u32,
    at: u64,
}
const OWNER_INDEX: &str = "owner";
const USER_INDEX: &str = "user";
const DOC_INDEX: &str = "document";
/// Bytes read before sealing, to recognise the type.
const SNIFF_LEN: usize = 512;

/// A document type Medicloud accepts, recognised by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    /// PDF (`%PDF-`).
    Pdf,
    /// Plain UTF-8 text (no NUL in the first bytes).
    Txt,
    /// OpenDocument text (a ZIP whose first entry says so).
    Odt,
    /// Legacy Word (an OLE compound file).
    Doc,
    /// Word (a ZIP, named `.docx`).
    Docx,
    /// PNG.
    Png,
    /// JPEG.
    Jpg,
}

impl FileType {
    /// Every type, the default allow-list.
    pub const ALL: [FileType; 7] = [
        FileType::Pdf,
        FileType::Txt,
        FileType::Odt,
        FileType::Doc,
        FileType::Docx,
        FileType::Png,
        FileType::Jpg,
    ];

    /// The MIME type served for it.
    pub fn mime(self) -> &'static str {
        match self {
            FileType::Pdf => "application/pdf",
            FileType::Txt => "text/plain; charset=utf-8",
            FileType::Odt => "application/vnd.oasis.opendocument.text",
            FileType::Doc => "application/msword",
            FileType::Docx => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
            FileType::Png => "image/png",
            FileType::Jpg => "image/jpeg",
        }
    }

    /// What the first bytes of a file are, given the name it came with
    /// (a ZIP is `.docx` only by name; the content decides everything else).
    pub fn sniff(head: &[u8], name: &str) -> Option<FileType> {
        const ODT: &[u8] = b"mimetypeapplication/vnd.oasis.opendocument.text";
        let lower = name.to_ascii_lowercase();
        if head.starts_with(b"%PDF-") {
            Some(FileType::Pdf)
        } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(FileType::Png)
        } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(FileType::Jpg)
        } else if head.starts_with(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]) {
            Some(FileType::Doc)
        } else if head.starts_with(b"PK\x03\x04") {
            if head.get(30..30 + ODT.len()) == Some(ODT) {
                Some(FileType::Odt)
            } else if lower.ends_with(".docx") {
                Some(FileType::Docx)
            } else {
                None
            }
        } else if !head.is_empty() && !head.contains(&0) && utf8_prefix(head) {
            Some(FileType::Txt)
        } else {
            None
        }
    }
}

/// Whether `b` is UTF-8, allowing a character cut at the end.
fn utf8_prefix(b: &[u8]) -> bool {
    match std::str::from_utf8(b) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && b.len() - e.valid_up_to() < 4,
    }
}

/// A file name made safe for display and for `Content-Disposition`: the
/// last path component, control, format (bidirectional overrides,
/// zero-width characters), separator and private-use characters removed
/// ([`careconnect_authz::is_invisible`]: a name with U+202E would display
/// as another), quotes, semicolons and angle brackets replaced, at most
/// 100 characters; `None` when nothing is left.
pub fn display_name(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !careconnect_authz::is_invisible(*c))
        .map(|c| {
            if matches!(c, '"' | '\\' | '/' | ';' | '<' | '>') {
                '_'
            } else {
                c
            }
        })
        .take(100)
        .collect();
    let trimmed = cleaned.trim().trim_matches('.').trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// What Medicloud accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MedicloudConfig {
    /// Allowed types (default: all of [`FileType::ALL`]).
    pub allowed: Vec<FileType>,
    /// Largest upload in bytes (default 25 MiB).
    pub max_bytes: u64,
    /// The KMS key that wraps every document's data key.
    pub kms_key: String,
    /// How often that key gets a new version (default 90 days, as in the
    /// seed): see [`Medicloud::rotate_if_due`].
    pub rotate_every: std::time::Duration,
    /// How old an unreferenced blob must be before
    /// [`Medicloud::collect_orphans`] deletes it (default 1 hour). An
    /// upload that takes longer than half of it is refused, since its blob
    /// could look old before its metadata exists (on S3 a blob's time is
    /// when its upload began); the clocks of the clinic's hosts and of the
    /// blob store must agree within the other half. Zero suits only a node
    /// that collects while no upload runs anywhere (it refuses uploads).
    pub orphan_grace: std::time::Duration,
}

impl Default for MedicloudConfig {
    fn default() -> Self {
        Self {
            allowed: FileType::ALL.to_vec(),
            max_bytes: 25 << 20,
            kms_key: "careconnect-documents".into(),
            rotate_every: std::time::Duration::from_secs(90 * 86_400),
            orphan_grace: std::time::Duration::from_secs(3600),
        }
    }
}

/// Where the documents' KMS key stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationStatus {
    /// The key's name.
    pub kms_key: String,
    /// The version new documents' data keys are wrapped under.
    pub current_version: u32,
    /// When that version was made (Unix seconds), where known (the clinic
    /// keeps the schedule).
    pub current_since: Option<u64>,
    /// When the next rotation is due (Unix seconds), where known.
    pub next_due: Option<u64>,
    /// The KMS's own schedule, for a KMS that rotates the key by itself
    /// (AWS KMS; [`Medicloud::rotate_if_due`] turns it on); `None` where
    /// the clinic keeps the schedule (the local KMS).
    pub kms_schedule: Option<RotationSchedule>,
}

/// What [`Medicloud::collect_orphans`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrphanReport {
    /// Document metadata rows read.
    pub documents: u64,
    /// Blobs in the store.
    pub blobs: u64,
    /// Unreferenced blobs kept because they are younger than the grace
    /// period (an upload may be about to reference them).
    pub young: u64,
    /// Unreferenced blobs deleted.
    pub deleted: u64,
}

/// A document as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentInfo {
    /// Its id.
    pub id: String,
    /// Who uploaded it.
    pub owner: UserId,
    /// The name it came with, made safe for display.
    pub name: String,
    /// The type its content has.
    pub file_type: FileType,
    /// The type the uploader declared (display only).
    pub declared_type: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Plaintext SHA-256, hex.
    pub sha256: String,
    /// When, Unix seconds.
    pub created_at: u64,
}

/// A document its reader may download, access already checked and audited
/// ([`Medicloud::open`]).
pub struct Download {
    clinic: Clinic,
    id: String,
    doc: DocRow,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Download {
    /// What the document is (name, type, size, SHA-256 of its plaintext).
    pub fn info(&self) -> &DocumentInfo {
        &self.doc.info
    }

    /// Streams the document, opened and verified chunk by chunk, into
    /// `out`; returns the bytes written. Only `Ok` means the whole file
    /// was written; on an error, discard what `out` received (a web server
    /// aborts the response).
    ///
    /// # Errors
    ///
    /// [`careconnect_crypto::Error::DecryptionFailed`] (as
    /// [`CoreError::Crypto`]) for a tampered, truncated or swapped blob;
    /// storage, KMS and I/O errors.
    pub async fn write_to<W>(self, out: &mut W) -> Result<u64, CoreError>
    where
        W: AsyncWrite + Unpin + Send,
    {
        self.clinic
            .inner
            .stream_document(&self.id, &self.doc, out)
            .await
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct DocRow {
    pub(crate) info: DocumentInfo,
    pub(crate) blob: String,
    /// The data key re-wrapped by a KMS key rotation (hex), which replaces
    /// the one in the blob's header: blobs are never rewritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rewrapped: Option<String>,
}

impl DocRow {
    /// The re-wrapped data key, if a rotation left one.
    pub(crate) fn rewrapped_key(&self) -> Result<Option<WrappedKey>, CoreError> {
        self.rewrapped
            .as_deref()
            .map(|h| {
                let bytes = hex::decode(h).map_err(|_| CoreError::Corrupt("re-wrapped key"))?;
                Ok(WrappedKey::new(bytes)?)
            })
            .transpose()
    }
}

#[derive(Serialize, Deserialize)]
struct ShareRow {
    document: String,
    user: UserId,
    by: UserId,
    expires_at: Option<u64>,
}

/// Medicloud.
#[derive(Debug, Clone, Copy)]
pub struct Medicloud<'a> {
    clinic: &'a Clinic,
}

impl Clinic {
    /// Medicloud: documents and their sharing.
    pub fn medicloud(&self) -> Medicloud<'_> {
        Medicloud { clinic: self }
    }
}

pub(crate) fn docs() -> Result<Collection, CoreError> {
    Ok(Collection::new(DOCUMENTS_COLLECTION)?)
}

fn shares() -> Result<Collection, CoreError> {
    Ok(Collection::new(SHARES_COLLECTION)?)
}

pub(crate) fn doc_context(id: &str) -> EncryptionContext {
    EncryptionContext::new()
        .with("purpose", "careconnect/medicloud")
        .with("document", id)
}

/// Upload pieces: small enough that a few in flight stay well under a
/// document chunk's worth of memory each, large enough to amortise the
/// channel.
const PIECE: usize = 256 << 10;

/// Reads `input` in pieces, refusing more than `max` bytes, and hands each
/// piece both to `to_seal` and to `to_hash` (a task of its own, so hashing
/// runs beside sealing). Returns the size. Dropping the senders at the end
/// is the end of stream for both.
async fn feed<R: AsyncRead + Unpin>(
    mut input: R,
    max: u64,
    to_seal: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    to_hash: tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> Result<u64, CoreError> {
    let mut seen = 0u64;
    loop {
        let mut buf = bytes::BytesMut::with_capacity(PIECE);
        while buf.len() < PIECE {
            match input.read_buf(&mut buf).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    let _ = to_seal
                        .send(Err(std::io::Error::other("upload failed")))
                        .await;
                    return Err(e.into());
                }
            }
        }
        if buf.is_empty() {
            return Ok(seen);
        }
        seen = seen.saturating_add(buf.len() as u64);
        if seen > max {
            let _ = to_seal
                .send(Err(std::io::Error::other("upload too large")))
                .await;
            return Err(CoreError::TooLarge { limit: max });
        }
        let piece = buf.freeze();
        // A closed end means the sealer or the hasher stopped: it reports why.
        if to_hash.send(piece.clone()).await.is_err() || to_seal.send(Ok(piece)).await.is_err() {
            return Ok(seen);
        }
    }
}

/// The blob store's end of the pipe: an end of stream counts only once the
/// sealer said it finished; otherwise the store sees an error and keeps
/// nothing.
struct Gated<R> {
    inner: R,
    finished: Arc<AtomicBool>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Gated<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() == before
            && buf.remaining() > 0
            && !self.finished.load(Ordering::SeqCst)
        {
            return Poll::Ready(Err(std::io::Error::other("upload did not finish")));
        }
        polled
    }
}

impl Inner {
    pub(crate) fn documents_key(&self) -> Result<KmsKeyId, CoreError> {
        Ok(KmsKeyId::new(self.medicloud.kms_key.clone())?)
    }

    /// The document and its live shares, `None` for an id that names
    /// nothing openable.
    async fn document(&self, id: &str) -> Result<Option<(Row, DocRow, Vec<UserId>)>, CoreError> {
        let Ok(row_id) = RowId::new(id) else {
            return Ok(None);
        };
        let coll = docs()?;
        let Some(row) = self.get(&coll, &row_id).await? else {
            return Ok(None);
        };
        let Some(doc) =
            rows::open::<DocRow>(&self.keys.current(), &coll, &row).filter(|d| d.info.id == id)
        else {
            return Ok(None);
        };
        let now = self.now();
        let share_coll = shares()?;
        let shared = self
            .store
            .find(&share_coll, &self.doc_index(id)?)
            .await?
            .iter()
            .filter_map(|r| rows::open::<ShareRow>(&self.keys.current(), &share_coll, r))
            .filter(|s| s.document == id && s.expires_at.is_none_or(|t| now < t))
            .map(|s| s.user)
            .collect();
        Ok(Some((row, doc, shared)))
    }

    /// Streams document `id` (its metadata `doc`), opened and verified
    /// chunk by chunk, into `out`. No access check, no audit: the caller's.
    pub(crate) async fn stream_document<W>(
        &self,
        id: &str,
        doc: &DocRow,
        out: &mut W,
    ) -> Result<u64, CoreError>
    where
        W: AsyncWrite + Unpin + Send,
    {
        let blob = BlobId::parse(&doc.blob)?;
        // The store reads ahead, so fetching the next chunk overlaps with
        // opening this one. A store that fails part-way is an I/O error,
        // not a truncated document.
        let mut input = self.blobs.get(&blob).await?;
        let key = self.documents_key()?;
        let header =
            DocumentHeader::read_from_async(&mut input, &OpenOptions::trusting(&key)).await?;
        let ctx = doc_context(id);
        let opener = match doc.rewrapped_key()? {
            Some(wrapped) => {
                let dek = self.kms.decrypt(&key, &wrapped, &ctx).await?;
                header.with_key(&dek, &ctx, self.provider)?
            }
            None => {
                header
                    .unwrap_key_with(self.kms.as_ref(), &ctx, self.provider)
                    .await?
            }
        };
        let n = opener.open_into(input, out).await?;
        Ok(n)
    }

    /// Seals `body` as document `id` under a fresh KMS data key into a new
    /// blob: hashed beside sealing, at most the configured size, stored only
    /// if sealing finished, refused if it took longer than half the orphan
    /// grace. Returns the plaintext size, the blob and the plaintext's
    /// SHA-256.
    pub(crate) async fn seal_to_blob<R>(
        &self,
        id: &str,
        body: R,
    ) -> Result<(u64, BlobId, [u8; 32]), CoreError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let ctx = doc_context(id);
        let key = self.documents_key()?;
        let writer = DocumentSealer::new()
            .provider(self.provider)
            .begin(self.kms.as_ref(), &key, &ctx, Vec::new())
            .await?;
        let (to_seal, mut pieces) = tokio::sync::mpsc::channel(2);
        let (to_hash, mut hash_rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        let hasher = tokio::spawn(async move {
            let mut h = Sha256::new();
            while let Some(piece) = hash_rx.recv().await {
                h.update(&piece);
            }
            h.finalize()
        });
        let feeding = feed(body, self.medicloud.max_bytes, to_seal, to_hash);
        let plaintext = tokio_util::io::StreamReader::new(futures::stream::poll_fn(move |cx| {
            pieces.poll_recv(cx)
        }));
        let (mut pipe_in, pipe_out) = tokio::io::duplex(2 << 20);
        let finished = Arc::new(AtomicBool::new(false));
        let mut gated = Gated {
            inner: pipe_out,
            finished: finished.clone(),
        };
        let sealing = async {
            let r = writer.seal_from(plaintext, &mut pipe_in).await;
            if r.is_ok() {
                finished.store(true, Ordering::SeqCst);
            }
            drop(pipe_in);
            r
        };
        let started = std::time::Instant::now();
        let (fed, sealed, stored) = tokio::join!(feeding, sealing, self.blobs.put(&mut gated));
        let hash = hasher.await;
        let size = match (fed, sealed, stored, hash) {
            (Ok(_), Ok(n), Ok(blob), Ok(hash)) if n > 0 => (n, blob, hash),
            (Ok(_), Ok(_), Ok(blob), Ok(_)) => {
                let _ = self.blobs.delete(&blob).await;
                return Err(CoreError::Invalid("empty file"));
            }
            (fed, sealed, stored, hash) => {
                if let Ok(blob) = stored.as_ref() {
                    let _ = self.blobs.delete(blob).await;
                }
                // The first cause: the upload itself, then sealing, then
                // the store.
                fed?;
                sealed?;
                stored?;
                hash.map_err(|e| CoreError::Io(std::io::Error::other(e)))?;
                return Err(CoreError::Io(std::io::Error::other("upload stopped")));
            }
        };
        let (n, blob, hash) = size;
        // A blob older than the grace with no metadata is an orphan to any
        // collector: an upload that took too long is not kept.
        if started.elapsed() >= self.medicloud.orphan_grace / 2 {
            let _ = self.blobs.delete(&blob).await;
            return Err(CoreError::Conflict(
                "upload took longer than half the orphan grace",
            ));
        }
        Ok((n, blob, hash.into()))
    }

    fn doc_index(&self, id: &str) -> Result<IndexEntry, CoreError> {
        let tag = self.keyed_id(&[b"document-index", id.as_bytes()])?;
        Ok(IndexEntry::new(
            DOC_INDEX,
            tag.as_str().as_bytes().to_vec(),
        )?)
    }

    fn share_id(&self, id: &str, user: &UserId) -> Result<RowId, CoreError> {
        self.keyed_id(&[
            b"share",
            id.as_bytes(),
            &crate::clinic::identity_bytes(user),
        ])
    }
}

impl Medicloud<'_> {
    /// Uploads a document from `body`, named `name` by the uploader with
    /// `declared_type` (display only: the content decides the type).
    ///
    /// # Errors
    ///
    /// [`CoreError::Invalid`] for a name with nothing displayable, a type not
    /// allowed (by its first bytes), an empty upload;
    /// [`CoreError::TooLarge`] past the configured size (nothing is stored
    /// either way); [`CoreError::Denied`] (audited) for roles that may not
    /// upload; KMS, storage and I/O errors.
    pub async fn upload<R>(
        &self,
        who: &Principal,
        name: &str,
        declared_type: &str,
        mut body: R,
    ) -> Result<DocumentInfo, CoreError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let c = &self.clinic.inner;
        let name = display_name(name).ok_or(CoreError::Invalid("file name"))?;
        c.decide(
            who,
            Action::UploadDocument,
            &Resource::DocumentStore,
            "documents".into(),
        )
        .await?;
        // The first bytes decide the type.
        let mut head = vec![0u8; SNIFF_LEN];
        let mut got = 0;
        while got < SNIFF_LEN {
            match body.read(&mut head[got..]).await? {
                0 => break,
                n => got += n,
            }
        }
        head.truncate(got);
        let file_type = FileType::sniff(&head, &name)
            .filter(|t| c.medicloud.allowed.contains(t))
            .ok_or(CoreError::Invalid("file type"))?;
        let id = new_id()?;
        let (n, blob, hash) = c
            .seal_to_blob(id.as_str(), head.as_slice().chain(body))
            .await?;
        let info = DocumentInfo {
            id: id.as_str().to_owned(),
            owner: who.user.clone(),
            name,
            file_type,
            declared_type: declared_type
                .chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect(),
            size: n,
            sha256: hex::encode(hash),
            created_at: c.now(),
        };
        let coll = docs()?;
        let mut data = rows::seal(
            &c.keys,
            &coll,
            &id,
            &DocRow {
                info: info.clone(),
                blob: blob.as_str().to_owned(),
                rewrapped: None,
            },
        )?;
        data.indexes = vec![c.index(OWNER_INDEX, &who.user)?];
        // The upload's own entry, with its id (the decision above was made
        // before there was one).
        let recorded = c
            .audit
            .record(
                AuditEvent::by(
                    who,
                    "DocumentStored",
                    format!("document:{}", id.as_str()),
                    Outcome::Allowed,
                )
                .because(
                    &serde_json::json!({ "size": info.size, "type": info.file_type.mime() })
                        .to_string(),
                ),
            )
            .await;
        if let Err(e) = recorded {
            let _ = c.blobs.delete(&blob).await;
            return Err(e);
        }
        if let Err(e) = c.store.insert(&coll, &id, data).await {
            let _ = c.blobs.delete(&blob).await;
            return Err(e.into());
        }
        Ok(info)
    }

    /// The documents `who` may open: their own uploads and live shares
    /// (administrators: every document, audited), newest first.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for roles without Medicloud.
    pub async fn list(&self, who: &Principal) -> Result<Vec<DocumentInfo>, CoreError> {
        let c = &self.clinic.inner;
        let basis = c
            .decide(
                who,
                Action::ListDocuments,
                &Resource::DocumentStore,
                "documents".into(),
            )
            .await?;
        let coll = docs()?;
        let mut out: Vec<DocumentInfo> = Vec::new();
        if basis == careconnect_authz::Basis::AdminOverride {
            for row in c.all(&coll).await? {
                if let Some(d) = rows::open::<DocRow>(&c.keys.current(), &coll, &row) {
                    out.push(d.info);
                }
            }
        } else {
            for row in c
                .store
                .find(&coll, &c.index(OWNER_INDEX, &who.user)?)
                .await?
            {
                if let Some(d) = rows::open::<DocRow>(&c.keys.current(), &coll, &row)
                    .filter(|d| d.info.owner == who.user)
                {
                    out.push(d.info);
                }
            }
            let now = c.now();
            let share_coll = shares()?;
            let share_rows = c
                .store
                .find(&share_coll, &c.index(USER_INDEX, &who.user)?)
                .await?;
            for s in share_rows
                .iter()
                .filter_map(|r| rows::open::<ShareRow>(&c.keys.current(), &share_coll, r))
                .filter(|s| s.user == who.user && s.expires_at.is_none_or(|t| now < t))
            {
                if let Some((_, d, _)) = c.document(&s.document).await? {
                    out.push(d.info);
                }
            }
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }

    /// Streams document `id`, decrypted and verified chunk by chunk, into
    /// `out`. Only `Ok` means the whole file was written; on an error,
    /// discard what `out` received.
    ///
    /// # Errors
    ///
    /// As [`Medicloud::open`], then
    /// [`careconnect_crypto::Error::DecryptionFailed`] (as
    /// [`CoreError::Crypto`]) for a tampered, truncated or swapped blob.
    pub async fn download<W>(
        &self,
        who: &Principal,
        id: &str,
        out: &mut W,
    ) -> Result<DocumentInfo, CoreError>
    where
        W: AsyncWrite + Unpin + Send,
    {
        let download = self.open(who, id).await?;
        let info = download.info().clone();
        download.write_to(out).await?;
        Ok(info)
    }

    /// Checks (and audits) that `who` may download document `id`, and
    /// returns it ready to stream: what it is comes before its first byte
    /// (a web server sends the status and headers, then the body).
    ///
    /// # Errors
    ///
    /// [`CoreError::NotFound`] for an unknown id or one `who` may not open
    /// (the denial is audited).
    pub async fn open(&self, who: &Principal, id: &str) -> Result<Download, CoreError> {
        let c = &self.clinic.inner;
        let Some((_, doc, shared)) = c.document(id).await? else {
            c.refuse(who, Action::DownloadDocument, "document:?".into())
                .await?;
            return Err(CoreError::NotFound);
        };
        c.decide_hidden(
            who,
            Action::DownloadDocument,
            &Resource::Document {
                owner: &doc.info.owner,
                shared_with: &shared,
            },
            format!("document:{id}"),
        )
        .await?;
        Ok(Download {
            clinic: self.clinic.clone(),
            id: id.to_owned(),
            doc,
        })
    }

    /// The owner shares document `id` with `user`, read-only, until
    /// `expires_at` (Unix seconds) if given.
    ///
    /// # Errors
    ///
    /// [`CoreError::NotFound`] for an unknown id or anyone but the owner
    /// (audited); [`CoreError::Invalid`] for a share with oneself or an
    /// expiry in the past.
    pub async fn share(
        &self,
        owner: &Principal,
        id: &str,
        user: &UserId,
        expires_at: Option<u64>,
    ) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        let (_, doc) = self.owned(owner, id, Action::ShareDocument).await?;
        if *user == doc.info.owner || expires_at.is_some_and(|t| t <= c.now()) {
            return Err(CoreError::Invalid("share"));
        }
        // Only someone in the directory who could download with a grant (a
        // doctor or an external partner) can be given one: a share with an
        // unknown id would sit there for whoever is given that id later.
        let recipient = self.clinic.person(user).await?;
        if !recipient
            .is_some_and(|p| p.roles.contains(Role::Doctor) || p.roles.contains(Role::External))
        {
            return Err(CoreError::Invalid("recipient"));
        }
        let coll = shares()?;
        let share_id = c.share_id(id, user)?;
        let mut data = rows::seal(
            &c.keys,
            &coll,
            &share_id,
            &ShareRow {
                document: id.to_owned(),
                user: user.clone(),
                by: owner.user.clone(),
                expires_at,
            },
        )?;
        data.indexes = vec![c.index(USER_INDEX, user)?, c.doc_index(id)?];
        // What an auditor needs: to whom, until when.
        c.audit
            .record(
                AuditEvent::by(
                    owner,
                    "DocumentShared",
                    format!("document:{id}"),
                    Outcome::Allowed,
                )
                .because(
                    &serde_json::json!({ "recipient": user.subject(), "expires_at": expires_at })
                        .to_string(),
                ),
            )
            .await?;
        for _ in 0..8 {
            let write = match c.get(&coll, &share_id).await? {
                Some(row) => Write::Update {
                    coll: coll.clone(),
                    id: share_id.clone(),
                    expected: row.version,
                    data: data.clone(),
                },
                None => Write::Insert {
                    coll: coll.clone(),
                    id: share_id.clone(),
                    data: data.clone(),
                },
            };
            match c.store.commit(&[write]).await {
                Ok(_) => return Ok(()),
                Err(StorageError::VersionConflict { .. } | StorageError::DuplicateId) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict("share kept changing"))
    }

    /// The owner revokes `user`'s share of document `id` (nothing to do if
    /// there is none).
    ///
    /// # Errors
    ///
    /// As [`Medicloud::share`].
    pub async fn revoke(
        &self,
        owner: &Principal,
        id: &str,
        user: &UserId,
    ) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        self.owned(owner, id, Action::ShareDocument).await?;
        c.audit
            .record(
                AuditEvent::by(
                    owner,
                    "DocumentShareRevoked",
                    format!("document:{id}"),
                    Outcome::Allowed,
                )
                .because(&serde_json::json!({ "recipient": user.subject() }).to_string()),
            )
            .await?;
        let coll = shares()?;
        let share_id = c.share_id(id, user)?;
        for _ in 0..8 {
            let Some(row) = c.get(&coll, &share_id).await? else {
                return Ok(());
            };
            match c.store.delete(&coll, &share_id, row.version).await {
                Ok(()) | Err(StorageError::NotFound) => return Ok(()),
                Err(StorageError::VersionConflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict("share kept changing"))
    }

    /// The owner deletes document `id`: the metadata first (unreachable at
    /// once; it holds the data key a rotation re-wrapped, if any), then its
    /// shares and its blob with the original wrapped data key.
    ///
    /// # Errors
    ///
    /// As [`Medicloud::share`].
    pub async fn delete(&self, owner: &Principal, id: &str) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        let (row, doc) = self.owned(owner, id, Action::DeleteDocument).await?;
        match c.store.delete(&docs()?, &row.id, row.version).await {
            Ok(()) => {}
            Err(StorageError::VersionConflict { .. } | StorageError::NotFound) => {
                return Err(CoreError::Conflict("changed meanwhile; try again"));
            }
            Err(e) => return Err(e.into()),
        }
        let coll = shares()?;
        for r in c.store.find(&coll, &c.doc_index(id)?).await? {
            let _ = c.store.delete(&coll, &r.id, r.version).await;
        }
        match c.blobs.delete(&BlobId::parse(&doc.blob)?).await {
            Ok(()) | Err(StorageError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the blobs no document references and that are older than
    /// [`MedicloudConfig::orphan_grace`]: what a crash between an upload's
    /// blob and its metadata, or in the middle of a delete, leaves behind.
    /// Fails closed: if any document's metadata does not open (a forged or
    /// damaged row, a missing key), nothing is deleted, since its blob
    /// cannot be told apart from an orphan. Safe beside uploads and deletes
    /// on any node whose clock agrees with the blob store's (see
    /// [`MedicloudConfig::orphan_grace`]). Call it from a timer or at start.
    ///
    /// The blob store (directory, or bucket and prefix) must belong to this
    /// clinic alone: any blob there that none of its documents references
    /// is deleted.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for anyone but an administrator;
    /// [`CoreError::Corrupt`] for metadata that does not open (nothing
    /// deleted); storage errors (what was deleted before stays deleted).
    pub async fn collect_orphans(&self, admin: &Principal) -> Result<OrphanReport, CoreError> {
        use futures::TryStreamExt;
        let c = &self.clinic.inner;
        c.decide_system(admin, Action::CollectOrphans, "documents:orphans".into())
            .await?;
        // Blobs written before this instant, less the grace, are old enough:
        // taken before the scan, so an upload that completes during the
        // scan is young. Blob times come from the store's clock, so this is
        // the host's clock, not the clinic's.
        let cutoff = std::time::SystemTime::now()
            .checked_sub(c.medicloud.orphan_grace)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let mut report = OrphanReport::default();
        let coll = docs()?;
        let mut referenced = std::collections::HashSet::new();
        let mut pages = c.pages(&coll, 1000);
        while let Some(page) = pages.next().await? {
            for row in &page {
                let doc = rows::open::<DocRow>(&c.keys.current(), &coll, row)
                    .filter(|d| d.info.id == row.id.as_str())
                    .ok_or(CoreError::Corrupt(
                        "a document's metadata does not open: no blob collected",
                    ))?;
                referenced.insert(doc.blob);
                report.documents += 1;
            }
        }
        let mut blobs = c.blobs.list();
        while let Some(blob) = blobs.try_next().await? {
            report.blobs += 1;
            if referenced.contains(blob.id.as_str()) {
                continue;
            }
            if blob.modified > cutoff {
                report.young += 1;
                continue;
            }
            match c.blobs.delete(&blob.id).await {
                Ok(()) => report.deleted += 1,
                // Deleted meanwhile (a document delete finishing).
                Err(StorageError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(
            documents = report.documents,
            blobs = report.blobs,
            young = report.young,
            deleted = report.deleted,
            "orphan blobs collected"
        );
        c.audit
            .record(AuditEvent::by(
                admin,
                "CollectOrphans",
                format!(
                    "documents:orphans deleted={} young={} blobs={} documents={}",
                    report.deleted, report.young, report.blobs, report.documents
                ),
                Outcome::Allowed,
            ))
            .await?;
        Ok(report)
    }

    /// The documents' KMS key: its current version, since when, and when
    /// the next rotation is due.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for anyone but an administrator;
    /// KMS errors.
    pub async fn rotation_status(&self, admin: &Principal) -> Result<RotationStatus, CoreError> {
        let c = &self.clinic.inner;
        c.decide_system(admin, Action::RotateKeys, "keys:documents".into())
            .await?;
        self.status().await
    }

    async fn status(&self) -> Result<RotationStatus, CoreError> {
        let c = &self.clinic.inner;
        let key = c.documents_key()?;
        let d = c.kms.describe(&key).await?;
        if let Some(schedule) = c.kms.rotation_schedule(&key).await? {
            return Ok(RotationStatus {
                kms_key: c.medicloud.kms_key.clone(),
                current_version: d.current_version,
                current_since: d.current_since,
                next_due: schedule
                    .next_rotation_unix
                    .filter(|_| schedule.enabled)
                    .and_then(|t| u64::try_from(t).ok()),
                kms_schedule: Some(schedule),
            });
        }
        // The later of the KMS's own date for the version and the clinic's
        // record of its last rotation (clocks of two hosts may differ).
        let ours = self.last_rotation(d.current_version).await?;
        let since = d.current_since.map(|a| ours.map_or(a, |b| a.max(b)));
        Ok(RotationStatus {
            kms_key: c.medicloud.kms_key.clone(),
            current_version: d.current_version,
            current_since: since,
            next_due: since.map(|t| t.saturating_add(c.medicloud.rotate_every.as_secs())),
            kms_schedule: None,
        })
    }

    /// When this clinic made `version` of the documents' key, if it did.
    async fn last_rotation(&self, version: u32) -> Result<Option<u64>, CoreError> {
        let c = &self.clinic.inner;
        let coll = Collection::new(STATE_COLLECTION)?;
        let id = RowId::new("documents-key-rotation")?;
        Ok(c.get(&coll, &id)
            .await?
            .and_then(|row| rows::open::<Rotated>(&c.keys.current(), &coll, &row))
            .filter(|r| r.version == version)
            .map(|r| r.at))
    }

    async fn record_rotation(&self, version: u32) -> Result<(), CoreError> {
        let c = &self.clinic.inner;
        let coll = Collection::new(STATE_COLLECTION)?;
        let id = RowId::new("documents-key-rotation")?;
        let data = rows::seal(
            &c.keys,
            &coll,
            &id,
            &Rotated {
                version,
                at: c.now(),
            },
        )?;
        let write = match c.get(&coll, &id).await? {
            Some(row) => Write::Update {
                coll,
                id,
                expected: row.version,
                data,
            },
            None => Write::Insert { coll, id, data },
        };
        // Losing a race here only means another node recorded it.
        match c.store.commit(&[write]).await {
            Ok(_) | Err(StorageError::VersionConflict { .. } | StorageError::DuplicateId) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the documents' KMS key a new version if the current one is
    /// older than [`MedicloudConfig::rotate_every`] (call it from a timer or
    /// at start; it is cheap when nothing is due). New documents' data keys
    /// are wrapped under the new version; earlier documents keep opening
    /// under theirs. Returns the new version, `None` when nothing was due.
    ///
    /// A KMS that rotates keys by itself (AWS KMS) is instead asked to do so
    /// every `rotate_every` (in whole days), if its schedule says otherwise;
    /// it then rotates on its own and this returns `None`.
    ///
    /// # Errors
    ///
    /// [`CoreError::Denied`] (audited) for anyone but an administrator;
    /// KMS errors, among them a period the KMS refuses (AWS KMS: 90 to
    /// 2560 days).
    pub async fn rotate_if_due(&self, admin: &Principal) -> Result<Option<u32>, CoreError> {
        let c = &self.clinic.inner;
        c.decide_system(admin, Action::RotateKeys, "keys:documents".into())
            .await?;
        let status = self.status().await?;
        if let Some(schedule) = status.kms_schedule {
            let days =
                u32::try_from(c.medicloud.rotate_every.as_secs() / 86_400).unwrap_or(u32::MAX);
            // A KMS that does not report its period is told again (the
            // call is idempotent).
            if !schedule.enabled || schedule.period_days != Some(days) {
                let now = c.kms.schedule_rotation(&c.documents_key()?, days).await?;
                tracing::info!(
                    days,
                    enabled = now.enabled,
                    "documents' KMS key rotation scheduled"
                );
            }
            return Ok(None);
        }
        match status.next_due {
            Some(due) if c.now() >= due => {
                let d = c.kms.rotate(&c.documents_key()?).await?;
                self.record_rotation(d.current_version).await?;
                tracing::info!(version = d.current_version, "documents' KMS key rotated");
                Ok(Some(d.current_version))
            }
            _ => Ok(None),
        }
    }

    /// The document `id` if `who` may do `action` to it as its author;
    /// audited either way; `NotFound` otherwise.
    async fn owned(
        &self,
        who: &Principal,
        id: &str,
        action: Action,
    ) -> Result<(Row, DocRow), CoreError> {
        let c = &self.clinic.inner;
        let Some((row, doc, shared)) = c.document(id).await? else {
            c.refuse(who, action, "document:?".into()).await?;
            return Err(CoreError::NotFound);
        };
        c.decide_hidden(
            who,
            action,
            &Resource::Document {
                owner: &doc.info.owner,
                shared_with: &shared,
            },
            format!("document:{id}"),
        )
        .await?;
        Ok((row, doc))
    }
}
