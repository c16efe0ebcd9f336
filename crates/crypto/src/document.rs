//! Documents: chunked STREAM encryption over `std::io` (§6).
//!
//! Each document gets its own data key from a KMS; the wrapped key travels
//! in the header. Plaintext is cut into chunks of `2^chunk_log2` bytes
//! (64 KiB by default); chunk `i` is sealed with nonce `i || last`, so
//! truncation, reordering, duplication and appended chunks all fail to open.
//! Reader and writer each hold one chunk (plus a tag and one byte). The
//! reader refuses chunks larger than its [`OpenOptions`] allow (1 MiB by
//! default) before allocating, and only asks the KMS to unwrap keys wrapped
//! under a KMS key it trusts.
//!
//! Both fail closed: after any error (an I/O error from the sink or source,
//! a chunk that does not authenticate) every later call fails too. A writer
//! that could be retried after a failed write would seal the same buffer
//! under the same nonce twice.
//!
//! ```
//! # async fn demo() -> Result<(), careconnect_crypto::Error> {
//! use careconnect_crypto::{EncryptionContext, LocalKms, RootSecret, KmsKeyId};
//! use careconnect_crypto::document::{DocumentSealer, DocumentHeader, OpenOptions};
//! use std::io::{Read, Write};
//!
//! let dir = tempfile::tempdir()?;
//! let kms = LocalKms::open_or_create(dir.path().join("kms"), RootSecret::generate())?;
//! let kek = KmsKeyId::new("medicloud")?;
//! kms.ensure_key(&kek)?;
//! let ctx = EncryptionContext::new().with("document", "scan-17");
//!
//! let mut w = DocumentSealer::new().begin(&kms, &kek, &ctx, Vec::new()).await?;
//! w.write_all(b"x-ray, left wrist")?;
//! let sealed = w.finish()?;
//!
//! // The reader says which KMS keys it trusts; a header naming another is refused.
//! let options = OpenOptions::trusting(kek);
//! let mut input = &sealed[..];
//! let header = DocumentHeader::read_from(&mut input, &options)?;
//! let mut r = header.unwrap_key(&kms, &ctx).await?.reader(input);
//! let mut plain = Vec::new();
//! r.read_to_end(&mut plain)?;
//! assert_eq!(plain, b"x-ray, left wrist");
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::io::{self, Read, Write};

use crate::context::EncryptionContext;
use crate::envelope::{associated_data, chunk_nonce, message_aead, new_header};
use crate::error::{Error, FormatError, Misuse};
use crate::format::{
    DEFAULT_CHUNK_LOG2, Form, Header, KeyRef, MAX_CHUNK_LOG2, MIN_CHUNK_LOG2, PREFIX_LEN,
};
use crate::key::DataKey;
use crate::kms::{Kms, KmsKeyId, TrustedKeys, WrappedKey};
use crate::provider::{Aead, CryptoProvider, default_provider};
use crate::suite::{Suite, TAG_LEN};

/// Settings for sealing documents: suite, provider, chunk size.
#[derive(Debug, Clone, Copy)]
pub struct DocumentSealer {
    provider: &'static dyn CryptoProvider,
    suite: Suite,
    chunk_log2: u8,
}

impl Default for DocumentSealer {
    fn default() -> Self {
        Self::new()
    }
}

impl DocumentSealer {
    /// AES-256-GCM, the default provider, 64 KiB chunks.
    pub fn new() -> Self {
        Self {
            provider: default_provider(),
            suite: Suite::Aes256Gcm,
            chunk_log2: DEFAULT_CHUNK_LOG2,
        }
    }

    /// Uses `suite`.
    #[must_use]
    pub fn suite(mut self, suite: Suite) -> Self {
        self.suite = suite;
        self
    }

    /// Uses `provider`.
    #[must_use]
    pub fn provider(mut self, provider: &'static dyn CryptoProvider) -> Self {
        self.provider = provider;
        self
    }

    /// Uses chunks of `bytes` bytes: a power of two from 4 KiB to 16 MiB.
    ///
    /// # Errors
    ///
    /// [`Misuse::ChunkSize`] for any other size.
    pub fn chunk_size(mut self, bytes: usize) -> Result<Self, Error> {
        self.chunk_log2 = chunk_log2_of(bytes)?;
        Ok(self)
    }

    /// Asks `kms` for a fresh data key under `kms_key`, writes the header to
    /// `out` and returns a writer that seals what is written to it. The KMS
    /// sees `ctx` as its own encryption context.
    ///
    /// # Errors
    ///
    /// A KMS error, a context outside its bounds, or an I/O error writing the header.
    pub async fn begin<W: Write>(
        &self,
        kms: &dyn Kms,
        kms_key: &KmsKeyId,
        ctx: &EncryptionContext,
        out: W,
    ) -> Result<DocumentWriter<W>, Error> {
        let (dek, wrapped) = kms.generate_data_key(kms_key, ctx).await?;
        self.begin_with_key(&dek, kms_key, wrapped, ctx, out)
    }

    /// As [`DocumentSealer::begin`], with a data key the caller already holds.
    ///
    /// # Errors
    ///
    /// A context or key reference outside its bounds, or an I/O error.
    pub fn begin_with_key<W: Write>(
        &self,
        dek: &DataKey,
        kms_key: &KmsKeyId,
        wrapped: WrappedKey,
        ctx: &EncryptionContext,
        out: W,
    ) -> Result<DocumentWriter<W>, Error> {
        let form = Form::Document {
            chunk_log2: self.chunk_log2,
        };
        let key_ref = KeyRef::Kms {
            key: kms_key.as_str().to_owned(),
            wrapped: wrapped.into_bytes(),
        };
        self.begin_with_header(dek, new_header(dek, self.suite, form, key_ref)?, ctx, out)
    }

