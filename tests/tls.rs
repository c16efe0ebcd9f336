//! The TLS configuration: in-process handshakes per suite, mTLS, reload, PEM
//! errors, and real OS clients (`openssl s_client`, `curl`) against a server
//! on 127.0.0.1 built from it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use careconnect::crypto::tls::{
    CertPaths, ClientAuth, ClientTls, DEFAULT_GROUPS, DevPki, Negotiated, SEED_SUITES, ServerTls,
    TlsError, cert_info, load_certified_key,
};
use careconnect_tls_hello::Server;
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, NamedGroup, ProtocolVersion, ServerConfig,
    ServerConnection,
};

fn new_pki() -> (tempfile::TempDir, DevPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::load_or_create(dir.path()).unwrap();
    (dir, pki)
}

/// Drives a handshake in memory. Returns both ends, or the first error.
fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let mut c = ClientConnection::new(client, "localhost".try_into().unwrap())?;
    let mut s = ServerConnection::new(server)?;
    for _ in 0..20 {
        pump(&mut c, &mut s)?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok((c, s));
        }
    }
    Err(rustls::Error::General("handshake did not finish".into()))
}

/// Moves pending records both ways once.
fn pump(c: &mut ClientConnection, s: &mut ServerConnection) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut buf).unwrap();
    }
    if !buf.is_empty() {
        s.read_tls(&mut buf.as_slice()).unwrap();
        if let Err(e) = s.process_new_packets() {
            // Deliver the server's alert so the client fails too.
            let mut alert = Vec::new();
            let _ = s.write_tls(&mut alert);
            let _ = c.read_tls(&mut alert.as_slice());
            let _ = c.process_new_packets();
            return Err(e);
        }
    }
    let mut buf = Vec::new();
    while s.wants_write() {
        s.write_tls(&mut buf).unwrap();
    }
    if !buf.is_empty() {
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets()?;
    }
    Ok(())
}

/// Sends `msg` from client to server over an established pair; returns what arrived.
fn exchange(c: &mut ClientConnection, s: &mut ServerConnection, msg: &[u8]) -> Vec<u8> {
    c.writer().write_all(msg).unwrap();
    pump(c, s).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.reader().read_exact(&mut got).unwrap();
    got
}

fn client_for(pki: &DevPki) -> ClientTls {
    ClientTls::new().trust_pem(&pki.ca_cert).unwrap()
}

#[test]
fn each_seed_suite_negotiates_tls13_alone() {
    let (_d, pki) = new_pki();
    let (server, _r) = ServerTls::new()
        .build_reloading(pki.server.clone())
        .unwrap();
    for suite in SEED_SUITES {
        let client = client_for(&pki).suites(&[suite]).build().unwrap();
        let (c, s) = handshake(client, Arc::clone(&server)).unwrap();
        assert_eq!(s.protocol_version(), Some(ProtocolVersion::TLSv1_3));
        assert_eq!(c.negotiated_cipher_suite().unwrap().suite(), suite);
        assert_eq!(s.alpn_protocol(), Some(&b"h2"[..]));
    }
}

