//! Sealing and opening envelopes with a data key in hand (§6, §7).
//!
//! Most callers use [`crate::Keyring`] (records) or
//! [`crate::document`] (documents), which find the data key for you.

use crate::context::EncryptionContext;
use crate::error::{Error, FormatError, Misuse};
use crate::format::{Form, Header, KeyRef, PREFIX_LEN};
use crate::key::{COMMITMENT_LEN, DataKey, MESSAGE_KEY_LABEL, SALT_LEN};
use crate::provider::{Aead, CryptoProvider, Nonce};
use crate::suite::{NONCE_LEN, Suite, TAG_LEN};

/// The nonce of chunk `counter`: an 88-bit big-endian counter, then the
/// last-chunk flag (§6). A record is the single, last chunk 0 (§7).
pub(crate) fn chunk_nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Associated data (§5): slices of the header bytes as written or received
/// (everything except the header length and a KMS key reference, which the
/// key commitment already binds), then the canonical context encoding.
pub(crate) fn associated_data(
    header_bytes: &[u8],
    header: &Header,
    ctx: &EncryptionContext,
) -> Result<Vec<u8>, Error> {
    let n = header_bytes.len();
    let tail = SALT_LEN + COMMITMENT_LEN;
    let keyring_id = if matches!(header.key_ref, KeyRef::Keyring(_)) {
        4
    } else {
        0
    };
    let fixed = PREFIX_LEN + 4 + keyring_id;
    let (Some(magic_version), Some(fields), Some(salt_commit)) = (
        header_bytes.get(..5),
        header_bytes.get(PREFIX_LEN..fixed),
        n.checked_sub(tail)
            .and_then(|start| header_bytes.get(start..)),
    ) else {
        return Err(FormatError::Truncated.into());
    };
    let mut aad = Vec::with_capacity(5 + fields.len() + tail + 64);
    aad.extend_from_slice(magic_version);
    aad.extend_from_slice(fields);
    aad.extend_from_slice(salt_commit);
    ctx.encode_into(&mut aad)?;
    Ok(aad)
}

/// The length [`associated_data`] will have, computed without building it.
pub(crate) fn associated_data_len(header: &Header, ctx: &EncryptionContext) -> usize {
    let keyring_id = if matches!(header.key_ref, KeyRef::Keyring(_)) {
        4
    } else {
        0
    };
    (5 + 4 + keyring_id + SALT_LEN + COMMITMENT_LEN).saturating_add(ctx.encoded_len())
}

/// Replaces the KMS key reference of a KMS-keyed envelope header, leaving the
/// body valid: the body's authentication does not cover the key reference
/// (§5). Returns the new header bytes; the body follows unchanged.
pub(crate) fn rewrite_kms_ref(
    header: &Header,
    key: &str,
    wrapped: Vec<u8>,
) -> Result<Vec<u8>, Error> {
    if !matches!(header.key_ref, KeyRef::Kms { .. }) {
        return Err(Misuse::WrongKeyReference.into());
    }
    let mut h = header.clone();
    h.key_ref = KeyRef::Kms {
        key: key.to_owned(),
        wrapped,
    };
    let mut out = Vec::new();
    h.write(&mut out)?;
    Ok(out)
}

/// Derives the per-message AEAD for `header` under `dek`, after checking
/// the key commitment in constant time.
pub(crate) fn message_aead(
    provider: &dyn CryptoProvider,
    dek: &DataKey,
    header: &Header,
) -> Result<Box<dyn Aead>, Error> {
    if !dek.commitment_matches(&header.commitment) {
        tracing::debug!("envelope key commitment mismatch");
        return Err(Error::CommitmentMismatch);
    }
    Ok(provider.aead(
        header.suite,
        &derive(dek, header.suite, header.form, &header.salt),
    ))
}

fn derive(
    dek: &DataKey,
    suite: Suite,
    form: Form,
    salt: &[u8; SALT_LEN],
) -> crate::provider::AeadKey {
    let [f, c] = form.params();
    dek.derive(MESSAGE_KEY_LABEL, &[suite.id(), f, c], salt)
}

/// A fresh header for `form` under `dek`, with a salt from the OS.
pub(crate) fn new_header(
    dek: &DataKey,
    suite: Suite,
    form: Form,
    key_ref: KeyRef,
) -> Result<Header, Error> {
    let mut salt = [0u8; SALT_LEN];
    crate::rng::fill(&mut salt)?;
    Ok(Header {
        suite,
        form,
        key_ref,
        salt,
        commitment: *dek.commitment(),
    })
}

/// Seals `plaintext` as a record envelope under `dek`, naming it by `key_ref`.
///
/// # Errors
///
/// [`Error::Misuse`] for a context or key reference outside the format's bounds.
pub fn seal_record(
    provider: &dyn CryptoProvider,
    suite: Suite,
    dek: &DataKey,
    key_ref: KeyRef,
    ctx: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    seal_record_with_header(
        provider,
        dek,
        &new_header(dek, suite, Form::Record, key_ref)?,
        ctx,
        plaintext,
    )
}

pub(crate) fn seal_record_with_header(
    provider: &dyn CryptoProvider,
    dek: &DataKey,
    header: &Header,
    ctx: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut out =
        Vec::with_capacity(crate::format::MIN_HEADER_LEN + plaintext.len() + TAG_LEN + 64);
    header.write(&mut out)?;
    let header_len = out.len();
    out.extend_from_slice(plaintext);
    seal_body_in_place(provider, dek, header, header_len, ctx, &mut out)?;
    Ok(out)
}