    /// As [`DocumentSealer::begin_with_key`] with a caller-chosen salt, for
    /// known-answer vectors. Never reuse a salt.
    ///
    /// # Errors
    ///
    /// As [`DocumentSealer::begin_with_key`].
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn begin_with_salt<W: Write>(
        &self,
        dek: &DataKey,
        kms_key: &KmsKeyId,
        wrapped: WrappedKey,
        salt: [u8; crate::SALT_LEN],
        ctx: &EncryptionContext,
        out: W,
    ) -> Result<DocumentWriter<W>, Error> {
        let header = Header {
            suite: self.suite,
            form: Form::Document {
                chunk_log2: self.chunk_log2,
            },
            key_ref: KeyRef::Kms {
                key: kms_key.as_str().to_owned(),
                wrapped: wrapped.into_bytes(),
            },
            salt,
            commitment: *dek.commitment(),
        };
        self.begin_with_header(dek, header, ctx, out)
    }

    fn begin_with_header<W: Write>(
        &self,
        dek: &DataKey,
        header: Header,
        ctx: &EncryptionContext,
        mut out: W,
    ) -> Result<DocumentWriter<W>, Error> {
        let mut head = Vec::new();
        header.write(&mut head)?;
        let aead = message_aead(self.provider, dek, &header)?;
        let aad = associated_data(&head, &header, ctx)?;
        out.write_all(&head)?;
        let chunk = 1usize << self.chunk_log2;
        Ok(DocumentWriter {
            out,
            aead,
            aad,
            buf: Vec::with_capacity(chunk + TAG_LEN),
            chunk,
            counter: 0,
            failed: false,
        })
    }
}

/// Seals everything written to it; call [`DocumentWriter::finish`] at the end.
///
/// Dropping it without `finish` leaves a document with no last chunk, which
/// never opens: an interrupted upload cannot pass for a complete one.
///
/// After any error (including a failed or interrupted write to the inner
/// writer) the writer is failed for good: every later `write`, `flush` and
/// `finish` returns [`Misuse::StreamFailed`]. Start a new document instead
/// of retrying; the bytes already written are not a document.
pub struct DocumentWriter<W: Write> {
    out: W,
    aead: Box<dyn Aead>,
    aad: Vec<u8>,
    buf: Vec<u8>,
    chunk: usize,
    counter: u64,
    failed: bool,
}

impl<W: Write> std::fmt::Debug for DocumentWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentWriter")
            .field("chunk", &self.chunk)
            .field("counter", &self.counter)
            .field("failed", &self.failed)
            .finish()
    }
}

fn stream_failed() -> io::Error {
    io::Error::other(Error::Misuse(Misuse::StreamFailed))
}

impl<W: Write> DocumentWriter<W> {
    /// Runs `f` unless the writer already failed; any error fails it for good.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<T> {
        if self.failed {
            return Err(stream_failed());
        }
        // Failed until proven otherwise: a panic in the inner writer leaves it failed too.
        self.failed = true;
        let out = f(self)?;
        self.failed = false;
        Ok(out)
    }

    /// Seals `buf` as chunk `counter` and writes it out. The caller has marked
    /// the writer failed; the buffer is consumed (cleared) whatever happens,
    /// so its ciphertext can never be sealed a second time.
    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        let nonce = chunk_nonce(self.counter, last);
        let sealed = self
            .aead
            .seal_in_place_detached(&nonce, &self.aad, &mut self.buf);
        let written = sealed.map_err(io::Error::other).and_then(|tag| {
            self.out.write_all(&self.buf)?;
            self.out.write_all(&tag)
        });
        self.buf.clear();
        written?;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| io::Error::other(Error::Misuse(Misuse::TooLong)))?;
        Ok(())
    }

    /// Seals the last chunk, flushes, and returns the inner writer.
    ///
    /// # Errors
    ///
    /// An I/O error from the inner writer; [`Misuse::StreamFailed`] if an
    /// earlier call failed.
    pub fn finish(mut self) -> Result<W, Error> {
        self.guarded(|w| {
            w.seal_chunk(true)?;
            w.out.flush()
        })
        .map_err(into_error)?;
        Ok(self.out)
    }
}

/// Unwraps our own errors carried through `io::Error`.
fn into_error(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner()
            && let Ok(ours) = inner.downcast::<Error>()
        {
            return *ours;
        }
        return Error::Misuse(Misuse::StreamFailed);
    }
    Error::Io(e)
}

impl<W: Write> Write for DocumentWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.guarded(|w| {
            if data.is_empty() {
                return Ok(0);
            }
            // A full buffer is sealed only once more data arrives, so that the
            // final chunk is always sealed by `finish` with the last flag.
            if w.buf.len() == w.chunk {
                w.seal_chunk(false)?;
            }
            let n = data.len().min(w.chunk - w.buf.len());
            w.buf.extend_from_slice(&data[..n]);
            Ok(n)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.guarded(|w| w.out.flush())
    }
}

/// What a document reader accepts: the KMS keys it trusts to have wrapped
/// document keys, the largest chunk it will allocate, and the longest
/// associated data it will authenticate per chunk.
///
/// There is no default: a reader must say which KMS keys it trusts
/// ([`TrustedKeys`]). The limits default to 1 MiB chunks (the format allows
/// up to 16 MiB) and 16 KiB of associated data (header fields plus the
/// encoded [`EncryptionContext`]).
///
/// ```
/// use careconnect_crypto::document::OpenOptions;
/// use careconnect_crypto::kms::{KmsKeyId, TrustedKeys};
///
/// let current = KmsKeyId::new("alias/medicloud")?;
/// let previous = KmsKeyId::new("alias/medicloud-2025")?;
/// let options = OpenOptions::trusting(TrustedKeys::new([current, previous]))
///     .max_chunk_size(4 << 20)?;
/// # Ok::<(), careconnect_crypto::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct OpenOptions {
    trusted: TrustedKeys,
    max_chunk_log2: u8,
    max_aad: usize,
}

/// Default [`OpenOptions::max_chunk_size`]: 1 MiB.
pub const DEFAULT_MAX_CHUNK_SIZE: usize = 1 << 20;
/// Default [`OpenOptions::max_aad_len`]: 16 KiB.
pub const DEFAULT_MAX_AAD_LEN: usize = 16 << 10;

