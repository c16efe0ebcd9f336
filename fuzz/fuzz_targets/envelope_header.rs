//! The envelope header parser: never panics; what it accepts re-encodes to
//! exactly the bytes it consumed.
#![no_main]

use careconnect_crypto::format::{Header, PREFIX_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.first_chunk::<PREFIX_LEN>() {
        let _ = Header::len_from_prefix(prefix);
    }
    if let Ok((header, len)) = Header::parse(data) {
        let mut again = Vec::new();
        header.write(&mut again).expect("a parsed header re-encodes");
        assert_eq!(again.as_slice(), &data[..len], "parse/write round trip");
    }
});
