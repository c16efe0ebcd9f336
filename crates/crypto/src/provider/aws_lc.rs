//! A provider on `aws-lc-rs` (cargo feature `aws-lc`).

use aws_lc_rs::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, UnboundKey};

use super::{Aead, AeadKey, Nonce, Tag};
use crate::Suite;
use crate::error::{Error, Misuse};

/// AEADs from `aws-lc-rs` (AWS-LC, the BoringSSL fork behind AWS's FIPS
/// module). The fastest AES-256-GCM of the three on CPUs with AVX-512 and
/// VAES; byte-for-byte identical output to the other providers.
///
/// Its key schedule lives in an AWS-LC context that AWS-LC allocates and
/// cleanses on free: [`super::CryptoProvider::seal_once`] avoids the boxed [`Aead`]
/// but, unlike `Ring` and [`super::RustCrypto`], not every heap allocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsLc;

stack_keyed_provider!(AwsLc, "aws-lc");

fn keyed(suite: Suite, key: &AeadKey) -> Keyed {
    let alg = match suite {
        Suite::Aes256Gcm => &AES_256_GCM,
        Suite::ChaCha20Poly1305 => &CHACHA20_POLY1305,
    };
    // Both algorithms take exactly KEY_LEN bytes, which `AeadKey` guarantees;
    // should AWS-LC still refuse the key, every operation fails closed.
    Keyed(
        UnboundKey::new(alg, key.expose())
            .ok()
            .map(LessSafeKey::new),
    )
}

struct Keyed(Option<LessSafeKey>);

impl Aead for Keyed {
    fn seal_in_place_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<Tag, Error> {
        let key = self.0.as_ref().ok_or(Misuse::TooLong)?;
        let tag = key
            .seal_in_place_separate_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                buf,
            )
            .map_err(|_| Misuse::TooLong)?;
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    fn open_in_place_detached(
        &self,
        nonce: &Nonce,
        aad: &[u8],
        buf: &mut [u8],
        tag: &Tag,
    ) -> Result<(), Error> {
        let key = self.0.as_ref().ok_or(Error::DecryptionFailed)?;
        key.open_in_place_separate_tag(
            aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            tag,
            buf,
        )
        .map(|_| ())
        .map_err(|_| Error::DecryptionFailed)
    }
}
