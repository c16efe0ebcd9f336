//! Known-answer vectors for envelope format v1 (`docs/vectors/envelope-v1.json`).
//!
//! Every vector is re-sealed from its inputs (fixed salt) and must equal the
//! stored bytes exactly, with every compiled-in provider; then the stored
//! bytes are opened through the public API and must give the plaintext back.
//! `invalid` vectors must fail to open with the stated error.
//!
//! Regenerate (only when the format changes, with a new version):
//! `CARECONNECT_WRITE_VECTORS=1 cargo test --all-features --test vectors`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::io::{Read, Write};

use careconnect::crypto::document::{DocumentHeader, DocumentSealer};
use careconnect::crypto::envelope::seal_record_with_salt;
use careconnect::crypto::format::KeyRef;
use careconnect::crypto::provider::all_providers;
use careconnect::crypto::{
    DataKey, EncryptionContext, Error, KeyId, KeyState, Keyring, KmsKeyId, Suite, WrappedKey,
};
use serde_json::{Value, json};
use zeroize::Zeroizing;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/vectors/envelope-v1.json");

/// The data key of every vector: bytes 0x00..=0x1f.
fn vector_key() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

/// A deterministic, recognisable plaintext of `n` bytes.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

/// A keyset holding the vector key as id 1 (primary) and a destroyed id 2.
fn keyset_bytes() -> Vec<u8> {
    let mut ks = b"CCKS\x01\x01".to_vec(); // magic, version, suite AES-256-GCM
    ks.extend_from_slice(&2u32.to_be_bytes());
    ks.extend_from_slice(&1u32.to_be_bytes());
    ks.push(1); // primary
    ks.extend_from_slice(&1_700_000_000u64.to_be_bytes());
    ks.extend_from_slice(&vector_key());
    ks.extend_from_slice(&2u32.to_be_bytes());
    ks.push(5); // destroyed: no material
    ks.extend_from_slice(&1_600_000_000u64.to_be_bytes());
    ks
}

fn ctx_of(v: &Value) -> EncryptionContext {
    v.as_array()
        .unwrap()
        .iter()
        .fold(EncryptionContext::new(), |c, kv| {
            c.with(kv[0].as_str().unwrap(), kv[1].as_str().unwrap())
        })
}

fn suite_of(name: &str) -> Suite {
    Suite::ALL.into_iter().find(|s| s.name() == name).unwrap()
}

fn hexv(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn salt_of(v: &Value) -> [u8; 32] {
    hexv(v).try_into().unwrap()
}

/// The vector's data key (`data_key`: the keyring's key `key_id` for a
/// record, the unwrapped key for a document).
fn dek(v: &Value) -> DataKey {
    DataKey::from_bytes(Zeroizing::new(hexv(&v["data_key"]).try_into().unwrap()))
}

/// Seals one vector from its inputs with `provider`'s index into all_providers().
fn seal(v: &Value, provider: usize) -> Vec<u8> {
    let p = all_providers()[provider];
    let suite = suite_of(v["suite"].as_str().unwrap());
    let ctx = ctx_of(&v["context"]);
    let salt = salt_of(&v["salt"]);
    let plaintext = hexv(&v["plaintext"]);
    match v["form"].as_str().unwrap() {
        "record" => {
            let id = KeyId::new(v["key_id"].as_u64().unwrap() as u32).unwrap();
            seal_record_with_salt(
                p,
                suite,
                &dek(v),
                KeyRef::Keyring(id),
                salt,
                &ctx,
                &plaintext,
            )
            .unwrap()
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
                .begin_with_salt(&dek(v), &kms_key, wrapped, salt, &ctx, Vec::new())
                .unwrap();
            w.write_all(&plaintext).unwrap();
            w.finish().unwrap()
        }
        other => panic!("unknown form {other}"),
    }
}

fn open(v: &Value, envelope: &[u8], ctx: &EncryptionContext) -> Result<Vec<u8>, Error> {
    match v["form"].as_str().unwrap() {
        "record" => {
            let ring = Keyring::decode(&keyset_bytes())?;
            ring.open(envelope, ctx).map(|o| o.plaintext.to_vec())
        }
        _ => {
            let mut input = envelope;
            let header = DocumentHeader::read_from(&mut input)?;
            let provider = all_providers()[0];
            let mut out = Vec::new();
            header
                .with_key(&dek(v), ctx, provider)?
                .reader(input)
                .read_to_end(&mut out)
                .map_err(|e| match e.into_inner().map(|i| i.downcast::<Error>()) {
                    Some(Ok(inner)) => *inner,
                    _ => Error::DecryptionFailed,
                })?;
            Ok(out)
        }
    }
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
        "kms_key": "clinic-documents", "wrapped_key": hex::encode(pattern(85)),
        "context": [["collection", "documents"], ["document", "7"]],
        "salt": hex::encode([salt; 32]), "plaintext": hex::encode(pattern(len)),
    })
}

