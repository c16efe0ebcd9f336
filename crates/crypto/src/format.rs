//! Envelope format v1: the header, read and written side by side.
//!
//! The normative description is `docs/envelope-format.md`; section numbers
//! below refer to it. The AEAD authenticates the header bytes exactly as
//! they were received, never a re-serialisation.

use crate::error::FormatError;
use crate::key::{COMMITMENT_LEN, KeyId, SALT_LEN};
use crate::suite::Suite;

/// Magic bytes that open every envelope (§2).
pub const MAGIC: [u8; 4] = *b"CCEN";
/// The only version this build writes (§2).
pub const VERSION_1: u8 = 0x01;
/// Bytes before the variable part: magic, version, header length (§2).
pub const PREFIX_LEN: usize = 7;
/// Longest KMS key reference, in bytes (§3).
pub const MAX_KMS_KEY_LEN: usize = 255;
/// Longest KMS-wrapped data key, in bytes (§3).
pub const MAX_WRAPPED_LEN: usize = 1024;
/// Smallest document chunk: 2^12 = 4 KiB (§6).
pub const MIN_CHUNK_LOG2: u8 = 12;
/// Largest document chunk: 2^24 = 16 MiB (§6).
pub const MAX_CHUNK_LOG2: u8 = 24;
/// Default document chunk: 2^16 = 64 KiB (§6).
pub const DEFAULT_CHUNK_LOG2: u8 = 16;
/// Shortest possible header (keyring reference) (§2).
pub const MIN_HEADER_LEN: usize = PREFIX_LEN + 4 + 4 + SALT_LEN + COMMITMENT_LEN;
/// Longest possible header (KMS reference with the longest fields) (§2).
pub const MAX_HEADER_LEN: usize =
    PREFIX_LEN + 4 + 1 + MAX_KMS_KEY_LEN + 2 + MAX_WRAPPED_LEN + SALT_LEN + COMMITMENT_LEN;

const FORM_RECORD: u8 = 0x01;
const FORM_DOCUMENT: u8 = 0x02;
const KEY_REF_KEYRING: u8 = 0x01;
const KEY_REF_KMS: u8 = 0x02;

/// Which of the two envelope forms (§1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A one-shot sealed byte string (§7).
    Record,
    /// A chunked STREAM of `2^chunk_log2`-byte chunks (§6).
    Document {
        /// Base-2 logarithm of the chunk size, in `MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2`.
        chunk_log2: u8,
    },
}

impl Form {
    /// `form || chunk_log2`, as in the header and the HKDF info (§4).
    pub(crate) fn params(self) -> [u8; 2] {
        match self {
            Self::Record => [FORM_RECORD, 0],
            Self::Document { chunk_log2 } => [FORM_DOCUMENT, chunk_log2],
        }
    }
}

/// How an envelope names its data key (§3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A data key held in a keyring, by id.
    Keyring(KeyId),
    /// A data key wrapped by a KMS key, embedded in the header.
    Kms {
        /// The KMS key (id, ARN or alias) that wrapped the data key.
        key: String,
        /// The wrapped data key, as the KMS returned it.
        wrapped: Vec<u8>,
    },
}

/// A parsed envelope header (§2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The AEAD suite.
    pub suite: Suite,
    /// Record or document.
    pub form: Form,
    /// Where the data key comes from.
    pub key_ref: KeyRef,
    /// The random per-message salt.
    pub salt: [u8; SALT_LEN],
    /// The data key's commitment.
    pub commitment: [u8; COMMITMENT_LEN],
}

