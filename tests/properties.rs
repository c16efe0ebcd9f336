//! Property tests of the envelope engine: round trips for both suites, both
//! forms and every provider; any single bit flip or truncation fails with an
//! error (never a panic); contexts, rotation and destruction behave.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::io::{Read, Write};

use careconnect::crypto::document::{DocumentHeader, DocumentSealer, OpenOptions};
use careconnect::crypto::provider::{CryptoProvider, all_providers};
use careconnect::crypto::{
    EncryptionContext, Error, KeyState, Keyring, Kms, KmsKeyId, LocalKms, RECORD_HEADER_LEN,
    RootSecret, Suite,
};
use proptest::prelude::*;

const CHUNK: usize = 4096;

fn block<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// A local KMS in a temporary directory with one key.
struct Fixture {
    _dir: tempfile::TempDir,
    kms: LocalKms,
    key: KmsKeyId,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let kms = LocalKms::open_or_create(dir.path().join("kms.bin"), RootSecret::generate()).unwrap();
    let key = KmsKeyId::new("documents").unwrap();
    kms.ensure_key(&key).unwrap();
    Fixture {
        _dir: dir,
        kms,
        key,
    }
}

fn ctx(record: &str) -> EncryptionContext {
    EncryptionContext::new()
        .with("collection", "documents")
        .with("record", record)
}

fn seal_doc(
    f: &Fixture,
    suite: Suite,
    p: &'static dyn CryptoProvider,
    ctx: &EncryptionContext,
    data: &[u8],
) -> Vec<u8> {
    let sealer = DocumentSealer::new()
        .suite(suite)
        .provider(p)
        .chunk_size(CHUNK)
        .unwrap();
    let mut w = block(sealer.begin(&f.kms, &f.key, ctx, Vec::new())).unwrap();
    // Uneven writes, to exercise buffering across chunk boundaries.
    for piece in data.chunks(1000) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap()
}

fn open_doc(
    f: &Fixture,
    p: &'static dyn CryptoProvider,
    ctx: &EncryptionContext,
    mut sealed: &[u8],
) -> Result<Vec<u8>, Error> {
    let header = DocumentHeader::read_from(&mut sealed, &OpenOptions::trusting(&f.key))?;
    let opener = block(header.unwrap_key_with(&f.kms, ctx, p))?;
    let mut out = Vec::new();
    opener
        .reader(sealed)
        .read_to_end(&mut out)
        .map_err(|_| Error::DecryptionFailed)?;
    Ok(out)
}

fn suite() -> impl Strategy<Value = Suite> {
    prop::sample::select(Suite::ALL.to_vec())
}

fn provider() -> impl Strategy<Value = &'static dyn CryptoProvider> {
    prop::sample::select(all_providers())
}