#[test]
fn server_order_wins_and_is_configurable() {
    let (_d, pki) = new_pki();
    let client = client_for(&pki)
        .suites(&[
            CipherSuite::TLS13_AES_128_GCM_SHA256,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            CipherSuite::TLS13_AES_256_GCM_SHA384,
        ])
        .build()
        .unwrap();
    let (default, _r) = ServerTls::new()
        .build_reloading(pki.server.clone())
        .unwrap();
    let (c, _) = handshake(Arc::clone(&client), default).unwrap();
    assert_eq!(
        c.negotiated_cipher_suite().unwrap().suite(),
        CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    let (chacha_first, _r) = ServerTls::new()
        .suites(&[
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            CipherSuite::TLS13_AES_256_GCM_SHA384,
        ])
        .build_reloading(pki.server.clone())
        .unwrap();
    let (c, _) = handshake(client, chacha_first).unwrap();
    assert_eq!(
        c.negotiated_cipher_suite().unwrap().suite(),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    );
}

#[test]
fn suites_outside_the_seed_list_are_refused() {
    let (_d, pki) = new_pki();
    for bad in [
        CipherSuite::TLS13_AES_128_CCM_SHA256,
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ] {
        let err = ServerTls::new()
            .suites(&[bad])
            .build_reloading(pki.server.clone())
            .unwrap_err();
        assert!(matches!(err, TlsError::UnsupportedSuite(_)), "{err}");
    }
    assert!(matches!(
        ServerTls::new().suites(&[]).crypto_provider(),
        Err(TlsError::UnsupportedSuite(_))
    ));
}

#[test]
fn tls12_only_by_opt_in_and_then_ecdhe_aead() {
    let (_d, pki) = new_pki();
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        for c in careconnect::crypto::tls::load_certs(&pki.ca_cert).unwrap() {
            r.add(c).unwrap();
        }
        Arc::new(r)
    };
    let tls12_client = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let (strict, _r) = ServerTls::new()
        .build_reloading(pki.server.clone())
        .unwrap();
    assert!(handshake(Arc::clone(&tls12_client), strict).is_err());
    let (lenient, _r) = ServerTls::new()
        .allow_tls12()
        .build_reloading(pki.server.clone())
        .unwrap();
    // TLS 1.2 only with the extended master secret (RFC 7627), both sides.
    assert!(lenient.require_ems);
    assert!(client_for(&pki).allow_tls12().build().unwrap().require_ems);
    let (c, _) = handshake(tls12_client, lenient).unwrap();
    assert_eq!(c.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    let name = format!("{:?}", c.negotiated_cipher_suite().unwrap().suite());
    assert!(
        name.starts_with("TLS_ECDHE_") && (name.contains("GCM") || name.contains("CHACHA20")),
        "{name}"
    );
}

#[test]
fn mtls_off_optional_required() {
    let (_d, pki) = new_pki();
    let (_d2, other) = new_pki();
    let anon = client_for(&pki).build().unwrap();
    let with_cert = client_for(&pki)
        .client_cert(pki.client.clone())
        .build()
        .unwrap();
    let foreign = client_for(&pki)
        .client_cert(other.client.clone())
        .build()
        .unwrap();

    let (required, _r) = ServerTls::new()
        .client_auth(ClientAuth::required_from_pem(&pki.ca_cert).unwrap())
        .build_reloading(pki.server.clone())
        .unwrap();
    assert!(handshake(Arc::clone(&anon), Arc::clone(&required)).is_err());
    assert!(handshake(Arc::clone(&foreign), Arc::clone(&required)).is_err());
    let (_, s) = handshake(Arc::clone(&with_cert), required).unwrap();
    let peer = cert_info(&s.peer_certificates().unwrap()[0]).unwrap();
    assert!(
        peer.subject.contains("careconnect development client"),
        "{}",
        peer.subject
    );

    let (optional, _r) = ServerTls::new()
        .client_auth(ClientAuth::optional_from_pem(&pki.ca_cert).unwrap())
        .build_reloading(pki.server.clone())
        .unwrap();
    let (_, s) = handshake(anon, Arc::clone(&optional)).unwrap();
    assert!(s.peer_certificates().is_none());
    assert!(handshake(foreign, Arc::clone(&optional)).is_err());
    let (_, s) = handshake(with_cert, optional).unwrap();
    assert!(s.peer_certificates().is_some());
}

/// `pki`'s CA, to sign with, as whoever stole its key could.
fn dev_issuer(pki: &DevPki) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&pki.ca_key).unwrap()).unwrap();
    let ca = careconnect::crypto::tls::load_certs(&pki.ca_cert).unwrap();
    rcgen::Issuer::from_ca_cert_der(&ca[0], ca_key).unwrap()
}

/// A revocation list signed by `pki`'s CA, revoking `serials`, whose next
/// update is `next_update_days` from now (negative: already past).
fn dev_crl(
    pki: &DevPki,
    serials: &[&[u8]],
    next_update_days: i64,
) -> rustls::pki_types::CertificateRevocationListDer<'static> {
    let issuer = dev_issuer(pki);
    let now = time::OffsetDateTime::now_utc();
    rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::days(2),
        next_update: now + time::Duration::days(next_update_days),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(s),
                revocation_time: now - time::Duration::hours(1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap()
    .der()
    .clone()
}

