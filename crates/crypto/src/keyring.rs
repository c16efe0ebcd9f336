//! Keyrings: versioned data keys for records, persisted sealed under a KMS key.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use crate::context::EncryptionContext;
use crate::envelope::{open_record, seal_record};
use crate::error::{Error, FormatError, Misuse};
use crate::format::{Form, Header, KeyRef, Reader};
use crate::key::{DataKey, KeyId};
use crate::kms::{Kms, KmsKeyId, TrustedKeys, WrappedKey};
use crate::provider::{CryptoProvider, default_provider};
use crate::suite::{KEY_LEN, Suite};

mod shared;
pub use shared::SharedKeyring;

const KEYSET_MAGIC: [u8; 4] = *b"CCKS";
const KEYSET_VERSION: u8 = 0x01;
const MAX_KEYS: usize = 10_000;

/// The life cycle of a data key.
///
/// ```text
/// Primary --rotate--> Active --retire--> Retired
///    \                  |                  |
///     (rotate first)    +--mark_compromised+--> Compromised --destroy--> Destroyed
/// ```
/// Only the primary seals. Every state but `Destroyed` opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyState {
    /// Seals new records; exactly one key is primary.
    Primary,
    /// A former primary: opens, never seals.
    Active,
    /// Scheduled for removal once nothing references it: opens, never seals.
    Retired,
    /// Believed exposed: opens only so its records can be re-sealed.
    Compromised,
    /// Key material erased: opens nothing, ever.
    Destroyed,
}

impl KeyState {
    fn code(self) -> u8 {
        match self {
            Self::Primary => 1,
            Self::Active => 2,
            Self::Retired => 3,
            Self::Compromised => 4,
            Self::Destroyed => 5,
        }
    }

    fn from_code(c: u8) -> Result<Self, FormatError> {
        Ok(match c {
            1 => Self::Primary,
            2 => Self::Active,
            3 => Self::Retired,
            4 => Self::Compromised,
            5 => Self::Destroyed,
            other => {
                return Err(FormatError::InvalidField {
                    field: "key state",
                    value: other.into(),
                });
            }
        })
    }
}

/// Public facts about one key in a keyring: never its material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's id, as named in envelopes.
    pub id: KeyId,
    /// Its state.
    pub state: KeyState,
    /// When it was created, in seconds since the Unix epoch.
    pub created: u64,
}

#[derive(Clone)]
struct Entry {
    info: KeyInfo,
    material: Option<DataKey>,
}

/// A record opened by [`Keyring::open`]: the plaintext and which key opened it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Opened {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// The data key that sealed it.
    pub key_id: KeyId,
    /// That key's state: anything but `Primary` means the record should be re-sealed.
    pub key_state: KeyState,
}

/// A record opened in place by [`Keyring::open_in_place`].
#[derive(Debug)]
#[non_exhaustive]
pub struct OpenedInPlace<'a> {
    /// The plaintext, inside the caller's buffer.
    pub plaintext: &'a mut [u8],
    /// The data key that sealed it.
    pub key_id: KeyId,
    /// That key's state: anything but `Primary` means the record should be re-sealed.
    pub key_state: KeyState,
}

/// Length of the header of a record sealed by a keyring: the room
/// [`Keyring::seal_in_place`] needs before the plaintext.
pub const RECORD_HEADER_LEN: usize = crate::format::MIN_HEADER_LEN;

