//! The embedded local KMS: versioned KEKs in one file sealed under a root secret.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::{KeyDescription, Kms, KmsKeyId, WrappedKey};
use crate::context::EncryptionContext;
use crate::envelope::{chunk_nonce, open_record, seal_record};
use crate::error::{Error, FormatError, KmsError, Misuse};
use crate::format::{Header, KeyRef, Reader};
use crate::key::{DataKey, KeyId, SALT_LEN, WRAP_KEY_LABEL};
use crate::provider::default_provider;
use crate::suite::{KEY_LEN, Suite, TAG_LEN};

/// The environment variable [`RootSecret::from_env`] reads: 64 hex digits.
pub const ROOT_SECRET_ENV: &str = "CARECONNECT_KMS_ROOT_KEY";

/// Magic bytes of a local KMS file (§9).
const FILE_MAGIC: [u8; 4] = *b"CCKM";
const FILE_VERSION: u8 = 0x01;
/// The version byte that opens a wrapped data key (§9).
const WRAP_VERSION: u8 = 0x01;
const WRAPPED_LEN: usize = 1 + 4 + SALT_LEN + KEY_LEN + TAG_LEN;
const STATE_ENABLED: u8 = 1;
const STATE_DESTROYED: u8 = 2;
const MAX_KEYS: usize = 4096;
const MAX_VERSIONS: usize = 65_535;

/// The secret that seals a [`LocalKms`] file. Never hard-coded: it comes
/// from the environment, a key file, or is generated once by the operator.
pub struct RootSecret(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for RootSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootSecret { .. }")
    }
}

impl RootSecret {
    /// A fresh random root secret.
    pub fn generate() -> Self {
        let mut b = Zeroizing::new([0u8; KEY_LEN]);
        crate::rng::fill_os(b.as_mut());
        Self(b)
    }

    /// Parses 64 hex digits (surrounding whitespace ignored).
    ///
    /// # Errors
    ///
    /// [`KmsError::RootSecret`] for anything else; the input is never echoed.
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        let t = text.trim().as_bytes();
        if t.len() != 2 * KEY_LEN {
            return Err(KmsError::RootSecret("expected 64 hex digits").into());
        }
        let mut b = Zeroizing::new([0u8; KEY_LEN]);
        for (i, pair) in t.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]);
            let lo = hex_val(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => b[i] = h << 4 | l,
                _ => return Err(KmsError::RootSecret("expected 64 hex digits").into()),
            }
        }
        Ok(Self(b))
    }

    /// Reads the secret from [`ROOT_SECRET_ENV`].
    ///
    /// # Errors
    ///
    /// [`KmsError::RootSecret`] when unset or malformed.
    pub fn from_env() -> Result<Self, Error> {
        let v = Zeroizing::new(
            std::env::var(ROOT_SECRET_ENV)
                .map_err(|_| KmsError::RootSecret("environment variable not set"))?,
        );
        Self::from_hex(&v)
    }

    /// Reads the secret from a key file holding 64 hex digits.
    ///
    /// # Errors
    ///
    /// I/O errors, or [`KmsError::RootSecret`] for a malformed file.
    ///
    /// On Unix the file must not be readable or writable by group or others
    /// (mode `0600` or stricter): a root secret anyone else on the machine
    /// can read protects nothing, so such a file is refused.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let file = File::open(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if file.metadata()?.permissions().mode() & 0o077 != 0 {
                return Err(KmsError::RootSecret(
                    "key file is accessible by group or others; chmod 600 it",
                )
                .into());
            }
        }
        let mut text = Zeroizing::new(String::with_capacity(2 * KEY_LEN + 2));
        std::io::Read::read_to_string(&mut std::io::Read::take(&file, 256), &mut text)?;
        Self::from_hex(&text)
    }

    /// Reads the key file at `path`, or creates it (mode 0600) with a fresh
    /// secret. For development and single-machine installs; production keeps
    /// the root secret out of the data directory.
    ///
    /// # Errors
    ///
    /// I/O errors, or [`KmsError::RootSecret`] for a malformed file.
    ///
    /// Several processes starting at once on an empty directory all end up
    /// with the same secret: the new file is published with a hard link,
    /// which fails if the name exists, and the loser reads the winner's file.
    pub fn load_or_create_file(path: &Path) -> Result<Self, Error> {
        match Self::from_file(path) {
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                let s = Self::generate();
                let mut text = Zeroizing::new(String::with_capacity(2 * KEY_LEN + 1));
                for b in s.0.iter() {
                    text.push(char::from(HEX[usize::from(b >> 4)]));
                    text.push(char::from(HEX[usize::from(b & 0xf)]));
                }
                text.push('\n');
                if crate::fsutil::publish_new(path, text.as_bytes())? {
                    Ok(s)
                } else {
                    // Another process published first: use its secret.
                    Self::from_file(path)
                }
            }
            other => other,
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

struct Version {
    version: u32,
    created: u64,
    material: Option<DataKey>,
}

#[derive(Default)]
struct Table {
    keys: BTreeMap<KmsKeyId, Vec<Version>>,
}

/// The embedded KMS: versioned key-encryption keys kept in one file, sealed
/// under a [`RootSecret`]. The file is rewritten atomically (temp file,
/// fsync, rename) with mode 0600, under an exclusive lock on `<file>.lock`
/// so that several processes can share it.
///
/// Rotation adds a version; old versions keep unwrapping until destroyed
/// with [`LocalKms::destroy_version`]. Each wrapped data key names the KEK
/// version that wrapped it.
pub struct LocalKms {
    path: PathBuf,
    root: DataKey,
    table: Mutex<Table>,
    /// Identity of the file the table was loaded from; when it changes (another
    /// process rotated or destroyed a version), the next operation reloads.
    stamp: Mutex<Option<FileStamp>>,
}

/// What identifies one version of the KMS file: it is only ever replaced by
/// rename, so a new version has a new inode (and usually a new mtime and length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: (u64, u64),
}