impl Header {
    /// Appends the header's bytes to `out` (§2).
    ///
    /// # Errors
    ///
    /// [`FormatError::FieldTooLong`] or [`FormatError::InvalidField`] when a
    /// field is outside its bounds.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION_1);
        out.extend_from_slice(&[0, 0]); // header length, patched below
        out.push(self.suite.id());
        let [form, chunk_log2] = self.form.params();
        if let Form::Document { chunk_log2 } = self.form {
            check_chunk_log2(chunk_log2)?;
        }
        out.extend_from_slice(&[form, chunk_log2]);
        match &self.key_ref {
            KeyRef::Keyring(id) => {
                out.push(KEY_REF_KEYRING);
                out.extend_from_slice(&id.get().to_be_bytes());
            }
            KeyRef::Kms { key, wrapped } => {
                check_kms_key(key.as_bytes())?;
                check_len("wrapped key", wrapped.len(), MAX_WRAPPED_LEN)?;
                out.push(KEY_REF_KMS);
                out.push(key.len() as u8);
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
                out.extend_from_slice(wrapped);
            }
        }
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.commitment);
        let len = (out.len() - start) as u16;
        out[start + 5..start + 7].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// The header length announced by a prefix (§2), so a stream reader knows
    /// how many bytes to read before calling [`Header::parse`].
    ///
    /// # Errors
    ///
    /// [`FormatError::BadMagic`], [`FormatError::UnknownVersion`] or an
    /// out-of-range length.
    pub fn len_from_prefix(prefix: &[u8; PREFIX_LEN]) -> Result<usize, FormatError> {
        if prefix[..4] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        if prefix[4] != VERSION_1 {
            return Err(FormatError::UnknownVersion(prefix[4]));
        }
        let len = usize::from(u16::from_be_bytes([prefix[5], prefix[6]]));
        if !(MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&len) {
            return Err(FormatError::InvalidField {
                field: "header length",
                value: len as u64,
            });
        }
        Ok(len)
    }

    /// Parses the header at the start of `bytes`; returns it and its length.
    /// The bytes after the header (the body) are left to the caller.
    ///
    /// # Errors
    ///
    /// A [`FormatError`] for anything not allowed by §2 and §3, including a
    /// header-length field that disagrees with the fields.
    pub fn parse(bytes: &[u8]) -> Result<(Self, usize), FormatError> {
        let prefix: &[u8; PREFIX_LEN] = bytes
            .get(..PREFIX_LEN)
            .and_then(|p| p.try_into().ok())
            .ok_or(FormatError::Truncated)?;
        let len = Self::len_from_prefix(prefix)?;
        let header = bytes.get(..len).ok_or(FormatError::Truncated)?;
        let mut r = Reader(&header[PREFIX_LEN..]);
        let suite = Suite::from_id(r.u8()?)?;
        let form = match (r.u8()?, r.u8()?) {
            (FORM_RECORD, 0) => Form::Record,
            (FORM_RECORD, other) => {
                return Err(FormatError::InvalidField {
                    field: "chunk size",
                    value: other.into(),
                });
            }
            (FORM_DOCUMENT, chunk_log2) => {
                check_chunk_log2(chunk_log2)?;
                Form::Document { chunk_log2 }
            }
            (other, _) => {
                return Err(FormatError::InvalidField {
                    field: "form",
                    value: other.into(),
                });
            }
        };
        let key_ref = match r.u8()? {
            KEY_REF_KEYRING => {
                let raw = u32::from_be_bytes(r.array()?);
                KeyRef::Keyring(KeyId::new(raw).ok_or(FormatError::InvalidField {
                    field: "key id",
                    value: 0,
                })?)
            }
            KEY_REF_KMS => {
                let key_len = usize::from(r.u8()?);
                let key = r.take(key_len)?;
                check_kms_key(key)?;
                let wrapped_len = usize::from(u16::from_be_bytes(r.array()?));
                check_len("wrapped key", wrapped_len, MAX_WRAPPED_LEN)?;
                if wrapped_len == 0 {
                    return Err(FormatError::InvalidField {
                        field: "wrapped key length",
                        value: 0,
                    });
                }
                let wrapped = r.take(wrapped_len)?.to_vec();
                // check_kms_key guarantees printable ASCII, hence UTF-8.
                let key = String::from_utf8_lossy(key).into_owned();
                KeyRef::Kms { key, wrapped }
            }
            other => {
                return Err(FormatError::InvalidField {
                    field: "key reference",
                    value: other.into(),
                });
            }
        };
        let salt = r.array()?;
        let commitment = r.array()?;
        if !r.0.is_empty() {
            return Err(FormatError::TrailingBytes);
        }
        Ok((
            Self {
                suite,
                form,
                key_ref,
                salt,
                commitment,
            },
            len,
        ))
    }
}