/// Versioned data keys for sealing records (Tink's "keyset").
///
/// Seals with the primary key; opens with whichever key the envelope names.
/// Persist it with [`Keyring::seal_keyset`], which seals the whole keyring
/// under a KMS key; load it with [`Keyring::open_keyset`].
///
/// ```
/// # fn main() -> Result<(), careconnect_crypto::Error> {
/// use careconnect_crypto::{EncryptionContext, Keyring, KeyState};
/// let mut ring = Keyring::generate();
/// let ctx = EncryptionContext::new().with("record", "7");
/// let env = ring.seal(&ctx, b"blood type: O+")?;
/// let old = ring.primary();
/// ring.rotate()?;
/// let opened = ring.open(&env, &ctx)?;
/// assert_eq!(opened.plaintext, b"blood type: O+");
/// assert_eq!((opened.key_id, opened.key_state), (old, KeyState::Active));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Keyring {
    entries: Vec<Entry>,
    primary: KeyId,
    suite: Suite,
    provider: &'static dyn CryptoProvider,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary)
            .field(
                "keys",
                &self.entries.iter().map(|e| e.info).collect::<Vec<_>>(),
            )
            .field("suite", &self.suite)
            .field("provider", &self.provider.name())
            .finish()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Keyring {
    /// A new keyring with one fresh primary key, AES-256-GCM, default provider.
    pub fn generate() -> Self {
        let id = random_id(&[]);
        Self {
            entries: vec![Entry {
                info: KeyInfo {
                    id,
                    state: KeyState::Primary,
                    created: now(),
                },
                material: Some(DataKey::generate()),
            }],
            primary: id,
            suite: Suite::Aes256Gcm,
            provider: default_provider(),
        }
    }

    /// Seals new records with `suite` (opening reads the suite from the envelope).
    #[must_use]
    pub fn with_suite(mut self, suite: Suite) -> Self {
        self.suite = suite;
        self
    }

    /// Uses `provider` for sealing and opening.
    #[must_use]
    pub fn with_provider(mut self, provider: &'static dyn CryptoProvider) -> Self {
        self.provider = provider;
        self
    }

    /// The primary key's id.
    pub fn primary(&self) -> KeyId {
        self.primary
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> impl Iterator<Item = KeyInfo> + '_ {
        self.entries.iter().map(|e| e.info)
    }

    /// One key's facts.
    pub fn key(&self, id: KeyId) -> Option<KeyInfo> {
        self.entry(id).map(|e| e.info)
    }

    fn entry(&self, id: KeyId) -> Option<&Entry> {
        self.entries.iter().find(|e| e.info.id == id)
    }

    fn entry_mut(&mut self, id: KeyId) -> Result<&mut Entry, Error> {
        self.entries
            .iter_mut()
            .find(|e| e.info.id == id)
            .ok_or(Error::UnknownKey(id))
    }

    /// Adds a fresh key and makes it primary; the old primary becomes `Active`.
    ///
    /// Where several processes share a stored keyring, prefer
    /// [`Keyring::add_key`], store, wait until every process has reloaded,
    /// then [`Keyring::promote`]: nothing is then sealed under a key that
    /// some reader does not know yet.
    ///
    /// # Errors
    ///
    /// [`Misuse::KeyringFull`] when the keyring already holds 10,000 keys
    /// (destroyed ones count: their ids stay reserved).
    pub fn rotate(&mut self) -> Result<KeyId, Error> {
        let id = self.add_key()?;
        self.promote(id)?;
        Ok(id)
    }

    /// Adds a fresh `Active` key: it opens (once someone seals under it)
    /// but does not seal until [`Keyring::promote`]d.
    ///
    /// # Errors
    ///
    /// As [`Keyring::rotate`].
    pub fn add_key(&mut self) -> Result<KeyId, Error> {
        // Checked here, not when the keyset is next read: a keyset written
        // with more keys than `decode` accepts would lose every key.
        if self.entries.len() >= MAX_KEYS {
            return Err(Misuse::KeyringFull(MAX_KEYS).into());
        }
        let ids: Vec<KeyId> = self.entries.iter().map(|e| e.info.id).collect();
        let id = random_id(&ids);
        self.entries.push(Entry {
            info: KeyInfo {
                id,
                state: KeyState::Active,
                created: now(),
            },
            material: Some(DataKey::generate()),
        });
        Ok(id)
    }

    /// Makes `Active` key `id` the primary; the old primary becomes
    /// `Active`. Promoting the primary changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownKey`]; [`Misuse::NotActive`] for a key that is
    /// retired, compromised or destroyed.
    pub fn promote(&mut self, id: KeyId) -> Result<(), Error> {
        if id == self.primary {
            return Ok(());
        }
        let e = self.entry_mut(id)?;
        if e.info.state != KeyState::Active {
            return Err(Misuse::NotActive(id).into());
        }
        e.info.state = KeyState::Primary;
        let old = self.primary;
        if let Some(e) = self.entries.iter_mut().find(|e| e.info.id == old) {
            e.info.state = KeyState::Active;
        }
        self.primary = id;
        Ok(())
    }

    /// Marks an `Active` key `Retired`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownKey`]; [`Misuse::PrimaryKey`] for the primary;
    /// [`Misuse::AlreadyDestroyed`]; [`Misuse::Compromised`] for a
    /// compromised key (it can only be destroyed).
    pub fn retire(&mut self, id: KeyId) -> Result<(), Error> {
        self.set_state(id, KeyState::Retired)
    }

    /// Marks a key `Compromised`: it still opens (so its records can be
    /// re-sealed) and never seals. Rotate first if it is the primary.
    ///
    /// # Errors
    ///
    /// As [`Keyring::retire`].
    pub fn mark_compromised(&mut self, id: KeyId) -> Result<(), Error> {
        self.set_state(id, KeyState::Compromised)
    }

    /// Erases a key's material. Nothing sealed under it opens again; keep
    /// the keyring's other copies in mind (seal and store it afterwards).
    /// Checking that no ciphertext still references the key is the caller's job.
    ///
    /// # Errors
    ///
    /// As [`Keyring::retire`].
    pub fn destroy(&mut self, id: KeyId) -> Result<(), Error> {
        self.set_state(id, KeyState::Destroyed)?;
        self.entry_mut(id)?.material = None;
        Ok(())
    }

    fn set_state(&mut self, id: KeyId, state: KeyState) -> Result<(), Error> {
        if id == self.primary {
            return Err(Misuse::PrimaryKey(id).into());
        }
        let e = self.entry_mut(id)?;
        match e.info.state {
            KeyState::Destroyed => return Err(Misuse::AlreadyDestroyed(id).into()),
            // Relabelling a compromised key would hide the compromise from
            // `Opened::key_state` and from whoever reviews the keyring.
            KeyState::Compromised
                if !matches!(state, KeyState::Compromised | KeyState::Destroyed) =>
            {
                return Err(Misuse::Compromised(id).into());
            }
            _ => {}
        }
        e.info.state = state;
        Ok(())
    }

    /// An HMAC-SHA256 key for `purpose` (audit chains, blind indexes...),
    /// derived from data key `id` with HKDF (`docs/envelope-format.md` §13):
    /// each purpose and each data key gives an independent key, and none of
    /// them reveals the data key. Store `id` beside what you MAC, so it can
    /// be verified after a rotation.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownKey`], [`Error::KeyDestroyed`];
    /// [`Misuse::Context`] for a purpose longer than 255 bytes or empty.
    pub fn mac_key_for(&self, id: KeyId, purpose: &str) -> Result<crate::mac::MacKey, Error> {
        if purpose.is_empty() {
            return Err(Misuse::Context("a mac purpose is 1 to 255 bytes").into());
        }
        let entry = self.entry(id).ok_or(Error::UnknownKey(id))?;
        let dek = entry.material.as_ref().ok_or(Error::KeyDestroyed(id))?;
        dek.derive_mac(purpose.as_bytes())
            .ok_or_else(|| Misuse::Context("a mac purpose is 1 to 255 bytes").into())
    }

    /// Seals `plaintext` under the primary key, bound to `ctx`.
    ///
    /// # Errors
    ///
    /// [`Error::Misuse`] for a context outside its bounds.
    pub fn seal(&self, ctx: &EncryptionContext, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let dek = self
            .entry(self.primary)
            .and_then(|e| e.material.as_ref())
            .ok_or(Error::UnknownKey(self.primary))?;
        seal_record(
            self.provider,
            self.suite,
            dek,
            KeyRef::Keyring(self.primary),
            ctx,
            plaintext,
        )
    }

    /// The id of the data key `envelope` names, without opening it (for
    /// storage to index rows by key, and for rotation).
    ///
    /// # Errors
    ///
    /// A [`FormatError`] for a malformed header; [`Misuse::WrongKeyReference`]
    /// for an envelope that names a KMS key.
    pub fn key_id_of(envelope: &[u8]) -> Result<KeyId, Error> {
        match Header::parse(envelope)?.0.key_ref {
            KeyRef::Keyring(id) => Ok(id),
            KeyRef::Kms { .. } => Err(Misuse::WrongKeyReference.into()),
        }
    }

    /// Opens a record envelope sealed by this keyring, under `ctx`.
    ///
    /// # Errors
    ///
    /// [`Error::CommitmentMismatch`] if the header's commitment does not match
    /// the named key, [`Error::DecryptionFailed`] for a wrong context or any tampering;
    /// [`Error::UnknownKey`], [`Error::KeyDestroyed`]; a [`FormatError`].
    pub fn open(&self, envelope: &[u8], ctx: &EncryptionContext) -> Result<Opened, Error> {
        let (header, header_len, entry, dek) = self.find(envelope)?;
        let plaintext = open_record(self.provider, dek, &header, header_len, envelope, ctx)?;
        Ok(Opened {
            plaintext,
            key_id: entry.info.id,
            key_state: entry.info.state,
        })
    }

    /// As [`Keyring::seal`], without allocating or copying: `buf` holds
    /// [`RECORD_HEADER_LEN`] bytes of room (any value) followed by the
    /// plaintext; on success it holds the envelope (the header written over
    /// the room, the plaintext encrypted in place, the tag appended).
    ///
    /// ```
    /// # fn main() -> Result<(), careconnect_crypto::Error> {
    /// use careconnect_crypto::{EncryptionContext, Keyring, RECORD_HEADER_LEN};
    /// let ring = Keyring::generate();
    /// let ctx = EncryptionContext::new().with("record", "1");
    /// let mut buf = vec![0u8; RECORD_HEADER_LEN];
    /// buf.extend_from_slice(b"pulse 72");
    /// ring.seal_in_place(&ctx, &mut buf)?;
    /// assert_eq!(ring.open(&buf, &ctx)?.plaintext, b"pulse 72");
    /// let opened = ring.open_in_place(&mut buf, &ctx)?;
    /// assert_eq!(opened.plaintext, b"pulse 72");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Misuse::TooLong`] if `buf` is shorter than [`RECORD_HEADER_LEN`]
    /// (nothing is changed then); as [`Keyring::seal`] otherwise.
    pub fn seal_in_place(&self, ctx: &EncryptionContext, buf: &mut Vec<u8>) -> Result<(), Error> {
        let dek = self
            .entry(self.primary)
            .and_then(|e| e.material.as_ref())
            .ok_or(Error::UnknownKey(self.primary))?;
        let room = buf.get_mut(..RECORD_HEADER_LEN).ok_or(Misuse::TooLong)?;
        let header = crate::envelope::new_header(
            dek,
            self.suite,
            Form::Record,
            KeyRef::Keyring(self.primary),
        )?;
        let mut head = Vec::with_capacity(RECORD_HEADER_LEN);
        header.write(&mut head)?;
        room.copy_from_slice(head.get(..RECORD_HEADER_LEN).ok_or(Misuse::TooLong)?);
        crate::envelope::seal_body_in_place(
            self.provider,
            dek,
            &header,
            RECORD_HEADER_LEN,
            ctx,
            buf,
        )
    }

    /// As [`Keyring::open`], decrypting in place: returns the plaintext as a
    /// slice of `envelope`. On failure the contents of `envelope` are
    /// unspecified.
    ///
    /// # Errors
    ///
    /// As [`Keyring::open`].
    pub fn open_in_place<'a>(
        &self,
        envelope: &'a mut [u8],
        ctx: &EncryptionContext,
    ) -> Result<OpenedInPlace<'a>, Error> {
        let (header, header_len, entry, dek) = self.find(envelope)?;
        let (key_id, key_state) = (entry.info.id, entry.info.state);
        let range = crate::envelope::open_record_in_place(
            self.provider,
            dek,
            &header,
            header_len,
            envelope,
            ctx,
        )?;
        let plaintext = envelope.get_mut(range).ok_or(Error::DecryptionFailed)?;
        Ok(OpenedInPlace {
            plaintext,
            key_id,
            key_state,
        })
    }

    /// Parses a record envelope's header and finds the data key it names.
    fn find(&self, envelope: &[u8]) -> Result<(Header, usize, &Entry, &DataKey), Error> {
        let (header, header_len) = Header::parse(envelope)?;
        let KeyRef::Keyring(id) = header.key_ref else {
            return Err(Misuse::WrongKeyReference.into());
        };
        if header.form != Form::Record {
            return Err(Misuse::WrongForm.into());
        }
        let entry = self.entry(id).ok_or(Error::UnknownKey(id))?;
        let dek = entry.material.as_ref().ok_or(Error::KeyDestroyed(id))?;
        Ok((header, header_len, entry, dek))
    }

    /// Seals this whole keyring under `wrapper`'s primary key, bound to
    /// `ctx`: a keyset inside another keyset (per-subject keys under a
    /// bucket key, for crypto-shredding). Open it with [`Keyring::open_under`].
    ///
    /// # Errors
    ///
    /// As [`Keyring::seal`].
    pub fn seal_under(&self, wrapper: &Keyring, ctx: &EncryptionContext) -> Result<Vec<u8>, Error> {
        wrapper.seal(ctx, &self.encode())
    }

    /// Opens a keyring sealed by [`Keyring::seal_under`]; also returns which
    /// of `wrapper`'s keys sealed it, and that key's state.
    ///
    /// # Errors
    ///
    /// As [`Keyring::open`], or a [`FormatError`] for bytes that are not a keyset.
    pub fn open_under(
        wrapper: &Keyring,
        sealed: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<(Self, KeyId, KeyState), Error> {
        let opened = wrapper.open(sealed, ctx)?;
        let plain = Zeroizing::new(opened.plaintext);
        Ok((Self::decode(&plain)?, opened.key_id, opened.key_state))
    }

    /// Serialises the keyset and seals it under `kms_key` as a record
    /// envelope whose data key is wrapped by the KMS (§8).
    ///
    /// # Errors
    ///
    /// KMS errors.
    pub async fn seal_keyset(&self, kms: &dyn Kms, kms_key: &KmsKeyId) -> Result<Vec<u8>, Error> {
        let ctx = keyset_context();
        let (dek, wrapped) = kms.generate_data_key(kms_key, &ctx).await?;
        let key_ref = KeyRef::Kms {
            key: kms_key.as_str().to_owned(),
            wrapped: wrapped.into_bytes(),
        };
        seal_record(
            self.provider,
            Suite::Aes256Gcm,
            &dek,
            key_ref,
            &ctx,
            &self.encode(),
        )
    }

    /// Opens a keyset sealed by [`Keyring::seal_keyset`], if it was sealed
    /// under a KMS key in `trusted`.
    ///
    /// Whoever can write the stored keyset chooses the KMS key its header
    /// names; trusting any would let them substitute data keys of their own,
    /// which every later record would then be sealed under.
    ///
    /// # Errors
    ///
    /// [`crate::KmsError::UntrustedKey`] (before any KMS call) for a keyset
    /// sealed under a key not in `trusted`; KMS errors,
    /// [`Error::DecryptionFailed`], or a [`FormatError`] for a malformed file.
    pub async fn open_keyset(
        kms: &dyn Kms,
        trusted: &TrustedKeys,
        sealed: &[u8],
    ) -> Result<Self, Error> {
        let (header, header_len) = Header::parse(sealed)?;
        let KeyRef::Kms { key, wrapped } = &header.key_ref else {
            return Err(Misuse::WrongKeyReference.into());
        };
        let kms_key = trusted.check(key)?;
        let ctx = keyset_context();
        let dek = kms
            .decrypt(&kms_key, &WrappedKey::new(wrapped.clone())?, &ctx)
            .await?;
        let plain = Zeroizing::new(open_record(
            default_provider(),
            &dek,
            &header,
            header_len,
            sealed,
            &ctx,
        )?);
        Ok(Self::decode(&plain)?)
    }

    /// Re-wraps a sealed keyset's data key under `to` with the KMS's
    /// `ReEncrypt`: no record and no key leaves its envelope, and the body is
    /// not re-sealed (the key reference is outside the associated data, §5).
    ///
    /// # Errors
    ///
    /// [`crate::KmsError::UntrustedKey`] for a keyset sealed under a key not
    /// in `trusted` (re-wrapping it would launder a forged keyset); KMS
    /// errors or a malformed keyset envelope.
    pub async fn rewrap_keyset(
        kms: &dyn Kms,
        trusted: &TrustedKeys,
        sealed: &[u8],
        to: &KmsKeyId,
    ) -> Result<Vec<u8>, Error> {
        let (header, header_len) = Header::parse(sealed)?;
        let KeyRef::Kms { key, wrapped } = &header.key_ref else {
            return Err(Misuse::WrongKeyReference.into());
        };
        let from = trusted.check(key)?;
        let rewrapped = kms
            .re_encrypt(
                &from,
                &WrappedKey::new(wrapped.clone())?,
                &keyset_context(),
                to,
            )
            .await?;
        let mut out =
            crate::envelope::rewrite_kms_ref(&header, to.as_str(), rewrapped.into_bytes())?;
        out.extend_from_slice(&sealed[header_len..]);
        Ok(out)
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(16 + self.entries.len() * 48));
        out.extend_from_slice(&KEYSET_MAGIC);
        out.push(KEYSET_VERSION);
        out.push(self.suite.id());
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.info.id.get().to_be_bytes());
            out.push(e.info.state.code());
            out.extend_from_slice(&e.info.created.to_be_bytes());
            if let Some(k) = &e.material {
                out.extend_from_slice(k.expose());
            }
        }
        out
    }

    /// Parses a keyset's plaintext (§8). Checks every invariant: exactly one
    /// primary, unique non-zero ids, material present unless destroyed, no
    /// trailing bytes.
    ///
    /// # Errors
    ///
    /// A [`FormatError`] naming the first problem.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader(bytes);
        if r.array::<4>()? != KEYSET_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let v = r.u8()?;
        if v != KEYSET_VERSION {
            return Err(FormatError::UnknownVersion(v));
        }
        let suite = Suite::from_id(r.u8()?)?;
        let count = u32::from_be_bytes(r.array()?) as usize;
        if count == 0 || count > MAX_KEYS {
            return Err(FormatError::InvalidField {
                field: "key count",
                value: count as u64,
            });
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(count.min(256));
        let mut primary = None;
        for _ in 0..count {
            let raw = u32::from_be_bytes(r.array()?);
            let id = KeyId::new(raw).ok_or(FormatError::InvalidField {
                field: "key id",
                value: 0,
            })?;
            if entries.iter().any(|e| e.info.id == id) {
                return Err(FormatError::InvalidField {
                    field: "duplicate key id",
                    value: raw.into(),
                });
            }
            let state = KeyState::from_code(r.u8()?)?;
            let created = u64::from_be_bytes(r.array()?);
            let material = if state == KeyState::Destroyed {
                None
            } else {
                Some(DataKey::from_bytes(Zeroizing::new(r.array::<KEY_LEN>()?)))
            };
            if state == KeyState::Primary {
                if primary.is_some() {
                    return Err(FormatError::InvalidField {
                        field: "second primary key",
                        value: raw.into(),
                    });
                }
                primary = Some(id);
            }
            entries.push(Entry {
                info: KeyInfo { id, state, created },
                material,
            });
        }
        r.finish()?;
        let primary = primary.ok_or(FormatError::InvalidField {
            field: "primary key",
            value: 0,
        })?;
        Ok(Self {
            entries,
            primary,
            suite,
            provider: default_provider(),
        })
    }
}