fn file_stamp(path: &Path) -> Result<FileStamp, Error> {
    let m = fs::metadata(path)?;
    #[cfg(unix)]
    let inode = {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    };
    #[cfg(not(unix))]
    let inode = (0, 0);
    Ok(FileStamp {
        len: m.len(),
        modified: m.modified().ok(),
        inode,
    })
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKms")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn file_context() -> EncryptionContext {
    EncryptionContext::new().with("purpose", "careconnect/local-kms")
}

impl LocalKms {
    /// Opens the KMS file at `path`, creating an empty one if there is none.
    ///
    /// # Errors
    ///
    /// I/O errors; [`KmsError::RootSecret`] if the file was sealed under
    /// another root secret; a [`FormatError`] for a corrupt file.
    pub fn open_or_create(path: impl Into<PathBuf>, root: RootSecret) -> Result<Self, Error> {
        let path = path.into();
        let kms = Self {
            root: DataKey::from_bytes(root.0),
            path,
            table: Mutex::new(Table::default()),
            stamp: Mutex::new(None),
        };
        {
            let _lock = kms.lock_file()?;
            let stale = crate::fsutil::remove_stale_temps(&kms.path)?;
            if stale > 0 {
                tracing::info!(stale, "removed temporary files of an interrupted kms write");
            }
            if kms.path.exists() {
                kms.reload()?;
            } else {
                kms.persist(&Table::default())?;
                *kms.stamp() = Some(file_stamp(&kms.path)?);
            }
        }
        Ok(kms)
    }