impl OpenOptions {
    /// Trusts `keys` (one [`KmsKeyId`], or a [`TrustedKeys`] set), with the
    /// default limits.
    pub fn trusting(keys: impl Into<TrustedKeys>) -> Self {
        Self {
            trusted: keys.into(),
            max_chunk_log2: DEFAULT_MAX_CHUNK_SIZE.trailing_zeros() as u8,
            max_aad: DEFAULT_MAX_AAD_LEN,
        }
    }

    /// Accepts chunks of up to `bytes` bytes: a power of two from 4 KiB to 16 MiB.
    ///
    /// # Errors
    ///
    /// [`Misuse::ChunkSize`] for any other size.
    pub fn max_chunk_size(mut self, bytes: usize) -> Result<Self, Error> {
        self.max_chunk_log2 = chunk_log2_of(bytes)?;
        Ok(self)
    }

    /// Accepts associated data (header fields plus the encoded context) of up
    /// to `bytes` bytes.
    #[must_use]
    pub fn max_aad_len(mut self, bytes: usize) -> Self {
        self.max_aad = bytes;
        self
    }

    /// The trusted KMS keys.
    pub fn trusted(&self) -> &TrustedKeys {
        &self.trusted
    }
}

fn chunk_log2_of(bytes: usize) -> Result<u8, Error> {
    let log2 = bytes.trailing_zeros();
    if !bytes.is_power_of_two()
        || !(u32::from(MIN_CHUNK_LOG2)..=u32::from(MAX_CHUNK_LOG2)).contains(&log2)
    {
        return Err(Misuse::ChunkSize(bytes).into());
    }
    u8::try_from(log2).map_err(|_| Misuse::ChunkSize(bytes).into())
}

/// A document header read from a stream, before its data key is unwrapped.
#[derive(Debug)]
pub struct DocumentHeader {
    header: Header,
    bytes: Vec<u8>,
    options: OpenOptions,
}

impl DocumentHeader {
    /// Reads exactly the header from `input`, leaving it at the first chunk,
    /// and checks it against `options`' chunk-size limit.
    ///
    /// # Errors
    ///
    /// A [`FormatError`] for a malformed header ([`FormatError::Truncated`] if
    /// the stream ends inside it), [`Misuse::WrongForm`] for a record,
    /// [`Error::LimitExceeded`] for a chunk larger than `options` allow.
    pub fn read_from<R: Read>(input: &mut R, options: &OpenOptions) -> Result<Self, Error> {
        let mut prefix = [0u8; PREFIX_LEN];
        read_exact_or_truncated(input, &mut prefix)?;
        let len = Header::len_from_prefix(&prefix)?;
        let mut bytes = vec![0u8; len];
        bytes[..PREFIX_LEN].copy_from_slice(&prefix);
        read_exact_or_truncated(input, &mut bytes[PREFIX_LEN..])?;
        let (header, _) = Header::parse(&bytes)?;
        let Form::Document { chunk_log2 } = header.form else {
            return Err(Misuse::WrongForm.into());
        };
        if chunk_log2 > options.max_chunk_log2 {
            return Err(Error::LimitExceeded {
                what: "chunk size",
                len: 1 << chunk_log2,
                max: 1 << options.max_chunk_log2,
            });
        }
        Ok(Self {
            header,
            bytes,
            options: options.clone(),
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The header's KMS key, if the reader trusts it.
    fn trusted_kms_ref(&self) -> Result<(KmsKeyId, WrappedKey), Error> {
        let KeyRef::Kms { key, wrapped } = &self.header.key_ref else {
            return Err(Misuse::WrongKeyReference.into());
        };
        let kms_key = self.options.trusted.check(key)?;
        Ok((kms_key, WrappedKey::new(wrapped.clone())?))
    }

    /// Unwraps the data key with `kms` under `ctx`, with the default provider.
    ///
    /// # Errors
    ///
    /// [`crate::KmsError::UntrustedKey`] (before any KMS call) when the header
    /// names a KMS key the reader's [`OpenOptions`] do not trust; a KMS error
    /// (the wrapped key does not unwrap under this context);
    /// [`Error::CommitmentMismatch`] if the unwrapped key does not match the
    /// header's commitment; [`Error::LimitExceeded`] for associated data
    /// longer than the options allow.
    pub async fn unwrap_key(
        self,
        kms: &dyn Kms,
        ctx: &EncryptionContext,
    ) -> Result<DocumentOpener, Error> {
        self.unwrap_key_with(kms, ctx, default_provider()).await
    }

    /// As [`DocumentHeader::unwrap_key`], with a chosen provider.
    ///
    /// # Errors
    ///
    /// As [`DocumentHeader::unwrap_key`].
    pub async fn unwrap_key_with(
        self,
        kms: &dyn Kms,
        ctx: &EncryptionContext,
        provider: &'static dyn CryptoProvider,
    ) -> Result<DocumentOpener, Error> {
        let (kms_key, wrapped) = self.trusted_kms_ref()?;
        self.check_aad(ctx)?;
        let dek = kms.decrypt(&kms_key, &wrapped, ctx).await?;
        self.with_key(&dek, ctx, provider)
    }

    /// Re-wraps the document's data key under `to` (KMS `ReEncrypt`: the
    /// data key need not leave the KMS) and returns the new header bytes.
    /// Write them followed by the unchanged rest of the stream: the chunks
    /// stay valid, because the key reference is not part of their associated
    /// data and the commitment still matches.
    ///
    /// # Errors
    ///
    /// [`crate::KmsError::UntrustedKey`] when the header names a KMS key the
    /// options do not trust (re-wrapping would launder a forged key); KMS
    /// errors, or a header outside the format's bounds.
    pub async fn rewrap(
        &self,
        kms: &dyn Kms,
        ctx: &EncryptionContext,
        to: &KmsKeyId,
    ) -> Result<Vec<u8>, Error> {
        let rewrapped = self.rewrap_key(kms, ctx, to).await?;
        crate::envelope::rewrite_kms_ref(&self.header, to.as_str(), rewrapped.into_bytes())
    }

    /// The document's data key re-wrapped under the current version of `to`
    /// (KMS `ReEncrypt`), for a caller that keeps it beside the document
    /// rather than rewriting the stream: open with it by unwrapping it
    /// ([`Kms::decrypt`] under `to` and the same context) and passing the
    /// data key to [`DocumentHeader::with_key`], which checks it against the
    /// header's commitment.
    ///
    /// # Errors
    ///
    /// As [`DocumentHeader::rewrap`].
    pub async fn rewrap_key(
        &self,
        kms: &dyn Kms,
        ctx: &EncryptionContext,
        to: &KmsKeyId,
    ) -> Result<WrappedKey, Error> {
        let (from, wrapped) = self.trusted_kms_ref()?;
        self.check_aad(ctx)?;
        kms.re_encrypt(&from, &wrapped, ctx, to).await
    }

    /// Refuses associated data longer than the options allow, before it is built.
    fn check_aad(&self, ctx: &EncryptionContext) -> Result<(), Error> {
        let len = crate::envelope::associated_data_len(&self.header, ctx);
        if len > self.options.max_aad {
            return Err(Error::LimitExceeded {
                what: "associated data",
                len,
                max: self.options.max_aad,
            });
        }
        Ok(())
    }

    /// Prepares to open with a data key the caller already holds.
    ///
    /// # Errors
    ///
    /// [`Error::CommitmentMismatch`] if `dek` does not match the commitment;
    /// [`Error::LimitExceeded`] for associated data longer than the options allow.
    pub fn with_key(
        self,
        dek: &DataKey,
        ctx: &EncryptionContext,
        provider: &'static dyn CryptoProvider,
    ) -> Result<DocumentOpener, Error> {
        self.check_aad(ctx)?;
        let aead = message_aead(provider, dek, &self.header)?;
        let aad = associated_data(&self.bytes, &self.header, ctx)?;
        let Form::Document { chunk_log2 } = self.header.form else {
            return Err(Misuse::WrongForm.into());
        };
        Ok(DocumentOpener {
            aead,
            aad,
            chunk: 1usize << chunk_log2,
        })
    }
}

fn read_exact_or_truncated<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<(), Error> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Format(FormatError::Truncated),
        _ => Error::Io(e),
    })
}

