//! HMAC-SHA256 with constant-time verification.
//!
//! Used for blind indexes (a keyed, deterministic token of a lookup value that
//! storage can index without seeing the value) and anywhere a MAC is needed.
//! Tags can be truncated to no fewer than [`MIN_TAG_LEN`] bytes.
//!
//! ```
//! use careconnect_crypto::mac::MacKey;
//!
//! let key = MacKey::generate();
//! let tag = key.tag(b"nhs-number:943 476 5919");
//! assert!(key.verify(b"nhs-number:943 476 5919", &tag).is_ok());
//! assert!(key.verify(b"nhs-number:943 476 5910", &tag).is_err());
//! ```

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Misuse};

/// Length of a full HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;
/// The shortest tag [`MacKey::verify`] accepts (128 bits).
pub const MIN_TAG_LEN: usize = 16;
/// The shortest key [`MacKey::from_slice`] accepts (128 bits).
pub const MIN_KEY_LEN: usize = 16;

/// An HMAC-SHA256 key, held as its keyed HMAC state (the inner and outer
/// padded-key hashes), so each tag costs no key setup. Zeroized on drop;
/// `Debug` prints no key bytes.
#[derive(Clone)]
pub struct MacKey {
    mac: Hmac<Sha256>,
}

impl MacKey {
    /// A fresh random key from the operating system's CSPRNG (one SHA-256
    /// block, 512 bits: HMAC's natural key size).
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 64]);
        crate::rng::fill_os(key.as_mut());
        Self {
            mac: <Hmac<Sha256> as KeyInit>::new(&(*key).into()),
        }
    }

    /// A key from bytes. HMAC accepts any length; fewer than
    /// [`MIN_KEY_LEN`] bytes is refused as too weak.
    ///
    /// # Errors
    ///
    /// [`Misuse::WeakKey`] for a key shorter than [`MIN_KEY_LEN`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(Misuse::WeakKey.into());
        }
        // HMAC accepts keys of any length (long ones are hashed first), so
        // this never fails for HMAC; the mapping keeps it typed regardless.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(bytes).map_err(|_| Misuse::WeakKey)?;
        Ok(Self { mac })
    }

    /// The full 32-byte tag of `msg`.
    pub fn tag(&self, msg: &[u8]) -> [u8; TAG_LEN] {
        let mut m = self.mac.clone();
        m.update(msg);
        m.finalize().into_bytes().into()
    }

    /// Checks `tag` (full, or its first 16..32 bytes) against `msg` in constant time.
    ///
    /// # Errors
    ///
    /// [`Error::DecryptionFailed`] if the tag does not verify,
    /// [`Misuse::TagLength`] for a tag shorter than [`MIN_TAG_LEN`] or longer
    /// than [`TAG_LEN`].
    pub fn verify(&self, msg: &[u8], tag: &[u8]) -> Result<(), Error> {
        if !(MIN_TAG_LEN..=TAG_LEN).contains(&tag.len()) {
            return Err(Misuse::TagLength(tag.len()).into());
        }
        let mut m = self.mac.clone();
        m.update(msg);
        m.verify_truncated_left(tag)
            .map_err(|_| Error::DecryptionFailed)
    }
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_case_2_and_truncation() {
        // RFC 4231 test case 2 uses a 4-byte key, below our minimum; case 1
        // uses 20 bytes of 0x0b.
        let key = MacKey::from_slice(&[0x0b; 20]).unwrap();
        let tag = key.tag(b"Hi There");
        assert_eq!(
            hex::encode(tag),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert!(key.verify(b"Hi There", &tag[..16]).is_ok());
        assert!(matches!(
            key.verify(b"Hi There", &tag[..15]),
            Err(Error::Misuse(Misuse::TagLength(15)))
        ));
        assert!(MacKey::from_slice(&[1; 15]).is_err());
        assert_eq!(format!("{key:?}"), "MacKey { .. }");
    }
}