    /// Opens an existing KMS file.
    ///
    /// # Errors
    ///
    /// As [`LocalKms::open_or_create`], and [`std::io::ErrorKind::NotFound`].
    pub fn open(path: impl Into<PathBuf>, root: RootSecret) -> Result<Self, Error> {
        let path = path.into();
        if !path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "local kms file not found",
            )
            .into());
        }
        Self::open_or_create(path, root)
    }

    /// Creates `key` with one fresh version, unless it exists already.
    ///
    /// # Errors
    ///
    /// I/O errors persisting the file.
    pub fn ensure_key(&self, key: &KmsKeyId) -> Result<KeyDescription, Error> {
        self.mutate_key(key, |t| {
            t.keys.entry(key.clone()).or_insert_with(|| {
                vec![Version {
                    version: 1,
                    created: now(),
                    material: Some(DataKey::generate()),
                }]
            });
            Ok(())
        })
    }

    /// Destroys one version of `key` for good: data keys it wrapped can never
    /// be unwrapped again. The current version cannot be destroyed; rotate first.
    ///
    /// # Errors
    ///
    /// [`KmsError::KeyNotFound`], [`KmsError::KeyUnusable`] for the current
    /// or an unknown version, I/O errors.
    pub fn destroy_version(&self, key: &KmsKeyId, version: u32) -> Result<KeyDescription, Error> {
        self.mutate_key(key, |t| {
            let versions = t
                .keys
                .get_mut(key)
                .ok_or_else(|| KmsError::key_not_found(key))?;
            let current = versions.iter().map(|v| v.version).max();
            if current == Some(version) {
                return Err(KmsError::key_unusable(format!(
                    "{key} v{version} is current; rotate first"
                ))
                .into());
            }
            let v = versions
                .iter_mut()
                .find(|v| v.version == version)
                .ok_or_else(|| KmsError::key_unusable(format!("{key} has no version {version}")))?;
            v.material = None;
            Ok(())
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-updated
        // (updates are built aside and swapped in), so a poisoned lock is safe to use.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_file(&self) -> Result<File, Error> {
        let mut p = self.path.clone().into_os_string();
        p.push(".lock");
        let mut o = OpenOptions::new();
        o.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let f = o.open(PathBuf::from(p))?;
        f.lock()?;
        Ok(f)
    }

    /// Reads the file into memory. Caller holds the file lock or accepts a
    /// snapshot (the file is only ever replaced atomically).
    fn reload(&self) -> Result<(), Error> {
        // Stamp first: if the file is replaced between the stat and the read,
        // the stamp is stale and the next `refresh` reloads again.
        let stamp = file_stamp(&self.path)?;
        let bytes = fs::read(&self.path)?;
        let table = self.decode_file(&bytes)?;
        *self.table() = table;
        *self.stamp() = Some(stamp);
        Ok(())
    }

    /// Reloads if another process (or handle) replaced the file since we
    /// read it, so a version destroyed elsewhere is never used here again.
    /// Costs one `stat` when nothing changed.
    fn refresh(&self) -> Result<(), Error> {
        let now = file_stamp(&self.path)?;
        if *self.stamp() != Some(now) {
            self.reload()?;
        }
        Ok(())
    }

    fn stamp(&self) -> MutexGuard<'_, Option<FileStamp>> {
        self.stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Read-modify-write under the file lock, starting from the file's
    /// current contents so concurrent processes never lose each other's versions.
    fn mutate<T>(&self, f: impl FnOnce(&mut Table) -> Result<T, Error>) -> Result<T, Error> {
        let _lock = self.lock_file()?;
        let bytes = fs::read(&self.path)?;
        let mut table = self.decode_file(&bytes)?;
        let out = f(&mut table)?;
        self.persist(&table)?;
        *self.table() = table;
        *self.stamp() = Some(file_stamp(&self.path)?);
        Ok(out)
    }

    /// [`LocalKms::mutate`] one key and describe it as written, inside the
    /// lock: describing afterwards could report another process's later
    /// rotation as this one.
    fn mutate_key(
        &self,
        key: &KmsKeyId,
        f: impl FnOnce(&mut Table) -> Result<(), Error>,
    ) -> Result<KeyDescription, Error> {
        self.mutate(|t| {
            f(t)?;
            let versions = t
                .keys
                .get(key)
                .ok_or_else(|| KmsError::key_not_found(key))?;
            Ok(describe(key, versions))
        })
    }

    fn root_key_id(&self) -> KeyId {
        let c = self.root.commitment();
        KeyId::new(u32::from_be_bytes([c[0], c[1], c[2], c[3]])).unwrap_or(KeyId::MIN)
    }

    fn persist(&self, table: &Table) -> Result<(), Error> {
        let plain = encode_table(table)?;
        let mut out = Vec::with_capacity(plain.len() + 128);
        out.extend_from_slice(&FILE_MAGIC);
        out.push(FILE_VERSION);
        let env = seal_record(
            default_provider(),
            Suite::Aes256Gcm,
            &self.root,
            KeyRef::Keyring(self.root_key_id()),
            &file_context(),
            &plain,
        )?;
        out.extend_from_slice(&env);
        crate::fsutil::write_atomic(&self.path, &out)?;
        Ok(())
    }

    fn decode_file(&self, bytes: &[u8]) -> Result<Table, Error> {
        let (header, header_len, env) = parse_file(bytes)?;
        if header.key_ref != KeyRef::Keyring(self.root_key_id())
            || !self.root.commitment_matches(&header.commitment)
        {
            return Err(
                KmsError::RootSecret("this file was sealed under another root secret").into(),
            );
        }
        let plain = Zeroizing::new(open_record(
            default_provider(),
            &self.root,
            &header,
            header_len,
            env,
            &file_context(),
        )?);
        Ok(decode_table(&plain)?)
    }

    fn describe_now(&self, key: &KmsKeyId) -> Result<KeyDescription, Error> {
        self.refresh()?;
        let t = self.table();
        let versions = t
            .keys
            .get(key)
            .ok_or_else(|| KmsError::key_not_found(key))?;
        Ok(describe(key, versions))
    }

    fn wrap(
        &self,
        key: &KmsKeyId,
        dek: &DataKey,
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, Error> {
        self.refresh()?;
        let t = self.table();
        let versions = t
            .keys
            .get(key)
            .ok_or_else(|| KmsError::key_not_found(key))?;
        let current = versions
            .iter()
            .max_by_key(|v| v.version)
            .ok_or_else(|| KmsError::key_not_found(key))?;
        let kek = current
            .material
            .as_ref()
            .ok_or_else(|| KmsError::key_unusable(format!("{key} current version destroyed")))?;
        let mut salt = [0u8; SALT_LEN];
        crate::rng::fill(&mut salt)?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.push(WRAP_VERSION);
        out.extend_from_slice(&current.version.to_be_bytes());
        out.extend_from_slice(&salt);
        let aad = wrap_aad(key, current.version, ctx)?;
        out.extend_from_slice(dek.expose());
        let aead = default_provider().aead(
            Suite::Aes256Gcm,
            &kek.derive(WRAP_KEY_LABEL, &[Suite::Aes256Gcm.id()], &salt),
        );
        aead.seal_append(&chunk_nonce(0, true), &aad, &mut out, 1 + 4 + SALT_LEN)?;
        WrappedKey::new(out)
    }

    fn unwrap(
        &self,
        key: &KmsKeyId,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, Error> {
        let mut r = Reader(wrapped.as_bytes());
        let bad = |_| Error::Kms(KmsError::unwrap_failed());
        if r.u8().map_err(bad)? != WRAP_VERSION {
            return Err(KmsError::unwrap_failed().into());
        }
        let version = u32::from_be_bytes(r.array().map_err(bad)?);
        let salt: [u8; SALT_LEN] = r.array().map_err(bad)?;
        let mut body: [u8; KEY_LEN + TAG_LEN] = r.array().map_err(bad)?;
        r.finish().map_err(bad)?;
        self.refresh()?;
        let t = self.table();
        let versions = t
            .keys
            .get(key)
            .ok_or_else(|| KmsError::key_not_found(key))?;
        let v = versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| KmsError::key_unusable(format!("{key} has no version {version}")))?;
        let kek = v
            .material
            .as_ref()
            .ok_or_else(|| KmsError::key_unusable(format!("{key} v{version} destroyed")))?;
        let aad = wrap_aad(key, version, ctx)?;
        let aead = default_provider().aead(
            Suite::Aes256Gcm,
            &kek.derive(WRAP_KEY_LABEL, &[Suite::Aes256Gcm.id()], &salt),
        );
        let n = aead
            .open_in_place(&chunk_nonce(0, true), &aad, &mut body)
            .map_err(|_| KmsError::unwrap_failed())?;
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(&body[..n.min(KEY_LEN)]);
        zeroize::Zeroize::zeroize(&mut body);
        Ok(DataKey::from_bytes(k))
    }
}

/// Splits a KMS file into its envelope header and the envelope bytes.
fn parse_file(bytes: &[u8]) -> Result<(Header, usize, &[u8]), FormatError> {
    let env = match bytes {
        [m0, m1, m2, m3, v, rest @ ..] if [*m0, *m1, *m2, *m3] == FILE_MAGIC => {
            if *v != FILE_VERSION {
                return Err(FormatError::UnknownVersion(*v));
            }
            rest
        }
        _ if bytes.len() < 5 => return Err(FormatError::Truncated),
        _ => return Err(FormatError::BadMagic),
    };
    let (header, len) = Header::parse(env)?;
    Ok((header, len, env))
}

fn wrap_aad(key: &KmsKeyId, version: u32, ctx: &EncryptionContext) -> Result<Vec<u8>, Error> {
    let mut aad = Vec::with_capacity(64);
    aad.push(WRAP_VERSION);
    aad.push(key.as_str().len() as u8);
    aad.extend_from_slice(key.as_str().as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    ctx.encode_into(&mut aad)?;
    Ok(aad)
}

fn describe(key: &KmsKeyId, versions: &[Version]) -> KeyDescription {
    KeyDescription {
        key: key.clone(),
        current_version: versions.iter().map(|v| v.version).max().unwrap_or(0),
        enabled_versions: versions
            .iter()
            .filter(|v| v.material.is_some())
            .map(|v| v.version)
            .collect(),
        destroyed_versions: versions
            .iter()
            .filter(|v| v.material.is_none())
            .map(|v| v.version)
            .collect(),
        current_since: versions.iter().max_by_key(|v| v.version).map(|v| v.created),
    }
}

/// Serialises the key table (§9), refusing anything [`decode_table`] would
/// reject: a file that is written but cannot be read back loses every KEK.
fn encode_table(t: &Table) -> Result<Zeroizing<Vec<u8>>, Error> {
    let full = |what: &'static str, max: usize| Error::Kms(KmsError::LimitReached { what, max });
    if t.keys.len() > MAX_KEYS {
        return Err(full("keys", MAX_KEYS));
    }
    let count = u16::try_from(t.keys.len()).map_err(|_| full("keys", MAX_KEYS))?;
    let mut out = Zeroizing::new(Vec::new());
    out.extend_from_slice(&count.to_be_bytes());
    for (name, versions) in &t.keys {
        let name_len = u8::try_from(name.as_str().len()).map_err(|_| Misuse::KmsKeyName)?;
        let n =
            u16::try_from(versions.len()).map_err(|_| full("versions per key", MAX_VERSIONS))?;
        if versions.is_empty() {
            return Err(KmsError::key_not_found(name).into());
        }
        out.push(name_len);
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(&n.to_be_bytes());
        for v in versions {
            out.extend_from_slice(&v.version.to_be_bytes());
            out.extend_from_slice(&v.created.to_be_bytes());
            match &v.material {
                Some(k) => {
                    out.push(STATE_ENABLED);
                    out.extend_from_slice(k.expose());
                }
                None => out.push(STATE_DESTROYED),
            }
        }
    }
    Ok(out)
}

/// Parses the plaintext key table of a local KMS file (§9). Public for fuzzing.
#[doc(hidden)]
pub fn decode_table_for_fuzzing(bytes: &[u8]) -> Result<usize, FormatError> {
    decode_table(bytes).map(|t| t.keys.len())
}

fn decode_table(bytes: &[u8]) -> Result<Table, FormatError> {
    let mut r = Reader(bytes);
    let count = usize::from(u16::from_be_bytes(r.array()?));
    if count > MAX_KEYS {
        return Err(FormatError::FieldTooLong {
            field: "kms key count",
            len: count,
            max: MAX_KEYS,
        });
    }
    let mut t = Table::default();
    for _ in 0..count {
        let len = usize::from(r.u8()?);
        let name = std::str::from_utf8(r.take(len)?)
            .ok()
            .and_then(|n| KmsKeyId::new(n).ok())
            .ok_or(FormatError::InvalidField {
                field: "kms key",
                value: len as u64,
            })?;
        let n = usize::from(u16::from_be_bytes(r.array()?));
        if n == 0 || n > MAX_VERSIONS {
            return Err(FormatError::InvalidField {
                field: "kms version count",
                value: n as u64,
            });
        }
        let mut versions: Vec<Version> = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let version = u32::from_be_bytes(r.array()?);
            if version == 0 || versions.last().is_some_and(|v| v.version >= version) {
                return Err(FormatError::InvalidField {
                    field: "kms key version",
                    value: version.into(),
                });
            }
            let created = u64::from_be_bytes(r.array()?);
            let material = match r.u8()? {
                STATE_ENABLED => Some(DataKey::from_bytes(Zeroizing::new(r.array()?))),
                STATE_DESTROYED => None,
                other => {
                    return Err(FormatError::InvalidField {
                        field: "kms key state",
                        value: other.into(),
                    });
                }
            };
            versions.push(Version {
                version,
                created,
                material,
            });
        }
        if t.keys.insert(name, versions).is_some() {
            return Err(FormatError::InvalidField {
                field: "duplicate kms key",
                value: len as u64,
            });
        }
    }
    r.finish()?;
    Ok(t)
}

#[async_trait]
impl Kms for LocalKms {
    async fn generate_data_key(
        &self,
        key: &KmsKeyId,
        ctx: &EncryptionContext,
    ) -> Result<(DataKey, WrappedKey), Error> {
        let dek = DataKey::generate();
        let wrapped = self.wrap(key, &dek, ctx)?;
        Ok((dek, wrapped))
    }

    async fn decrypt(
        &self,
        key: &KmsKeyId,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, Error> {
        self.unwrap(key, wrapped, ctx)
    }

    async fn re_encrypt(
        &self,
        from: &KmsKeyId,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
        to: &KmsKeyId,
    ) -> Result<WrappedKey, Error> {
        let dek = self.unwrap(from, wrapped, ctx)?;
        self.wrap(to, &dek, ctx)
    }

    async fn rotate(&self, key: &KmsKeyId) -> Result<KeyDescription, Error> {
        self.mutate_key(key, |t| {
            let versions = t
                .keys
                .get_mut(key)
                .ok_or_else(|| KmsError::key_not_found(key))?;
            let next = versions
                .iter()
                .map(|v| v.version)
                .max()
                .unwrap_or(0)
                .checked_add(1)
                .ok_or(Misuse::TooLong)?;
            versions.push(Version {
                version: next,
                created: now(),
                material: Some(DataKey::generate()),
            });
            Ok(())
        })
    }

    async fn describe(&self, key: &KmsKeyId) -> Result<KeyDescription, Error> {
        self.describe_now(key)
    }

    async fn destroy_version(&self, key: &KmsKeyId, version: u32) -> Result<KeyDescription, Error> {
        LocalKms::destroy_version(self, key, version)
    }

    fn can_destroy_versions(&self) -> bool {
        true
    }

    fn version_of(&self, wrapped: &WrappedKey) -> Option<u32> {
        let bytes = wrapped.as_bytes();
        if bytes.len() != WRAPPED_LEN || bytes.first() != Some(&WRAP_VERSION) {
            return None;
        }
        Some(u32::from_be_bytes(bytes.get(1..5)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn wrap_rotate_destroy() {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kms");
            let root_hex = "11".repeat(32);
            let kms =
                LocalKms::open_or_create(&path, RootSecret::from_hex(&root_hex).unwrap()).unwrap();
            let k = KmsKeyId::new("clinic").unwrap();
            assert_eq!(kms.ensure_key(&k).unwrap().current_version, 1);
            let ctx = EncryptionContext::new().with("doc", "1");
            let (dek, w1) = kms.generate_data_key(&k, &ctx).await.unwrap();
            assert_eq!(w1.as_bytes().len(), WRAPPED_LEN);
            assert_eq!(
                kms.decrypt(&k, &w1, &ctx).await.unwrap().expose(),
                dek.expose()
            );
            let other = EncryptionContext::new().with("doc", "2");
            assert!(matches!(
                kms.decrypt(&k, &w1, &other).await,
                Err(Error::Kms(KmsError::UnwrapFailed { .. }))
            ));

            let d = kms.rotate(&k).await.unwrap();
            assert_eq!(
                (d.current_version, d.enabled_versions.clone()),
                (2, vec![1, 2])
            );
            let w2 = kms.re_encrypt(&k, &w1, &ctx, &k).await.unwrap();
            assert_eq!(&w2.as_bytes()[1..5], &2u32.to_be_bytes());
            // Reopen from disk: versions persist.
            drop(kms);
            let kms = LocalKms::open(&path, RootSecret::from_hex(&root_hex).unwrap()).unwrap();
            assert_eq!(
                kms.decrypt(&k, &w1, &ctx).await.unwrap().expose(),
                dek.expose()
            );
            assert!(
                kms.destroy_version(&k, 2).is_err(),
                "current version is protected"
            );
            kms.destroy_version(&k, 1).unwrap();
            assert!(matches!(
                kms.decrypt(&k, &w1, &ctx).await,
                Err(Error::Kms(KmsError::KeyUnusable { .. }))
            ));
            assert_eq!(
                kms.decrypt(&k, &w2, &ctx).await.unwrap().expose(),
                dek.expose()
            );

            // Wrong root secret: a clear error, not garbage.
            let wrong = LocalKms::open(&path, RootSecret::from_hex(&"22".repeat(32)).unwrap());
            assert!(matches!(wrong, Err(Error::Kms(KmsError::RootSecret(_)))));
        });
    }

    #[test]
    fn file_is_private_and_root_secret_parsing_is_strict() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("root.key");
        let a = RootSecret::load_or_create_file(&key_file).unwrap();
        let b = RootSecret::load_or_create_file(&key_file).unwrap();
        assert_eq!(*a.0, *b.0, "reused across runs");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(RootSecret::from_hex("zz").is_err());
        assert!(RootSecret::from_hex(&"g".repeat(64)).is_err());
        let err = RootSecret::from_hex(&format!("{}x", "a".repeat(63)))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("aaaa"), "secret echoed: {err}");
        assert_eq!(format!("{a:?}"), "RootSecret { .. }");
    }

    #[test]
    fn version_of_names_the_version_that_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let kms = LocalKms::open_or_create(
            dir.path().join("kms"),
            RootSecret::from_hex(&"33".repeat(32)).unwrap(),
        )
        .unwrap();
        let key = KmsKeyId::new("k").unwrap();
        kms.ensure_key(&key).unwrap();
        let ctx = EncryptionContext::new();
        rt().block_on(async {
            let (_, first) = kms.generate_data_key(&key, &ctx).await.unwrap();
            Kms::rotate(&kms, &key).await.unwrap();
            let (_, second) = kms.generate_data_key(&key, &ctx).await.unwrap();
            assert_eq!(Kms::version_of(&kms, &first), Some(1));
            assert_eq!(Kms::version_of(&kms, &second), Some(2));
            let again = kms.re_encrypt(&key, &first, &ctx, &key).await.unwrap();
            assert_eq!(Kms::version_of(&kms, &again), Some(2));
        });
        let mut other = first_bytes();
        other[0] ^= 0xff;
        assert_eq!(
            Kms::version_of(&kms, &WrappedKey::new(other).unwrap()),
            None
        );
        assert_eq!(
            Kms::version_of(&kms, &WrappedKey::new(vec![WRAP_VERSION; 9]).unwrap()),
            None
        );
    }

    fn first_bytes() -> Vec<u8> {
        let mut v = vec![WRAP_VERSION];
        v.resize(WRAPPED_LEN, 7);
        v
    }

    #[test]
    fn limits_are_checked_before_persisting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms");
        let root = "22".repeat(32);
        let kms = LocalKms::open_or_create(&path, RootSecret::from_hex(&root).unwrap()).unwrap();
        let one = |n: u32| Version {
            version: n,
            created: 0,
            material: None,
        };
        kms.mutate(|t| {
            for i in 0..MAX_KEYS {
                t.keys
                    .insert(KmsKeyId::new(format!("k{i}")).unwrap(), vec![one(1)]);
            }
            Ok(())
        })
        .unwrap();
        // The 4,097th key is refused, not written into a file no one can read back.
        assert!(matches!(
            kms.ensure_key(&KmsKeyId::new("one-too-many").unwrap()),
            Err(Error::Kms(KmsError::LimitReached { what: "keys", .. }))
        ));
        let again = LocalKms::open(&path, RootSecret::from_hex(&root).unwrap()).unwrap();
        assert_eq!(again.table().keys.len(), MAX_KEYS);
        // The same for versions: 65,535 fit the u16 count, one more does not.
        let k = KmsKeyId::new("k0").unwrap();
        again
            .mutate(|t| {
                t.keys.insert(
                    k.clone(),
                    (1..=u32::try_from(MAX_VERSIONS).unwrap())
                        .map(one)
                        .collect(),
                );
                Ok(())
            })
            .unwrap();
        let mut t = Table::default();
        t.keys.insert(
            k.clone(),
            (1..=u32::try_from(MAX_VERSIONS + 1).unwrap())
                .map(one)
                .collect(),
        );
        assert!(matches!(
            encode_table(&t),
            Err(Error::Kms(KmsError::LimitReached {
                what: "versions per key",
                ..
            }))
        ));
        assert!(LocalKms::open(&path, RootSecret::from_hex(&root).unwrap()).is_ok());
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_root_secret() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("root.key");
            let barrier = std::sync::Barrier::new(6);
            let secrets: Vec<[u8; KEY_LEN]> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..6)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            *RootSecret::load_or_create_file(&path).unwrap().0
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(
                secrets.iter().all(|s| *s == secrets[0]),
                "every starter must end up with the published secret"
            );
            assert_eq!(*RootSecret::from_file(&path).unwrap().0, secrets[0]);
            assert_eq!(
                fs::read_dir(dir.path()).unwrap().count(),
                1,
                "no temporary file left"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn root_key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        RootSecret::load_or_create_file(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert!(
                matches!(
                    RootSecret::from_file(&path),
                    Err(Error::Kms(KmsError::RootSecret(_)))
                ),
                "mode {mode:o}"
            );
            assert!(RootSecret::load_or_create_file(&path).is_err());
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(RootSecret::from_file(&path).is_ok());
    }

    #[test]
    fn table_decoder_rejects_garbage() {
        assert!(decode_table(&[]).is_err());
        assert!(decode_table(&[0, 0, 1]).is_err(), "trailing bytes");
        assert_eq!(decode_table(&[0, 0]).map(|t| t.keys.len()).ok(), Some(0));
        assert!(
            decode_table(&[0, 1, 1, b'k', 0, 0]).is_err(),
            "zero versions"
        );
    }
}
