//! Pluggable AEAD primitives, in the spirit of rustls's `CryptoProvider`.
//!
//! A [`CryptoProvider`] turns a [`Suite`] and a key into a keyed [`Aead`].
//! An [`Aead`] implements two methods (detached seal and open in place) and
//! gets the rest. Every provider must produce identical bytes for the same
//! inputs: the envelope format does not record which provider sealed it.
//!
//! - [`RustCrypto`] (the default): the `aes-gcm` and `chacha20poly1305` crates.
//! - `Ring` (cargo feature `ring`): the `ring` crate, about three times faster
//!   for AES-GCM on CPUs with VAES.

use std::fmt::Debug;

use zeroize::Zeroizing;

use crate::Suite;
use crate::error::Error;
use crate::suite::{KEY_LEN, NONCE_LEN, TAG_LEN};

#[cfg(feature = "ring")]
mod ring;
mod rustcrypto;

#[cfg(feature = "ring")]
pub use self::ring::Ring;
pub use self::rustcrypto::RustCrypto;

/// A 256-bit AEAD key. Zeroized on drop; its `Debug` shows no key bytes.
pub struct AeadKey(Zeroizing<[u8; KEY_LEN]>);

impl AeadKey {
    /// Wraps key bytes. The caller's copy is not zeroized by this call.
    pub fn new(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Takes ownership of zeroizing key bytes without a copy left behind.
    pub(crate) fn from_zeroizing(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        Self(bytes)
    }

    /// The key bytes, for a provider to schedule.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey { .. }")
    }
}

/// A 96-bit AEAD nonce.
pub type Nonce = [u8; NONCE_LEN];
/// A 128-bit AEAD tag.
pub type Tag = [u8; TAG_LEN];

/// A source of AEAD implementations.
pub trait CryptoProvider: Send + Sync + Debug {
    /// A short name for logs and benchmarks, e.g. `"rustcrypto"`.
    fn name(&self) -> &'static str;

    /// Schedules `key` for `suite`.
    fn aead(&self, suite: Suite, key: &AeadKey) -> Box<dyn Aead>;

    /// Seals one message under a key used once: the record hot path.
    /// Providers override it to keep the key schedule on the stack; the
    /// default goes through [`CryptoProvider::aead`].
    ///
    /// # Errors
    ///
    /// As [`Aead::seal_in_place_detached`].
    fn seal_once(
        &self,
        suite: Suite,
        key: &AeadKey,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<Tag, Error> {
        self.aead(suite, key)
            .seal_in_place_detached(nonce, aad, buf)
    }

    /// Opens one message under a key used once. See [`CryptoProvider::seal_once`].
    ///
    /// # Errors
    ///
    /// As [`Aead::open_in_place_detached`].
    fn open_once(
        &self,
        suite: Suite,
        key: &AeadKey,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
        tag: &Tag,
    ) -> Result<(), Error> {
        self.aead(suite, key)
            .open_in_place_detached(nonce, aad, buf, tag)
    }
}

/// A keyed AEAD. Implement the two `*_detached` methods; the rest is provided.
pub trait Aead: Send + Sync {
    /// Encrypts `buf` in place and returns the tag.
    ///
    /// # Errors
    ///
    /// [`Error::Misuse`] if `buf` is longer than the suite allows.
    fn seal_in_place_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<Tag, Error>;

    /// Checks `tag` and decrypts `buf` in place. On failure `buf`'s contents
    /// are unspecified and must not be used.
    ///
    /// # Errors
    ///
    /// [`Error::DecryptionFailed`] when the tag does not verify.
    fn open_in_place_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
        tag: &Tag,
    ) -> Result<(), Error>;

    /// Encrypts `buf[start..]` in place and appends the tag.
    ///
    /// # Errors
    ///
    /// As [`Aead::seal_in_place_detached`].
    fn seal_append(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), Error> {
        let body = buf.get_mut(start..).ok_or(crate::error::Misuse::TooLong)?;
        let tag = self.seal_in_place_detached(nonce, aad, body)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens `buf`, which holds ciphertext followed by the tag, in place.
    /// Returns the plaintext's length (a prefix of `buf`).
    ///
    /// # Errors
    ///
    /// [`Error::DecryptionFailed`] when `buf` is shorter than a tag or the tag
    /// does not verify.
    fn open_in_place(&self, nonce: &Nonce, aad: &[u8], buf: &mut [u8]) -> Result<usize, Error> {
        let body_len = buf
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(Error::DecryptionFailed)?;
        let (body, tag) = buf.split_at_mut(body_len);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        self.open_in_place_detached(nonce, aad, body, &t)?;
        Ok(body_len)
    }
}

/// The default provider: [`RustCrypto`].
pub fn default_provider() -> &'static dyn CryptoProvider {
    &RustCrypto
}

/// Every provider compiled into this build, default first.
pub fn all_providers() -> Vec<&'static dyn CryptoProvider> {
    vec![
        &RustCrypto,
        #[cfg(feature = "ring")]
        &Ring,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_agree_byte_for_byte() {
        let key = AeadKey::new([0x42; KEY_LEN]);
        let nonce = [7u8; NONCE_LEN];
        for suite in Suite::ALL {
            let mut outs = Vec::new();
            for p in all_providers() {
                let aead = p.aead(suite, &key);
                let mut buf = b"the same bytes from every provider".to_vec();
                aead.seal_append(&nonce, b"aad", &mut buf, 0).unwrap();
                outs.push(buf.clone());
                let n = aead.open_in_place(&nonce, b"aad", &mut buf).unwrap();
                assert_eq!(&buf[..n], b"the same bytes from every provider");
            }
            outs.windows(2).for_each(|w| assert_eq!(w[0], w[1]));
        }
    }

    #[test]
    fn tampering_fails_in_every_provider() {
        let key = AeadKey::new([1; KEY_LEN]);
        for suite in Suite::ALL {
            for p in all_providers() {
                let aead = p.aead(suite, &key);
                let mut buf = b"payload".to_vec();
                aead.seal_append(&[0; 12], b"", &mut buf, 0).unwrap();
                buf[0] ^= 1;
                assert!(matches!(
                    aead.open_in_place(&[0; 12], b"", &mut buf),
                    Err(Error::DecryptionFailed)
                ));
                assert!(matches!(
                    aead.open_in_place(&[0; 12], b"", &mut [0u8; 15]),
                    Err(Error::DecryptionFailed)
                ));
            }
        }
    }

    #[test]
    fn key_debug_is_redacted() {
        let key = AeadKey::new([0xAB; KEY_LEN]);
        let s = format!("{key:?}");
        assert!(!s.to_lowercase().contains("ab"), "{s}");
    }
}
