//! Envelope format v1 as `docs/envelope-format.md` states it, written from
//! the text: HKDF-SHA256 from the `hkdf` crate, AES-256-GCM and
//! ChaCha20-Poly1305 as bare primitives from the default provider (tested
//! against Wycheproof in `tests/wycheproof.rs`), everything else here.
//! Errors are named as the vectors name them (§11).

use std::collections::BTreeMap;

use careconnect::crypto::Suite;
use careconnect::crypto::provider::{AeadKey, CryptoProvider, RustCrypto};
use hkdf::Hkdf;
use sha2::Sha256;

pub(crate) type Res<T> = Result<T, (String, Option<String>)>;

fn fail<T>(name: &str) -> Res<T> {
    Err((name.into(), None))
}

fn fail_field<T>(name: &str, field: &str) -> Res<T> {
    Err((name.into(), Some(field.into())))
}

// §4: HKDF-SHA256, extract salt "careconnect/envelope/v1", L = 32.
fn expand(ikm: &[u8; 32], info: &[&[u8]]) -> [u8; 32] {
    let mut okm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(b"careconnect/envelope/v1"), ikm)
        .expand(&info.concat(), &mut okm)
        .unwrap();
    okm
}

pub(crate) fn commitment(key: &[u8; 32]) -> [u8; 32] {
    expand(key, &[b"cc1/commit"])
}

pub(crate) fn message_key(key: &[u8; 32], suite: u8, form: u8, c: u8, salt: &[u8]) -> [u8; 32] {
    expand(key, &[b"cc1/key", &[suite, form, c], salt])
}

/// §9: `K_wrap = HKDF-Expand(PRK(KEK), "cc1/wrap" || 0x01 || salt, 32)`.
fn wrap_key(kek: &[u8; 32], salt: &[u8]) -> [u8; 32] {
    expand(kek, &[b"cc1/wrap", &[0x01], salt])
}

/// §6: `00 00 00 || i (u64) || last`.
pub(crate) fn nonce(i: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&i.to_be_bytes());
    n[11] = u8::from(last);
    n
}

fn suite(id: u8) -> Suite {
    if id == 1 {
        Suite::Aes256Gcm
    } else {
        Suite::ChaCha20Poly1305
    }
}

pub(crate) fn seal(
    suite_id: u8,
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    plain: &[u8],
) -> Vec<u8> {
    let mut buf = plain.to_vec();
    RustCrypto
        .aead(suite(suite_id), &AeadKey::new(*key))
        .seal_append(nonce, aad, &mut buf, 0)
        .unwrap();
    buf
}

fn open(suite_id: u8, key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], sealed: &[u8]) -> Res<Vec<u8>> {
    let mut buf = sealed.to_vec();
    match RustCrypto
        .aead(suite(suite_id), &AeadKey::new(*key))
        .open_in_place(nonce, aad, &mut buf)
    {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(_) => fail("DecryptionFailed"),
    }
}

/// §5: a map ordered by key bytes; bounds 64 entries, keys 1..=255 bytes,
/// values 0..=4096 bytes. Bytes as given: no normalisation.
pub(crate) fn context(pairs: &[(String, String)]) -> Res<Vec<u8>> {
    let map: BTreeMap<&[u8], &[u8]> = pairs
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    if map.len() > 64 {
        return fail("Context");
    }
    let mut out = vec![map.len() as u8];
    for (k, v) in map {
        if k.is_empty() || k.len() > 255 || v.len() > 4096 {
            return fail("Context");
        }
        out.push(k.len() as u8);
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        out.extend_from_slice(v);
    }
    Ok(out)
}

/// §5: the context's encoded length, without its bounds.
fn context_len(pairs: &[(String, String)]) -> usize {
    let map: BTreeMap<&str, &str> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    map.iter()
        .map(|(k, v)| 3 + k.len() + v.len())
        .sum::<usize>()
        + 1
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        if self.0.len() < n {
            return fail("Truncated");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Res<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn key(&mut self) -> Res<[u8; 32]> {
        Ok(self.take(32)?.try_into().unwrap())
    }
    fn finish(&self) -> Res<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            fail("TrailingBytes")
        }
    }
}

pub(crate) struct Header {
    pub(crate) len: usize,
    suite: u8,
    form: u8,
    c: u8,
    kind: u8,
    key_id: u32,
    kms_key: Vec<u8>,
    salt: [u8; 32],
    commitment: [u8; 32],
}

