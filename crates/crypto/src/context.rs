//! Encryption context: what a ciphertext belongs to.

use std::collections::BTreeMap;

use crate::error::Misuse;

/// Most entries an encryption context may hold.
pub const MAX_CONTEXT_ENTRIES: usize = 64;
/// Longest key, in bytes.
pub const MAX_CONTEXT_KEY_LEN: usize = 255;
/// Longest value, in bytes.
pub const MAX_CONTEXT_VALUE_LEN: usize = 4096;

/// The caller's encryption context: key/value pairs that say what a
/// ciphertext is for (collection, record id, field, owner...).
///
/// It is not stored in the envelope; it is authenticated as associated data,
/// so the caller must present the same context to open. A ciphertext moved to
/// another row or field fails to open. Keys are unique; the canonical
/// encoding orders them by their bytes, so insertion order does not matter.
///
/// ```
/// use careconnect_crypto::EncryptionContext;
/// let ctx = EncryptionContext::new()
///     .with("collection", "health_records")
///     .with("record", "42");
/// assert_eq!(ctx.get("record"), Some("42"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an entry.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// The value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The entries, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the context has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Length of the canonical encoding, without building it (saturating;
    /// bounds are checked by [`EncryptionContext::encode_into`]).
    pub(crate) fn encoded_len(&self) -> usize {
        self.0.iter().fold(1usize, |n, (k, v)| {
            n.saturating_add(3)
                .saturating_add(k.len())
                .saturating_add(v.len())
        })
    }

    /// Appends the canonical encoding (`docs/envelope-format.md` §5):
    /// `u8 count`, then per entry in key order `u8 key_len, key, u16 value_len, value`.
    ///
    /// # Errors
    ///
    /// [`Misuse::Context`] when a bound of §5 is exceeded or a key is empty.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), Misuse> {
        if self.0.len() > MAX_CONTEXT_ENTRIES {
            return Err(Misuse::Context("more than 64 entries"));
        }
        out.push(self.0.len() as u8);
        for (k, v) in &self.0 {
            if k.is_empty() || k.len() > MAX_CONTEXT_KEY_LEN {
                return Err(Misuse::Context("keys are 1 to 255 bytes"));
            }
            if v.len() > MAX_CONTEXT_VALUE_LEN {
                return Err(Misuse::Context("values are at most 4096 bytes"));
            }
            out.push(k.len() as u8);
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u16).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        Ok(())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for EncryptionContext {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_canonical_and_injective() {
        let a = EncryptionContext::new().with("b", "2").with("a", "1");
        let b = EncryptionContext::new().with("a", "1").with("b", "2");
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        a.encode_into(&mut ea).unwrap();
        b.encode_into(&mut eb).unwrap();
        assert_eq!(ea, eb);
        assert_eq!(ea, b"\x02\x01a\x00\x011\x01b\x00\x012");
        // "a"="bc" and "ab"="c" must not collide.
        let (mut x, mut y) = (Vec::new(), Vec::new());
        EncryptionContext::new()
            .with("a", "bc")
            .encode_into(&mut x)
            .unwrap();
        EncryptionContext::new()
            .with("ab", "c")
            .encode_into(&mut y)
            .unwrap();
        assert_ne!(x, y);
    }

    #[test]
    fn bounds_are_enforced() {
        let mut out = Vec::new();
        assert!(
            EncryptionContext::new()
                .with("", "x")
                .encode_into(&mut out)
                .is_err()
        );
        assert!(
            EncryptionContext::new()
                .with("k".repeat(256), "x")
                .encode_into(&mut out)
                .is_err()
        );
        assert!(
            EncryptionContext::new()
                .with("k", "v".repeat(4097))
                .encode_into(&mut out)
                .is_err()
        );
        let many: EncryptionContext = (0..65).map(|i| (i.to_string(), "")).collect();
        assert!(many.encode_into(&mut out).is_err());
    }
}
