//! The web demo's own parsers on any bytes: every form a browser posts
//! (decoded into its typed struct, then the fields the web layer reads: a
//! booking's instant, a share's expiry, roles, a care operation, an
//! erasure's confirmation) and the settings file. Typed errors, never a
//! panic; a share never ends before it starts; an erasure confirms only the
//! patient typed twice.
#![no_main]

use careconnect_web_demo::forms::{self, MAX_SHARE_DAYS};
use careconnect_web_demo::settings::{Settings, SettingsFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((which, body)) = data.split_first() else {
        return;
    };
    match which % 12 {
        0 => {
            let _ = forms::decode::<forms::Token>(body);
            let _ = forms::decode::<forms::Empty>(body);
        }
        1 => {
            if let Ok(b) = forms::decode::<forms::Booking>(body) {
                let _ = b.starts_at();
            }
        }
        2 => {
            if let Ok(s) = forms::decode::<forms::Share>(body) {
                let now = 1_800_000_000;
                if let Ok(Some(end)) = s.expires_at(now) {
                    assert!(end > now && end <= now + MAX_SHARE_DAYS * 86_400);
                }
            }
        }
        3 => {
            let _ = forms::decode::<forms::Revoke>(body);
        }
        4 => {
            let _ = forms::decode::<forms::NewNote>(body);
        }
        5 => {
            let _ = forms::decode::<forms::BreakGlass>(body);
        }
        6 => {
            let _ = forms::decode::<forms::NewPrescription>(body);
        }
        7 => {
            if let Ok(p) = forms::decode::<forms::SetPerson>(body) {
                let _ = p.role_set();
            }
        }
        8 => {
            if let Ok(c) = forms::decode::<forms::Care>(body) {
                if c.assigns().is_ok() {
                    assert!(c.op == "assign" || c.op == "revoke");
                }
            }
        }
        9 => {
            if let Ok(e) = forms::decode::<forms::Erase>(body) {
                if let Ok(patient) = e.confirmed() {
                    assert_eq!(patient, e.confirm.trim());
                }
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(body) else {
                return;
            };
            // Role rules name a file to read: only settings without one go
            // on (the fuzzer must not read whatever path it makes up).
            if let Ok(file) = toml::from_str::<SettingsFile>(text) {
                if file.role_rules.is_none() {
                    if let Ok(settings) = Settings::from_file(text, std::path::Path::new("/nonexistent")) {
                        let _ = settings.validate();
                    }
                }
            }
        }
    }
});