fn keyset_context() -> EncryptionContext {
    EncryptionContext::new().with("purpose", "careconnect/keyset")
}

fn random_id(taken: &[KeyId]) -> KeyId {
    loop {
        let mut b = [0u8; 4];
        crate::rng::fill_os(&mut b);
        if let Some(id) = KeyId::new(u32::from_be_bytes(b))
            && !taken.contains(&id)
        {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_added_key_opens_before_it_seals_and_only_an_active_key_is_promoted() {
        let mut ring = Keyring::generate();
        let ctx = EncryptionContext::new();
        let first = ring.primary();
        let added = ring.add_key().unwrap();
        assert_eq!(ring.primary(), first);
        assert_eq!(ring.key(added).unwrap().state, KeyState::Active);
        assert_eq!(
            Keyring::key_id_of(&ring.seal(&ctx, b"x").unwrap()).unwrap(),
            first
        );
        // A reader holding the keyring as stored now opens what the promoted key seals.
        let reader = Keyring::decode(&ring.encode()).unwrap();
        ring.promote(added).unwrap();
        ring.promote(added).unwrap();
        assert_eq!(ring.primary(), added);
        assert_eq!(ring.key(first).unwrap().state, KeyState::Active);
        let env = ring.seal(&ctx, b"after").unwrap();
        assert_eq!(reader.open(&env, &ctx).unwrap().plaintext, b"after");
        ring.mark_compromised(first).unwrap();
        assert!(
            matches!(ring.promote(first), Err(Error::Misuse(Misuse::NotActive(id))) if id == first)
        );
        let other = ring.add_key().unwrap();
        ring.retire(other).unwrap();
        assert!(matches!(
            ring.promote(other),
            Err(Error::Misuse(Misuse::NotActive(_)))
        ));
        ring.destroy(first).unwrap();
        assert!(matches!(
            ring.promote(first),
            Err(Error::Misuse(Misuse::NotActive(_)))
        ));
        let unknown = (1..)
            .filter_map(KeyId::new)
            .find(|k| ring.key(*k).is_none())
            .unwrap();
        assert!(matches!(ring.promote(unknown), Err(Error::UnknownKey(id)) if id == unknown));
        assert_eq!(ring.primary(), added);
    }

    #[test]
    fn states_and_destroy() {
        let mut ring = Keyring::generate();
        let ctx = EncryptionContext::new();
        let k1 = ring.primary();
        let env = ring.seal(&ctx, b"x").unwrap();
        assert!(matches!(
            ring.mark_compromised(k1),
            Err(Error::Misuse(Misuse::PrimaryKey(_)))
        ));
        assert!(matches!(
            ring.destroy(k1),
            Err(Error::Misuse(Misuse::PrimaryKey(_)))
        ));
        let k2 = ring.rotate().unwrap();
        assert_eq!(ring.key(k1).unwrap().state, KeyState::Active);
        ring.mark_compromised(k1).unwrap();
        assert_eq!(
            ring.open(&env, &ctx).unwrap().key_state,
            KeyState::Compromised
        );
        ring.destroy(k1).unwrap();
        assert!(matches!(ring.open(&env, &ctx), Err(Error::KeyDestroyed(id)) if id == k1));
        assert!(matches!(
            ring.retire(k1),
            Err(Error::Misuse(Misuse::AlreadyDestroyed(_)))
        ));
        let env2 = ring.seal(&ctx, b"y").unwrap();
        assert_eq!(Keyring::key_id_of(&env2).unwrap(), k2);
        // Survives encode/decode with the destroyed key still destroyed.
        let back = Keyring::decode(&ring.encode()).unwrap();
        assert!(matches!(back.open(&env, &ctx), Err(Error::KeyDestroyed(_))));
        assert_eq!(back.open(&env2, &ctx).unwrap().plaintext, b"y");
        assert!(!format!("{back:?}").contains("material"));
    }

    #[test]
    fn a_full_keyring_refuses_to_rotate_rather_than_write_what_it_cannot_read() {
        let mut ring = Keyring::generate();
        for _ in 1..MAX_KEYS {
            ring.rotate().unwrap();
        }
        let before = ring.primary();
        assert!(matches!(
            ring.rotate(),
            Err(Error::Misuse(Misuse::KeyringFull(MAX_KEYS)))
        ));
        assert_eq!(ring.primary(), before);
        assert!(Keyring::decode(&ring.encode()).is_ok());
    }

    #[test]
    fn mac_keys_are_per_key_and_purpose_and_follow_the_key_state() {
        let mut ring = Keyring::generate();
        let k1 = ring.primary();
        let a = ring.mac_key_for(k1, "careconnect/audit").unwrap();
        let b = ring.mac_key_for(k1, "careconnect/index").unwrap();
        assert_ne!(a.tag(b"m"), b.tag(b"m"));
        assert_eq!(
            a.tag(b"m"),
            ring.mac_key_for(k1, "careconnect/audit").unwrap().tag(b"m")
        );
        let k2 = ring.rotate().unwrap();
        let c = ring.mac_key_for(k2, "careconnect/audit").unwrap();
        assert_ne!(a.tag(b"m"), c.tag(b"m"));
        // The old key still verifies what it tagged until destroyed.
        assert!(
            ring.mac_key_for(k1, "careconnect/audit")
                .unwrap()
                .verify(b"m", &a.tag(b"m"))
                .is_ok()
        );
        ring.mark_compromised(k1).unwrap();
        ring.destroy(k1).unwrap();
        assert!(matches!(
            ring.mac_key_for(k1, "careconnect/audit"),
            Err(Error::KeyDestroyed(_))
        ));
        assert!(ring.mac_key_for(k2, "").is_err());
        assert!(ring.mac_key_for(k2, &"p".repeat(256)).is_err());
        // Known answer: data key 00..1f, purpose "careconnect/audit" (§13).
        let known = Keyring::decode(&{
            let mut ks = b"CCKS\x01\x01".to_vec();
            ks.extend_from_slice(&1u32.to_be_bytes());
            ks.extend_from_slice(&1u32.to_be_bytes());
            ks.push(1);
            ks.extend_from_slice(&0u64.to_be_bytes());
            ks.extend_from_slice(&std::array::from_fn::<u8, 32, _>(|i| i as u8));
            ks
        })
        .unwrap();
        let tag = known
            .mac_key_for(KeyId::new(1).unwrap(), "careconnect/audit")
            .unwrap()
            .tag(b"");
        assert_eq!(hex::encode(tag), MAC_KAT);
    }

    /// HMAC-SHA256(K, "") with K = HKDF-Expand(HKDF-Extract("careconnect/envelope/v1",
    /// 00..1f), "cc1/mac" || 0x11 || "careconnect/audit", 32), computed
    /// independently with Python's `hmac` and `hashlib` from §13's text.
    const MAC_KAT: &str = "56e134404b5f042c2a4a050fdcfa18b3f3db9c5d893ada86f3f66e268d9ec08d";

    #[test]
    fn a_keyring_sealed_under_another_opens_only_with_it_and_its_context() {
        let inner = Keyring::generate();
        let outer = Keyring::generate();
        let ctx = EncryptionContext::new().with("subject", "p1");
        let sealed = inner.seal_under(&outer, &ctx).unwrap();
        let (back, by, state) = Keyring::open_under(&outer, &sealed, &ctx).unwrap();
        assert_eq!((by, state), (outer.primary(), KeyState::Primary));
        let rec = inner.seal(&ctx, b"x").unwrap();
        assert_eq!(back.open(&rec, &ctx).unwrap().plaintext, b"x");
        let other = EncryptionContext::new().with("subject", "p2");
        assert!(Keyring::open_under(&outer, &sealed, &other).is_err());
        assert!(Keyring::open_under(&Keyring::generate(), &sealed, &ctx).is_err());
    }

    #[test]
    fn compromised_key_can_only_be_destroyed() {
        let mut ring = Keyring::generate();
        let ctx = EncryptionContext::new();
        let k1 = ring.primary();
        let env = ring.seal(&ctx, b"x").unwrap();
        ring.rotate().unwrap();
        ring.mark_compromised(k1).unwrap();
        // Relabelling would hide the compromise from every later open.
        assert!(matches!(
            ring.retire(k1),
            Err(Error::Misuse(Misuse::Compromised(id))) if id == k1
        ));
        assert_eq!(ring.key(k1).unwrap().state, KeyState::Compromised);
        assert_eq!(
            ring.open(&env, &ctx).unwrap().key_state,
            KeyState::Compromised
        );
        // Marking it again is harmless; destroying it is the way out.
        ring.mark_compromised(k1).unwrap();
        ring.destroy(k1).unwrap();
        assert_eq!(ring.key(k1).unwrap().state, KeyState::Destroyed);
    }

    #[test]
    fn decode_rejects_broken_invariants() {
        let ring = Keyring::generate();
        let good = ring.encode();
        assert!(Keyring::decode(&good).is_ok());
        let mut extra = good.to_vec();
        extra.push(0);
        assert_eq!(
            Keyring::decode(&extra).err(),
            Some(FormatError::TrailingBytes)
        );
        let mut no_primary = good.to_vec();
        no_primary[14] = KeyState::Active.code();
        assert!(Keyring::decode(&no_primary).is_err());
        for cut in 0..good.len() {
            assert!(Keyring::decode(&good[..cut]).is_err());
        }
    }
}
