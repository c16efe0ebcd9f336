//! The async document API (`seal_from`, `read_from_async`, `open_into`):
//! round trips at the chunk boundaries, interoperability with the `std::io`
//! API both ways, tampering, truncation and swapped blobs, and a 200 MiB
//! document streamed through a pipe with peak memory that does not grow
//! with the size. (Byte-for-byte equality with the vectors is in
//! `tests/vectors.rs`.) One binary of its own, so the process's peak
//! resident set is this test's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use careconnect::crypto::document::{DocumentHeader, DocumentSealer, OpenOptions};
use careconnect::crypto::{DataKey, EncryptionContext, Error, KmsKeyId, WrappedKey};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const CHUNK: usize = 4096;

fn key() -> (DataKey, KmsKeyId, WrappedKey) {
    (
        DataKey::from_bytes(zeroize::Zeroizing::new([7u8; 32])),
        KmsKeyId::new("medicloud").unwrap(),
        WrappedKey::new(vec![1u8; 40]).unwrap(),
    )
}

fn ctx() -> EncryptionContext {
    EncryptionContext::new().with("document", "d-1")
}

/// The fastest provider built in (the 200 MiB test runs in a debug build).
fn provider() -> &'static dyn careconnect::crypto::CryptoProvider {
    #[cfg(feature = "ring")]
    return &careconnect::crypto::provider::Ring;
    #[cfg(not(feature = "ring"))]
    return careconnect::crypto::default_provider();
}

fn sealer(chunk: usize) -> DocumentSealer {
    DocumentSealer::new()
        .chunk_size(chunk)
        .unwrap()
        .provider(provider())
}

async fn seal_async(plain: &[u8], chunk: usize) -> Vec<u8> {
    let (dek, name, wrapped) = key();
    let w = sealer(chunk)
        .begin_with_key(&dek, &name, wrapped, &ctx(), Vec::new())
        .unwrap();
    let mut out = Vec::new();
    w.seal_from(plain, &mut out).await.unwrap();
    out
}

async fn open_async(doc: &[u8]) -> Result<Vec<u8>, Error> {
    let (dek, name, _) = key();
    let mut input = doc;
    let header = DocumentHeader::read_from_async(&mut input, &OpenOptions::trusting(&name)).await?;
    let opener = header.with_key(&dek, &ctx(), careconnect::crypto::default_provider())?;
    let mut out = Vec::new();
    opener.open_into(input, &mut out).await?;
    Ok(out)
}

fn seal_sync(plain: &[u8], chunk: usize) -> Vec<u8> {
    let (dek, name, wrapped) = key();
    let mut w = sealer(chunk)
        .begin_with_key(&dek, &name, wrapped, &ctx(), Vec::new())
        .unwrap();
    w.write_all(plain).unwrap();
    w.finish().unwrap()
}

fn open_sync(doc: &[u8]) -> Vec<u8> {
    let (dek, name, _) = key();
    let mut input = doc;
    let header = DocumentHeader::read_from(&mut input, &OpenOptions::trusting(&name)).unwrap();
    let mut out = Vec::new();
    header
        .with_key(&dek, &ctx(), careconnect::crypto::default_provider())
        .unwrap()
        .reader(input)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn round_trips_at_the_chunk_boundaries_and_with_the_std_io_api() {
    for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
        let plain = pattern(n);
        let doc = seal_async(&plain, CHUNK).await;
        assert_eq!(open_async(&doc).await.unwrap(), plain, "{n} B async/async");
        assert_eq!(open_sync(&doc), plain, "{n} B async/sync");
        let doc = seal_sync(&plain, CHUNK);
        assert_eq!(open_async(&doc).await.unwrap(), plain, "{n} B sync/async");
    }
}

#[tokio::test]
async fn tampered_truncated_or_swapped_documents_end_in_an_error() {
    let plain = pattern(3 * CHUNK + 100);
    let doc = seal_async(&plain, CHUNK).await;
    let other = seal_async(&pattern(3 * CHUNK + 100), CHUNK).await;
    let header_len = doc.len() - (4 * (CHUNK + 16) - CHUNK + 100);
    let bad = |r: Result<Vec<u8>, Error>| {
        assert!(matches!(r, Err(Error::DecryptionFailed)), "{r:?}");
    };
    for at in [header_len, header_len + CHUNK + 20, doc.len() - 1] {
        let mut flipped = doc.clone();
        flipped[at] ^= 1;
        bad(open_async(&flipped).await);
    }
    // Cut at the end, and a whole chunk cut off: not a complete file.
    bad(open_async(&doc[..doc.len() - 1]).await);
    bad(open_async(&doc[..header_len + 2 * (CHUNK + 16)]).await);
    // Appended bytes.
    let mut longer = doc.clone();
    longer.push(0);
    bad(open_async(&longer).await);
    // Another document's body under this header (same key, other salt).
    let mut swapped = doc[..header_len].to_vec();
    swapped.extend_from_slice(&other[header_len..]);
    bad(open_async(&swapped).await);
}

/// Yields `left` bytes of a fixed pattern without holding them.
struct Generator {
    left: u64,
}

impl AsyncRead for Generator {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = buf
            .remaining()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        buf.initialize_unfilled_to(n).fill(0x42);
        buf.advance(n);
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Counts what it is given and checks every byte is the generator's.
#[derive(Default)]
struct Checker {
    seen: u64,
    wrong: u64,
}

impl AsyncWrite for Checker {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.seen += data.len() as u64;
        self.wrong += data.iter().filter(|b| **b != 0x42).count() as u64;
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The process's peak resident set in KiB (`VmHWM`), and a reset of it.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn reset_peak() {
    // Linux: "5" resets the peak resident set to the current one.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Seals `size` bytes from a generator into a pipe while a second task
/// opens from the pipe into a checker: the whole document never exists.
async fn stream_through_a_pipe(size: u64) -> u64 {
    let (dek, name, wrapped) = key();
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let writer = sealer(1 << 20)
        .begin_with_key(&dek, &name, wrapped, &ctx(), Vec::new())
        .unwrap();
    let sealing = tokio::spawn(async move {
        writer
            .seal_from(Generator { left: size }, &mut tx)
            .await
            .unwrap()
    });
    let mut rx = rx;
    let header = DocumentHeader::read_from_async(&mut rx, &OpenOptions::trusting(&name))
        .await
        .unwrap();
    let opener = header.with_key(&dek, &ctx(), provider()).unwrap();
    let mut checker = Checker::default();
    let opened = opener.open_into(rx, &mut checker).await.unwrap();
    assert_eq!(sealing.await.unwrap(), size);
    assert_eq!((opened, checker.seen, checker.wrong), (size, size, 0));
    size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_document_streams_in_bounded_memory() {
    // Warm up (runtime, provider tables), then measure a small and a large one.
    stream_through_a_pipe(4 << 20).await;
    reset_peak();
    let before = peak_kib();
    stream_through_a_pipe(8 << 20).await;
    let small = peak_kib().saturating_sub(before);
    reset_peak();
    let before = peak_kib();
    stream_through_a_pipe(200 << 20).await;
    let large = peak_kib().saturating_sub(before);
    println!("peak growth: 8 MiB document {small} KiB, 200 MiB document {large} KiB");
    // One 1 MiB chunk on each side plus the pipe and buffers: a few MiB,
    // whatever the size (200 MiB would show as ~200,000 KiB).
    assert!(
        large < 16 * 1024,
        "200 MiB document grew the peak by {large} KiB"
    );
}