#[test]
fn revoked_client_certificates_are_refused_and_mtls_never_resumes() {
    let (dir, pki) = new_pki();
    let serial = cert_info(&careconnect::crypto::tls::load_certs(&pki.client.cert).unwrap()[0])
        .unwrap()
        .serial;
    let with_cert = client_for(&pki)
        .client_cert(pki.client.clone())
        .build()
        .unwrap();
    let server = |crls| {
        ServerTls::new()
            .client_auth(ClientAuth::required_from_pem(&pki.ca_cert).unwrap())
            .client_crls(crls)
            .build_reloading(pki.server.clone())
            .unwrap()
            .0
    };
    // A current list that revokes someone else: in.
    handshake(
        Arc::clone(&with_cert),
        server(vec![dev_crl(&pki, &[&[0x42]], 7)]),
    )
    .unwrap();
    // Refused, each for its reason: revoked; a list past its next update;
    // only another issuer's list (fails closed).
    let refused = |crls| match handshake(Arc::clone(&with_cert), server(crls)) {
        Err(rustls::Error::InvalidCertificate(e)) => e,
        other => panic!("{:?}", other.map(|_| ())),
    };
    assert_eq!(
        refused(vec![dev_crl(&pki, &[&serial], 7)]),
        rustls::CertificateError::Revoked
    );
    assert!(matches!(
        refused(vec![dev_crl(&pki, &[], -1)]),
        rustls::CertificateError::ExpiredRevocationListContext { .. }
            | rustls::CertificateError::ExpiredRevocationList
    ));
    let stranger = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "another CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![rcgen::KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let stranger = DevPki::paths(dir.path());
        std::fs::write(&stranger.ca_cert, cert.pem()).unwrap();
        std::fs::write(&stranger.ca_key, key.serialize_pem()).unwrap();
        (dir, stranger)
    };
    assert_eq!(
        refused(vec![dev_crl(&stranger.1, &[], 7)]),
        rustls::CertificateError::UnknownRevocationStatus
    );
    // A forged list (another key, under the CA's name) that would clear the
    // revoked certificate is refused, and so is a genuine list with one
    // byte of its signature changed.
    let (_d2, forger) = new_pki();
    let mut tampered = dev_crl(&pki, &[], 7).to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    for bad in [dev_crl(&forger, &[], 7), tampered.into()] {
        assert!(matches!(
            handshake(Arc::clone(&with_cert), server(vec![bad])),
            Err(rustls::Error::InvalidCertRevocationList(
                rustls::CertRevocationListError::BadSignature
            ))
        ));
    }
    // Two lists for one issuer are refused at build: the verifier would
    // consult only the first, and an older one could hide a revocation.
    assert!(matches!(
        ServerTls::new()
            .client_auth(ClientAuth::required_from_pem(&pki.ca_cert).unwrap())
            .client_crls(vec![dev_crl(&pki, &[], 7), dev_crl(&pki, &[&serial], 7)])
            .build_reloading(pki.server.clone()),
        Err(TlsError::Config(_))
    ));

    // Lists load from PEM files, with typed errors.
    let path = dir.path().join("crl.pem");
    let crl = dev_crl(&pki, &[&serial], 7);
    let pem = format!(
        "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &crl)
    );
    std::fs::write(&path, pem).unwrap();
    assert_eq!(
        careconnect::crypto::tls::load_crls(&path).unwrap(),
        vec![crl]
    );
    assert!(matches!(
        careconnect::crypto::tls::load_crls(&pki.ca_cert),
        Err(TlsError::NoCrl(_))
    ));

    // With client certificates no session resumes: a resumed session would
    // keep its identity without the certificate, or its revocation, being
    // checked again.
    let mtls = server(vec![]);
    let (mut c, mut s) = handshake(Arc::clone(&with_cert), Arc::clone(&mtls)).unwrap();
    let _ = exchange(&mut c, &mut s, b"x");
    let (c, _) = handshake(with_cert, mtls).unwrap();
    assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Full));
}

#[test]
fn dev_pki_is_reused_and_private() {
    let (dir, pki) = new_pki();
    let before = std::fs::read(&pki.server.cert).unwrap();
    let again = DevPki::load_or_create(dir.path()).unwrap();
    assert_eq!(std::fs::read(&again.server.cert).unwrap(), before);
    #[cfg(unix)]
    for key in [&pki.ca_key, &pki.server.key, &pki.client.key] {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // A missing leaf is reissued from the same CA; the CA is kept.
    let ca = std::fs::read(&pki.ca_cert).unwrap();
    std::fs::remove_file(&pki.server.key).unwrap();
    let again = DevPki::load_or_create(dir.path()).unwrap();
    assert_eq!(std::fs::read(&again.ca_cert).unwrap(), ca);
    assert_ne!(std::fs::read(&again.server.cert).unwrap(), before);
    let (server, _r) = ServerTls::new()
        .build_reloading(again.server.clone())
        .unwrap();
    handshake(client_for(&again).build().unwrap(), server).unwrap();
}

/// Signs a server certificate for `name` with the key of `pki`'s CA, as
/// whoever stole the key from the data directory could.
fn signed_by_dev_ca(pki: &DevPki, name: &str) -> rustls::pki_types::CertificateDer<'static> {
    let issuer = dev_issuer(pki);
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    params.signed_by(&key, &issuer).unwrap().der().clone()
}

/// A client trusting `pki`'s CA accepts what its key signs for loopback
/// names, and nothing it signs for any other name.
fn vouches_for_loopback_only(pki: &DevPki) {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    for ca in careconnect::crypto::tls::load_certs(&pki.ca_cert).unwrap() {
        roots.add(ca).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(provider()),
    )
    .build()
    .unwrap();
    let verify = |name: &str| {
        verifier.verify_server_cert(
            &signed_by_dev_ca(pki, name),
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
    };
    for name in ["localhost", "127.0.0.1", "127.8.9.10", "::1"] {
        verify(name).unwrap();
    }
    for name in [
        "www.example.com",
        "localhost.example.com",
        "10.0.0.1",
        "128.0.0.1",
        "2001:db8::1",
        "::2",
    ] {
        assert!(
            matches!(
                verify(name),
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Other(_)
                        | rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. }
                ))
            ),
            "{name}: {:?}",
            verify(name)
        );
    }
}