/// Seals `buf[header_len..]` in place and appends the tag; `buf[..header_len]`
/// must already hold `header`'s bytes.
pub(crate) fn seal_body_in_place(
    provider: &dyn CryptoProvider,
    dek: &DataKey,
    header: &Header,
    header_len: usize,
    ctx: &EncryptionContext,
    buf: &mut Vec<u8>,
) -> Result<(), Error> {
    let (head, body) = buf
        .split_at_mut_checked(header_len)
        .ok_or(FormatError::Truncated)?;
    let aad = associated_data(head, header, ctx)?;
    let key = derive(dek, header.suite, header.form, &header.salt);
    let tag = provider.seal_once(header.suite, &key, &chunk_nonce(0, true), &aad, body)?;
    buf.extend_from_slice(&tag);
    Ok(())
}

/// Opens a record envelope whose header was parsed from `envelope` (see
/// [`Header::parse`]) with the data key it names.
///
/// # Errors
///
/// [`Error::CommitmentMismatch`] for a wrong key, [`Error::DecryptionFailed`]
/// for a wrong context or any tampering; [`Misuse::WrongForm`] for a document
/// envelope.
pub fn open_record(
    provider: &dyn CryptoProvider,
    dek: &DataKey,
    header: &Header,
    header_len: usize,
    envelope: &[u8],
    ctx: &EncryptionContext,
) -> Result<Vec<u8>, Error> {
    let head = envelope.get(..header_len).ok_or(Error::DecryptionFailed)?;
    let mut buf = envelope.get(header_len..).unwrap_or_default().to_vec();
    let n = open_split(provider, dek, header, head, &mut buf, ctx)?;
    buf.truncate(n);
    Ok(buf)
}

/// Opens a record envelope in place; returns where the plaintext is in `envelope`.
pub(crate) fn open_record_in_place(
    provider: &dyn CryptoProvider,
    dek: &DataKey,
    header: &Header,
    header_len: usize,
    envelope: &mut [u8],
    ctx: &EncryptionContext,
) -> Result<std::ops::Range<usize>, Error> {
    let (head, rest) = envelope
        .split_at_mut_checked(header_len)
        .ok_or(Error::DecryptionFailed)?;
    let n = open_split(provider, dek, header, head, rest, ctx)?;
    Ok(header_len..header_len + n)
}

/// Opens `sealed` (ciphertext || tag) in place under the header `head`;
/// returns the plaintext length (a prefix of `sealed`).
fn open_split(
    provider: &dyn CryptoProvider,
    dek: &DataKey,
    header: &Header,
    head: &[u8],
    sealed: &mut [u8],
    ctx: &EncryptionContext,
) -> Result<usize, Error> {
    if header.form != Form::Record {
        return Err(Misuse::WrongForm.into());
    }
    if !dek.commitment_matches(&header.commitment) {
        tracing::debug!("envelope key commitment mismatch");
        return Err(Error::CommitmentMismatch);
    }
    let n = sealed
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(Error::DecryptionFailed)?;
    let (body, tag) = sealed.split_at_mut(n);
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(tag);
    let aad = associated_data(head, header, ctx)?;
    let key = derive(dek, header.suite, header.form, &header.salt);
    provider.open_once(header.suite, &key, &chunk_nonce(0, true), &aad, body, &t)?;
    Ok(n)
}

/// Seals with a caller-chosen salt, for known-answer vectors. Never reuse a salt.
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub fn seal_record_with_salt(
    provider: &dyn CryptoProvider,
    suite: Suite,
    dek: &DataKey,
    key_ref: KeyRef,
    salt: [u8; SALT_LEN],
    ctx: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let header = Header {
        suite,
        form: Form::Record,
        key_ref,
        salt,
        commitment: *dek.commitment(),
    };
    seal_record_with_header(provider, dek, &header, ctx, plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyId;

    #[test]
    fn nonce_layout() {
        assert_eq!(chunk_nonce(0, true), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            chunk_nonce(0x0102, false),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0]
        );
    }

    #[test]
    fn associated_data_len_is_exact() {
        let dek = DataKey::generate();
        let ctx = EncryptionContext::new()
            .with("collection", "notes")
            .with("record", "x".repeat(300));
        for key_ref in [
            KeyRef::Keyring(KeyId::new(5).unwrap()),
            KeyRef::Kms {
                key: "alias/k".into(),
                wrapped: vec![1; 60],
            },
        ] {
            let h = new_header(&dek, Suite::Aes256Gcm, Form::Record, key_ref).unwrap();
            let mut bytes = Vec::new();
            h.write(&mut bytes).unwrap();
            let aad = associated_data(&bytes, &h, &ctx).unwrap();
            assert_eq!(associated_data_len(&h, &ctx), aad.len());
        }
    }

    #[test]
    fn record_round_trip_and_context_binding() {
        let dek = DataKey::generate();
        let ctx = EncryptionContext::new().with("record", "1");
        let kr = KeyRef::Keyring(KeyId::new(5).unwrap());
        for p in crate::provider::all_providers() {
            for suite in Suite::ALL {
                let env = seal_record(p, suite, &dek, kr.clone(), &ctx, b"hello").unwrap();
                let (h, n) = Header::parse(&env).unwrap();
                assert_eq!(open_record(p, &dek, &h, n, &env, &ctx).unwrap(), b"hello");
                let other = EncryptionContext::new().with("record", "2");
                assert!(matches!(
                    open_record(p, &dek, &h, n, &env, &other),
                    Err(Error::DecryptionFailed)
                ));
                let wrong = DataKey::generate();
                assert!(matches!(
                    open_record(p, &wrong, &h, n, &env, &ctx),
                    Err(Error::CommitmentMismatch)
                ));
            }
        }
    }
}