/// §2, §3, in the order of §11.1.
pub(crate) fn parse_header(b: &[u8]) -> Res<Header> {
    if b.len() < 7 {
        return fail("Truncated");
    }
    if b[..4] != *b"CCEN" {
        return fail("BadMagic");
    }
    if b[4] != 0x01 {
        return fail("UnknownVersion");
    }
    let len = usize::from(u16::from_be_bytes([b[5], b[6]]));
    if !(79..=1357).contains(&len) {
        return fail_field("InvalidField", "header length");
    }
    let Some(h) = b.get(..len) else {
        return fail("Truncated");
    };
    let mut r = Cursor(&h[7..]);
    let suite = r.u8()?;
    if !(1..=2).contains(&suite) {
        return fail("UnknownSuite");
    }
    let (form, c) = (r.u8()?, r.u8()?);
    match (form, c) {
        (1, 0) | (2, 12..=24) => {}
        (1 | 2, _) => return fail_field("InvalidField", "chunk size"),
        _ => return fail_field("InvalidField", "form"),
    }
    let kind = r.u8()?;
    let (mut key_id, mut kms_key) = (0, vec![]);
    match kind {
        1 => {
            key_id = r.u32()?;
            if key_id == 0 {
                return fail_field("InvalidField", "key id");
            }
        }
        2 => {
            let n = r.u8()?;
            let name = r.take(n.into())?;
            if n == 0 || !name.iter().all(|b| (0x21..=0x7e).contains(b)) {
                return fail_field("InvalidField", "kms key");
            }
            kms_key = name.to_vec();
            let w = r.u16()?;
            if w > 1024 {
                return fail_field("FieldTooLong", "wrapped key");
            }
            if w == 0 {
                return fail_field("InvalidField", "wrapped key length");
            }
            r.take(w.into())?;
        }
        _ => return fail_field("InvalidField", "key reference"),
    }
    let salt = r.key()?;
    let commitment = r.key()?;
    r.finish()?;
    Ok(Header {
        len,
        suite,
        form,
        c,
        kind,
        key_id,
        kms_key,
        salt,
        commitment,
    })
}

/// §5: `header[0..5] || header[7..11] || keyring id || salt || commitment || context`.
pub(crate) fn aad(header: &[u8], h: &Header, ctx: &[u8]) -> Vec<u8> {
    let fields_end = if h.kind == 1 { 15 } else { 11 };
    [
        &header[0..5],
        &header[7..fields_end],
        &header[h.len - 64..h.len],
        ctx,
    ]
    .concat()
}

/// §7, from the commitment check on (§11.2 steps 5 to 8).
pub(crate) fn open_record_body(
    env: &[u8],
    h: &Header,
    key: &[u8; 32],
    ctx: &[(String, String)],
) -> Res<Vec<u8>> {
    if h.form != 1 {
        return fail("WrongForm");
    }
    if commitment(key) != h.commitment {
        return fail("CommitmentMismatch");
    }
    let body = &env[h.len..];
    if body.len() < 16 {
        return fail("DecryptionFailed");
    }
    let ctx = context(ctx)?;
    let k = message_key(key, h.suite, 1, 0, &h.salt);
    open(h.suite, &k, &nonce(0, true), &aad(env, h, &ctx), body)
}

/// §11.2: a record opened by a keyring. Returns the plaintext and the key's state.
pub(crate) fn open_record(
    env: &[u8],
    keyset: &[u8],
    ctx: &[(String, String)],
) -> Res<(Vec<u8>, u8)> {
    let h = parse_header(env)?;
    if h.kind != 1 {
        return fail("WrongKeyReference");
    }
    if h.form != 1 {
        return fail("WrongForm");
    }
    let keys = decode_keyset(keyset)?;
    let Some(k) = keys.iter().find(|k| k.id == h.key_id) else {
        return fail("UnknownKey");
    };
    let Some(key) = k.key else {
        return fail("KeyDestroyed");
    };
    Ok((open_record_body(env, &h, &key, ctx)?, k.state))
}

/// What a document reader accepts (§6, §3.2).
pub(crate) struct ReaderOptions {
    pub(crate) max_chunk_log2: u8,
    pub(crate) max_aad: usize,
    /// The trusted KMS key names, when the data key is to come from the
    /// KMS; `None` when the caller holds the data key (`with_key`).
    pub(crate) trusted: Option<Vec<Vec<u8>>>,
}