#[test]
fn the_dev_ca_vouches_only_for_loopback_and_is_remade_when_broken() {
    let (dir, pki) = new_pki();
    let ca = careconnect::crypto::tls::load_certs(&pki.ca_cert).unwrap();
    // Whoever trusts the CA, as the demo suggests, trusts it for loopback
    // only: its key cannot vouch for a real site.
    vouches_for_loopback_only(&pki);

    // A CA key that is not the CA certificate's (a crash between the two
    // writes) makes a new CA, whose leaves verify.
    std::fs::copy(&pki.client.key, &pki.ca_key).unwrap();
    std::fs::remove_file(&pki.server.cert).unwrap();
    let healed = DevPki::load_or_create(dir.path()).unwrap();
    assert_ne!(
        careconnect::crypto::tls::load_certs(&healed.ca_cert).unwrap(),
        ca
    );
    let (server, _r) = ServerTls::new()
        .build_reloading(healed.server.clone())
        .unwrap();
    handshake(client_for(&healed).build().unwrap(), server).unwrap();

    // Leaves of an earlier CA are reissued from the CA now on disk.
    let (_other_dir, other) = new_pki();
    std::fs::copy(&other.ca_cert, &pki.ca_cert).unwrap();
    std::fs::copy(&other.ca_key, &pki.ca_key).unwrap();
    let before = std::fs::read(&pki.server.cert).unwrap();
    let again = DevPki::load_or_create(dir.path()).unwrap();
    assert_ne!(std::fs::read(&again.server.cert).unwrap(), before);
    let (server, _r) = ServerTls::new()
        .client_auth(ClientAuth::required_from_pem(&again.ca_cert).unwrap())
        .build_reloading(again.server.clone())
        .unwrap();
    handshake(
        client_for(&again)
            .client_cert(again.client.clone())
            .build()
            .unwrap(),
        server,
    )
    .unwrap();

    // A CA without the loopback limit (made by an earlier version) is replaced.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let open_ca = params.self_signed(&key).unwrap();
    std::fs::write(&pki.ca_cert, open_ca.pem()).unwrap();
    std::fs::write(&pki.ca_key, key.serialize_pem()).unwrap();
    let replaced = DevPki::load_or_create(dir.path()).unwrap();
    assert_ne!(
        std::fs::read_to_string(&replaced.ca_cert).unwrap(),
        open_ca.pem()
    );
    vouches_for_loopback_only(&replaced);
}

