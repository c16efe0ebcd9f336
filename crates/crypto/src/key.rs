//! Data keys and their per-message key derivation (HKDF-SHA256).
//!
//! A data key's HKDF-Extract is computed once, when the key is loaded, and
//! kept as a keyed HMAC state; each message then costs one HKDF-Expand block
//! (two SHA-256 compressions). See `docs/envelope-format.md` §4.

use std::fmt;

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::provider::AeadKey;
use crate::suite::KEY_LEN;

/// HKDF-Extract salt for data keys: fixed, because data keys are already
/// uniformly random 256-bit keys (RFC 5869 §3.3); the per-message randomness
/// enters through `info` (see [`MESSAGE_KEY_LABEL`]).
pub(crate) const EXTRACT_SALT: &[u8] = b"careconnect/envelope/v1";
/// HKDF-Expand label for a per-message AEAD key.
pub(crate) const MESSAGE_KEY_LABEL: &[u8] = b"cc1/key";
/// HKDF-Expand label for the key commitment.
pub(crate) const COMMITMENT_LABEL: &[u8] = b"cc1/commit";
/// HKDF-Expand label for a local-KMS wrapping key.
pub(crate) const WRAP_KEY_LABEL: &[u8] = b"cc1/wrap";
/// HKDF label of MAC keys derived from a data key for a named purpose (§13).
pub(crate) const MAC_KEY_LABEL: &[u8] = b"cc1/mac";

/// Length of the random per-message salt, in bytes (256 bits).
pub const SALT_LEN: usize = 32;
/// Length of the key commitment, in bytes.
pub const COMMITMENT_LEN: usize = 32;

/// The id of a data key in a [`crate::Keyring`]: a random, non-zero 32-bit number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(u32);

impl KeyId {
    /// The smallest id.
    pub const MIN: Self = Self(1);

    /// Wraps a raw id. Zero is reserved and maps to `None`.
    pub const fn new(raw: u32) -> Option<Self> {
        if raw == 0 { None } else { Some(Self(raw)) }
    }

    /// The id as a number, as stored in envelopes and by storage.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A 256-bit data key (DEK), with its HKDF state precomputed.
///
/// Zeroized on drop. `Debug` prints no key bytes.
pub struct DataKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    /// HMAC-SHA256 keyed with the PRK: HKDF-Expand's only state.
    prk: Hmac<Sha256>,
    commitment: [u8; COMMITMENT_LEN],
}

impl DataKey {
    /// A fresh random data key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        crate::rng::fill_os(bytes.as_mut());
        Self::from_zeroizing(bytes)
    }

    /// A data key from bytes (e.g. unwrapped by a KMS). Takes ownership so
    /// the only copy is zeroized on drop.
    pub fn from_bytes(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        Self::from_zeroizing(bytes)
    }

    fn from_zeroizing(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let prk = extract(EXTRACT_SALT, bytes.as_ref());
        let commitment = expand32(&prk, &[COMMITMENT_LABEL]);
        Self {
            bytes,
            prk,
            commitment,
        }
    }

    /// The raw key bytes: only for a KMS to wrap them.
    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// The key commitment stored in every envelope sealed under this key.
    pub(crate) fn commitment(&self) -> &[u8; COMMITMENT_LEN] {
        &self.commitment
    }

    /// Whether `candidate` is this key's commitment, in constant time.
    pub(crate) fn commitment_matches(&self, candidate: &[u8; COMMITMENT_LEN]) -> bool {
        self.commitment.ct_eq(candidate).into()
    }

    /// The per-message key of a record under `suite` and `salt`, for
    /// benchmarks of the derivation alone.
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn message_key_for_bench(&self, suite: crate::Suite, salt: &[u8; SALT_LEN]) -> AeadKey {
        self.derive(MESSAGE_KEY_LABEL, &[suite.id(), 1, 0], salt)
    }

    /// Derives the MAC key for `purpose` (§13):
    /// `HKDF-Expand(PRK, "cc1/mac" || u8 len(purpose) || purpose, 32)`.
    /// `purpose` is at most 255 bytes.
    pub(crate) fn derive_mac(&self, purpose: &[u8]) -> Option<crate::mac::MacKey> {
        let len = u8::try_from(purpose.len()).ok()?;
        let okm = Zeroizing::new(expand32(&self.prk, &[MAC_KEY_LABEL, &[len], purpose]));
        crate::mac::MacKey::from_slice(okm.as_ref()).ok()
    }

    /// Derives the AEAD key for one message:
    /// `HKDF-Expand(PRK, label || params || salt, 32)`.
    pub(crate) fn derive(&self, label: &[u8], params: &[u8], salt: &[u8; SALT_LEN]) -> AeadKey {
        AeadKey::from_zeroizing(Zeroizing::new(expand32(&self.prk, &[label, params, salt])))
    }
}

