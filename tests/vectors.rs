//! Known-answer vectors for envelope format v1 (`docs/vectors/envelope-v1.json`,
//! described in `docs/envelope-format.md` §12).
//!
//! Every valid vector is re-sealed from its inputs (fixed salt) and must equal
//! the stored bytes exactly, with every compiled-in provider; then the stored
//! bytes are opened through the public API and must give the plaintext back.
//! `invalid` vectors must fail to open with the stated error. The local-KMS
//! vectors are opened through `LocalKms`.
//!
//! Every vector is also opened by [`spec`], a second implementation written
//! from the text of `docs/envelope-format.md` alone (HKDF from the `hkdf`
//! crate, the AEAD primitive from the provider, everything else by hand):
//! it must agree with the library on every plaintext and every error.
//!
//! Regenerate (only when the format changes, with a new version):
//! `CARECONNECT_WRITE_VECTORS=1 cargo test --all-features --test vectors`.
//! The local-KMS file and the keys `LocalKms` wrapped in it are random; a
//! regeneration keeps the stored ones, so it changes nothing unless the
//! generator does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::OnceLock;

use careconnect::crypto::document::{DocumentHeader, DocumentSealer, OpenOptions};
use careconnect::crypto::envelope::seal_record_with_salt;
use careconnect::crypto::format::{Header, KeyRef};
use careconnect::crypto::provider::all_providers;
use careconnect::crypto::{
    DataKey, EncryptionContext, Error, FormatError, KeyId, KeyState, Keyring, Kms, KmsKeyId,
    LocalKms, RootSecret, Suite, TrustedKeys, WrappedKey,
};
use serde_json::{Value, json};
use zeroize::Zeroizing;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/vectors/envelope-v1.json");

/// Invalid vectors only the reader's own checks refuse (non-canonical
/// documents, reader limits, trusted KMS keys): none left pending since
/// issue 13 landed; the list stays for the next such change.
const PENDING: &[&str] = &[];

/// The reader's default limits (`docs/envelope-format.md` §6).
const DEFAULT_MAX_CHUNK_LOG2: u8 = 20;
const DEFAULT_MAX_AAD: usize = 16 << 10;

/// The data key of most vectors: bytes 0x00..=0x1f.
fn vector_key() -> [u8; 32] {
    seq(0x00)
}

/// 32 consecutive bytes from `first`.
fn seq(first: u8) -> [u8; 32] {
    std::array::from_fn(|i| first.wrapping_add(i as u8))
}

/// A deterministic, recognisable plaintext of `n` bytes.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

/// Opaque stand-in for a wrapped key (no KMS unwraps it; open with `data_key`).
fn placeholder_wrapped(n: usize, step: usize) -> Vec<u8> {
    (0..n).map(|i| (i * step + 7) as u8).collect()
}

fn keyset_entry(out: &mut Vec<u8>, id: u32, state: u8, created: u64, key: Option<[u8; 32]>) {
    out.extend_from_slice(&id.to_be_bytes());
    out.push(state);
    out.extend_from_slice(&created.to_be_bytes());
    if let Some(k) = key {
        out.extend_from_slice(&k);
    }
}

/// A keyset holding the vector key as id 1 (primary) and a destroyed id 2.
fn keyset_bytes() -> Vec<u8> {
    let mut ks = b"CCKS\x01\x01".to_vec(); // magic, version, suite AES-256-GCM
    ks.extend_from_slice(&2u32.to_be_bytes());
    keyset_entry(&mut ks, 1, 1, 1_700_000_000, Some(vector_key()));
    keyset_entry(&mut ks, 2, 5, 1_600_000_000, None);
    ks
}

/// The same two keys plus one key in each other state: id 3 active (key
/// 0x20..), id 4 retired (0x40..), id 5 compromised (0x60..).
fn keyset_states_bytes() -> Vec<u8> {
    let mut ks = b"CCKS\x01\x01".to_vec();
    ks.extend_from_slice(&5u32.to_be_bytes());
    keyset_entry(&mut ks, 1, 1, 1_700_000_000, Some(vector_key()));
    keyset_entry(&mut ks, 2, 5, 1_600_000_000, None);
    keyset_entry(&mut ks, 3, 2, 1_650_000_000, Some(seq(0x20)));
    keyset_entry(&mut ks, 4, 3, 1_640_000_000, Some(seq(0x40)));
    keyset_entry(&mut ks, 5, 4, 1_630_000_000, Some(seq(0x60)));
    ks
}

fn keyset_of(v: &Value) -> Vec<u8> {
    match v.get("keyset").and_then(Value::as_str) {
        None | Some("keyset") => keyset_bytes(),
        Some("keyset_states") => keyset_states_bytes(),
        Some(other) => panic!("unknown keyset {other}"),
    }
}

