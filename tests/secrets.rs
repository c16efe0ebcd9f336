//! No key bytes in `Debug`, `Display` or errors, for every type that holds a key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use careconnect::crypto::document::DocumentSealer;
use careconnect::crypto::mac::MacKey;
use careconnect::crypto::provider::{AeadKey, default_provider};
use careconnect::crypto::{
    DataKey, EncryptionContext, Keyring, Kms, KmsKeyId, LocalKms, RootSecret, Suite,
};
use zeroize::Zeroizing;

const BYTE: u8 = 0xa7;
const KEY: [u8; 32] = [BYTE; 32];

/// Any rendering of the key: hex either case, as a decimal array, base64-ish runs.
fn assert_no_key(text: &str) {
    let hex_lower = "a7a7a7a7";
    let decimal = "167, 167";
    for needle in [
        hex_lower,
        &hex_lower.to_uppercase(),
        decimal,
        "167,167",
        "p6en",
    ] {
        assert!(!text.contains(needle), "key bytes leaked in {text:?}");
    }
}

#[test]
fn debug_of_every_key_type_shows_no_key_bytes() {
    let hex_key = hex::encode(KEY);
    let root = RootSecret::from_hex(&hex_key).unwrap();
    let dek = DataKey::from_bytes(Zeroizing::new(KEY));
    let aead_key = AeadKey::new(KEY);
    let mac = MacKey::from_slice(&KEY).unwrap();
    let ring = Keyring::decode(&{
        let mut ks = b"CCKS\x01\x01\x00\x00\x00\x01\x00\x00\x00\x01\x01".to_vec();
        ks.extend_from_slice(&[0; 8]);
        ks.extend_from_slice(&KEY);
        ks
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kms = LocalKms::open_or_create(dir.path().join("kms.bin"), root).unwrap();
    let kek = KmsKeyId::new("k").unwrap();
    kms.ensure_key(&kek).unwrap();
    let ctx = EncryptionContext::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (generated, wrapped) = rt.block_on(kms.generate_data_key(&kek, &ctx)).unwrap();
    let writer = DocumentSealer::new()
        .begin_with_key(&dek, &kek, wrapped.clone(), &ctx, Vec::new())
        .unwrap();
    let aead = default_provider().aead(Suite::Aes256Gcm, &aead_key);
    let _ = aead;

    let rendered = format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:#?} {:#?}",
        RootSecret::from_hex(&hex_key).unwrap(),
        dek,
        aead_key,
        mac,
        ring,
        kms,
        writer,
        generated,
        ring,
        dek,
    );
    assert_no_key(&rendered);
    assert!(rendered.contains("DataKey { .. }"), "{rendered}");
}

#[test]
fn errors_never_echo_secrets() {
    // A malformed root secret (one digit short) must not be echoed back.
    let almost = hex::encode(KEY)[1..].to_string();
    let err = RootSecret::from_hex(&almost).unwrap_err();
    assert_no_key(&format!("{err} {err:?}"));
    // Wrong key: the error names neither key.
    let a = DataKey::from_bytes(Zeroizing::new(KEY));
    let ring = Keyring::generate();
    let env = ring.seal(&EncryptionContext::new(), b"x").unwrap();
    let err = ring
        .open(&env[..env.len() - 1], &EncryptionContext::new())
        .unwrap_err();
    assert_no_key(&format!("{err} {err:?} {a:?}"));
}
