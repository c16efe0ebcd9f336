//! PEM certificate and key parsing and the X.509 facts the TLS module reads
//! (serial, subject, validity): never panic on any bytes.
#![no_main]

use std::path::Path;

use careconnect_crypto::tls::{cert_info, certs_from_pem, key_from_pem};
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    let origin = Path::new("fuzz");
    if let Ok(certs) = certs_from_pem(data, origin) {
        for c in &certs {
            let _ = cert_info(c);
        }
    }
    let _ = key_from_pem(data, origin);
    // Raw DER straight into the X.509 parser as well.
    let _ = cert_info(&CertificateDer::from(data.to_vec()));
});
