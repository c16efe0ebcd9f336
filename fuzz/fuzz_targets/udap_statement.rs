//! The UDAP registration parser and validator: any body, or any claims
//! signed by a genuine member of the community (so the fuzzer gets past
//! the signature into the claim and metadata rules). Typed errors, never a
//! panic; whatever is accepted obeys the IG's rules.
#![no_main]

use std::sync::OnceLock;

use careconnect_authz::udap::dev::{DevCommunity, KeyKind};
use careconnect_authz::udap::{GrantType, Signer, TrustCommunity, check_registration};
use libfuzzer_sys::fuzz_target;

/// The fuzzer's clock (2027-01-15): seeds carry `iat` near it.
const NOW: u64 = 1_800_000_000;
const REG: &str = "https://fhir.example/register";
const APP: &str = "https://app.example/udap";

struct Fixture {
    trust: TrustCommunity,
    signer: Signer,
    scopes: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let at = |y| time::Date::from_calendar_date(y, time::Month::January, 1).expect("date").midnight().assume_utc();
        // Fixed validity around the fixed clock, whenever the fuzzer runs.
        let dev = DevCommunity::generate_between("urn:fuzz:community", at(2020), at(2040)).expect("community");
        let leaf = dev.issue_between(APP, KeyKind::P256, at(2020), at(2040)).expect("leaf");
        Fixture {
            trust: TrustCommunity::new(dev.name(), dev.anchor_pem().as_bytes()).expect("trust"),
            signer: Signer::from_pem(&leaf.chain_pem, leaf.key_pem.as_bytes()).expect("signer"),
            scopes: vec!["system/Patient.read".into(), "system/Observation.read".into()],
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else { return };
    let body = match mode % 2 {
        0 => rest.to_vec(),
        _ => {
            let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else { return };
            let Ok(jwt) = f.signer.sign(&claims) else { return };
            serde_json::json!({ "software_statement": jwt, "udap": "1" }).to_string().into_bytes()
        }
    };
    match check_registration(&body, &f.trust, REG, &f.scopes, NOW) {
        Ok(m) if m.grant_types.is_empty() => {}
        Ok(m) => {
            // Only client_credentials is offered; its rules held.
            assert_eq!(m.grant_types, vec![GrantType::ClientCredentials]);
            assert!(m.redirect_uris.is_empty() && m.response_types.is_empty());
            assert!(m.contacts.iter().any(|c| c.starts_with("mailto:")));
            assert!(!m.scopes.is_empty() && m.scopes.iter().all(|s| f.scopes.contains(s)));
            assert!(!m.client_name.is_empty());
        }
        Err(e) => {
            assert!(e.status() == 400, "{e}");
            assert!(!e.description().is_empty());
        }
    }
});