fn generate() -> Value {
    let rec_ctx = [("collection", "health_records"), ("record", "42")];
    let mut vectors = vec![
        record(
            "record-aes",
            Suite::Aes256Gcm,
            &rec_ctx,
            b"allergies: penicillin",
            0xa1,
        ),
        record(
            "record-chacha",
            Suite::ChaCha20Poly1305,
            &rec_ctx,
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
    for v in &mut vectors {
        v["envelope"] = json!(hex::encode(seal(v, 0)));
    }
    let doc = vectors[3].clone();
    let sealed = hexv(&doc["envelope"]);
    let mut invalid = vec![];
    let mut truncated = doc.clone();
    truncated["name"] = json!("document-last-chunk-dropped");
    truncated["envelope"] = json!(hex::encode(&sealed[..sealed.len() - (10_000 - 8192) - 16]));
    truncated["error"] = json!("DecryptionFailed");
    invalid.push(truncated);
    let mut wrong_ctx = vectors[0].clone();
    wrong_ctx["name"] = json!("record-other-context");
    wrong_ctx["context"] = json!([["collection", "health_records"], ["record", "43"]]);
    wrong_ctx["error"] = json!("DecryptionFailed");
    invalid.push(wrong_ctx);
    let mut bad_commit = vectors[0].clone();
    let mut env = hexv(&bad_commit["envelope"]);
    env[50] ^= 1; // inside the commitment (offset 47..79 for a keyring record)
    bad_commit["name"] = json!("record-commitment-flipped");
    bad_commit["envelope"] = json!(hex::encode(env));
    bad_commit["error"] = json!("CommitmentMismatch");
    invalid.push(bad_commit);
    let mut destroyed = vectors[0].clone();
    let mut env = hexv(&destroyed["envelope"]);
    env[14] = 2; // key id 1 -> 2 (offset 11..15), which the keyset holds destroyed
    destroyed["name"] = json!("record-destroyed-key");
    destroyed["key_id"] = json!(2);
    destroyed["envelope"] = json!(hex::encode(env));
    destroyed["error"] = json!("KeyDestroyed");
    invalid.push(destroyed);
    json!({
        "format": "careconnect envelope v1 (docs/envelope-format.md)",
        "data_key": hex::encode(vector_key()),
        "keyset": hex::encode(keyset_bytes()),
        "valid": vectors,
        "invalid": invalid,
    })
}

fn load() -> Value {
    if std::env::var_os("CARECONNECT_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&generate()).unwrap() + "\n";
        std::fs::write(PATH, text).unwrap();
    }
    serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap()
}

#[test]
fn valid_vectors_reseal_byte_for_byte_and_open() {
    let file = load();
    assert_eq!(hexv(&file["keyset"]), keyset_bytes());
    let valid = file["valid"].as_array().unwrap();
    assert_eq!(valid.len(), 6);
    for v in valid {
        let name = v["name"].as_str().unwrap();
        let stored = hexv(&v["envelope"]);
        for p in 0..all_providers().len() {
            assert!(
                seal(v, p) == stored,
                "{name}: provider {p} sealed other bytes"
            );
        }
        let opened =
            open(v, &stored, &ctx_of(&v["context"])).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(opened, hexv(&v["plaintext"]), "{name}");
    }
}

#[test]
fn invalid_vectors_fail_with_their_error() {
    let file = load();
    for v in file["invalid"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let err = open(v, &hexv(&v["envelope"]), &ctx_of(&v["context"]))
            .err()
            .unwrap_or_else(|| panic!("{name} opened"));
        let want = v["error"].as_str().unwrap();
        assert!(
            format!("{err:?}").starts_with(want),
            "{name}: {err:?}, want {want}"
        );
    }
}

#[test]
fn keyset_vector_decodes() {
    let ring = Keyring::decode(&keyset_bytes()).unwrap();
    assert_eq!(ring.primary(), KeyId::new(1).unwrap());
    let states: Vec<_> = ring.keys().map(|k| (k.id.get(), k.state)).collect();
    assert_eq!(states, [(1, KeyState::Primary), (2, KeyState::Destroyed)]);
}
