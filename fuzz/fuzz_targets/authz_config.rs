//! The role-mapping configuration (TOML) and session cookie parsers: typed
//! errors, never a panic, on any bytes.
#![no_main]

use careconnect_authz::mapper::RoleMapper;
use careconnect_authz::session::SessionId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RoleMapper::from_toml(text);
        let _ = SessionId::parse(text);
    }
});