/// §6 and §11.3: a document read as a stream; `key` is the data key the
/// caller holds or the KMS returns.
pub(crate) fn open_document(
    env: &[u8],
    key: &[u8; 32],
    ctx: &[(String, String)],
    options: &ReaderOptions,
) -> Res<Vec<u8>> {
    let h = parse_header(env)?;
    if h.form != 2 {
        return fail("WrongForm");
    }
    if h.c > options.max_chunk_log2 {
        return fail_field("LimitExceeded", "chunk size");
    }
    if let Some(trusted) = &options.trusted {
        if h.kind != 2 {
            return fail("WrongKeyReference");
        }
        if !trusted.contains(&h.kms_key) {
            return fail("UntrustedKey");
        }
    }
    let max_aad = options.max_aad;
    let key_ref_len = if h.kind == 1 { 4 } else { 0 };
    if 5 + 4 + key_ref_len + 64 + context_len(ctx) > max_aad {
        return fail_field("LimitExceeded", "associated data");
    }
    if commitment(key) != h.commitment {
        return fail("CommitmentMismatch");
    }
    let ctx = context(ctx)?;
    let aad = aad(env, &h, &ctx);
    let k = message_key(key, h.suite, 2, h.c, &h.salt);
    let sealed_len = (1usize << h.c) + 16;
    let mut body = &env[h.len..];
    let mut out = Vec::new();
    for i in 0u64.. {
        let last = body.len() <= sealed_len;
        let (chunk, rest) = body.split_at(body.len().min(sealed_len));
        let plain = open(h.suite, &k, &nonce(i, last), &aad, chunk)?;
        if last && i > 0 && plain.is_empty() {
            return fail("DecryptionFailed"); // not canonical
        }
        out.extend_from_slice(&plain);
        if last {
            break;
        }
        body = rest;
    }
    Ok(out)
}

pub(crate) struct KeysetKey {
    pub(crate) id: u32,
    pub(crate) state: u8,
    key: Option<[u8; 32]>,
}

pub(crate) fn state_name(code: u8) -> &'static str {
    [
        "?",
        "Primary",
        "Active",
        "Retired",
        "Compromised",
        "Destroyed",
    ][usize::from(code)]
}

/// §8.
pub(crate) fn decode_keyset(b: &[u8]) -> Res<Vec<KeysetKey>> {
    let mut r = Cursor(b);
    if r.take(4)? != b"CCKS" {
        return fail("BadMagic");
    }
    if r.u8()? != 1 {
        return fail("UnknownVersion");
    }
    if !(1..=2).contains(&r.u8()?) {
        return fail("UnknownSuite");
    }
    let count = r.u32()?;
    if count == 0 || count > 10_000 {
        return fail_field("InvalidField", "key count");
    }
    let mut keys: Vec<KeysetKey> = vec![];
    let mut primary = false;
    for _ in 0..count {
        let id = r.u32()?;
        if id == 0 {
            return fail_field("InvalidField", "key id");
        }
        if keys.iter().any(|k| k.id == id) {
            return fail_field("InvalidField", "duplicate key id");
        }
        let state = r.u8()?;
        if !(1..=5).contains(&state) {
            return fail_field("InvalidField", "key state");
        }
        r.u64()?;
        let key = if state == 5 { None } else { Some(r.key()?) };
        if state == 1 {
            if primary {
                return fail_field("InvalidField", "second primary key");
            }
            primary = true;
        }
        keys.push(KeysetKey { id, state, key });
    }
    r.finish()?;
    if !primary {
        return fail_field("InvalidField", "primary key");
    }
    Ok(keys)
}

pub(crate) struct KmsVersion {
    pub(crate) version: u32,
    pub(crate) kek: Option<[u8; 32]>,
}

pub(crate) type KmsTable = Vec<(Vec<u8>, Vec<KmsVersion>)>;

fn local_kms_context() -> Vec<(String, String)> {
    vec![("purpose".into(), "careconnect/local-kms".into())]
}

/// §9: the envelope's keyring id: the commitment's first 4 bytes, 1 if they are zero.
fn root_key_id(root: &[u8; 32]) -> u32 {
    let c = commitment(root);
    match u32::from_be_bytes([c[0], c[1], c[2], c[3]]) {
        0 => 1,
        id => id,
    }
}

