//! Documents: chunked STREAM encryption over `std::io` (§6).
//!
//! Each document gets its own data key from a KMS; the wrapped key travels
//! in the header. Plaintext is cut into chunks of `2^chunk_log2` bytes
//! (64 KiB by default); chunk `i` is sealed with nonce `i || last`, so
//! truncation, reordering, duplication and appended chunks all fail to open.
//! Reader and writer each hold one chunk (plus a tag and one byte).
//!
//! ```
//! # async fn demo() -> Result<(), careconnect_crypto::Error> {
//! use careconnect_crypto::{EncryptionContext, LocalKms, RootSecret, KmsKeyId};
//! use careconnect_crypto::document::{DocumentSealer, DocumentHeader};
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
//! let mut input = &sealed[..];
//! let header = DocumentHeader::read_from(&mut input)?;
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
use crate::kms::{Kms, KmsKeyId, WrappedKey};
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
        let log2 = bytes.trailing_zeros();
        if !bytes.is_power_of_two()
            || !(u32::from(MIN_CHUNK_LOG2)..=u32::from(MAX_CHUNK_LOG2)).contains(&log2)
        {
            return Err(Misuse::ChunkSize(bytes).into());
        }
        self.chunk_log2 = log2 as u8;
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
        self.begin_with_header(dek, new_header(dek, self.suite, form, key_ref), ctx, out)
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
        })
    }
}

/// Seals everything written to it; call [`DocumentWriter::finish`] at the end.
///
/// Dropping it without `finish` leaves a document with no last chunk, which
/// never opens: an interrupted upload cannot pass for a complete one.
pub struct DocumentWriter<W: Write> {
    out: W,
    aead: Box<dyn Aead>,
    aad: Vec<u8>,
    buf: Vec<u8>,
    chunk: usize,
    counter: u64,
}

impl<W: Write> std::fmt::Debug for DocumentWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentWriter")
            .field("chunk", &self.chunk)
            .field("counter", &self.counter)
            .finish()
    }
}

impl<W: Write> DocumentWriter<W> {
    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        let nonce = chunk_nonce(self.counter, last);
        let tag = self
            .aead
            .seal_in_place_detached(&nonce, &self.aad, &mut self.buf)
            .map_err(io::Error::other)?;
        self.out.write_all(&self.buf)?;
        self.out.write_all(&tag)?;
        self.buf.clear();
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| io::Error::other(Misuse::TooLong.to_string()))?;
        Ok(())
    }

    /// Seals the last chunk, flushes, and returns the inner writer.
    ///
    /// # Errors
    ///
    /// An I/O error from the inner writer.
    pub fn finish(mut self) -> Result<W, Error> {
        self.seal_chunk(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for DocumentWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        // A full buffer is sealed only once more data arrives, so that the
        // final chunk is always sealed by `finish` with the last flag.
        if self.buf.len() == self.chunk {
            self.seal_chunk(false)?;
        }
        let n = data.len().min(self.chunk - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A document header read from a stream, before its data key is unwrapped.
#[derive(Debug)]
pub struct DocumentHeader {
    header: Header,
    bytes: Vec<u8>,
}

impl DocumentHeader {
    /// Reads exactly the header from `input`, leaving it at the first chunk.
    ///
    /// # Errors
    ///
    /// A [`FormatError`] for a malformed header ([`FormatError::Truncated`] if
    /// the stream ends inside it), [`Misuse::WrongForm`] for a record.
    pub fn read_from<R: Read>(input: &mut R) -> Result<Self, Error> {
        let mut prefix = [0u8; PREFIX_LEN];
        read_exact_or_truncated(input, &mut prefix)?;
        let len = Header::len_from_prefix(&prefix)?;
        let mut bytes = vec![0u8; len];
        bytes[..PREFIX_LEN].copy_from_slice(&prefix);
        read_exact_or_truncated(input, &mut bytes[PREFIX_LEN..])?;
        let (header, _) = Header::parse(&bytes)?;
        if !matches!(header.form, Form::Document { .. }) {
            return Err(Misuse::WrongForm.into());
        }
        Ok(Self { header, bytes })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Unwraps the data key with `kms` under `ctx`, with the default provider.
    ///
    /// # Errors
    ///
    /// A KMS error (the wrapped key does not unwrap under this context), or
    /// [`Error::CommitmentMismatch`] if the unwrapped key does not match the
    /// header's commitment.
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
        let KeyRef::Kms { key, wrapped } = &self.header.key_ref else {
            return Err(Misuse::WrongKeyReference.into());
        };
        let kms_key = KmsKeyId::new(key.clone())?;
        let dek = kms
            .decrypt(&kms_key, &WrappedKey::new(wrapped.clone())?, ctx)
            .await?;
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
    /// KMS errors, or a header outside the format's bounds.
    pub async fn rewrap(
        &self,
        kms: &dyn Kms,
        ctx: &EncryptionContext,
        to: &KmsKeyId,
    ) -> Result<Vec<u8>, Error> {
        let KeyRef::Kms { key, wrapped } = &self.header.key_ref else {
            return Err(Misuse::WrongKeyReference.into());
        };
        let from = KmsKeyId::new(key.clone())?;
        let rewrapped = kms
            .re_encrypt(&from, &WrappedKey::new(wrapped.clone())?, ctx, to)
            .await?;
        crate::envelope::rewrite_kms_ref(&self.header, to.as_str(), rewrapped.into_bytes())
    }

    /// Prepares to open with a data key the caller already holds.
    ///
    /// # Errors
    ///
    /// [`Error::CommitmentMismatch`] if `dek` does not match the commitment.
    pub fn with_key(
        self,
        dek: &DataKey,
        ctx: &EncryptionContext,
        provider: &'static dyn CryptoProvider,
    ) -> Result<DocumentOpener, Error> {
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
    /// [`Error::DecryptionFailed`]) on any tampering, truncation or extension.
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
}

impl<R: Read> std::fmt::Debug for DocumentReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentReader")
            .field("counter", &self.counter)
            .field("done", &self.done)
            .finish()
    }
}

fn invalid() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Error::DecryptionFailed)
}

impl<R: Read> DocumentReader<R> {
    /// Reads and opens the next chunk into `buf[..end]`.
    fn next_chunk(&mut self) -> io::Result<()> {
        let sealed = self.opener.chunk + TAG_LEN;
        self.buf.clear();
        self.buf.extend(self.lookahead.take());
        let mut filled = self.buf.len();
        // One sealed chunk plus one byte: that byte tells whether this chunk is the last.
        self.buf.resize(sealed + 1, 0);
        while filled < sealed + 1 {
            match self.input.read(&mut self.buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let last = filled <= sealed;
        if !last {
            self.lookahead = Some(self.buf[sealed]);
        }
        let len = filled.min(sealed);
        let nonce = chunk_nonce(self.counter, last);
        let n = self
            .opener
            .aead
            .open_in_place(&nonce, &self.opener.aad, &mut self.buf[..len])
            .map_err(|_| invalid())?;
        self.pos = 0;
        self.end = n;
        self.done = last;
        self.counter = self.counter.checked_add(1).ok_or_else(invalid)?;
        Ok(())
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
            if self.done || out.is_empty() {
                return Ok(0);
            }
            self.next_chunk()?;
        }
    }
}