fn pairs_of(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            (
                kv[0].as_str().unwrap().to_owned(),
                kv[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn ctx_of(v: &Value) -> EncryptionContext {
    pairs_of(v)
        .into_iter()
        .fold(EncryptionContext::new(), |c, (k, v)| c.with(k, v))
}

fn suite_of(name: &str) -> Suite {
    Suite::ALL.into_iter().find(|s| s.name() == name).unwrap()
}

fn hexv(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn key32(v: &Value) -> [u8; 32] {
    hexv(v).try_into().unwrap()
}

fn dek_of(v: &Value) -> DataKey {
    DataKey::from_bytes(Zeroizing::new(key32(&v["data_key"])))
}

/// The reader's chunk limit for `v`: the default unless it names another.
fn max_chunk_log2(v: &Value) -> u8 {
    v.get("max_chunk_size")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_MAX_CHUNK_LOG2, |n| n.trailing_zeros() as u8)
}

/// Same data key <=> same commitment <=> same header bytes: compares keys
/// whose bytes the API does not expose.
fn fingerprint(dek: &DataKey) -> Vec<u8> {
    let ctx = EncryptionContext::new();
    seal_record_with_salt(
        all_providers()[0],
        Suite::Aes256Gcm,
        dek,
        KeyRef::Keyring(KeyId::MIN),
        [0; 32],
        &ctx,
        b"",
    )
    .unwrap()
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// Error names as the vectors spell them: the variant, and for
/// `InvalidField`, `FieldTooLong` and `LimitExceeded` the field it names.
type ErrorName = (String, Option<String>);

fn error_name(e: &Error) -> ErrorName {
    let debug = match e {
        Error::Format(f) => match f {
            FormatError::InvalidField { field, .. } => {
                return ("InvalidField".into(), Some((*field).into()));
            }
            FormatError::FieldTooLong { field, .. } => {
                return ("FieldTooLong".into(), Some((*field).into()));
            }
            other => format!("{other:?}"),
        },
        Error::Kms(k) => format!("{k:?}"),
        Error::Misuse(m) => format!("{m:?}"),
        other => format!("{other:?}"),
    };
    let variant = debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned();
    // `LimitExceeded { what: "chunk size", .. }` (a variant newer than this test).
    let what = debug
        .split_once("what: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(w, _)| w.to_owned());
    (variant, what)
}

fn expected_error(v: &Value) -> ErrorName {
    (
        v["error"].as_str().unwrap().to_owned(),
        v.get("field").and_then(Value::as_str).map(str::to_owned),
    )
}

/// Reads a document header the way every document vector is read, with
/// the reader's options: the vector's trusted KMS keys and chunk limit.
fn read_header(input: &mut &[u8], v: &Value) -> Result<DocumentHeader, Error> {
    let options = OpenOptions::trusting(TrustedKeys::new(trusted_of(v)))
        .max_chunk_size(1 << max_chunk_log2(v))?;
    DocumentHeader::read_from(input, &options)
}

/// The KMS keys a reader of `v` trusts: `trusted_kms_keys`, or the key
/// its header names (none for a header without one).
fn trusted_of(v: &Value) -> Vec<KmsKeyId> {
    match v.get("trusted_kms_keys") {
        Some(keys) => keys
            .as_array()
            .unwrap()
            .iter()
            .map(|k| KmsKeyId::new(k.as_str().unwrap()).unwrap())
            .collect(),
        None => v
            .get("kms_key")
            .map(|k| KmsKeyId::new(k.as_str().unwrap()).unwrap())
            .into_iter()
            .collect(),
    }
}

/// Opens a sealed keyset, trusting only `trusted`.
async fn open_keyset(kms: &LocalKms, trusted: &KmsKeyId, sealed: &[u8]) -> Result<Keyring, Error> {
    Keyring::open_keyset(kms, &TrustedKeys::new([trusted.clone()]), sealed).await
}

/// Seals one vector from its inputs with `provider`'s index into all_providers().
fn seal(v: &Value, provider: usize) -> Vec<u8> {
    let p = all_providers()[provider];
    let suite = suite_of(v["suite"].as_str().unwrap());
    let ctx = ctx_of(&v["context"]);
    let salt = key32(&v["salt"]);
    let plaintext = hexv(&v["plaintext"]);
    match v["form"].as_str().unwrap() {
        "record" => {
            let key_ref = match v.get("kms_key") {
                Some(name) => KeyRef::Kms {
                    key: name.as_str().unwrap().to_owned(),
                    wrapped: hexv(&v["wrapped_key"]),
                },
                None => KeyRef::Keyring(KeyId::new(v["key_id"].as_u64().unwrap() as u32).unwrap()),
            };
            seal_record_with_salt(p, suite, &dek_of(v), key_ref, salt, &ctx, &plaintext).unwrap()
        }
        "document" => {
            let kms_key = KmsKeyId::new(v["kms_key"].as_str().unwrap()).unwrap();
            let wrapped = WrappedKey::new(hexv(&v["wrapped_key"])).unwrap();
            let sealer = DocumentSealer::new()
                .suite(suite)
                .provider(p)
                .chunk_size(v["chunk_size"].as_u64().unwrap() as usize)
                .unwrap();
            let mut w = sealer
                .begin_with_salt(&dek_of(v), &kms_key, wrapped, salt, &ctx, Vec::new())
                .unwrap();
            w.write_all(&plaintext).unwrap();
            w.finish().unwrap()
        }
        other => panic!("unknown form {other}"),
    }
}

/// Opens `envelope` as `v["form"]` says: a record with the keyring decoded
/// from the vector's keyset, a document as a stream with `v["data_key"]` or
/// through the KMS file `v["local_kms"]` names.
/// Returns the plaintext and, for records, the state of the key that opened it.
fn open(v: &Value, envelope: &[u8]) -> Result<(Vec<u8>, Option<KeyState>), Error> {
    let ctx = ctx_of(&v["context"]);
    match v["form"].as_str().unwrap() {
        "record" => {
            let ring = Keyring::decode(&keyset_of(v))?;
            ring.open(envelope, &ctx)
                .map(|o| (o.plaintext, Some(o.key_state)))
        }
        _ => {
            let mut input = envelope;
            let header = read_header(&mut input, v)?;
            let opener = match vector_kms(v) {
                // The data key comes from the KMS file the vector names.
                Some((_dir, kms)) => block_on(header.unwrap_key(&kms?, &ctx))?,
                None => header.with_key(&dek_of(v), &ctx, all_providers()[0])?,
            };
            Ok((read_all(opener.reader(input))?, None))
        }
    }
}

fn read_all(mut r: impl Read) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    r.read_to_end(&mut out)
        .map_err(|e| match e.into_inner().map(|i| i.downcast::<Error>()) {
            Some(Ok(inner)) => *inner,
            _ => Error::DecryptionFailed,
        })?;
    Ok(out)
}

/// The same vector opened by the second implementation.
fn spec_open(v: &Value, envelope: &[u8]) -> spec::Res<(Vec<u8>, Option<u8>)> {
    let ctx = pairs_of(&v["context"]);
    match v["form"].as_str().unwrap() {
        "record" => spec::open_record(envelope, &keyset_of(v), &ctx).map(|(p, s)| (p, Some(s))),
        _ => {
            let options = spec::ReaderOptions {
                max_chunk_log2: max_chunk_log2(v),
                max_aad: DEFAULT_MAX_AAD,
                trusted: v.get("local_kms").map(|_| {
                    trusted_of(v)
                        .iter()
                        .map(|k| k.as_str().as_bytes().to_vec())
                        .collect()
                }),
            };
            spec::open_document(envelope, &key32(&v["data_key"]), &ctx, &options).map(|p| (p, None))
        }
    }
}

// ---------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------

const ROOT_SECRET: u8 = 0xe0; // the local-KMS vectors' root secret: seq(0xe0)
const REC_CTX: [(&str, &str); 2] = [("collection", "health_records"), ("record", "42")];
const DOC_CTX: [(&str, &str); 2] = [("collection", "documents"), ("document", "7")];
const KEYSET_CTX: [(&str, &str); 1] = [("purpose", "careconnect/keyset")];

fn pairs(ctx: &[(&str, &str)]) -> Vec<(String, String)> {
    ctx.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn record(name: &str, suite: Suite, ctx: &[(&str, &str)], plaintext: &[u8], salt: u8) -> Value {
    json!({
        "name": name, "form": "record", "suite": suite.name(), "key_id": 1,
        "data_key": hex::encode(vector_key()),
        "context": ctx, "salt": hex::encode([salt; 32]), "plaintext": hex::encode(plaintext),
    })
}

fn document(name: &str, suite: Suite, len: usize, chunk: usize, salt: u8) -> Value {
    json!({
        "name": name, "form": "document", "suite": suite.name(), "chunk_size": chunk,
        "data_key": hex::encode(vector_key()),
        "kms_key": "clinic-documents", "wrapped_key": hex::encode(placeholder_wrapped(85, 31)),
        "context": DOC_CTX, "salt": hex::encode([salt; 32]), "plaintext": hex::encode(pattern(len)),
    })
}

/// `base` with another envelope and an expected error (see [`named_error`]);
/// `note` says what changed.
fn mutant(base: &Value, name: &str, note: &str, envelope: &[u8], error: &str) -> Value {
    let mut v = base.clone();
    let o = v.as_object_mut().unwrap();
    o.remove("plaintext");
    o.remove("same_envelope_as");
    o.insert("name".into(), json!(name));
    o.insert("note".into(), json!(note));
    o.insert("envelope".into(), json!(hex::encode(envelope)));
    named_error(v, error)
}

/// `v` expecting `error`: "Error", or "Error/field" for an error that names a field.
fn named_error(mut v: Value, error: &str) -> Value {
    let (error, field) = error
        .split_once('/')
        .map_or((error, None), |(e, f)| (e, Some(f)));
    v["error"] = json!(error);
    if let Some(f) = field {
        v["field"] = json!(f);
    }
    v
}

/// Header bytes from the fields after the 7-byte prefix; the length is computed.
fn raw_header(fields: &[&[u8]]) -> Vec<u8> {
    let rest = fields.concat();
    let len = (7 + rest.len()) as u16;
    [b"CCEN".as_slice(), &[1], &len.to_be_bytes(), &rest].concat()
}

fn patched(env: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut e = env.to_vec();
    e[at..at + bytes.len()].copy_from_slice(bytes);
    e
}

/// What `LocalKms` wrote once: the file and the keys it wrapped (random, kept
/// across regenerations).
struct Generated {
    file: Vec<u8>,
    document_key: Vec<u8>,
    keyset_key: Vec<u8>,
    destroyed_version_key: Vec<u8>,
}

fn generated_kms(old: Option<&Value>) -> Generated {
    if let Some(g) = old.and_then(|o| o.get("local_kms")) {
        let wrapped = |name: &str| {
            g["generated"]["wrapped"]
                .as_array()
                .into_iter()
                .chain(g["invalid_wrapped"].as_array())
                .flatten()
                .find(|w| w["name"] == name)
                .map(|w| hexv(&w["wrapped_key"]))
                .unwrap()
        };
        return Generated {
            file: hexv(&g["generated"]["file"]),
            document_key: wrapped("document-key"),
            keyset_key: wrapped("keyset-key"),
            destroyed_version_key: wrapped("wrapped-under-destroyed-version"),
        };
    }
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms.bin");
        let root = RootSecret::from_hex(&hex::encode(seq(ROOT_SECRET))).unwrap();
        let kms = LocalKms::open_or_create(&path, root).unwrap();
        let docs = KmsKeyId::new("clinic-documents").unwrap();
        let keys = KmsKeyId::new("clinic-keys").unwrap();
        kms.ensure_key(&docs).unwrap();
        kms.ensure_key(&keys).unwrap();
        let keyset_ctx = ctx_of(&json!(KEYSET_CTX));
        let (_, v1) = kms.generate_data_key(&keys, &keyset_ctx).await.unwrap();
        kms.rotate(&keys).await.unwrap();
        kms.rotate(&docs).await.unwrap();
        let (_, keyset_key) = kms.generate_data_key(&keys, &keyset_ctx).await.unwrap();
        let doc_ctx = ctx_of(&json!(DOC_CTX));
        let (_, document_key) = kms.generate_data_key(&docs, &doc_ctx).await.unwrap();
        kms.destroy_version(&keys, 1).unwrap();
        Generated {
            file: std::fs::read(&path).unwrap(),
            document_key: document_key.into_bytes(),
            keyset_key: keyset_key.into_bytes(),
            destroyed_version_key: v1.into_bytes(),
        }
    })
}

/// The key table (§9) of the file written from the text: `clinic-keys` with
/// version 1 destroyed and version 2 holding the KEK 0x80..=0x9f.
fn spec_table() -> Vec<u8> {
    let mut t = 1u16.to_be_bytes().to_vec();
    t.push(11);
    t.extend_from_slice(b"clinic-keys");
    t.extend_from_slice(&2u16.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&1_700_000_000u64.to_be_bytes());
    t.push(2);
    t.extend_from_slice(&2u32.to_be_bytes());
    t.extend_from_slice(&1_710_000_000u64.to_be_bytes());
    t.push(1);
    t.extend_from_slice(&seq(0x80));
    t
}

fn local_kms_section(g: &Generated) -> Value {
    let root = seq(ROOT_SECRET);
    let table = spec::open_kms_file(&g.file, &root).unwrap();
    let unwrap = |name: &str, wrapped: &[u8], ctx: &[(&str, &str)]| {
        spec::unwrap(&table, name.as_bytes(), wrapped, &pairs(ctx)).unwrap()
    };
    let wrapped_entry = |name: &str, kms_key: &str, ctx: &[(&str, &str)], w: &[u8]| {
        json!({"name": name, "kms_key": kms_key, "context": ctx, "wrapped_key": hex::encode(w),
               "data_key": hex::encode(unwrap(kms_key, w, ctx))})
    };
    let keys_of = |t: &spec::KmsTable| -> Value {
        t.iter()
            .map(|(name, versions)| {
                let vs: Vec<Value> = versions
                    .iter()
                    .map(|v| {
                        json!({"version": v.version,
                               "state": if v.kek.is_some() { "enabled" } else { "destroyed" }})
                    })
                    .collect();
                json!({"name": String::from_utf8(name.clone()).unwrap(), "versions": vs})
            })
            .collect()
    };
    // The file and the wrapped key written from §9's text alone.
    let table_bytes = spec_table();
    let file_salt = [0xd0; 32];
    let from_spec_file = spec::kms_file(&root, &file_salt, &table_bytes);
    let wrap_salt = [0xd1; 32];
    let from_spec_wrapped = spec::wrap(
        &seq(0x80),
        2,
        &wrap_salt,
        b"clinic-keys",
        &pairs(&KEYSET_CTX),
        &vector_key(),
    );
    let k = &g.keyset_key;
    let at = |at: usize, bytes: &[u8]| patched(k, at, bytes);
    #[rustfmt::skip]
    let invalid_wrapped = [
        ("wrapped-under-destroyed-version", "clinic-keys", &KEYSET_CTX[..], g.destroyed_version_key.clone(), "KeyUnusable"),
        ("wrapped-unknown-version", "clinic-keys", &KEYSET_CTX, at(1, &3u32.to_be_bytes()), "KeyUnusable"),
        ("wrapped-other-context", "clinic-keys", &DOC_CTX, k.clone(), "UnwrapFailed"),
        ("wrapped-other-key-name", "clinic-documents", &KEYSET_CTX, k.clone(), "UnwrapFailed"),
        ("wrapped-unknown-key", "clinic-unknown", &KEYSET_CTX, k.clone(), "KeyNotFound"),
        ("wrapped-format-byte-2", "clinic-keys", &KEYSET_CTX, at(0, &[2]), "UnwrapFailed"),
        ("wrapped-format-byte-2-unknown-key", "clinic-unknown", &KEYSET_CTX, at(0, &[2]), "UnwrapFailed"),
        ("wrapped-84-bytes", "clinic-keys", &KEYSET_CTX, k[..84].to_vec(), "UnwrapFailed"),
        ("wrapped-86-bytes", "clinic-keys", &KEYSET_CTX, [k.as_slice(), &[0]].concat(), "UnwrapFailed"),
        ("wrapped-tag-flipped", "clinic-keys", &KEYSET_CTX, at(84, &[k[84] ^ 1]), "UnwrapFailed"),
    ]
    .map(|(name, kms_key, ctx, w, error)| {
        json!({"name": name, "kms_key": kms_key, "context": ctx, "wrapped_key": hex::encode(w), "error": error})
    });
    let key = |name: &[u8], versions: &[Vec<u8>]| -> Vec<u8> {
        let mut k = vec![name.len() as u8];
        k.extend_from_slice(name);
        k.extend_from_slice(&(versions.len() as u16).to_be_bytes());
        versions.iter().for_each(|v| k.extend_from_slice(v));
        k
    };
    let version =
        |n: u32, state: u8| [&n.to_be_bytes()[..], &0u64.to_be_bytes(), &[state]].concat();
    let tbl = |count: u16, keys: &[Vec<u8>]| [&count.to_be_bytes()[..], &keys.concat()].concat();
    let sealed = |table: &[u8]| spec::kms_file(&root, &file_salt, table);
    let file = &g.file;
    let d1 = || vec![version(1, 2)];
    #[rustfmt::skip]
    let invalid_files = [
        ("file-3-bytes", "the first 3 bytes of the generated file", file[..3].to_vec(), "Truncated"),
        ("file-4-bytes", "\"CCKM\" alone: shorter than magic and version", file[..4].to_vec(), "Truncated"),
        ("file-bad-magic", "byte 0 = 'X'", patched(file, 0, b"X"), "BadMagic"),
        ("file-unknown-version", "byte 4 = 0x02", patched(file, 4, &[2]), "UnknownVersion"),
        ("file-envelope-key-id-zero", "the envelope's keyring id (file bytes 16..20) = 0", patched(file, 16, &[0; 4]), "InvalidField/key id"),
        ("file-tag-flipped", "last byte flipped", patched(file, file.len() - 1, &[file[file.len() - 1] ^ 1]), "DecryptionFailed"),
        ("table-key-count-4097", "key count 4097, nothing after it", sealed(&tbl(4097, &[])), "FieldTooLong/kms key count"),
        ("table-empty-name", "one key with a 0-byte name", sealed(&tbl(1, &[key(b"", &d1())])), "InvalidField/kms key"),
        ("table-name-with-space", "one key named \"clinic keys\"", sealed(&tbl(1, &[key(b"clinic keys", &d1())])), "InvalidField/kms key"),
        ("table-zero-versions", "one key with version count 0", sealed(&tbl(1, &[key(b"k", &[])])), "InvalidField/kms version count"),
        ("table-version-zero", "one key whose only version is 0", sealed(&tbl(1, &[key(b"k", &[version(0, 2)])])), "InvalidField/kms key version"),
        ("table-versions-not-increasing", "versions 2 then 1",
         sealed(&tbl(1, &[key(b"k", &[version(2, 2), version(1, 2)])])), "InvalidField/kms key version"),
        ("table-unknown-state", "version state 3", sealed(&tbl(1, &[key(b"k", &[version(1, 3)])])), "InvalidField/kms key state"),
        ("table-duplicate-key", "key \"k\" twice", sealed(&tbl(2, &[key(b"k", &d1()), key(b"k", &d1())])), "InvalidField/duplicate kms key"),
        ("table-trailing-bytes", "one byte after the last key", sealed(&[spec_table(), vec![0]].concat()), "TrailingBytes"),
        ("table-truncated", "the table without its last byte", sealed(&spec_table()[..spec_table().len() - 1]), "Truncated"),
    ]
    .map(|(name, note, bytes, error)| named_error(json!({"name": name, "note": note, "file": hex::encode(bytes)}), error));
    let mut other_root = named_error(
        json!({"name": "file-other-root-secret",
        "note": "the generated file, opened with the root secret 0x22 x 32", "file": hex::encode(file)}),
        "RootSecret",
    );
    other_root["root_secret"] = json!(hex::encode([0x22; 32]));
    let invalid_files: Vec<Value> = std::iter::once(other_root).chain(invalid_files).collect();
    json!({
        "root_secret": hex::encode(root),
        "generated": {
            "note": "written by LocalKms (random KEKs and salts): ensure clinic-documents and clinic-keys, rotate both, destroy clinic-keys version 1",
            "file": hex::encode(&g.file),
            "keys": keys_of(&table),
            "wrapped": [
                wrapped_entry("document-key", "clinic-documents", &DOC_CTX, &g.document_key),
                wrapped_entry("keyset-key", "clinic-keys", &KEYSET_CTX, &g.keyset_key),
            ],
        },
        "from_spec": {
            "note": "written from §9's text alone; the key table is in clear in \"table\"",
            "file_salt": hex::encode(file_salt),
            "table": hex::encode(&table_bytes),
            "file": hex::encode(&from_spec_file),
            "keys": [{"name": "clinic-keys", "versions": [
                {"version": 1, "state": "destroyed"},
                {"version": 2, "state": "enabled", "kek": hex::encode(seq(0x80))}]}],
            "wrapped": [{"name": "keyset-key", "kms_key": "clinic-keys", "version": 2,
                         "salt": hex::encode(wrap_salt), "context": KEYSET_CTX,
                         "wrapped_key": hex::encode(&from_spec_wrapped),
                         "data_key": hex::encode(vector_key())}],
        },
        "invalid_wrapped": invalid_wrapped,
        "invalid_files": invalid_files,
    })
}

fn valid_vectors(kms: &Value) -> Vec<Value> {
    let doc_key = &kms["generated"]["wrapped"][0];
    let mut vectors = vec![
        record(
            "record-aes",
            Suite::Aes256Gcm,
            &REC_CTX,
            b"allergies: penicillin",
            0xa1,
        ),
        record(
            "record-chacha",
            Suite::ChaCha20Poly1305,
            &REC_CTX,
            b"allergies: penicillin",
            0xa2,
        ),
        record("record-empty", Suite::Aes256Gcm, &[], b"", 0xa3),
        document(
            "document-aes-3-chunks",
            Suite::Aes256Gcm,
            10_000,
            4096,
            0xb1,
        ),
        document(
            "document-chacha-2-full-chunks",
            Suite::ChaCha20Poly1305,
            8192,
            4096,
            0xb2,
        ),
        document("document-empty", Suite::Aes256Gcm, 0, 4096, 0xb3),
    ];
    let mut reordered = record(
        "record-context-out-of-order",
        Suite::Aes256Gcm,
        &[("record", "42"), ("collection", "health_records")],
        b"allergies: penicillin",
        0xa1,
    );
    reordered["note"] = json!(
        "record-aes with the context pairs given in another order: the encoding sorts them, so the bytes are the same"
    );
    reordered["same_envelope_as"] = json!("record-aes");
    vectors.push(reordered);
    let mut utf8 = record(
        "record-context-utf8-bytewise-order",
        Suite::ChaCha20Poly1305,
        &[
            ("zone", "ward 3"),
            ("\u{e9}tage", "2"),
            ("Zone", "A"),
            ("z", ""),
        ],
        b"blood pressure 120/80",
        0xa4,
    );
    utf8["note"] = json!(
        "keys sort by their UTF-8 bytes: \"Zone\" (5a) < \"z\" (7a) < \"zone\" < \"\u{e9}tage\" (c3 a9); an empty value is allowed"
    );
    vectors.push(utf8);
    let mut nfd = record(
        "record-context-nfd",
        Suite::Aes256Gcm,
        &[("patient", "Rene\u{301}e")],
        b"no known allergies",
        0xa5,
    );
    nfd["note"] = json!(
        "the value is \"Renee\" with U+0301 after the first e (NFD, 52 65 6e 65 cc 81 65); it is not normalised, so the NFC spelling does not open it"
    );
    vectors.push(nfd);
    for (name, id, first, state, salt) in [
        ("record-key-active", 3u32, 0x20u8, "Active", 0xa6u8),
        ("record-key-retired", 4, 0x40, "Retired", 0xa7),
        ("record-key-compromised", 5, 0x60, "Compromised", 0xa8),
    ] {
        let mut v = record(
            name,
            Suite::Aes256Gcm,
            &REC_CTX,
            b"allergies: penicillin",
            salt,
        );
        v["key_id"] = json!(id);
        v["data_key"] = json!(hex::encode(seq(first)));
        v["keyset"] = json!("keyset_states");
        v["key_state"] = json!(state);
        vectors.push(v);
    }
    vectors.extend([
        document(
            "document-aes-c13-2-chunks",
            Suite::Aes256Gcm,
            8192 + 100,
            8192,
            0xb4,
        ),
        document(
            "document-chacha-c16-1-chunk",
            Suite::ChaCha20Poly1305,
            1000,
            1 << 16,
            0xb5,
        ),
        document(
            "document-aes-c20-1-chunk",
            Suite::Aes256Gcm,
            300,
            1 << 20,
            0xb6,
        ),
    ]);
    let mut c24 = document(
        "document-chacha-c24-1-chunk",
        Suite::ChaCha20Poly1305,
        100,
        1 << 24,
        0xb7,
    );
    c24["max_chunk_size"] = json!(1 << 24);
    c24["note"] = json!("opens only with the reader's chunk limit raised to 16 MiB");
    vectors.push(c24);
    let mut rewrapped = document(
        "document-aes-3-chunks-rewrapped",
        Suite::Aes256Gcm,
        10_000,
        4096,
        0xb1,
    );
    rewrapped["kms_key"] = json!("alias/clinic-documents-2025");
    rewrapped["wrapped_key"] = json!(hex::encode(placeholder_wrapped(120, 13)));
    rewrapped["note"] = json!(
        "document-aes-3-chunks under another KMS key reference: the reference is outside the AAD, so the body is the same bytes"
    );
    rewrapped["same_body_as"] = json!("document-aes-3-chunks");
    vectors.push(rewrapped);
    let mut local = document("document-aes-local-kms", Suite::Aes256Gcm, 5000, 4096, 0xb8);
    local["wrapped_key"] = doc_key["wrapped_key"].clone();
    local["data_key"] = doc_key["data_key"].clone();
    local["local_kms"] = json!("generated");
    local["note"] = json!("the wrapped key is real: local_kms.generated unwraps it to data_key");
    vectors.push(local);
    for v in &mut vectors {
        v["envelope"] = json!(hex::encode(seal(v, 0)));
    }
    vectors
}

fn invalid_vectors(valid: &[Value]) -> Vec<Value> {
    let by = |name: &str| valid.iter().find(|v| v["name"] == name).unwrap().clone();
    let env = |v: &Value| hexv(&v["envelope"]);
    // The four vectors of the first release, unchanged but for the label of
    // record-destroyed-key (its header holds key id 2).
    let doc = by("document-aes-3-chunks");
    let sealed = env(&doc);
    let mut invalid = vec![];
    let mut truncated = doc.clone();
    truncated["name"] = json!("document-last-chunk-dropped");
    truncated["envelope"] = json!(hex::encode(&sealed[..sealed.len() - (10_000 - 8192) - 16]));
    truncated["error"] = json!("DecryptionFailed");
    invalid.push(truncated);
    let mut wrong_ctx = by("record-aes");
    wrong_ctx["name"] = json!("record-other-context");
    wrong_ctx["context"] = json!([["collection", "health_records"], ["record", "43"]]);
    wrong_ctx["error"] = json!("DecryptionFailed");
    invalid.push(wrong_ctx);
    let mut bad_commit = by("record-aes");
    let mut e = env(&bad_commit);
    e[50] ^= 1; // inside the commitment (offset 47..79 for a keyring record)
    bad_commit["name"] = json!("record-commitment-flipped");
    bad_commit["envelope"] = json!(hex::encode(e));
    bad_commit["error"] = json!("CommitmentMismatch");
    invalid.push(bad_commit);
    let mut destroyed = by("record-aes");
    let mut e = env(&destroyed);
    e[14] = 2; // key id 1 -> 2 (offset 11..15), which the keyset holds destroyed
    destroyed["name"] = json!("record-destroyed-key");
    destroyed["key_id"] = json!(2);
    destroyed["envelope"] = json!(hex::encode(e));
    destroyed["error"] = json!("KeyDestroyed");
    invalid.push(destroyed);

    // `base` with another envelope, the expected "Error" or "Error/field",
    // and `set`'s fields replacing the base's (opener, context, key...).
    let case = |base: &Value, name: &str, note: &str, bytes: &[u8], error: &str, set: Value| {
        let mut v = mutant(base, name, note, bytes, error);
        for (k, x) in set.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let none = || json!({});

    // Header checks, in the order of §11.1, on record-aes (R, opened by the
    // keyring) and document-empty (E, read as a document stream).
    let rv = by("record-aes");
    let r = env(&rv);
    let ev = by("document-empty");
    let e = env(&ev);
    let (eh, h) = Header::parse(&e).unwrap();
    let e_body = &e[h..];
    let KeyRef::Kms { key: name, wrapped } = &eh.key_ref else {
        unreachable!()
    };
    let (name, w) = (name.as_bytes(), wrapped.len() as u16);
    let kms_header = |name: &[u8], wrapped_len: u16, wrapped: &[u8]| {
        let n = [name.len() as u8];
        let fields = [
            &[1, 2, 12, 2][..],
            &n,
            name,
            &wrapped_len.to_be_bytes(),
            wrapped,
        ];
        [
            raw_header(&[&fields.concat(), &eh.salt, &eh.commitment]),
            e_body.to_vec(),
        ]
        .concat()
    };
    let len = |env: &[u8], h: u16| patched(env, 5, &h.to_be_bytes());
    let mut spaced = name.to_vec();
    spaced[6] = b' ';
    #[rustfmt::skip]
    let header_cases = [
        case(&rv, "header-6-bytes", "the first 6 bytes of record-aes", &r[..6], "Truncated", none()),
        case(&rv, "header-bad-magic", "byte 0 = 'X'", &patched(&r, 0, b"X"), "BadMagic", none()),
        case(&rv, "header-bad-magic-and-version", "byte 0 = 'X' and byte 4 = 0x02: the magic is checked first",
             &patched(&patched(&r, 0, b"X"), 4, &[2]), "BadMagic", none()),
        case(&rv, "header-unknown-version", "byte 4 = 0x02", &patched(&r, 4, &[2]), "UnknownVersion", none()),
        case(&rv, "header-length-78", "H = 78, below the minimum", &len(&r, 78), "InvalidField/header length", none()),
        case(&rv, "header-length-1358", "H = 1358, above the maximum", &len(&r, 1358), "InvalidField/header length", none()),
        case(&rv, "header-shorter-than-length", "the first 60 bytes of record-aes (H = 79)", &r[..60], "Truncated", none()),
        case(&rv, "header-unknown-suite", "suite 0x03", &patched(&r, 7, &[3]), "UnknownSuite", none()),
        case(&rv, "header-unknown-suite-and-form", "suite 0x00 and form 0x09: the suite is checked first",
             &patched(&r, 7, &[0, 9]), "UnknownSuite", none()),
        case(&rv, "header-unknown-form", "form 0x03", &patched(&r, 8, &[3]), "InvalidField/form", none()),
        case(&rv, "header-unknown-form-and-chunk-size", "form 0x03 and c = 0x30: the form is reported",
             &patched(&r, 8, &[3, 0x30]), "InvalidField/form", none()),
        case(&rv, "header-record-with-chunk-size", "a record with c = 12", &patched(&r, 9, &[12]), "InvalidField/chunk size", none()),
        case(&rv, "header-unknown-key-reference", "key reference kind 0x03", &patched(&r, 10, &[3]), "InvalidField/key reference", none()),
        case(&rv, "header-key-id-zero", "keyring id 0", &patched(&r, 11, &[0; 4]), "InvalidField/key id", none()),
        case(&rv, "header-length-past-fields", "H = 80 for a 79-byte keyring header: the first body byte is left over",
             &len(&r, 80), "TrailingBytes", none()),
        case(&ev, "document-header-cut", "the first 100 bytes of document-empty (H = 179): the stream ends inside the header",
             &e[..100], "Truncated", none()),
        case(&ev, "document-chunk-size-11", "c = 11", &patched(&e, 9, &[11]), "InvalidField/chunk size", none()),
        case(&ev, "document-chunk-size-25", "c = 25", &patched(&e, 9, &[25]), "InvalidField/chunk size", none()),
        case(&ev, "document-kms-name-empty", "KMS key name length 0 (H = 163)",
             &kms_header(b"", w, wrapped), "InvalidField/kms key", none()),
        case(&ev, "document-kms-name-with-space", "KMS key name \"clinic documents\"",
             &kms_header(&spaced, w, wrapped), "InvalidField/kms key", none()),
        case(&ev, "document-wrapped-key-1025-bytes", "wrapped key length 1025 (H = 1119)",
             &kms_header(name, 1025, &[7; 1025]), "FieldTooLong/wrapped key", none()),
        case(&ev, "document-wrapped-key-empty", "wrapped key length 0 (H = 94)",
             &kms_header(name, 0, &[]), "InvalidField/wrapped key length", none()),
        case(&ev, "document-header-length-short-of-fields", "H = 178 for a 179-byte header: the commitment runs past H",
             &len(&e, 178), "Truncated", none()),
        case(&ev, "document-header-length-past-fields", "H = 180 for a 179-byte header", &len(&e, 180), "TrailingBytes", none()),
    ];
    invalid.extend(header_cases);

    // Form and key reference, then the key, then the body (§11.2, §11.3).
    let keyring_doc = [
        raw_header(&[
            &[1, 2, 12, 1],
            &1u32.to_be_bytes(),
            &eh.salt,
            &eh.commitment,
        ]),
        e_body.to_vec(),
    ]
    .concat();
    let id = |n: u32| patched(&r, 11, &n.to_be_bytes());
    let flipped = |env: &[u8], at: usize| patched(env, at, &[env[at] ^ 1]);
    let short = &r[..79 + 15];
    let nfd = by("record-context-nfd");
    let empty_key = || json!({"context": [["", "x"]]});
    #[rustfmt::skip]
    let key_cases = [
        case(&rv, "record-read-as-document", "record-aes read by the document reader", &r, "WrongForm", json!({"form": "document"})),
        case(&ev, "document-opened-by-keyring", "document-empty opened by the keyring: its KMS reference is refused first",
             &e, "WrongKeyReference", json!({"form": "record"})),
        case(&ev, "document-with-keyring-reference-opened-by-keyring",
             "document-empty's header with keyring id 1 in place of the KMS reference (H = 79), opened by the keyring",
             &keyring_doc, "WrongForm", json!({"form": "record", "key_id": 1})),
        case(&rv, "record-unknown-key", "key id 3, which the keyset does not hold", &id(3), "UnknownKey", json!({"key_id": 3})),
        case(&rv, "record-destroyed-key-commitment-flipped", "key id 2 (destroyed) and a flipped commitment byte: the key is looked up first",
             &flipped(&id(2), 50), "KeyDestroyed", json!({"key_id": 2})),
        case(&rv, "record-other-key-same-id", "key id 3, opened with keyset_states where id 3 is another key",
             &id(3), "CommitmentMismatch", json!({"key_id": 3, "keyset": "keyset_states"})),
        case(&rv, "record-15-byte-body", "record-aes cut to a 15-byte body", short, "DecryptionFailed", none()),
        case(&rv, "record-no-body", "record-aes cut to its header", &r[..79], "DecryptionFailed", none()),
        case(&rv, "record-15-byte-body-commitment-flipped", "a 15-byte body and a flipped commitment byte: the commitment is checked first",
             &flipped(&r, 50)[..79 + 15], "CommitmentMismatch", none()),
        case(&rv, "record-context-empty-key", "record-aes opened with the context {\"\": \"x\"}", &r, "Context", empty_key()),
        case(&rv, "record-15-byte-body-context-empty-key",
             "a 15-byte body and the context {\"\": \"x\"}: the body length is checked before the context",
             short, "DecryptionFailed", empty_key()),
        case(&rv, "record-tag-flipped", "last byte flipped", &flipped(&r, r.len() - 1), "DecryptionFailed", none()),
        case(&rv, "record-salt-flipped", "a salt byte flipped (K_msg and the AAD change)", &flipped(&r, 15), "DecryptionFailed", none()),
        case(&rv, "record-suite-swapped", "suite 0x02 on an AES-256-GCM record", &patched(&r, 7, &[2]), "DecryptionFailed", none()),
        case(&nfd, "record-context-nfc-for-nfd", "record-context-nfd opened with the NFC spelling (U+00E9)",
             &env(&nfd), "DecryptionFailed", json!({"context": [["patient", "Ren\u{e9}e"]]})),
    ];
    invalid.extend(key_cases);

    // Document bodies (§6): chunks of document-aes-3-chunks (D) moved
    // around; a chunk sealed by the text's rules appended after the last.
    let d = &sealed;
    let full = 4096 + 16;
    let (dh, c0, c1, c2) = (
        &d[..h],
        &d[h..h + full],
        &d[h + full..h + 2 * full],
        &d[h + 2 * full..],
    );
    let doc_ctx = spec::context(&pairs(&DOC_CTX)).unwrap();
    let aad = spec::aad(dh, &spec::parse_header(d).unwrap(), &doc_ctx);
    let k = spec::message_key(&vector_key(), 1, 2, 12, &[0xb1; 32]);
    let appended = spec::seal(1, &k, &spec::nonce(3, true), &aad, b"appended");
    #[rustfmt::skip]
    let body_cases = [
        case(&doc, "document-chunks-reordered", "chunks 1, 0, 2", &[dh, c1, c0, c2].concat(), "DecryptionFailed", none()),
        case(&doc, "document-chunk-duplicated", "chunks 0, 0, 1, 2", &[dh, c0, c0, c1, c2].concat(), "DecryptionFailed", none()),
        case(&doc, "document-chunk-appended",
             "a fourth chunk, sealed correctly as the last (counter 3, flag 1), after the real last chunk",
             &[dh, c0, c1, c2, &appended].concat(), "DecryptionFailed", none()),
        case(&doc, "document-byte-appended", "one 0x00 byte after the last chunk", &[d, &[0][..]].concat(), "DecryptionFailed", none()),
        case(&doc, "document-cut-inside-last-chunk", "the last byte removed", &d[..d.len() - 1], "DecryptionFailed", none()),
        case(&ev, "document-no-chunks", "document-empty's header with nothing after it", &e[..h], "DecryptionFailed", none()),
        case(&ev, "document-15-byte-last-chunk", "document-empty's only chunk cut to 15 bytes", &e[..e.len() - 1], "DecryptionFailed", none()),
        case(&ev, "document-other-context", "document-empty opened with document = 8", &e, "DecryptionFailed",
             json!({"context": [["collection", "documents"], ["document", "8"]]})),
        case(&ev, "document-other-data-key", "document-empty opened with the data key 0x20..=0x3f", &e, "CommitmentMismatch",
             json!({"data_key": hex::encode(seq(0x20))})),
    ];
    invalid.extend(body_cases);

    // What only the reader's own checks refuse.
    let cv = by("document-chacha-2-full-chunks");
    let c = env(&cv);
    let k = spec::message_key(&vector_key(), 2, 2, 12, &[0xb2; 32]);
    let aad = spec::aad(&c[..h], &spec::parse_header(&c).unwrap(), &doc_ctx);
    let odd = [
        &c[..h + full],
        &spec::seal(2, &k, &spec::nonce(1, false), &aad, &pattern(8192)[4096..]),
        &spec::seal(2, &k, &spec::nonce(2, true), &aad, b""),
    ]
    .concat();
    let local = by("document-aes-local-kms");
    let mut big = document("document-c21", Suite::Aes256Gcm, 10, 1 << 21, 0xb9);
    big["envelope"] = json!(hex::encode(seal(&big, 0)));
    let wide: Vec<Value> = (0..4)
        .map(|i| json!([format!("k{i}"), "v".repeat(4096)]))
        .collect();
    let mut wide_doc = document("document-wide-context", Suite::Aes256Gcm, 10, 4096, 0xba);
    wide_doc["context"] = json!(wide);
    wide_doc["envelope"] = json!(hex::encode(seal(&wide_doc, 0)));
    #[rustfmt::skip]
    let reader_cases = [
        case(&cv, "document-empty-last-chunk-after-full",
             "document-chacha-2-full-chunks re-encoded as chunk 0, chunk 1 with flag 0 and an empty last chunk 2: \
              every tag verifies, but no writer produces it",
             &odd, "DecryptionFailed", none()),
        case(&big, "document-chunk-size-over-default-reader-limit",
             "a well-formed document with c = 21 (2 MiB chunks), read with the default 1 MiB limit",
             &env(&big), "LimitExceeded/chunk size", none()),
        case(&wide_doc, "document-associated-data-over-default-reader-limit",
             "a context of 4 values of 4096 bytes: AAD of 73 + 16,405 = 16,478 bytes, over the default 16,384",
             &env(&wide_doc), "LimitExceeded/associated data", none()),
        case(&local, "document-local-kms-untrusted-key",
             "document-aes-local-kms read by a reader that trusts only clinic-keys: refused before the KMS is called",
             &env(&local), "UntrustedKey", json!({"trusted_kms_keys": ["clinic-keys"]})),
    ];
    invalid.extend(reader_cases);
    invalid
}

/// Plaintext keysets (§8) that do not decode, each with the error of §11.4.
fn invalid_keysets() -> Vec<Value> {
    let head = |count: u32| [&b"CCKS\x01\x01"[..], &count.to_be_bytes()].concat();
    let entry = |id: u32, state: u8, key: bool| {
        let mut e = Vec::new();
        keyset_entry(&mut e, id, state, 0, key.then(vector_key));
        e
    };
    let primary = entry(1, 1, true);
    let good = keyset_bytes();
    #[rustfmt::skip]
    let cases = [
        ("keyset-3-bytes", "\"CCK\"", good[..3].to_vec(), "Truncated"),
        ("keyset-bad-magic", "\"CCKX\"", patched(&good, 3, b"X"), "BadMagic"),
        ("keyset-unknown-version", "version 0x02", patched(&good, 4, &[2]), "UnknownVersion"),
        ("keyset-unknown-suite", "default suite 0x03", patched(&good, 5, &[3]), "UnknownSuite"),
        ("keyset-no-keys", "count 0, nothing after it", head(0), "InvalidField/key count"),
        ("keyset-10001-keys", "count 10,001, nothing after it", head(10_001), "InvalidField/key count"),
        ("keyset-count-past-entries", "count 3 with two entries", patched(&good, 6, &3u32.to_be_bytes()), "Truncated"),
        ("keyset-key-id-zero", "a primary with id 0", [head(1), entry(0, 1, true)].concat(), "InvalidField/key id"),
        ("keyset-duplicate-id", "id 1 twice", [head(2), primary.clone(), entry(1, 2, true)].concat(),
         "InvalidField/duplicate key id"),
        ("keyset-duplicate-id-bad-state", "id 1 twice, the second with state 9: the id is checked first",
         [head(2), primary.clone(), entry(1, 9, true)].concat(), "InvalidField/duplicate key id"),
        ("keyset-unknown-state", "state 6", [head(2), primary.clone(), entry(2, 6, true)].concat(), "InvalidField/key state"),
        ("keyset-destroyed-with-key", "a destroyed key followed by 32 key bytes",
         [head(2), primary.clone(), entry(2, 5, true)].concat(), "TrailingBytes"),
        ("keyset-active-without-key", "an active key without its 32 bytes",
         [head(2), primary.clone(), entry(2, 2, false)].concat(), "Truncated"),
        ("keyset-two-primaries", "ids 1 and 2 both primary", [head(2), primary.clone(), entry(2, 1, true)].concat(),
         "InvalidField/second primary key"),
        ("keyset-no-primary", "one active key", [head(1), entry(1, 2, true)].concat(), "InvalidField/primary key"),
        ("keyset-no-primary-trailing-byte", "one active key and one more byte: trailing bytes are checked first",
         [head(1), entry(1, 2, true), vec![0]].concat(), "TrailingBytes"),
        // Each field is checked as soon as it is read (§11.4): three bytes
        // are too few for the magic, whatever they are.
        ("keyset-3-bytes-not-magic", "\"XYZ\": too short for the magic, whatever the bytes",
         b"XYZ".to_vec(), "Truncated"),
        ("keyset-magic-only", "\"CCKS\" and nothing after it", b"CCKS".to_vec(), "Truncated"),
        ("keyset-second-primary-cut", "a second primary without its 32 key bytes: cut before it is judged",
         [head(2), primary.clone(), entry(2, 1, false)].concat(), "Truncated"),
    ];
    cases
        .into_iter()
        .map(|(name, note, bytes, error)| {
            named_error(
                json!({"name": name, "note": note, "keyset": hex::encode(bytes)}),
                error,
            )
        })
        .collect()
}

fn sealed_keyset_vector(kms: &Value) -> Value {
    let w = &kms["from_spec"]["wrapped"][0];
    let mut v = json!({
        "name": "keyset-sealed-under-local-kms",
        "note": "keyset_states sealed as a record (§8) under the data key that local_kms.from_spec wraps",
        "form": "record", "suite": Suite::Aes256Gcm.name(),
        "kms_key": w["kms_key"], "wrapped_key": w["wrapped_key"], "data_key": w["data_key"],
        "context": KEYSET_CTX, "salt": hex::encode([0xc1; 32]),
        "plaintext": hex::encode(keyset_states_bytes()),
    });
    v["envelope"] = json!(hex::encode(seal(&v, 0)));
    v
}

fn generate(old: Option<&Value>) -> Value {
    let kms = local_kms_section(&generated_kms(old));
    let valid = valid_vectors(&kms);
    let invalid = invalid_vectors(&valid);
    json!({
        "format": "careconnect envelope v1 (docs/envelope-format.md; this file is described in §12)",
        "data_key": hex::encode(vector_key()),
        "keyset": hex::encode(keyset_bytes()),
        "keyset_states": hex::encode(keyset_states_bytes()),
        "invalid_keysets": invalid_keysets(),
        "valid": valid,
        "invalid": invalid,
        "sealed_keyset": sealed_keyset_vector(&kms),
        "local_kms": kms,
    })
}

fn load() -> &'static Value {
    static FILE: OnceLock<Value> = OnceLock::new();
    FILE.get_or_init(|| {
        if std::env::var_os("CARECONNECT_WRITE_VECTORS").is_some() {
            let old = std::fs::read_to_string(PATH)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            let text = serde_json::to_string_pretty(&generate(old.as_ref())).unwrap() + "\n";
            std::fs::write(PATH, text).unwrap();
        }
        serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap()
    })
}

/// A `LocalKms` on a private copy of `file`.
/// The local KMS of the file a document vector names (`local_kms`), if any.
fn vector_kms(v: &Value) -> Option<(tempfile::TempDir, Result<LocalKms, Error>)> {
    let which = v.get("local_kms")?;
    let kms_vectors = &load()["local_kms"];
    Some(local_kms(
        &hexv(&kms_vectors[which.as_str().unwrap()]["file"]),
        kms_vectors["root_secret"].as_str().unwrap(),
    ))
}

fn local_kms(file: &[u8], root_hex: &str) -> (tempfile::TempDir, Result<LocalKms, Error>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.bin");
    write_private(&path, file);
    let kms = LocalKms::open(&path, RootSecret::from_hex(root_hex).unwrap());
    (dir, kms)
}

fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn valid_vectors_reseal_byte_for_byte_and_open() {
    let file = load();
    assert_eq!(hexv(&file["keyset"]), keyset_bytes());
    assert_eq!(hexv(&file["keyset_states"]), keyset_states_bytes());
    assert_eq!(hexv(&file["data_key"]), vector_key());
    let valid = file["valid"].as_array().unwrap();
    assert_eq!(valid.len(), 18);
    let envelope_of =
        |name: &str| hexv(&valid.iter().find(|v| v["name"] == name).unwrap()["envelope"]);
    for v in valid {
        let name = v["name"].as_str().unwrap();
        let stored = hexv(&v["envelope"]);
        for p in 0..all_providers().len() {
            assert!(
                seal(v, p) == stored,
                "{name}: provider {p} sealed other bytes"
            );
        }
        let plaintext = hexv(&v["plaintext"]);
        let (opened, state) = open(v, &stored).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(opened, plaintext, "{name}");
        let (by_text, state_code) =
            spec_open(v, &stored).unwrap_or_else(|e| panic!("{name}: spec: {e:?}"));
        assert_eq!(by_text, plaintext, "{name}: spec");
        if let Some(want) = v.get("key_state") {
            assert_eq!(&format!("{:?}", state.unwrap()), want, "{name}");
            assert_eq!(spec::state_name(state_code.unwrap()), want, "{name}: spec");
        }
        if let Some(other) = v.get("same_envelope_as") {
            assert_eq!(stored, envelope_of(other.as_str().unwrap()), "{name}");
        }
        if let Some(other) = v.get("same_body_as") {
            let other = envelope_of(other.as_str().unwrap());
            let (_, a) = Header::parse(&stored).unwrap();
            let (_, b) = Header::parse(&other).unwrap();
            assert_eq!(stored[a..], other[b..], "{name}");
            assert_ne!(stored[..a], other[..b], "{name}");
        }
    }
}

/// A document vector sealed through the async API (`seal_from`).
fn seal_async(v: &Value) -> Vec<u8> {
    let kms_key = KmsKeyId::new(v["kms_key"].as_str().unwrap()).unwrap();
    let wrapped = WrappedKey::new(hexv(&v["wrapped_key"])).unwrap();
    let sealer = DocumentSealer::new()
        .suite(suite_of(v["suite"].as_str().unwrap()))
        .chunk_size(v["chunk_size"].as_u64().unwrap() as usize)
        .unwrap();
    let w = sealer
        .begin_with_salt(
            &dek_of(v),
            &kms_key,
            wrapped,
            key32(&v["salt"]),
            &ctx_of(&v["context"]),
            Vec::new(),
        )
        .unwrap();
    let plaintext = hexv(&v["plaintext"]);
    let mut out = Vec::new();
    let n = block_on(w.seal_from(plaintext.as_slice(), &mut out)).unwrap();
    assert_eq!(n, plaintext.len() as u64);
    out
}

/// A document vector opened through the async API (`read_from_async`,
/// `open_into`), with the vector's data key or KMS file.
fn open_async(v: &Value, envelope: &[u8]) -> Result<Vec<u8>, Error> {
    let ctx = ctx_of(&v["context"]);
    block_on(async {
        let mut input = envelope;
        let options = OpenOptions::trusting(TrustedKeys::new(trusted_of(v)))
            .max_chunk_size(1 << max_chunk_log2(v))?;
        let header = DocumentHeader::read_from_async(&mut input, &options).await?;
        let opener = match vector_kms(v) {
            Some((_dir, kms)) => header.unwrap_key(&kms?, &ctx).await?,
            None => header.with_key(&dek_of(v), &ctx, all_providers()[0])?,
        };
        let mut out = Vec::new();
        opener.open_into(input, &mut out).await?;
        Ok(out)
    })
}

/// The async document API writes and reads exactly the bytes of the
/// `std::io` one: every document vector, valid and invalid.
#[test]
fn document_vectors_through_the_async_api() {
    let file = load();
    let mut valid = 0;
    for v in file["valid"].as_array().unwrap() {
        if v["form"] != "document" {
            continue;
        }
        let name = v["name"].as_str().unwrap();
        let stored = hexv(&v["envelope"]);
        assert!(seal_async(v) == stored, "{name}: async sealed other bytes");
        assert_eq!(
            open_async(v, &stored).unwrap_or_else(|e| panic!("{name}: {e}")),
            hexv(&v["plaintext"]),
            "{name}"
        );
        valid += 1;
    }
    assert!(valid >= 4, "{valid} document vectors");
    let mut invalid = 0;
    for v in file["invalid"].as_array().unwrap() {
        if v["form"] == "record" {
            continue;
        }
        let name = v["name"].as_str().unwrap();
        let envelope = hexv(&v["envelope"]);
        match (open(v, &envelope), open_async(v, &envelope)) {
            (Err(sync), Err(asynced)) => assert_eq!(
                error_name(&asynced),
                error_name(&sync),
                "{name}: {asynced:?} vs {sync:?}"
            ),
            (Ok(_), Ok(_)) if PENDING.contains(&name) => {}
            (a, b) => panic!("{name}: sync {a:?}, async {b:?}"),
        }
        invalid += 1;
    }
    assert!(invalid >= 10, "{invalid} invalid document vectors");
}

#[test]
fn invalid_vectors_fail_with_their_error() {
    let file = load();
    let invalid = file["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 56);
    let mut names: Vec<&str> = invalid
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), invalid.len(), "vector names are unique");
    for v in invalid {
        let name = v["name"].as_str().unwrap();
        let want = expected_error(v);
        let envelope = hexv(&v["envelope"]);
        let by_text = spec_open(v, &envelope)
            .err()
            .unwrap_or_else(|| panic!("{name}: spec opened it"));
        assert_eq!(by_text, want, "{name}: spec");
        match open(v, &envelope) {
            Err(e) => assert_eq!(error_name(&e), want, "{name}: {e:?}"),
            Ok(_) if PENDING.contains(&name) => {
                eprintln!("{name}: still opens on this branch (pending reader change)");
            }
            Ok(_) => panic!("{name} opened"),
        }
    }
}

#[test]
fn keyset_vectors_decode() {
    let file = load();
    assert_eq!(hexv(&file["keyset"]), keyset_bytes());
    let ring = Keyring::decode(&keyset_bytes()).unwrap();
    assert_eq!(ring.primary(), KeyId::new(1).unwrap());
    let states: Vec<_> = ring.keys().map(|k| (k.id.get(), k.state)).collect();
    assert_eq!(states, [(1, KeyState::Primary), (2, KeyState::Destroyed)]);
    let ring = Keyring::decode(&keyset_states_bytes()).unwrap();
    let states: Vec<_> = ring.keys().map(|k| (k.id.get(), k.state)).collect();
    assert_eq!(
        states,
        [
            (1, KeyState::Primary),
            (2, KeyState::Destroyed),
            (3, KeyState::Active),
            (4, KeyState::Retired),
            (5, KeyState::Compromised),
        ]
    );
    let by_text = spec::decode_keyset(&keyset_states_bytes()).unwrap();
    let codes: Vec<_> = by_text.iter().map(|k| (k.id, k.state)).collect();
    assert_eq!(codes, [(1, 1), (2, 5), (3, 2), (4, 3), (5, 4)]);
}

#[test]
fn invalid_keysets_fail_with_their_error() {
    let file = load();
    for v in file["invalid_keysets"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let want = expected_error(v);
        let bytes = hexv(&v["keyset"]);
        let err = Keyring::decode(&bytes)
            .err()
            .unwrap_or_else(|| panic!("{name} decoded"));
        assert_eq!(error_name(&err.into()), want, "{name}");
        let by_text = spec::decode_keyset(&bytes)
            .err()
            .unwrap_or_else(|| panic!("{name}: spec decoded it"));
        assert_eq!(by_text, want, "{name}: spec");
    }
}

#[test]
fn sealed_keyset_reseals_and_opens_through_local_kms() {
    let file = load();
    let v = &file["sealed_keyset"];
    let stored = hexv(&v["envelope"]);
    for p in 0..all_providers().len() {
        assert!(seal(v, p) == stored, "provider {p} sealed other bytes");
    }
    assert_eq!(hexv(&v["plaintext"]), keyset_states_bytes());
    let from_spec = &file["local_kms"]["from_spec"];
    let (_dir, kms) = local_kms(
        &hexv(&from_spec["file"]),
        file["local_kms"]["root_secret"].as_str().unwrap(),
    );
    let kms = kms.unwrap();
    let trusted = KmsKeyId::new(v["kms_key"].as_str().unwrap()).unwrap();
    let ring = block_on(open_keyset(&kms, &trusted, &stored)).unwrap();
    let expected = Keyring::decode(&keyset_states_bytes()).unwrap();
    assert_eq!(
        ring.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    // And by the text: unwrap (§9), open the record (§7), decode (§8).
    let root = key32(&file["local_kms"]["root_secret"]);
    let table = spec::open_kms_file(&hexv(&from_spec["file"]), &root).unwrap();
    let dek = spec::unwrap(
        &table,
        v["kms_key"].as_str().unwrap().as_bytes(),
        &hexv(&v["wrapped_key"]),
        &pairs_of(&v["context"]),
    )
    .unwrap();
    assert_eq!(dek, key32(&v["data_key"]));
    let h = spec::parse_header(&stored).unwrap();
    let plain = spec::open_record_body(&stored, &h, &dek, &pairs_of(&v["context"])).unwrap();
    assert_eq!(plain, keyset_states_bytes());
}

#[test]
fn local_kms_file_written_by_local_kms_opens_by_the_text() {
    let file = load();
    let kms_vectors = &file["local_kms"];
    let root_hex = kms_vectors["root_secret"].as_str().unwrap();
    let root = key32(&kms_vectors["root_secret"]);
    let g = &kms_vectors["generated"];
    let table = spec::open_kms_file(&hexv(&g["file"]), &root).unwrap();
    let (_dir, kms) = local_kms(&hexv(&g["file"]), root_hex);
    let kms = kms.unwrap();
    // The key table as the text reads it, as the JSON states it, as LocalKms describes it.
    for (key, (name, versions)) in g["keys"].as_array().unwrap().iter().zip(&table) {
        assert_eq!(key["name"].as_str().unwrap().as_bytes(), name.as_slice());
        let d =
            block_on(kms.describe(&KmsKeyId::new(key["name"].as_str().unwrap()).unwrap())).unwrap();
        let mut enabled = vec![];
        let mut destroyed = vec![];
        for (want, got) in key["versions"].as_array().unwrap().iter().zip(versions) {
            assert_eq!(want["version"], got.version);
            let state = if got.kek.is_some() {
                enabled.push(got.version);
                "enabled"
            } else {
                destroyed.push(got.version);
                "destroyed"
            };
            assert_eq!(want["state"], state);
        }
        assert_eq!(
            (d.enabled_versions, d.destroyed_versions),
            (enabled, destroyed)
        );
    }
    assert_eq!(g["keys"].as_array().unwrap().len(), table.len());
    for w in g["wrapped"].as_array().unwrap() {
        check_unwrap(&kms, &table, w);
    }
}

#[test]
fn local_kms_file_written_from_the_text_opens_in_local_kms() {
    let file = load();
    let kms_vectors = &file["local_kms"];
    let root_hex = kms_vectors["root_secret"].as_str().unwrap();
    let root = key32(&kms_vectors["root_secret"]);
    let s = &kms_vectors["from_spec"];
    assert_eq!(hexv(&s["table"]), spec_table());
    let bytes = spec::kms_file(&root, &key32(&s["file_salt"]), &hexv(&s["table"]));
    assert_eq!(
        bytes,
        hexv(&s["file"]),
        "the file is re-written byte for byte"
    );
    let table = spec::open_kms_file(&bytes, &root).unwrap();
    let (_dir, kms) = local_kms(&bytes, root_hex);
    let kms = kms.unwrap();
    let d = block_on(kms.describe(&KmsKeyId::new("clinic-keys").unwrap())).unwrap();
    assert_eq!(
        (d.current_version, d.enabled_versions, d.destroyed_versions),
        (2, vec![2], vec![1])
    );
    for w in s["wrapped"].as_array().unwrap() {
        let kek = key32(&s["keys"][0]["versions"][1]["kek"]);
        let again = spec::wrap(
            &kek,
            w["version"].as_u64().unwrap() as u32,
            &key32(&w["salt"]),
            w["kms_key"].as_str().unwrap().as_bytes(),
            &pairs_of(&w["context"]),
            &key32(&w["data_key"]),
        );
        assert_eq!(again, hexv(&w["wrapped_key"]), "re-wrapped byte for byte");
        check_unwrap(&kms, &table, w);
    }
}

/// `w` unwraps to its data key through `kms` and by the text.
fn check_unwrap(kms: &LocalKms, table: &spec::KmsTable, w: &Value) {
    let name = w["name"].as_str().unwrap();
    let kms_key = KmsKeyId::new(w["kms_key"].as_str().unwrap()).unwrap();
    let wrapped = WrappedKey::new(hexv(&w["wrapped_key"])).unwrap();
    let dek = block_on(kms.decrypt(&kms_key, &wrapped, &ctx_of(&w["context"])))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let want = key32(&w["data_key"]);
    assert_eq!(
        fingerprint(&dek),
        fingerprint(&DataKey::from_bytes(Zeroizing::new(want))),
        "{name}"
    );
    let by_text = spec::unwrap(
        table,
        kms_key.as_str().as_bytes(),
        wrapped.as_bytes(),
        &pairs_of(&w["context"]),
    )
    .unwrap();
    assert_eq!(by_text, want, "{name}: spec");
}

#[test]
fn local_kms_invalid_wrapped_keys_and_files_fail_with_their_error() {
    let file = load();
    let kms_vectors = &file["local_kms"];
    let root_hex = kms_vectors["root_secret"].as_str().unwrap();
    let root = key32(&kms_vectors["root_secret"]);
    let generated = hexv(&kms_vectors["generated"]["file"]);
    let table = spec::open_kms_file(&generated, &root).unwrap();
    let (_dir, kms) = local_kms(&generated, root_hex);
    let kms = kms.unwrap();
    for w in kms_vectors["invalid_wrapped"].as_array().unwrap() {
        let name = w["name"].as_str().unwrap();
        let want = expected_error(w);
        let kms_key = KmsKeyId::new(w["kms_key"].as_str().unwrap()).unwrap();
        let wrapped = WrappedKey::new(hexv(&w["wrapped_key"])).unwrap();
        let err = block_on(kms.decrypt(&kms_key, &wrapped, &ctx_of(&w["context"])))
            .err()
            .unwrap_or_else(|| panic!("{name} unwrapped"));
        assert_eq!(error_name(&err), want, "{name}: {err:?}");
        let by_text = spec::unwrap(
            &table,
            kms_key.as_str().as_bytes(),
            wrapped.as_bytes(),
            &pairs_of(&w["context"]),
        )
        .err()
        .unwrap_or_else(|| panic!("{name}: spec unwrapped"));
        assert_eq!(by_text, want, "{name}: spec");
    }
    for f in kms_vectors["invalid_files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        let want = expected_error(f);
        let root_hex = f
            .get("root_secret")
            .map_or(root_hex, |r| r.as_str().unwrap());
        let bytes = hexv(&f["file"]);
        let (_dir, opened) = local_kms(&bytes, root_hex);
        let err = opened.err().unwrap_or_else(|| panic!("{name} opened"));
        assert_eq!(error_name(&err), want, "{name}: {err:?}");
        let by_text =
            spec::open_kms_file(&bytes, &hex::decode(root_hex).unwrap().try_into().unwrap())
                .err()
                .unwrap_or_else(|| panic!("{name}: spec opened it"));
        assert_eq!(by_text, want, "{name}: spec");
    }
}

/// Envelope format v1 as `docs/envelope-format.md` states it, written from
/// the text: HKDF-SHA256 from the `hkdf` crate, AES-256-GCM and
/// ChaCha20-Poly1305 as bare primitives from the default provider (tested
/// against Wycheproof in `tests/wycheproof.rs`), everything else here.
/// Errors are named as the vectors name them (§11).
#[path = "vectors/spec.rs"]
mod spec;