/// A document whose key is ready; turn it into a reader with [`DocumentOpener::reader`].
pub struct DocumentOpener {
    aead: Box<dyn Aead>,
    aad: Vec<u8>,
    chunk: usize,
}

impl std::fmt::Debug for DocumentOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentOpener")
            .field("chunk", &self.chunk)
            .finish_non_exhaustive()
    }
}

impl DocumentOpener {
    /// A reader yielding the plaintext of the chunks that follow in `input`.
    ///
    /// Each chunk is authenticated before any of its bytes are returned. A
    /// read fails with [`io::ErrorKind::InvalidData`] (wrapping
    /// [`Error::DecryptionFailed`]) on any tampering, truncation or
    /// extension, and on a non-canonical document (an empty last chunk after
    /// a full one, which no writer produces). After any error every later
    /// read fails as well.
    pub fn reader<R: Read>(self, input: R) -> DocumentReader<R> {
        let cap = self.chunk + TAG_LEN + 1;
        DocumentReader {
            input,
            opener: self,
            buf: Vec::with_capacity(cap),
            lookahead: None,
            pos: 0,
            end: 0,
            counter: 0,
            done: false,
            failed: false,
        }
    }
}

/// Decrypts a document chunk by chunk. See [`DocumentOpener::reader`].
pub struct DocumentReader<R: Read> {
    input: R,
    opener: DocumentOpener,
    /// One sealed chunk; after opening, its plaintext is `buf[pos..end]`.
    buf: Vec<u8>,
    /// The first byte of the next chunk, read to learn that this one is not last.
    lookahead: Option<u8>,
    pos: usize,
    end: usize,
    counter: u64,
    done: bool,
    /// An earlier read failed: every later read fails too.
    failed: bool,
}

impl<R: Read> std::fmt::Debug for DocumentReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentReader")
            .field("counter", &self.counter)
            .field("done", &self.done)
            .field("failed", &self.failed)
            .finish()
    }
}

fn invalid() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Error::DecryptionFailed)
}

impl<R: Read> DocumentReader<R> {
    /// Reads and opens the next chunk into `buf[..end]`, for reads smaller
    /// than a chunk: the same path as [`DocumentReader::next_chunk_into`],
    /// into the reader's own buffer.
    fn next_chunk(&mut self) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(self.opener.chunk, 0);
        let opened = self.next_chunk_into(&mut buf);
        self.buf = buf;
        self.pos = 0;
        self.end = opened?;
        Ok(())
    }
}

impl DocumentOpener {
    /// Opens sealed chunk number `counter` in place; returns its plaintext
    /// length. `last` says whether the stream ends after it.
    fn open_chunk(&self, counter: u64, last: bool, sealed: &mut [u8]) -> io::Result<usize> {
        let n = sealed.len().checked_sub(TAG_LEN).ok_or_else(invalid)?;
        let (body, tag) = sealed.split_at_mut(n);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        self.open_chunk_detached(counter, last, body, &t)?;
        Ok(n)
    }

    /// Opens chunk number `counter` in place, its tag apart. `last` says
    /// whether the stream ends after it.
    fn open_chunk_detached(
        &self,
        counter: u64,
        last: bool,
        body: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> io::Result<()> {
        self.aead
            .open_in_place_detached(&chunk_nonce(counter, last), &self.aad, body, tag)
            .map_err(|_| invalid())?;
        if last && body.is_empty() && counter > 0 {
            // Authentic, but not what a writer produces: a full chunk is only
            // sealed once more data follows it (§6).
            return Err(invalid());
        }
        Ok(())
    }
}

/// Reads into `buf` until it is full or `input` ends; returns how much was read.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> DocumentReader<R> {
    /// Reads and opens the next chunk straight into `out`, which holds at
    /// least one full chunk: the sealed body lands in `out`, its tag and the
    /// next chunk's first byte in a small array beside it, and the chunk is
    /// opened there, saving a copy through `buf` (a third of the time at
    /// AES-GCM speeds of 10 GB/s and more). Returns the plaintext length. On
    /// any failure the chunk's part of `out` is zeroed: no unauthenticated
    /// byte is left behind.
    fn next_chunk_into(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let chunk = self.opener.chunk;
        let body = out.get_mut(..chunk).ok_or_else(invalid)?;
        let result = self.open_into(body);
        if result.is_err() {
            // All of it: an I/O error part-way may have left bytes that were not counted.
            body.fill(0);
        }
        result
    }

