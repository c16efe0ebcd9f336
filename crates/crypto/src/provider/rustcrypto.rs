//! The always-compiled provider, on the RustCrypto `aes-gcm` and `chacha20poly1305` crates.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;

use super::{Aead, AeadKey, Nonce, Tag};
use crate::Suite;
use crate::error::{Error, Misuse};

/// AEADs from the RustCrypto project: pure Rust, always compiled in, and what
/// [`super::default_provider`] uses when no faster provider is.
#[derive(Debug, Clone, Copy, Default)]
pub struct RustCrypto;

stack_keyed_provider!(RustCrypto, "rustcrypto");

/// Either suite's cipher, keyed on the stack (boxed only by `aead`).
#[allow(
    clippy::large_enum_variant,
    reason = "lives on the stack for one message; avoiding the box is the point of seal_once"
)]
enum Cipher {
    Aes(Keyed<Aes256Gcm>),
    ChaCha(Keyed<ChaCha20Poly1305>),
}

fn keyed(suite: Suite, key: &AeadKey) -> Cipher {
    let k = key.expose().into();
    match suite {
        Suite::Aes256Gcm => Cipher::Aes(Keyed(Aes256Gcm::new(k))),
        Suite::ChaCha20Poly1305 => Cipher::ChaCha(Keyed(ChaCha20Poly1305::new(k))),
    }
}

impl Aead for Cipher {
    fn seal_in_place_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<Tag, Error> {
        match self {
            Self::Aes(c) => c.seal_in_place_detached(nonce, aad, buf),
            Self::ChaCha(c) => c.seal_in_place_detached(nonce, aad, buf),
        }
    }

    fn open_in_place_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
        tag: &Tag,
    ) -> Result<(), Error> {
        match self {
            Self::Aes(c) => c.open_in_place_detached(nonce, aad, buf, tag),
            Self::ChaCha(c) => c.open_in_place_detached(nonce, aad, buf, tag),
        }
    }
}

struct Keyed<C>(C);

impl<C> Aead for Keyed<C>
where
    C: AeadInOut<NonceSize = aes_gcm::aead::consts::U12, TagSize = aes_gcm::aead::consts::U16>
        + Send
        + Sync,
{
    fn seal_in_place_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<Tag, Error> {
        let tag = self
            .0
            .encrypt_inout_detached(nonce.into(), aad, buf.into())
            .map_err(|_| Misuse::TooLong)?;
        Ok(tag.into())
    }

    fn open_in_place_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
        tag: &Tag,
    ) -> Result<(), Error> {
        self.0
            .decrypt_inout_detached(nonce.into(), aad, buf.into(), tag.into())
            .map_err(|_| Error::DecryptionFailed)
    }
}
