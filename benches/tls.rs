//! Full TLS 1.3 handshakes per second, in process (client and server in
//! memory, no sockets), per suite and key-exchange group: fresh each time,
//! and resumed. X25519, and the post-quantum hybrid X25519MLKEM768 when the
//! `aws-lc` feature provides it.
//!
//! `cargo bench --features aws-lc --bench tls` (criterion prints the time per
//! handshake; `scripts/bench-tls.sh` turns it into handshakes per second).

use std::sync::Arc;

use careconnect::crypto::tls::{ClientTls, DEFAULT_GROUPS, DevPki, SEED_SUITES, ServerTls};
use criterion::{Criterion, criterion_group, criterion_main};
use rustls::client::Resumption;
use rustls::{ClientConfig, ClientConnection, NamedGroup, ServerConfig, ServerConnection};

fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> bool {
    let (Ok(mut c), Ok(mut s)) = (
        ClientConnection::new(
            Arc::clone(client),
            "localhost".try_into().unwrap_or_else(|_| unreachable!()),
        ),
        ServerConnection::new(Arc::clone(server)),
    ) else {
        return false;
    };
    let mut buf = Vec::with_capacity(8192);
    for _ in 0..10 {
        buf.clear();
        while c.wants_write() {
            if c.write_tls(&mut buf).is_err() {
                return false;
            }
        }
        if !buf.is_empty()
            && (s.read_tls(&mut buf.as_slice()).is_err() || s.process_new_packets().is_err())
        {
            return false;
        }
        buf.clear();
        while s.wants_write() {
            if s.write_tls(&mut buf).is_err() {
                return false;
            }
        }
        if !buf.is_empty()
            && (c.read_tls(&mut buf.as_slice()).is_err() || c.process_new_packets().is_err())
        {
            return false;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return true;
        }
    }
    false
}

fn bench(c: &mut Criterion) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(pki) = DevPki::load_or_create(dir.path()) else {
        return;
    };
    let Ok((server, _resolver)) = ServerTls::new().build_reloading(pki.server.clone()) else {
        return;
    };
    let mut g = c.benchmark_group("tls13-handshake");
    let groups = [NamedGroup::X25519, NamedGroup::X25519MLKEM768]
        .into_iter()
        .filter(|g| DEFAULT_GROUPS.contains(g));
    for group in groups {
        for suite in SEED_SUITES {
            let Ok(base) = ClientTls::new()
                .trust_pem(&pki.ca_cert)
                .and_then(|b| b.suites(&[suite]).key_exchange(&[group]).build())
            else {
                return;
            };
            let mut fresh = (*base).clone();
            fresh.resumption = Resumption::disabled();
            let fresh = Arc::new(fresh);
            let name = format!("{suite:?}/{group:?}");
            g.bench_function(format!("full/{name}"), |b| {
                b.iter(|| handshake(&fresh, &server))
            });
            // Resumed: the client keeps a session cache; prime it once.
            let resumed = base;
            handshake(&resumed, &server);
            g.bench_function(format!("resumed/{name}"), |b| {
                b.iter(|| handshake(&resumed, &server))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .without_plots();
    targets = bench
}
criterion_main!(benches);
