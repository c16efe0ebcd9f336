//! What a UDAP token request costs, against the one operation nobody can
//! skip: verifying the assertion's signature (`signature`: with
//! `jsonwebtoken` on RustCrypto, as the server first did). `authenticate`
//! is the whole check as the server does it now: the signature (`ring`),
//! the chain (webpki, with a CRL loaded), the client lookup and the `jti`
//! insert (a sealed row); `register` adds the statement's rules and the
//! client row. ES256 and RS256 (what the IG requires), in memory.
//!
//! `cargo bench --features udap --bench udap` (criterion prints the time
//! per operation; the ratio to `signature` is the overhead).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot set up should stop

use std::sync::Arc;

use careconnect::authz::session::{Clock, SystemClock};
use careconnect::authz::udap::dev::{DevCommunity, IssuedCert, KeyKind};
use careconnect::authz::udap::{
    B2bExtension, ClientRequest, ServerCommunity, TrustCommunity, UdapClient, UdapConfig,
    UdapServer,
};
use careconnect::crypto::Keyring;
use careconnect::storage::MemoryStore;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const BASE: &str = "https://fhir.bench";
const REG: &str = "https://fhir.bench/register";
const TOKEN: &str = "https://fhir.bench/token";
const APP: &str = "https://app.bench/udap";

fn form(c: &UdapClient, id: &str) -> Vec<(String, String)> {
    let b2b = B2bExtension::new("https://app.bench/org", vec!["TREAT".into()]);
    c.token_request(id, TOKEN, &b2b, None, SystemClock.now())
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn bench(cr: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dev = DevCommunity::generate("urn:bench").unwrap();
    let server_cert = dev.issue(BASE, KeyKind::Rsa2048, 30).unwrap();
    let trust = Arc::new(
        TrustCommunity::new(dev.name(), dev.anchor_pem().as_bytes())
            .unwrap()
            .with_intermediates(dev.intermediate_pem().as_bytes())
            .unwrap(),
    );
    trust
        .set_crls(&[dev.crl(&[1, 2, 3]).unwrap().into_bytes()])
        .unwrap();
    let ours = ServerCommunity::new(
        trust,
        &server_cert.chain_pem,
        server_cert.key_pem.as_bytes(),
    )
    .unwrap();
    let config = UdapConfig {
        base_url: BASE.into(),
        registration_endpoint: REG.into(),
        token_endpoint: TOKEN.into(),
        scopes: vec!["system/Patient.read".into()],
        token_lifetime: 600,
    };
    let server = UdapServer::new(
        config,
        vec![ours],
        Arc::new(MemoryStore::new()),
        Keyring::generate(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let mut g = cr.benchmark_group("udap");
    for (alg, kind) in [("ES256", KeyKind::P256), ("RS256", KeyKind::Rsa2048)] {
        let cert: IssuedCert = dev.issue(APP, kind, 30).unwrap();
        let client = UdapClient::from_pem(&cert.chain_pem, cert.key_pem.as_bytes(), APP).unwrap();
        let req = ClientRequest::b2b("Bench", "mailto:b@app.bench", &["system/Patient.read"]);
        let reg = rt
            .block_on(
                server.register(
                    client
                        .registration_request(REG, &req, SystemClock.now())
                        .unwrap()
                        .to_string()
                        .as_bytes(),
                ),
            )
            .unwrap();
        let id = reg.client.client_id;
        // The baseline: the assertion's signature alone, with the leaf key.
        let leaf = jsonwebtoken::decode_header(
            client
                .client_assertion(&id, TOKEN, None, SystemClock.now())
                .unwrap(),
        )
        .unwrap();
        let der = leaf.x5c_der().unwrap().unwrap().remove(0);
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        let spki = x509.public_key().subject_public_key.data.to_vec();
        let (key, jalg) = match kind {
            KeyKind::Rsa2048 => (
                jsonwebtoken::DecodingKey::from_rsa_der(&spki),
                jsonwebtoken::Algorithm::RS256,
            ),
            _ => (
                jsonwebtoken::DecodingKey::from_ec_der(&spki),
                jsonwebtoken::Algorithm::ES256,
            ),
        };
        let mut v = jsonwebtoken::Validation::new(jalg);
        v.validate_aud = false;
        g.bench_function(format!("signature/{alg}"), |b| {
            b.iter_batched(
                || {
                    client
                        .client_assertion(&id, TOKEN, None, SystemClock.now())
                        .unwrap()
                },
                |jwt| jsonwebtoken::decode::<serde_json::Value>(&jwt, &key, &v).unwrap(),
                BatchSize::SmallInput,
            );
        });
        g.bench_function(format!("authenticate/{alg}"), |b| {
            b.iter_batched(
                || form(&client, &id),
                |f| rt.block_on(server.authenticate(&f)).unwrap(),
                BatchSize::SmallInput,
            );
        });
        g.bench_function(format!("register/{alg}"), |b| {
            b.iter_batched(
                || {
                    client
                        .registration_request(REG, &req, SystemClock.now())
                        .unwrap()
                        .to_string()
                },
                |body| rt.block_on(server.register(body.as_bytes())).unwrap(),
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
