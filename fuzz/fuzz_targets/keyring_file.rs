//! The keyring (keyset) parser and the local KMS key-table parser: never
//! panic, whatever the bytes.
#![no_main]

use careconnect_crypto::Keyring;
use careconnect_crypto::kms::decode_table_for_fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ring) = Keyring::decode(data) {
        let _ = ring.primary();
    }
    let _ = decode_table_for_fuzzing(data);
});
