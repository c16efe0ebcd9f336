//! AEAD suites.

use crate::error::FormatError;

/// An AEAD suite, named in every envelope by a one-byte id.
///
/// Both suites take 256-bit keys, 96-bit nonces and produce 128-bit tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Suite {
    /// AES-256-GCM (NIST SP 800-38D). Id `0x01`.
    Aes256Gcm,
    /// ChaCha20-Poly1305 (RFC 8439). Id `0x02`.
    ChaCha20Poly1305,
}

impl Suite {
    /// Every suite this build supports.
    pub const ALL: [Self; 2] = [Self::Aes256Gcm, Self::ChaCha20Poly1305];

    /// The suite's id on the wire.
    pub const fn id(self) -> u8 {
        match self {
            Self::Aes256Gcm => 0x01,
            Self::ChaCha20Poly1305 => 0x02,
        }
    }

    /// The suite with this wire id.
    ///
    /// # Errors
    ///
    /// [`FormatError::UnknownSuite`] for an id this build does not know.
    pub const fn from_id(id: u8) -> Result<Self, FormatError> {
        match id {
            0x01 => Ok(Self::Aes256Gcm),
            0x02 => Ok(Self::ChaCha20Poly1305),
            other => Err(FormatError::UnknownSuite(other)),
        }
    }

    /// A short human name, for logs and benchmarks.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Aes256Gcm => "AES-256-GCM",
            Self::ChaCha20Poly1305 => "ChaCha20-Poly1305",
        }
    }
}

impl std::fmt::Display for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Key length of every suite, in bytes.
pub const KEY_LEN: usize = 32;
/// Nonce length of every suite, in bytes.
pub const NONCE_LEN: usize = 12;
/// Tag length of every suite, in bytes.
pub const TAG_LEN: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_fails() {
        for s in Suite::ALL {
            assert_eq!(Suite::from_id(s.id()), Ok(s));
        }
        assert_eq!(Suite::from_id(0), Err(FormatError::UnknownSuite(0)));
        assert_eq!(Suite::from_id(0xff), Err(FormatError::UnknownSuite(0xff)));
    }
}