    fn open_into(&mut self, body: &mut [u8]) -> io::Result<usize> {
        let chunk = body.len();
        let mut filled = 0;
        if let Some(b) = self.lookahead.take() {
            body[0] = b;
            filled = 1;
        }
        filled += read_full(&mut self.input, &mut body[filled..])?;
        // The tag, and one byte more that tells whether this chunk is the last.
        let mut tail = [0u8; TAG_LEN + 1];
        let t = if filled == chunk {
            read_full(&mut self.input, &mut tail)?
        } else {
            0
        };
        let total = filled + t;
        let last = total <= chunk + TAG_LEN;
        let body_len = total
            .min(chunk + TAG_LEN)
            .checked_sub(TAG_LEN)
            .ok_or_else(invalid)?;
        // The tag is bytes body_len..body_len + 16 of body[..filled] ++ tail[..t].
        let mut tag = [0u8; TAG_LEN];
        for (i, slot) in tag.iter_mut().enumerate() {
            let k = body_len + i;
            *slot = match k.checked_sub(filled) {
                None => body[k],
                Some(j) => tail[j],
            };
        }
        self.opener
            .open_chunk_detached(self.counter, last, &mut body[..body_len], &tag)?;
        if !last {
            self.lookahead = Some(tail[TAG_LEN]);
        }
        self.done = last;
        self.counter = self.counter.checked_add(1).ok_or_else(invalid)?;
        Ok(body_len)
    }
}

impl<R: Read> Read for DocumentReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.end {
                let n = out.len().min(self.end - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.failed {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    Error::Misuse(Misuse::StreamFailed),
                ));
            }
            if self.done || out.is_empty() {
                return Ok(0);
            }
            if out.len() >= self.opener.chunk {
                match self.next_chunk_into(out) {
                    // An empty last chunk: the document ends here.
                    Ok(n) => return Ok(n),
                    Err(e) => {
                        self.failed = true;
                        return Err(e);
                    }
                }
            }
            if let Err(e) = self.next_chunk() {
                // Nothing of a chunk that failed is ever returned.
                self.failed = true;
                self.pos = 0;
                self.end = 0;
                self.buf.clear();
                return Err(e);
            }
        }
    }
}

// Documents over tokio's async I/O: an upload goes from a request body
// through the envelope into a blob store, and a download back, holding at
// most one chunk (plus its tag and one byte) at a time, with no blocking
// thread and no plaintext file. The bytes are exactly those of the
// `std::io` API.
#[cfg(feature = "async")]
mod async_io {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    #[cfg(doc)]
    use super::Misuse;
    use super::{
        DocumentHeader, DocumentOpener, DocumentWriter, Error, Header, OpenOptions, PREFIX_LEN,
        TAG_LEN, into_error, invalid, io,
    };
    use crate::error::FormatError;