/// 0..=3 chunks, with the exact boundaries and their neighbours often.
fn doc_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK,
            3 * CHUNK - 1,
            3 * CHUNK
        ]),
        0..=3 * CHUNK,
    ]
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + len) as u8).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn document_round_trip_any_provider_pair(
        suite in suite(), seal_p in provider(), open_p in provider(), len in doc_len(),
    ) {
        let f = fixture();
        let c = ctx("1");
        let plain = data(len);
        let sealed = seal_doc(&f, suite, seal_p, &c, &plain);
        prop_assert_eq!(open_doc(&f, open_p, &c, &sealed).unwrap(), plain);
        // Another context fails (at the KMS unwrap: the context is bound there too).
        prop_assert!(open_doc(&f, open_p, &ctx("2"), &sealed).is_err());
    }

    #[test]
    fn document_bit_flip_or_truncation_fails(
        suite in suite(), len in doc_len(), bit in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let f = fixture();
        let c = ctx("1");
        let p = all_providers()[0];
        let sealed = seal_doc(&f, suite, p, &c, &data(len));
        let mut flipped = sealed.clone();
        let i = bit.index(sealed.len() * 8);
        flipped[i / 8] ^= 1 << (i % 8);
        prop_assert!(open_doc(&f, p, &c, &flipped).is_err(), "bit {} opened", i);
        let n = cut.index(sealed.len());
        prop_assert!(open_doc(&f, p, &c, &sealed[..n]).is_err(), "prefix {} opened", n);
    }

    #[test]
    fn record_round_trip_and_tamper(
        suite in suite(), seal_p in provider(), open_p in provider(),
        plain in prop::collection::vec(any::<u8>(), 0..600),
        bit in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>(),
    ) {
        let ring = Keyring::generate().with_suite(suite).with_provider(seal_p);
        let c = EncryptionContext::new().with("record", "9");
        let env = ring.seal(&c, &plain).unwrap();
        let reader = ring.clone().with_provider(open_p);
        prop_assert_eq!(&reader.open(&env, &c).unwrap().plaintext, &plain);
        prop_assert!(reader.open(&env, &EncryptionContext::new().with("record", "8")).is_err());
        let mut flipped = env.clone();
        let i = bit.index(env.len() * 8);
        flipped[i / 8] ^= 1 << (i % 8);
        prop_assert!(reader.open(&flipped, &c).is_err(), "bit {} opened", i);
        prop_assert!(reader.open(&env[..cut.index(env.len())], &c).is_err());

        // The zero-copy pair agrees with the allocating one, both ways.
        let mut buf = vec![0u8; RECORD_HEADER_LEN];
        buf.extend_from_slice(&plain);
        ring.seal_in_place(&c, &mut buf).unwrap();
        prop_assert_eq!(buf.len(), env.len());
        prop_assert_eq!(&reader.open(&buf, &c).unwrap().plaintext, &plain);
        let mut copy = env.clone();
        prop_assert_eq!(&*reader.open_in_place(&mut copy, &c).unwrap().plaintext, plain.as_slice());
        let mut flipped = env.clone();
        flipped[i / 8] ^= 1 << (i % 8);
        prop_assert!(reader.open_in_place(&mut flipped, &c).is_err());
        // Too little room: refused, buffer untouched.
        let mut short = plain[..plain.len().min(RECORD_HEADER_LEN - 1)].to_vec();
        let before = short.clone();
        prop_assert!(ring.seal_in_place(&c, &mut short).is_err());
        prop_assert_eq!(short, before);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let ring = Keyring::generate();
        let _ = ring.open(&bytes, &EncryptionContext::new());
        let _ = Keyring::decode(&bytes);
        let any = OpenOptions::trusting(KmsKeyId::new("k").unwrap());
        let _ = DocumentHeader::read_from(&mut bytes.as_slice(), &any);
    }

    #[test]
    fn rotated_keyring_opens_old_and_destroyed_opens_nothing(
        rotations in 1usize..5, plain in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut ring = Keyring::generate();
        let c = EncryptionContext::new().with("record", "1");
        let mut sealed = vec![(ring.primary(), ring.seal(&c, &plain).unwrap())];
        for _ in 0..rotations {
            ring.rotate().unwrap();
            sealed.push((ring.primary(), ring.seal(&c, &plain).unwrap()));
        }
        for (id, env) in &sealed {
            let o = ring.open(env, &c).unwrap();
            prop_assert_eq!(&o.plaintext, &plain);
            prop_assert_eq!(o.key_id, *id);
        }
        let (first, env) = &sealed[0];
        ring.mark_compromised(*first).unwrap();
        prop_assert_eq!(ring.open(env, &c).unwrap().key_state, KeyState::Compromised);
        ring.destroy(*first).unwrap();
        prop_assert!(matches!(ring.open(env, &c), Err(Error::KeyDestroyed(id)) if id == *first));
        // Survives persistence: still destroyed after a KMS round trip.
        let f = fixture();
        let stored = block(ring.seal_keyset(&f.kms, &f.key)).unwrap();
        let reloaded = block(Keyring::open_keyset(&f.kms, &(&f.key).into(), &stored)).unwrap();
        prop_assert!(matches!(reloaded.open(env, &c), Err(Error::KeyDestroyed(_))));
        for (_, env) in &sealed[1..] {
            prop_assert_eq!(&reloaded.open(env, &c).unwrap().plaintext, &plain);
        }
    }
}