#[test]
fn reload_serves_new_certificate_and_keeps_old_connections() {
    let (dir, pki) = new_pki();
    let live = CertPaths {
        cert: dir.path().join("live.pem"),
        key: dir.path().join("live.key"),
    };
    std::fs::copy(&pki.server.cert, &live.cert).unwrap();
    std::fs::copy(&pki.server.key, &live.key).unwrap();
    let (server, resolver) = ServerTls::new().build_reloading(live.clone()).unwrap();
    // A fresh client config per connection: a resumed session would report
    // the certificate of the session it resumes, not what the server now serves.
    let fresh = || client_for(&pki).build().unwrap();
    let serial_seen = |c: &ClientConnection| {
        cert_info(&c.peer_certificates().unwrap()[0])
            .unwrap()
            .serial
    };

    let (mut c1, mut s1) = handshake(fresh(), Arc::clone(&server)).unwrap();
    let old = resolver.current().unwrap().serial;
    assert_eq!(serial_seen(&c1), old);

    pki.issue_server_cert(&live).unwrap();
    assert_eq!(
        resolver
            .reload_if_changed()
            .unwrap()
            .map(|i| !i.serial.is_empty()),
        Some(true)
    );
    let new = resolver.current().unwrap().serial;
    assert_ne!(new, old);
    let (c2, _s2) = handshake(fresh(), Arc::clone(&server)).unwrap();
    assert_eq!(serial_seen(&c2), new);
    // The connection made before the reload still works, on the old certificate.
    assert_eq!(exchange(&mut c1, &mut s1, b"still here"), b"still here");
    assert_eq!(serial_seen(&c1), old);

    // A corrupt replacement is refused and the new certificate stays in service.
    std::fs::write(
        &live.cert,
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(resolver.reload().is_err());
    assert_eq!(resolver.current().unwrap().serial, new);
    let (c3, _s3) = handshake(fresh(), Arc::clone(&server)).unwrap();
    assert_eq!(serial_seen(&c3), new);
    // A key that does not match is refused too.
    pki.issue_server_cert(&live).unwrap();
    std::fs::copy(&pki.client.key, &live.key).unwrap();
    assert!(matches!(
        resolver.reload(),
        Err(TlsError::KeyMismatch { .. })
    ));
    assert_eq!(resolver.current().unwrap().serial, new);
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[test]
fn every_pem_error_is_typed() {
    let (dir, pki) = new_pki();
    let d = dir.path();
    let p = |name: &str| d.join(name);
    let paths = |cert: &Path, key: &Path| CertPaths {
        cert: cert.to_owned(),
        key: key.to_owned(),
    };
    let load = |cert: &Path, key: &Path| load_certified_key(&paths(cert, key), &provider());

    // Missing file.
    assert!(matches!(
        load(&p("nope.pem"), &pki.server.key),
        Err(TlsError::Read { .. })
    ));
    assert!(matches!(
        load(&pki.server.cert, &p("nope.key")),
        Err(TlsError::Read { .. })
    ));
    // No certificate in the file (a key file given as the certificate).
    assert!(matches!(
        load(&pki.server.key, &pki.server.key),
        Err(TlsError::NoCertificate(_))
    ));
    // No private key in the file.
    assert!(matches!(
        load(&pki.server.cert, &pki.server.cert),
        Err(TlsError::NoPrivateKey(_))
    ));
    // Malformed PEM.
    std::fs::write(
        p("bad.pem"),
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(matches!(
        load(&p("bad.pem"), &pki.server.key),
        Err(TlsError::Pem { .. })
    ));
    // Key that does not match the certificate.
    assert!(matches!(
        load(&pki.server.cert, &pki.client.key),
        Err(TlsError::KeyMismatch { .. })
    ));
    // Unsupported key type: Ed448 (ring signs with ECDSA P-256/P-384, Ed25519, RSA).
    let ed448 = p("ed448.key");
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ED448", "-out"])
        .arg(&ed448)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey");
    assert!(matches!(
        load(&pki.server.cert, &ed448),
        Err(TlsError::UnsupportedKey { .. })
    ));
    // Expired certificate (valid signature, past notAfter).
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(p("old.pem"), cert.pem()).unwrap();
    std::fs::write(p("old.key"), key.serialize_pem()).unwrap();
    assert!(matches!(
        load(&p("old.pem"), &p("old.key")),
        Err(TlsError::Expired { .. })
    ));
    // Not yet valid.
    params.not_before = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    std::fs::write(p("new.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
    assert!(matches!(
        load(&p("new.pem"), &p("old.key")),
        Err(TlsError::NotYetValid { .. })
    ));
    // Errors name files, never key bytes: not for a key that does not
    // match, nor for one whose PEM or DER is damaged, where the error
    // carries the parser's words.
    let msg = load(&pki.server.cert, &pki.client.key)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("client.key") && !msg.contains("BEGIN"),
        "{msg}"
    );
    use base64::{Engine, engine::general_purpose::STANDARD};
    let pem = std::fs::read_to_string(&pki.server.key).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let lines: Vec<&str> = pem.lines().collect();
    let (head, tail) = (lines[0], lines[lines.len() - 1]);
    // Bad base64 in the middle of the key; then good base64 of a damaged key.
    let bad_b64 = format!("{head}\n{}!{}\n{tail}\n", &body[..40], &body[41..]);
    let mut der = STANDARD.decode(&body).unwrap();
    der[20] ^= 0xff;
    let bad_der = format!("{head}\n{}\n{tail}\n", STANDARD.encode(&der));
    for (name, text) in [("b64.key", bad_b64), ("der.key", bad_der)] {
        std::fs::write(p(name), &text).unwrap();
        let err = load(&pki.server.cert, &p(name)).unwrap_err();
        assert!(
            matches!(err, TlsError::Pem { .. } | TlsError::UnsupportedKey { .. }),
            "{name}: {err:?}"
        );
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(shown.contains(name), "{shown}");
            for chunk in body.as_bytes().chunks(8).chain(text.as_bytes().chunks(8)) {
                let chunk = std::str::from_utf8(chunk).unwrap();
                if chunk.len() == 8 && !chunk.contains(['\n', '-', ' ']) {
                    assert!(!shown.contains(chunk), "{name}: key text in {shown}");
                }
            }
        }
    }
}

// ---- real clients from the OS -------------------------------------------

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
        || Command::new(name)
            .arg("version")
            .stdout(Stdio::null())
            .status()
            .is_ok()
}

/// `openssl s_client` with `args`; returns (success, combined output).
fn s_client(addr: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (
        out.status.success() && text.contains("Verify return code: 0"),
        text,
    )
}

fn curl(url: &str, ca: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn openssl_and_curl_against_the_server() {
    assert!(
        tool("openssl") && tool("curl"),
        "openssl and curl are installed by scripts/test.sh"
    );
    let (_d, pki) = new_pki();
    let (config, _r) = ServerTls::new()
        .alpn(careconnect_tls_hello::ALPN)
        .build_reloading(pki.server.clone())
        .unwrap();
    let server = Server::start("127.0.0.1:0", config).unwrap();
    let addr = server.addr();
    let ca = pki.ca_cert.to_str().unwrap();

    // A classical-only client (as OpenSSL 3.0 is; a later OpenSSL is told to
    // be one) still connects, with X25519.
    let (ok, out) = s_client(addr, &["-tls1_3", "-groups", "X25519:P-256", "-CAfile", ca]);
    assert!(ok && out.contains("TLSv1.3"), "{out}");
    assert!(out.contains("Server Temp Key: X25519"), "{out}");
    let (ok, out) = s_client(addr, &["-tls1_3", "-groups", "P-256", "-CAfile", ca]);
    assert!(
        ok && out.contains("Server Temp Key: ECDH, prime256v1"),
        "{out}"
    );
    let (ok, out) = s_client(addr, &["-tls1_2", "-CAfile", ca]);
    assert!(!ok, "TLS 1.2 connected: {out}");
    let (ok, out) = s_client(
        addr,
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_AES_128_CCM_SHA256",
            "-CAfile",
            ca,
        ],
    );
    assert!(!ok, "CCM-only client connected: {out}");
    for suite in [
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_AES_128_GCM_SHA256",
    ] {
        let (ok, out) = s_client(addr, &["-tls1_3", "-ciphersuites", suite, "-CAfile", ca]);
        assert!(ok && out.contains(suite), "{suite}: {out}");
    }

    let url = format!("https://localhost:{}/", addr.port());
    let (ok, out) = curl(&url, &pki.ca_cert, &["--curves", "X25519:P-256"]);
    assert!(ok && out.starts_with("ok TLSv1_3"), "{out}");
    assert!(out.contains("group=X25519 "), "{out}");
    let (ok, out) = curl(
        &format!("https://127.0.0.1:{}/", addr.port()),
        &pki.ca_cert,
        &[],
    );
    assert!(ok, "{out}");
    // A client that does not trust the dev CA refuses the server.
    let (_d2, other) = new_pki();
    assert!(!curl(&url, &other.ca_cert, &[]).0);
}

#[test]
fn mtls_with_curl() {
    assert!(tool("curl"), "curl is installed by scripts/test.sh");
    let (_d, pki) = new_pki();
    let (_d2, other) = new_pki();
    let (config, _r) = ServerTls::new()
        .alpn(careconnect_tls_hello::ALPN)
        .client_auth(ClientAuth::required_from_pem(&pki.ca_cert).unwrap())
        .build_reloading(pki.server.clone())
        .unwrap();
    let server = Server::start("127.0.0.1:0", config).unwrap();
    let url = format!("https://localhost:{}/", server.addr().port());
    let (ok, out) = curl(&url, &pki.ca_cert, &[]);
    assert!(!ok, "no client certificate, yet: {out}");
    let c = |p: &CertPaths| {
        vec![
            p.cert.to_str().unwrap().to_owned(),
            p.key.to_str().unwrap().to_owned(),
        ]
    };
    let mine = c(&pki.client);
    let (ok, out) = curl(&url, &pki.ca_cert, &["--cert", &mine[0], "--key", &mine[1]]);
    assert!(
        ok && out.contains("client=CN=careconnect development client"),
        "{out}"
    );
    let theirs = c(&other.client);
    let (ok, out) = curl(
        &url,
        &pki.ca_cert,
        &["--cert", &theirs[0], "--key", &theirs[1]],
    );
    assert!(!ok, "foreign client certificate accepted: {out}");
}

#[test]
fn groups_outside_the_list_are_refused() {
    let (_d, pki) = new_pki();
    for bad in [
        NamedGroup::MLKEM768,
        NamedGroup::FFDHE2048,
        NamedGroup::secp521r1,
    ] {
        let err = ServerTls::new()
            .key_exchange(&[bad])
            .build_reloading(pki.server.clone())
            .unwrap_err();
        assert!(matches!(err, TlsError::UnsupportedGroup(_)), "{err}");
        let err = client_for(&pki).key_exchange(&[bad]).build().unwrap_err();
        assert!(matches!(err, TlsError::UnsupportedGroup(_)), "{err}");
    }
    assert!(matches!(
        ServerTls::new().key_exchange(&[]).crypto_provider(),
        Err(TlsError::UnsupportedGroup(_))
    ));
    // Without the aws-lc feature there is no ML-KEM to offer: naming the
    // hybrid is an error, not a silent classical fallback.
    if !DEFAULT_GROUPS.contains(&NamedGroup::X25519MLKEM768) {
        assert!(matches!(
            ServerTls::new()
                .key_exchange(&[NamedGroup::X25519MLKEM768])
                .crypto_provider(),
            Err(TlsError::UnsupportedGroup(_))
        ));
    }
}

#[test]
fn classical_groups_negotiate_and_are_reported() {
    let (_d, pki) = new_pki();
    let (server, _r) = ServerTls::new()
        .build_reloading(pki.server.clone())
        .unwrap();
    for g in [
        NamedGroup::X25519,
        NamedGroup::secp256r1,
        NamedGroup::secp384r1,
    ] {
        let client = client_for(&pki).key_exchange(&[g]).build().unwrap();
        let (c, s) = handshake(client, Arc::clone(&server)).unwrap();
        let n = Negotiated::of(&s).unwrap();
        assert_eq!(Negotiated::of(&c), Some(n));
        assert_eq!(n.group, Some(g));
        assert!(!n.is_post_quantum());
        assert_eq!(
            n.to_string(),
            format!("TLS 1.3, {g:?}, TLS13_AES_256_GCM_SHA384")
        );
    }
    // Not before the handshake.
    let s = ServerConnection::new(server).unwrap();
    assert_eq!(Negotiated::of(&s), None);
}

/// Issue 19: the hybrid X25519MLKEM768 is preferred, classical clients still connect.
#[cfg(feature = "aws-lc")]
#[test]
fn post_quantum_hybrid_first_with_classical_fallback() {
    let (_d, pki) = new_pki();
    let (server, _r) = ServerTls::new()
        .build_reloading(pki.server.clone())
        .unwrap();
    // Our own client, defaults on both ends: the hybrid.
    let (c, s) = handshake(client_for(&pki).build().unwrap(), Arc::clone(&server)).unwrap();
    let n = Negotiated::of(&s).unwrap();
    assert_eq!(n.group, Some(NamedGroup::X25519MLKEM768));
    assert!(n.is_post_quantum());
    assert_eq!(
        n.to_string(),
        "TLS 1.3, X25519MLKEM768, TLS13_AES_256_GCM_SHA384"
    );
    assert_eq!(Negotiated::of(&c), Some(n));

    // A plain rustls client (not our builder) offering only the hybrid.
    let mut only_pq = rustls::crypto::aws_lc_rs::default_provider();
    only_pq.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768];
    let mut roots = rustls::RootCertStore::empty();
    for cert in careconnect::crypto::tls::load_certs(&pki.ca_cert).unwrap() {
        roots.add(cert).unwrap();
    }
    let plain = ClientConfig::builder_with_provider(Arc::new(only_pq))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (c, s) = handshake(Arc::new(plain), Arc::clone(&server)).unwrap();
    assert_eq!(
        c.negotiated_key_exchange_group().unwrap().name(),
        NamedGroup::X25519MLKEM768
    );
    assert!(Negotiated::of(&s).unwrap().is_post_quantum());

    // A server that demands the hybrid refuses a classical-only client, and
    // a hybrid-only client cannot talk to a classical-only server.
    let (pq_only, _r2) = ServerTls::new()
        .key_exchange(&[NamedGroup::X25519MLKEM768])
        .build_reloading(pki.server.clone())
        .unwrap();
    let classical = client_for(&pki)
        .key_exchange(&[NamedGroup::X25519])
        .build()
        .unwrap();
    assert!(handshake(Arc::clone(&classical), pq_only).is_err());
    let (classical_server, _r3) = ServerTls::new()
        .key_exchange(&[NamedGroup::X25519, NamedGroup::secp256r1])
        .build_reloading(pki.server.clone())
        .unwrap();
    let hybrid_only = client_for(&pki)
        .key_exchange(&[NamedGroup::X25519MLKEM768])
        .build()
        .unwrap();
    assert!(handshake(hybrid_only, classical_server).is_err());

    // Resumption keeps the hybrid (psk_dhe_ke: a fresh key exchange each time).
    let client = client_for(&pki).build().unwrap();
    let (mut c, mut s) = handshake(Arc::clone(&client), Arc::clone(&server)).unwrap();
    let _ = exchange(&mut c, &mut s, b"x");
    let (c, s) = handshake(client, server).unwrap();
    assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    assert!(Negotiated::of(&s).unwrap().is_post_quantum());
}

/// Issue 19, FIPS: AWS-LC's validated module, approved suites and groups only.
#[cfg(feature = "fips")]
#[test]
fn fips_mode_uses_only_approved_suites_and_groups() {
    use careconnect::crypto::tls::FIPS_SUITES;
    let (_d, pki) = new_pki();
    let (server, _r) = ServerTls::new()
        .fips()
        .build_reloading(pki.server.clone())
        .unwrap();
    assert!(server.fips());
    // A non-FIPS build of the same list is not FIPS (ChaCha20, X25519).
    let (plain, _r2) = ServerTls::new()
        .build_reloading(pki.server.clone())
        .unwrap();
    assert!(!plain.fips());
    let client = client_for(&pki).fips().build().unwrap();
    assert!(client.fips());
    let (c, s) = handshake(client, Arc::clone(&server)).unwrap();
    assert!(c.fips() && s.fips());
    let n = Negotiated::of(&s).unwrap();
    assert_eq!(n.group, Some(NamedGroup::X25519MLKEM768));
    assert!(FIPS_SUITES.contains(&n.suite));
    // A classical client still gets in, over P-256; a ChaCha-only or
    // X25519-only client does not.
    let p256 = client_for(&pki)
        .key_exchange(&[NamedGroup::secp256r1])
        .build()
        .unwrap();
    let (_, s) = handshake(p256, Arc::clone(&server)).unwrap();
    assert_eq!(
        Negotiated::of(&s).unwrap().group,
        Some(NamedGroup::secp256r1)
    );
    for client in [
        client_for(&pki)
            .suites(&[CipherSuite::TLS13_CHACHA20_POLY1305_SHA256])
            .build()
            .unwrap(),
        client_for(&pki)
            .key_exchange(&[NamedGroup::X25519])
            .build()
            .unwrap(),
    ] {
        assert!(handshake(client, Arc::clone(&server)).is_err());
    }
    // Widening a FIPS configuration is refused at build time.
    for widened in [
        ServerTls::new()
            .fips()
            .suites(&[CipherSuite::TLS13_CHACHA20_POLY1305_SHA256]),
        ServerTls::new().fips().key_exchange(&[NamedGroup::X25519]),
    ] {
        let err = widened.build_reloading(pki.server.clone()).unwrap_err();
        assert!(matches!(err, TlsError::NotFips(_)), "{err}");
    }
    // TLS 1.2 would add ChaCha20 suites: refused, not silently FIPS-less.
    assert!(matches!(
        ServerTls::new()
            .fips()
            .allow_tls12()
            .build_reloading(pki.server.clone()),
        Err(TlsError::NotFips(_))
    ));
    assert!(careconnect::crypto::provider::in_fips_mode());
    // The envelope's AEAD runs in the module too.
    for suite in careconnect::crypto::Suite::ALL {
        assert_eq!(
            careconnect::crypto::provider::fastest()
                .chosen(suite)
                .name(),
            "aws-lc"
        );
    }
}

#[test]
fn sessions_resume() {
    let (_d, pki) = new_pki();
    let (server, _r) = ServerTls::new()
        .build_reloading(pki.server.clone())
        .unwrap();
    let client = client_for(&pki).build().unwrap();
    let (c, _) = handshake(Arc::clone(&client), Arc::clone(&server)).unwrap();
    assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Full));
    let (mut c, mut s) = handshake(Arc::clone(&client), Arc::clone(&server)).unwrap();
    // The ticket arrives after the first handshake; finish delivering it.
    let _ = exchange(&mut c, &mut s, b"x");
    let (c, _) = handshake(client, server).unwrap();
    assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
}