    impl DocumentWriter<Vec<u8>> {
        /// Seals everything `input` yields and writes the document (the
        /// header this writer was begun with, then every chunk) to `out`,
        /// chunk by chunk; returns the number of plaintext bytes. Begin the
        /// writer on an empty `Vec` (it holds the header until now, then one
        /// sealed chunk at a time).
        ///
        /// An error part-way leaves `out` holding a document with no last
        /// chunk, which never opens; nothing is retried (a failed stream
        /// stays failed).
        ///
        /// # Errors
        ///
        /// An I/O error from `input` or `out`; [`Misuse::StreamFailed`] if
        /// the writer had failed before.
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), careconnect_crypto::Error> {
        /// use careconnect_crypto::document::{DocumentHeader, DocumentSealer, OpenOptions};
        /// use careconnect_crypto::{EncryptionContext, KmsKeyId, LocalKms, RootSecret};
        ///
        /// let dir = tempfile::tempdir()?;
        /// let kms = LocalKms::open_or_create(dir.path().join("kms.bin"), RootSecret::generate())?;
        /// let key = KmsKeyId::new("medicloud")?;
        /// kms.ensure_key(&key)?;
        /// let ctx = EncryptionContext::new().with("document", "scan-17");
        ///
        /// // Upload: from any AsyncRead into any AsyncWrite.
        /// let body: &[u8] = b"%PDF-1.7 a scanned referral letter";
        /// let mut stored = Vec::new();
        /// let writer = DocumentSealer::new().begin(&kms, &key, &ctx, Vec::new()).await?;
        /// let n = writer.seal_from(body, &mut stored).await?;
        /// assert_eq!(n, body.len() as u64);
        ///
        /// // Download: each chunk verified before any of it is written out.
        /// let mut input = stored.as_slice();
        /// let header = DocumentHeader::read_from_async(&mut input, &OpenOptions::trusting(&key)).await?;
        /// let mut plain = Vec::new();
        /// header.unwrap_key(&kms, &ctx).await?.open_into(input, &mut plain).await?;
        /// assert_eq!(plain, body);
        /// # Ok(()) }
        /// ```
        pub async fn seal_from<R, W>(mut self, mut input: R, out: &mut W) -> Result<u64, Error>
        where
            R: AsyncRead + Unpin,
            W: AsyncWrite + Unpin,
        {
            let mut buf = vec![0u8; self.chunk];
            let mut total: u64 = 0;
            loop {
                let n = input.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total = total.saturating_add(n as u64);
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let taken = io::Write::write(&mut self, rest).map_err(into_error)?;
                    rest = &rest[taken..];
                    // Whatever was sealed so far goes out now.
                    if !self.out.is_empty() {
                        out.write_all(&self.out).await?;
                        self.out.clear();
                    }
                }
            }
            let tail = self.finish()?;
            out.write_all(&tail).await?;
            out.flush().await?;
            Ok(total)
        }
    }

    async fn read_exact_or_truncated<R: AsyncRead + Unpin>(
        input: &mut R,
        buf: &mut [u8],
    ) -> Result<(), Error> {
        input
            .read_exact(buf)
            .await
            .map(drop)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => Error::Format(FormatError::Truncated),
                _ => Error::Io(e),
            })
    }

    impl DocumentHeader {
        /// As [`DocumentHeader::read_from`], from an async stream.
        ///
        /// # Errors
        ///
        /// As [`DocumentHeader::read_from`].
        pub async fn read_from_async<R: AsyncRead + Unpin>(
            input: &mut R,
            options: &OpenOptions,
        ) -> Result<Self, Error> {
            let mut prefix = [0u8; PREFIX_LEN];
            read_exact_or_truncated(input, &mut prefix).await?;
            let len = Header::len_from_prefix(&prefix)?;
            let mut bytes = vec![0u8; len];
            bytes[..PREFIX_LEN].copy_from_slice(&prefix);
            read_exact_or_truncated(input, &mut bytes[PREFIX_LEN..]).await?;
            let mut whole = bytes.as_slice();
            Self::read_from(&mut whole, options)
        }
    }

    impl DocumentOpener {
        /// Opens the chunks that follow in `input` and writes each one's
        /// plaintext to `out` once it is authenticated; returns the number
        /// of plaintext bytes. Holds one sealed chunk (plus one byte, to
        /// learn whether it is the last).
        ///
        /// Only `Ok` means the whole document was written: on tampering,
        /// truncation, extension or a swapped blob it returns
        /// [`Error::DecryptionFailed`], and `out` has received the chunks
        /// authenticated before the bad one (discard them).
        ///
        /// # Errors
        ///
        /// [`Error::DecryptionFailed`]; I/O errors from `input` or `out`.
        pub async fn open_into<R, W>(self, mut input: R, out: &mut W) -> Result<u64, Error>
        where
            R: AsyncRead + Unpin,
            W: AsyncWrite + Unpin,
        {
            let sealed = self.chunk + TAG_LEN;
            let mut buf = vec![0u8; sealed + 1];
            let mut lookahead: Option<u8> = None;
            let mut counter: u64 = 0;
            let mut total: u64 = 0;
            loop {
                let mut filled = 0;
                if let Some(b) = lookahead.take() {
                    buf[0] = b;
                    filled = 1;
                }
                while filled < sealed + 1 {
                    match input.read(&mut buf[filled..]).await? {
                        0 => break,
                        n => filled += n,
                    }
                }
                let last = filled <= sealed;
                if !last {
                    lookahead = Some(buf[sealed]);
                }
                let len = filled.min(sealed);
                let n = self
                    .open_chunk(counter, last, &mut buf[..len])
                    .map_err(into_error)?;
                out.write_all(&buf[..n]).await?;
                total = total.saturating_add(n as u64);
                if last {
                    out.flush().await?;
                    return Ok(total);
                }
                counter = counter
                    .checked_add(1)
                    .ok_or_else(|| into_error(invalid()))?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::{LocalKms, RootSecret};

    const CHUNK: usize = 4096;

    /// A recognisable plaintext: no 16-byte window of it occurs in random bytes.
    fn plaintext(n: usize) -> Vec<u8> {
        b"PATIENT 4711 HIV+ "
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// A sink whose `fail_at`-th write fails (once, with a retryable error).
    struct FlakySink {
        bytes: Vec<u8>,
        writes: usize,
        fail_at: usize,
    }

    impl Write for FlakySink {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            if self.writes == self.fail_at {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.bytes.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn key_and_kek() -> (DataKey, KmsKeyId, WrappedKey) {
        (
            DataKey::generate(),
            KmsKeyId::new("clinic").unwrap(),
            WrappedKey::new(vec![7; 60]).unwrap(),
        )
    }

    fn sealer() -> DocumentSealer {
        DocumentSealer::new().chunk_size(CHUNK).unwrap()
    }

    #[test]
    fn a_writer_that_failed_once_stays_failed_and_never_leaks_plaintext() {
        let (dek, kek, wrapped) = key_and_kek();
        let ctx = EncryptionContext::new().with("document", "1");
        let data = plaintext(3 * CHUNK + 100);
        // Fail each write in turn: the header, a chunk body, a tag.
        for fail_at in 2..=6 {
            let sink = FlakySink {
                bytes: Vec::new(),
                writes: 0,
                fail_at,
            };
            let mut w = sealer()
                .begin_with_key(&dek, &kek, wrapped.clone(), &ctx, sink)
                .unwrap();
            // Retry as `Write`'s contract allows after `WouldBlock`.
            let mut failures = 0;
            let mut off = 0;
            while off < data.len() && failures < 10 {
                match w.write(&data[off..]) {
                    Ok(n) => off += n,
                    Err(_) => failures += 1,
                }
            }
            assert!(failures > 0, "fail_at {fail_at}: the sink failed");
            assert!(
                off < data.len(),
                "fail_at {fail_at}: no write succeeds after a failure"
            );
            assert!(w.flush().is_err());
            let sink_bytes = &w.out.bytes.clone();
            assert!(matches!(
                w.finish(),
                Err(Error::Misuse(Misuse::StreamFailed))
            ));
            for window in data.chunks(32) {
                assert!(
                    !contains(sink_bytes, window),
                    "fail_at {fail_at}: plaintext reached the sink"
                );
            }
        }
    }

    /// A sink whose first flush fails.
    struct FlakyFlush(bool);

    impl Write for FlakyFlush {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            if std::mem::replace(&mut self.0, false) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        }
    }

    #[test]
    fn any_failure_fails_the_writer_for_good_even_a_flush() {
        let (dek, kek, wrapped) = key_and_kek();
        let ctx = EncryptionContext::new();
        let mut w = sealer()
            .begin_with_key(&dek, &kek, wrapped, &ctx, FlakyFlush(true))
            .unwrap();
        w.write_all(&plaintext(100)).unwrap();
        assert_eq!(w.flush().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        // The sink would now accept everything; the writer still refuses.
        assert!(w.write(b"more").is_err());
        assert!(w.flush().is_err());
        assert!(matches!(
            w.finish(),
            Err(Error::Misuse(Misuse::StreamFailed))
        ));
    }

    fn sealed_doc(data: &[u8], ctx: &EncryptionContext) -> (DataKey, Vec<u8>) {
        let (dek, kek, wrapped) = key_and_kek();
        let mut w = sealer()
            .begin_with_key(&dek, &kek, wrapped, ctx, Vec::new())
            .unwrap();
        w.write_all(data).unwrap();
        (dek, w.finish().unwrap())
    }

    fn options() -> OpenOptions {
        OpenOptions::trusting(KmsKeyId::new("clinic").unwrap())
    }

    fn reader<'a>(
        dek: &DataKey,
        sealed: &'a [u8],
        ctx: &EncryptionContext,
    ) -> DocumentReader<&'a [u8]> {
        let mut input = sealed;
        DocumentHeader::read_from(&mut input, &options())
            .unwrap()
            .with_key(dek, ctx, default_provider())
            .unwrap()
            .reader(input)
    }

    #[test]
    fn a_reader_that_failed_stays_failed() {
        let ctx = EncryptionContext::new();
        let data = plaintext(3 * CHUNK);
        let (dek, mut sealed) = sealed_doc(&data, &ctx);
        let (_, head) = Header::parse(&sealed).unwrap();
        sealed[head + CHUNK + TAG_LEN + 5] ^= 1; // chunk 1
        let mut r = reader(&dek, &sealed, &ctx);
        let mut out = vec![0u8; CHUNK];
        r.read_exact(&mut out).unwrap();
        assert_eq!(out, data[..CHUNK]);
        let err = r.read(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        for _ in 0..3 {
            let again = r.read(&mut out).unwrap_err();
            assert_eq!(again.kind(), io::ErrorKind::InvalidData);
        }
    }

    /// Reads everything with `size`-byte reads.
    fn read_with(r: &mut DocumentReader<&[u8]>, size: usize) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        let mut out = vec![0u8; size];
        loop {
            let n = r.read(&mut out)?;
            if n == 0 {
                return Ok(all);
            }
            all.extend_from_slice(&out[..n]);
        }
    }

    #[test]
    fn every_read_size_gives_the_same_bytes() {
        let ctx = EncryptionContext::new();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 17] {
            let data = plaintext(len);
            let (dek, sealed) = sealed_doc(&data, &ctx);
            // Below one chunk (through the buffer), one chunk and more
            // (straight into the caller's buffer), and both in turn.
            for size in [
                1,
                7,
                CHUNK - 1,
                CHUNK,
                CHUNK + 1,
                CHUNK + TAG_LEN + 1,
                3 * CHUNK,
            ] {
                let mut r = reader(&dek, &sealed, &ctx);
                assert_eq!(
                    read_with(&mut r, size).unwrap(),
                    data,
                    "len {len} size {size}"
                );
            }
            let mut r = reader(&dek, &sealed, &ctx);
            let mut got = Vec::new();
            let (mut small, mut big) = (vec![0u8; 100], vec![0u8; CHUNK]);
            for turn in 0.. {
                let out = if turn % 3 == 0 { &mut small } else { &mut big };
                let n = r.read(out).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&out[..n]);
            }
            assert_eq!(got, data, "len {len} mixed sizes");
        }
    }

    #[test]
    fn a_chunk_that_fails_leaves_nothing_in_the_callers_buffer() {
        let ctx = EncryptionContext::new();
        let data = plaintext(2 * CHUNK + 100);
        let (dek, sealed) = sealed_doc(&data, &ctx);
        let (_, head) = Header::parse(&sealed).unwrap();
        let sealed_chunk = CHUNK + TAG_LEN;
        // A flipped byte in the second chunk's body, its tag, the last
        // chunk's tag; and a document cut inside the second chunk's tag.
        let flips = [
            head + sealed_chunk + 9,
            head + 2 * sealed_chunk - 1,
            sealed.len() - 1,
        ];
        for (i, at) in flips.iter().map(Some).chain([None]).enumerate() {
            let mut bad = sealed.clone();
            match at {
                Some(&at) => bad[at] ^= 0x80,
                None => bad.truncate(head + 2 * sealed_chunk - 3),
            }
            let mut r = reader(&dek, &bad, &ctx);
            let mut out = vec![0u8; CHUNK + 50];
            assert_eq!(r.read(&mut out).unwrap(), CHUNK);
            assert_eq!(out[..CHUNK], data[..CHUNK]);
            if i == 2 {
                assert_eq!(r.read(&mut out).unwrap(), CHUNK);
            }
            out.fill(0x55);
            assert_eq!(
                r.read(&mut out).unwrap_err().kind(),
                io::ErrorKind::InvalidData
            );
            // The chunk's part of the buffer was wiped, the rest untouched.
            assert!(out[..CHUNK].iter().all(|&b| b == 0), "case {i}");
            assert!(out[CHUNK..].iter().all(|&b| b == 0x55), "case {i}");
            assert!(r.read(&mut out).is_err());
        }
    }

    #[test]
    fn an_empty_last_chunk_after_a_full_one_is_rejected() {
        let (dek, kek, wrapped) = key_and_kek();
        let ctx = EncryptionContext::new();
        let data = plaintext(CHUNK);
        // What no writer produces: a full chunk 0, then an empty last chunk 1.
        let mut w = sealer()
            .begin_with_key(&dek, &kek, wrapped, &ctx, Vec::new())
            .unwrap();
        w.write_all(&data).unwrap();
        w.seal_chunk(false).unwrap();
        let odd = w.finish().unwrap();
        let mut out = Vec::new();
        let err = reader(&dek, &odd, &ctx).read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // The canonical encoding of the same plaintext opens.
        let (dek, canonical) = sealed_doc(&data, &ctx);
        assert_eq!(canonical.len() + TAG_LEN, odd.len());
        out.clear();
        reader(&dek, &canonical, &ctx)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        // So does the empty document: one empty last chunk 0.
        let (dek, empty) = sealed_doc(b"", &ctx);
        out.clear();
        reader(&dek, &empty, &ctx).read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn chunk_size_and_associated_data_are_bounded_by_the_reader() {
        let (dek, kek, wrapped) = key_and_kek();
        let ctx = EncryptionContext::new();
        // A header announcing 16 MiB chunks: refused before anything is allocated.
        let big = DocumentSealer::new().chunk_size(16 << 20).unwrap();
        let w = big
            .begin_with_key(&dek, &kek, wrapped.clone(), &ctx, Vec::new())
            .unwrap();
        let sealed = w.finish().unwrap();
        let err = DocumentHeader::read_from(&mut &sealed[..], &options()).unwrap_err();
        assert!(matches!(
            err,
            Error::LimitExceeded {
                what: "chunk size",
                len,
                max,
            } if len == 16 << 20 && max == DEFAULT_MAX_CHUNK_SIZE
        ));
        // A reader that opts in accepts it.
        let roomy = options().max_chunk_size(16 << 20).unwrap();
        assert!(DocumentHeader::read_from(&mut &sealed[..], &roomy).is_ok());
        assert!(options().max_chunk_size(3 << 20).is_err());

        // Associated data: a context past the reader's limit is refused.
        let wide = (0..8).fold(EncryptionContext::new(), |c, i| {
            c.with(format!("k{i}"), "v".repeat(4096))
        });
        let (dek, sealed) = sealed_doc(b"hello", &wide);
        let header = DocumentHeader::read_from(&mut &sealed[..], &options()).unwrap();
        assert!(matches!(
            header.with_key(&dek, &wide, default_provider()),
            Err(Error::LimitExceeded {
                what: "associated data",
                ..
            })
        ));
        let roomy = options().max_aad_len(64 << 10);
        let mut input = &sealed[..];
        let mut out = Vec::new();
        DocumentHeader::read_from(&mut input, &roomy)
            .unwrap()
            .with_key(&dek, &wide, default_provider())
            .unwrap()
            .reader(input)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello");
    }

    /// A KMS that counts the calls it receives.
    #[derive(Debug)]
    struct Counting<'a>(&'a LocalKms, std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl Kms for Counting<'_> {
        async fn generate_data_key(
            &self,
            key: &KmsKeyId,
            ctx: &EncryptionContext,
        ) -> Result<(DataKey, WrappedKey), Error> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.generate_data_key(key, ctx).await
        }
        async fn decrypt(
            &self,
            key: &KmsKeyId,
            wrapped: &WrappedKey,
            ctx: &EncryptionContext,
        ) -> Result<DataKey, Error> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.decrypt(key, wrapped, ctx).await
        }
        async fn re_encrypt(
            &self,
            from: &KmsKeyId,
            wrapped: &WrappedKey,
            ctx: &EncryptionContext,
            to: &KmsKeyId,
        ) -> Result<WrappedKey, Error> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.re_encrypt(from, wrapped, ctx, to).await
        }
        async fn rotate(&self, key: &KmsKeyId) -> Result<crate::KeyDescription, Error> {
            self.0.rotate(key).await
        }
        async fn describe(&self, key: &KmsKeyId) -> Result<crate::KeyDescription, Error> {
            self.0.describe(key).await
        }
    }

    #[test]
    fn documents_under_an_untrusted_kms_key_are_refused_before_any_kms_call() {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let local =
                    LocalKms::open_or_create(dir.path().join("kms"), RootSecret::generate())
                        .unwrap();
                let clinic = KmsKeyId::new("clinic").unwrap();
                let attacker = KmsKeyId::new("attacker").unwrap();
                local.ensure_key(&clinic).unwrap();
                local.ensure_key(&attacker).unwrap();
                let kms = Counting(&local, 0.into());
                let ctx = EncryptionContext::new().with("document", "9");
                // A forged document: the attacker's own data key, under a
                // KMS key the reader's credentials can call.
                let mut w = sealer()
                    .begin(&kms, &attacker, &ctx, Vec::new())
                    .await
                    .unwrap();
                w.write_all(b"forged lab result").unwrap();
                let forged = w.finish().unwrap();
                let calls = kms.1.load(std::sync::atomic::Ordering::SeqCst);

                let opts = OpenOptions::trusting(&clinic);
                let header = DocumentHeader::read_from(&mut &forged[..], &opts).unwrap();
                assert!(matches!(
                    header.rewrap(&kms, &ctx, &clinic).await,
                    Err(Error::Kms(crate::KmsError::UntrustedKey { ref key })) if key == "attacker"
                ));
                assert!(matches!(
                    header.unwrap_key(&kms, &ctx).await,
                    Err(Error::Kms(crate::KmsError::UntrustedKey { .. }))
                ));
                assert_eq!(kms.1.load(std::sync::atomic::Ordering::SeqCst), calls);
                // Case and spelling matter: names compare byte for byte.
                let opts = OpenOptions::trusting(KmsKeyId::new("Attacker").unwrap());
                let header = DocumentHeader::read_from(&mut &forged[..], &opts).unwrap();
                assert!(header.unwrap_key(&kms, &ctx).await.is_err());
                // A reader that does trust the key opens it.
                let opts = OpenOptions::trusting(TrustedKeys::new([clinic, attacker]));
                let mut input = &forged[..];
                let mut out = Vec::new();
                DocumentHeader::read_from(&mut input, &opts)
                    .unwrap()
                    .unwrap_key(&kms, &ctx)
                    .await
                    .unwrap()
                    .reader(input)
                    .read_to_end(&mut out)
                    .unwrap();
                assert_eq!(out, b"forged lab result");
            });
    }
}