/// §9: `"CCKM" || 0x01 || record envelope` sealed under the root secret.
pub(crate) fn kms_file(root: &[u8; 32], salt: &[u8; 32], table: &[u8]) -> Vec<u8> {
    let header = [
        b"CCEN".as_slice(),
        &[0x01, 0x00, 79, 0x01, 0x01, 0x00, 0x01],
        &root_key_id(root).to_be_bytes(),
        salt,
        &commitment(root),
    ]
    .concat();
    let h = parse_header(&header).unwrap();
    let ctx = context(&local_kms_context()).unwrap();
    let k = message_key(root, 1, 1, 0, salt);
    let body = seal(1, &k, &nonce(0, true), &aad(&header, &h, &ctx), table);
    [b"CCKM".as_slice(), &[0x01], &header, &body].concat()
}

/// §9 and §11.5.
pub(crate) fn open_kms_file(file: &[u8], root: &[u8; 32]) -> Res<KmsTable> {
    let env = match file {
        [b'C', b'C', b'K', b'M', version, rest @ ..] => {
            if *version != 1 {
                return fail("UnknownVersion");
            }
            rest
        }
        _ if file.len() < 5 => return fail("Truncated"),
        _ => return fail("BadMagic"),
    };
    let h = parse_header(env)?;
    if h.kind != 1 || h.key_id != root_key_id(root) || h.commitment != commitment(root) {
        return fail("RootSecret");
    }
    let table = open_record_body(env, &h, root, &local_kms_context())?;
    decode_table(&table)
}

fn decode_table(b: &[u8]) -> Res<KmsTable> {
    let mut r = Cursor(b);
    let count = r.u16()?;
    if count > 4096 {
        return fail_field("FieldTooLong", "kms key count");
    }
    let mut table: KmsTable = vec![];
    for _ in 0..count {
        let n = r.u8()?;
        let name = r.take(n.into())?.to_vec();
        if n == 0 || !name.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return fail_field("InvalidField", "kms key");
        }
        let versions = r.u16()?;
        if versions == 0 {
            return fail_field("InvalidField", "kms version count");
        }
        let mut vs: Vec<KmsVersion> = vec![];
        for _ in 0..versions {
            let version = r.u32()?;
            if version == 0 || vs.last().is_some_and(|v| v.version >= version) {
                return fail_field("InvalidField", "kms key version");
            }
            r.u64()?;
            let kek = match r.u8()? {
                1 => Some(r.key()?),
                2 => None,
                _ => return fail_field("InvalidField", "kms key state"),
            };
            vs.push(KmsVersion { version, kek });
        }
        if table.iter().any(|(n, _)| *n == name) {
            return fail_field("InvalidField", "duplicate kms key");
        }
        table.push((name, vs));
    }
    r.finish()?;
    Ok(table)
}

/// §9: `AAD_wrap = 0x01 || u8 n || name || u32 version || context`.
fn wrap_aad(name: &[u8], version: u32, ctx: &[u8]) -> Vec<u8> {
    [&[0x01, name.len() as u8], name, &version.to_be_bytes(), ctx].concat()
}

/// §9: wraps `dek` under version `version` of `name`.
pub(crate) fn wrap(
    kek: &[u8; 32],
    version: u32,
    salt: &[u8; 32],
    name: &[u8],
    ctx: &[(String, String)],
    dek: &[u8; 32],
) -> Vec<u8> {
    let aad = wrap_aad(name, version, &context(ctx).unwrap());
    let body = seal(1, &wrap_key(kek, salt), &nonce(0, true), &aad, dek);
    [&[0x01][..], &version.to_be_bytes(), salt.as_slice(), &body].concat()
}

/// §9 and §11.6.
pub(crate) fn unwrap(
    table: &KmsTable,
    name: &[u8],
    wrapped: &[u8],
    ctx: &[(String, String)],
) -> Res<[u8; 32]> {
    if wrapped.len() != 85 || wrapped[0] != 0x01 {
        return fail("UnwrapFailed");
    }
    let version = u32::from_be_bytes(wrapped[1..5].try_into().unwrap());
    let salt = &wrapped[5..37];
    let Some((_, versions)) = table.iter().find(|(n, _)| n == name) else {
        return fail("KeyNotFound");
    };
    let Some(v) = versions.iter().find(|v| v.version == version) else {
        return fail("KeyUnusable");
    };
    let Some(kek) = v.kek else {
        return fail("KeyUnusable");
    };
    let aad = wrap_aad(name, version, &context(ctx)?);
    match open(
        1,
        &wrap_key(&kek, salt),
        &nonce(0, true),
        &aad,
        &wrapped[37..],
    ) {
        Ok(dek) => Ok(dek.try_into().unwrap()),
        Err(_) => fail("UnwrapFailed"),
    }
}