#[test]
fn watcher_picks_up_replaced_files() {
    let (dir, pki) = new_pki();
    let live = CertPaths {
        cert: dir.path().join("w.pem"),
        key: dir.path().join("w.key"),
    };
    pki.issue_server_cert(&live).unwrap();
    let (_server, resolver) = ServerTls::new().build_reloading(live.clone()).unwrap();
    let first = resolver.current().unwrap().serial;
    let watcher = resolver.spawn_watcher(std::time::Duration::from_millis(20));
    // mtime granularity: make sure the replacement looks newer.
    std::thread::sleep(std::time::Duration::from_millis(20));
    pki.issue_server_cert(&live).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while resolver.current().unwrap().serial == first {
        assert!(
            std::time::Instant::now() < deadline,
            "watcher did not reload"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The watcher thread ends once the resolver is gone.
    drop(_server);
    drop(resolver);
    watcher.join().unwrap();
}

#[test]
fn a_replacement_that_keeps_the_old_modification_time_is_noticed() {
    let (dir, pki) = new_pki();
    let live = CertPaths {
        cert: dir.path().join("p.pem"),
        key: dir.path().join("p.key"),
    };
    pki.issue_server_cert(&live).unwrap();
    let (_server, resolver) = ServerTls::new().build_reloading(live.clone()).unwrap();
    let first = resolver.current().unwrap().serial;
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (cert_t, key_t) = (mtime(&live.cert), mtime(&live.key));
    assert_eq!(resolver.reload_if_changed().unwrap(), None);
    // As `cp -p` or `rsync -t` would leave them: new files, old times.
    pki.issue_server_cert(&live).unwrap();
    for (p, t) in [(&live.cert, cert_t), (&live.key, key_t)] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert_eq!(mtime(p), t);
    }
    let info = resolver.reload_if_changed().unwrap().expect("not noticed");
    assert_ne!(info.serial, first);
    assert_eq!(resolver.current().unwrap().serial, info.serial);
}