/// Exhaustive: every single bit of a small record and a small document.
#[test]
fn every_bit_flip_and_every_truncation_fails() {
    let f = fixture();
    let c = ctx("1");
    for p in all_providers() {
        for suite in Suite::ALL {
            let ring = Keyring::generate().with_suite(suite).with_provider(p);
            let env = ring.seal(&c, b"hb 13.5 g/dL").unwrap();
            let doc = seal_doc(&f, suite, p, &c, &data(100));
            for i in 0..env.len() * 8 {
                let mut x = env.clone();
                x[i / 8] ^= 1 << (i % 8);
                assert!(ring.open(&x, &c).is_err(), "record bit {i}");
            }
            for i in 0..doc.len() * 8 {
                let mut x = doc.clone();
                x[i / 8] ^= 1 << (i % 8);
                assert!(open_doc(&f, p, &c, &x).is_err(), "document bit {i}");
            }
            for n in 0..env.len() {
                assert!(ring.open(&env[..n], &c).is_err(), "record prefix {n}");
            }
            for n in 0..doc.len() {
                assert!(
                    open_doc(&f, p, &c, &doc[..n]).is_err(),
                    "document prefix {n}"
                );
            }
        }
    }
}

/// Chunks reordered, duplicated, dropped or appended are all detected.
#[test]
fn document_chunk_surgery_is_detected() {
    let f = fixture();
    let c = ctx("1");
    let p = all_providers()[0];
    let plain = data(3 * CHUNK - 10);
    let sealed = seal_doc(&f, Suite::Aes256Gcm, p, &c, &plain);
    let mut hdr = sealed.as_slice();
    DocumentHeader::read_from(&mut hdr, &OpenOptions::trusting(&f.key)).unwrap();
    let head = &sealed[..sealed.len() - hdr.len()];
    let sc = CHUNK + 16;
    let chunks: Vec<&[u8]> = hdr.chunks(sc).collect();
    assert_eq!(chunks.len(), 3);
    let build = |order: &[&[u8]]| -> Vec<u8> {
        let mut v = head.to_vec();
        for ch in order {
            v.extend_from_slice(ch);
        }
        v
    };
    let (a, b, z) = (chunks[0], chunks[1], chunks[2]);
    assert_eq!(open_doc(&f, p, &c, &build(&[a, b, z])).unwrap(), plain);
    let cases: [(&str, Vec<&[u8]>); 6] = [
        ("swapped", vec![b, a, z]),
        ("duplicated", vec![a, a, b, z]),
        ("middle dropped", vec![a, z]),
        ("last dropped", vec![a, b]),
        ("last appended twice", vec![a, b, z, z]),
        ("extra byte", vec![a, b, z, &[0u8][..]]),
    ];
    for (name, order) in cases {
        assert!(open_doc(&f, p, &c, &build(&order)).is_err(), "{name}");
    }
}

/// Old documents open after KEK rotation; a destroyed KEK version opens nothing.
#[test]
fn kms_rotation_and_version_destruction() {
    let f = fixture();
    let c = ctx("1");
    let p = all_providers()[0];
    let old = seal_doc(&f, Suite::Aes256Gcm, p, &c, b"scan");
    let desc = block(f.kms.rotate(&f.key)).unwrap();
    let new = seal_doc(&f, Suite::Aes256Gcm, p, &c, b"scan 2");
    assert_eq!(open_doc(&f, p, &c, &old).unwrap(), b"scan");
    f.kms
        .destroy_version(&f.key, desc.current_version - 1)
        .unwrap();
    assert!(open_doc(&f, p, &c, &old).is_err());
    assert_eq!(open_doc(&f, p, &c, &new).unwrap(), b"scan 2");
}
