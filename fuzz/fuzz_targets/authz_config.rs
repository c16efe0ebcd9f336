//! The role-mapping configuration (TOML) and session cookie parsers (a bare
//! value and a whole `Cookie` header): typed errors, never a panic, on any
//! bytes; an id found in a header is exactly the one its value parses to.
#![no_main]

use careconnect_authz::mapper::RoleMapper;
use careconnect_authz::session::SessionId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RoleMapper::from_toml(text);
        let _ = SessionId::parse(text);
        if let Some(id) = SessionId::from_cookie_header(text) {
            let again = format!("__Host-cc_session={}", id.to_cookie_value().as_str());
            assert_eq!(SessionId::from_cookie_header(&again), Some(id));
        }
    }
});