fn check_chunk_log2(chunk_log2: u8) -> Result<(), FormatError> {
    if (MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&chunk_log2) {
        Ok(())
    } else {
        Err(FormatError::InvalidField {
            field: "chunk size",
            value: chunk_log2.into(),
        })
    }
}

/// A KMS key reference is 1..=255 bytes of printable ASCII (0x21..=0x7e).
pub(crate) fn check_kms_key(key: &[u8]) -> Result<(), FormatError> {
    check_len("kms key", key.len(), MAX_KMS_KEY_LEN)?;
    if key.is_empty() || !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(FormatError::InvalidField {
            field: "kms key",
            value: key.len() as u64,
        });
    }
    Ok(())
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), FormatError> {
    if len > max {
        Err(FormatError::FieldTooLong { field, len, max })
    } else {
        Ok(())
    }
}

/// A bounds-checked cursor over a byte slice: every read fails with
/// [`FormatError::Truncated`] instead of panicking.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.0.len() < n {
            return Err(FormatError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn finish(self) -> Result<(), FormatError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FormatError::TrailingBytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key_ref: KeyRef, form: Form) -> Header {
        Header {
            suite: Suite::Aes256Gcm,
            form,
            key_ref,
            salt: [1; SALT_LEN],
            commitment: [2; COMMITMENT_LEN],
        }
    }

    #[test]
    fn write_then_parse_round_trips() {
        let refs = [
            KeyRef::Keyring(KeyId::new(7).unwrap()),
            KeyRef::Kms {
                key: "alias/clinic".into(),
                wrapped: vec![9; 100],
            },
        ];
        for key_ref in refs {
            for form in [Form::Record, Form::Document { chunk_log2: 16 }] {
                let h = sample(key_ref.clone(), form);
                let mut out = Vec::new();
                h.write(&mut out).unwrap();
                out.extend_from_slice(b"body");
                let (back, len) = Header::parse(&out).unwrap();
                assert_eq!(back, h);
                assert_eq!(&out[len..], b"body");
            }
        }
    }

    #[test]
    fn keyring_record_header_is_min_len() {
        let mut out = Vec::new();
        sample(KeyRef::Keyring(KeyId::new(1).unwrap()), Form::Record)
            .write(&mut out)
            .unwrap();
        assert_eq!(out.len(), MIN_HEADER_LEN);
        assert_eq!(MIN_HEADER_LEN, 79);
    }

    #[test]
    fn unknown_version_parses_then_fails() {
        let mut out = Vec::new();
        sample(KeyRef::Keyring(KeyId::new(1).unwrap()), Form::Record)
            .write(&mut out)
            .unwrap();
        out[4] = 2;
        assert_eq!(Header::parse(&out), Err(FormatError::UnknownVersion(2)));
        out[0] = b'X';
        assert_eq!(Header::parse(&out), Err(FormatError::BadMagic));
    }

    #[test]
    fn bad_fields_are_typed_errors() {
        let mut out = Vec::new();
        sample(KeyRef::Keyring(KeyId::new(1).unwrap()), Form::Record)
            .write(&mut out)
            .unwrap();
        let mut bad_suite = out.clone();
        bad_suite[7] = 9;
        assert_eq!(Header::parse(&bad_suite), Err(FormatError::UnknownSuite(9)));
        let mut zero_id = out.clone();
        zero_id[11..15].copy_from_slice(&[0; 4]);
        assert!(matches!(
            Header::parse(&zero_id),
            Err(FormatError::InvalidField {
                field: "key id",
                ..
            })
        ));
        assert_eq!(Header::parse(&out[..40]), Err(FormatError::Truncated));
        let bad_chunk = sample(
            KeyRef::Keyring(KeyId::new(1).unwrap()),
            Form::Document { chunk_log2: 40 },
        );
        assert!(bad_chunk.write(&mut Vec::new()).is_err());
        let long = sample(
            KeyRef::Kms {
                key: "k".repeat(256),
                wrapped: vec![1],
            },
            Form::Record,
        );
        assert!(matches!(
            long.write(&mut Vec::new()),
            Err(FormatError::FieldTooLong { .. })
        ));
    }
}
