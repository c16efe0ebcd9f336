//! Wycheproof known-answer tests through the code paths the engine uses:
//! every compiled-in provider's keyed [`Aead`] for AES-256-GCM and
//! ChaCha20-Poly1305, and [`MacKey`] for HMAC-SHA256. (HKDF-SHA256 runs
//! through the engine's private extract/expand in `crates/crypto/src/key.rs`.)
//!
//! Vectors come from the `wycheproof` crate (C2SP/wycheproof JSON, bundled).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use careconnect::crypto::mac::{MIN_KEY_LEN, MIN_TAG_LEN, MacKey};
use careconnect::crypto::provider::{AeadKey, all_providers};
use careconnect::crypto::{Error, Suite};
use wycheproof::TestResult;
use wycheproof::aead::{TestName, TestSet};

fn check_aead(name: TestName, suite: Suite) -> usize {
    let set = TestSet::load(name).unwrap();
    let mut checked = 0;
    for provider in all_providers() {
        for group in &set.test_groups {
            // The engine only ever uses 256-bit keys, 96-bit nonces, 128-bit tags.
            if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
                continue;
            }
            for t in &group.tests {
                let id = format!("{} {} tc {}", provider.name(), suite.name(), t.tc_id);
                let key: [u8; 32] = t.key.as_slice().try_into().unwrap();
                let nonce: [u8; 12] = t.nonce.as_slice().try_into().unwrap();
                let aead = provider.aead(suite, &AeadKey::new(key));

                let mut sealed = t.pt.to_vec();
                aead.seal_append(&nonce, &t.aad, &mut sealed, 0).unwrap();
                let mut expected = t.ct.to_vec();
                expected.extend_from_slice(&t.tag);

                let mut opened = expected.clone();
                let got = aead.open_in_place(&nonce, &t.aad, &mut opened);
                match t.result {
                    TestResult::Valid | TestResult::Acceptable => {
                        assert_eq!(sealed, expected, "{id}: seal");
                        let n = got.unwrap_or_else(|e| panic!("{id}: open: {e}"));
                        assert_eq!(&opened[..n], t.pt.as_slice(), "{id}: plaintext");
                    }
                    TestResult::Invalid => {
                        assert!(matches!(got, Err(Error::DecryptionFailed)), "{id}: opened");
                    }
                }
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn aes_256_gcm() {
    let n = check_aead(TestName::AesGcm, Suite::Aes256Gcm);
    eprintln!(
        "aes-256-gcm: {n} vectors across {} providers",
        all_providers().len()
    );
    // 256-bit key, 96-bit nonce, 128-bit tag groups, per provider.
    assert!(n >= 60 * all_providers().len(), "only {n} vectors checked");
}

#[test]
fn chacha20_poly1305() {
    let n = check_aead(TestName::ChaCha20Poly1305, Suite::ChaCha20Poly1305);
    eprintln!(
        "chacha20-poly1305: {n} vectors across {} providers",
        all_providers().len()
    );
    assert!(n >= 250 * all_providers().len(), "only {n} vectors checked");
}

#[test]
fn hmac_sha256() {
    use wycheproof::mac::{TestName, TestSet};
    let set = TestSet::load(TestName::HmacSha256).unwrap();
    let (mut checked, mut refused) = (0, 0);
    for group in &set.test_groups {
        for t in &group.tests {
            let id = format!("hmac tc {}", t.tc_id);
            let Ok(key) = MacKey::from_slice(&t.key) else {
                // Keys under 128 bits are refused outright, whatever the vector says.
                assert!(t.key.len() < MIN_KEY_LEN, "{id}");
                refused += 1;
                continue;
            };
            let verdict = key.verify(&t.msg, &t.tag);
            if t.tag.len() < MIN_TAG_LEN {
                // Tags under 128 bits are refused outright, whatever the vector says.
                assert!(verdict.is_err(), "{id}");
                refused += 1;
                continue;
            }
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert!(verdict.is_ok(), "{id}");
                    assert_eq!(&key.tag(&t.msg)[..t.tag.len()], t.tag.as_slice(), "{id}");
                }
                TestResult::Invalid => assert!(verdict.is_err(), "{id}"),
            }
            checked += 1;
        }
    }
    eprintln!("hmac-sha256: {checked} vectors checked, {refused} refused (key or tag < 128 bits)");
    assert_eq!(checked + refused, set.number_of_tests);
    assert!(checked >= 100, "only {checked} vectors checked");
}
