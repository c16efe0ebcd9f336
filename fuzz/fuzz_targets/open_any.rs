//! Full open of arbitrary bytes, as a record (keyring) and as a document
//! (header, key commitment, chunk stream). The key is the known-answer
//! vectors' key (docs/vectors), so seeds from there reach the AEAD.
#![no_main]

use std::io::Read;
use std::sync::OnceLock;

use careconnect_crypto::document::{DocumentHeader, OpenOptions};
use careconnect_crypto::{DataKey, EncryptionContext, Keyring, default_provider};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

fn vector_key() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

fn keyring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| {
        // keyset v1: magic, version, suite, count, then id 1 primary created 0.
        let mut ks = b"CCKS\x01\x01\x00\x00\x00\x01\x00\x00\x00\x01\x01".to_vec();
        ks.extend_from_slice(&[0; 8]);
        ks.extend_from_slice(&vector_key());
        Keyring::decode(&ks).expect("fixed keyset decodes")
    })
}

/// The contexts of the record and document vectors.
fn record_ctx() -> EncryptionContext {
    EncryptionContext::new()
        .with("collection", "health_records")
        .with("record", "42")
}

fn document_ctx() -> EncryptionContext {
    EncryptionContext::new()
        .with("collection", "documents")
        .with("document", "7")
}

/// The reader's policy: the vectors' KMS key, default limits (1 MiB chunks).
fn options() -> OpenOptions {
    static OPTIONS: OnceLock<OpenOptions> = OnceLock::new();
    OPTIONS
        .get_or_init(|| {
            let key = careconnect_crypto::KmsKeyId::new("clinic-documents").expect("valid name");
            OpenOptions::trusting(key)
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let _ = Keyring::key_id_of(data);
    let opened = keyring().open(data, &record_ctx()).ok();
    let mut copy = data.to_vec();
    let in_place = keyring().open_in_place(&mut copy, &record_ctx()).ok();
    assert_eq!(
        opened.as_ref().map(|o| o.plaintext.as_slice()),
        in_place.as_ref().map(|o| &*o.plaintext),
        "open and open_in_place disagree"
    );
    let ctx = document_ctx();

    let mut input = data;
    if let Ok(header) = DocumentHeader::read_from(&mut input, &options()) {
        let dek = DataKey::from_bytes(Zeroizing::new(vector_key()));
        if let Ok(opener) = header.with_key(&dek, &ctx, default_provider()) {
            let mut out = Vec::new();
            let _ = opener.reader(input).read_to_end(&mut out);
        }
    }
});