/// HKDF-Extract (RFC 5869 §2.2), returned as the HMAC keyed with the PRK,
/// which is all HKDF-Expand needs. The PRK bytes are wiped at once.
fn extract(salt: &[u8], ikm: &[u8]) -> Hmac<Sha256> {
    let (prk, _) = Hkdf::<Sha256>::extract(Some(salt), ikm);
    // HMAC zero-pads keys shorter than the 64-byte block (RFC 2104 §2), so
    // the padded PRK is the same key, and construction cannot fail.
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(&prk);
    let mut prk = prk;
    zeroize::Zeroize::zeroize(prk.as_mut_slice());
    <Hmac<Sha256> as KeyInit>::new(&(*block).into())
}

/// HKDF-Expand (RFC 5869 §2.3) for L = 32: `T(1) = HMAC(PRK, info || 0x01)`.
/// With a cached keyed HMAC and `info` under 56 bytes this is two SHA-256
/// compressions, no allocation.
fn expand32(prk: &Hmac<Sha256>, info: &[&[u8]]) -> [u8; 32] {
    let mut mac = prk.clone();
    for part in info {
        mac.update(part);
    }
    mac.update(&[1]);
    mac.finalize().into_bytes().into()
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey { .. }")
    }
}

impl Clone for DataKey {
    fn clone(&self) -> Self {
        Self::from_zeroizing(self.bytes.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_key_bytes() {
        let key = DataKey::from_bytes(Zeroizing::new([0x5a; KEY_LEN]));
        let s = format!("{key:?} {:?}", key.derive(b"x", b"", &[0; SALT_LEN]));
        assert!(!s.contains("5a") && !s.contains("90"), "{s}");
        assert_eq!(s, "DataKey { .. } AeadKey { .. }");
    }

    #[test]
    fn commitment_is_deterministic_and_distinct() {
        let a = DataKey::from_bytes(Zeroizing::new([1; KEY_LEN]));
        let b = DataKey::from_bytes(Zeroizing::new([2; KEY_LEN]));
        assert!(a.commitment_matches(a.clone().commitment()));
        assert!(!a.commitment_matches(b.commitment()));
    }

    #[test]
    fn key_derivation_matches_plain_hkdf() {
        // The cached state must give exactly HKDF(salt, ikm, info) of RFC 5869.
        let ikm = [9u8; KEY_LEN];
        let key = DataKey::from_bytes(Zeroizing::new(ikm));
        let salt = [3u8; SALT_LEN];
        let derived = key.derive(MESSAGE_KEY_LABEL, &[1, 1, 0], &salt);
        let mut info = MESSAGE_KEY_LABEL.to_vec();
        info.extend_from_slice(&[1, 1, 0]);
        info.extend_from_slice(&salt);
        let mut okm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(EXTRACT_SALT), &ikm)
            .expand(&info, &mut okm)
            .unwrap();
        assert_eq!(derived.expose(), &okm);
        // One SHA-256 block per expand: label + params + salt + counter <= 55 bytes.
        assert!(info.len() < 55);
    }

    /// Wycheproof HKDF-SHA256. Every vector runs through the `hkdf` crate;
    /// those with a 32-byte output (the only length the engine derives) also
    /// run through the engine's own `extract` + `expand32`.
    #[test]
    fn wycheproof_hkdf_sha256() {
        use wycheproof::hkdf::{TestName, TestSet};
        let set = TestSet::load(TestName::HkdfSha256).unwrap();
        let (mut checked, mut engine) = (0, 0);
        for group in &set.test_groups {
            for t in &group.tests {
                let hk = Hkdf::<Sha256>::new(Some(&t.salt), &t.ikm);
                let mut okm = vec![0u8; t.size];
                let got = hk.expand(&t.info, &mut okm);
                let valid = t.result != wycheproof::TestResult::Invalid;
                if valid {
                    assert!(got.is_ok(), "tc {}", t.tc_id);
                    assert_eq!(okm, *t.okm, "tc {}", t.tc_id);
                } else {
                    assert!(got.is_err() || okm != *t.okm, "tc {}", t.tc_id);
                }
                if t.size == 32 {
                    let ours = expand32(&extract(&t.salt, &t.ikm), &[&t.info]);
                    assert_eq!(valid, ours.as_slice() == t.okm.as_slice(), "tc {}", t.tc_id);
                    engine += 1;
                }
                checked += 1;
            }
        }
        assert_eq!(checked, set.number_of_tests);
        assert!(
            engine >= 10,
            "only {engine} vectors through the engine path"
        );
    }

    #[test]
    fn zero_key_id_is_reserved() {
        assert!(KeyId::new(0).is_none());
        assert_eq!(
            KeyId::new(0x1f).map(|k| k.to_string()),
            Some("0000001f".into())
        );
    }
}
