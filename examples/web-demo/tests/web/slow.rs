//! Clients that hold connections without using them (review findings 5,
//! 11, 12, 15): bodies that stop part-way, connections that stay idle
//! (HTTP/2 ones answering pings), thousands of them from one address, and
//! uploads that trickle. Each is closed by a deadline or turned away by a
//! per-client cap, and a user at another address keeps getting pages.
//!
//! Outcomes are decided by what happened (closed by the server, served,
//! refused), never by how long it took; times are printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use careconnect::crypto::tls::ClientTls;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::common::Demo;

/// The attacker's address and another client's.
const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// How long a test waits for the server to close a connection before
/// calling it held for ever (a hang guard, far past every deadline).
const HELD: Duration = Duration::from_secs(120);

fn connector(demo: &Demo, alpn: &[u8]) -> TlsConnector {
    let config = ClientTls::new()
        .trust_pem(&demo.ca())
        .unwrap()
        .build()
        .unwrap();
    let mut config = (*config).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection from `from`; `None` when the server closed it before
/// the handshake finished (a client over its cap).
async fn open(
    connector: &TlsConnector,
    to: SocketAddr,
    from: IpAddr,
) -> Option<TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = socket.connect(to).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.ok()
}

/// Reads until the server closes `s`; the status line of what it said, if
/// anything.
async fn until_closed(s: &mut TlsStream<tokio::net::TcpStream>) -> Option<String> {
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => said.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(HELD, read)
        .await
        .expect("the server held the connection open");
    let text = String::from_utf8_lossy(&said);
    text.lines().next().map(str::to_owned)
}

/// An HTTP/2 connection that answers the server's pings and sends no
/// request; returns once the server has closed it.
async fn idle_h2(s: TlsStream<tokio::net::TcpStream>) {
    let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, String>(
        TokioExecutor::new(),
        TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::time::timeout(HELD, conn)
        .await
        .expect("the server held an idle HTTP/2 connection open")
        .ok();
    drop(sender);
}

/// What one attacking connection met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Met {
    /// Closed before the handshake: the address is over its cap.
    TurnedAway,
    /// Accepted, then closed by the server (after this long).
    Closed(Duration),
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_slow_and_idle_connections_from_one_address_leave_others_served() {
    let mut demo = Demo::start_with(|s| {
        s.limits.request_secs = 6;
        s.limits.body_idle_secs = 2;
        s.limits.idle_secs = 3;
    })
    .await;
    let to = demo.running.as_ref().unwrap().addr();
    let alice = demo.login_from("patient-alice", Some(OTHER)).await;
    let (h1, h2) = (connector(&demo, b"http/1.1"), connector(&demo, b"h2"));
    let n = 3_000;
    // The black-box finding exactly: `POST /register` (and `/token`) with
    // `Content-Length: 60000`, 10 body bytes, then nothing; and
    // connections that send nothing at all, over HTTP/1.1 and over HTTP/2
    // (answering pings). At most 400 attempts in flight.
    let gate = Arc::new(tokio::sync::Semaphore::new(400));
    let mut attack = tokio::task::JoinSet::new();
    for i in 0..n {
        let (h1, h2, gate) = (h1.clone(), h2.clone(), gate.clone());
        attack.spawn(async move {
            let _turn = gate.acquire_owned().await.unwrap();
            let kind = i % 4;
            let Some(mut s) = open(if kind == 3 { &h2 } else { &h1 }, to, ATTACKER).await else {
                return (kind, Met::TurnedAway, None);
            };
            let start = Instant::now();
            let said = match kind {
                0 | 1 => {
                    let (path, ctype) = if kind == 0 {
                        ("/register", "application/json")
                    } else {
                        ("/token", "application/x-www-form-urlencoded")
                    };
                    let head = format!(
                        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: 60000\r\n\r\n0123456789"
                    );
                    if s.write_all(head.as_bytes()).await.is_err() || s.flush().await.is_err() {
                        return (kind, Met::Closed(start.elapsed()), None);
                    }
                    until_closed(&mut s).await
                }
                2 => until_closed(&mut s).await,
                _ => {
                    idle_h2(s).await;
                    None
                }
            };
            (kind, Met::Closed(start.elapsed()), said)
        });
    }
    // Meanwhile, a signed-in patient at another address reads her page.
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let r = alice.get("/careconnect").await;
        assert_eq!(r.status(), StatusCode::OK, "a page for another client");
        r.text().await.unwrap();
        times.push(t.elapsed());
    }
    let mut met = Vec::new();
    while let Some(r) = attack.join_next().await {
        met.push(r.unwrap());
    }
    times.sort();
    let turned_away = met.iter().filter(|m| m.1 == Met::TurnedAway).count();
    let closed: Vec<(usize, Duration)> = met
        .iter()
        .filter_map(|(k, m, _)| match m {
            Met::Closed(d) => Some((*k, *d)),
            Met::TurnedAway => None,
        })
        .collect();
    let slowest = |kind: usize| {
        closed
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default()
    };
    let statuses: std::collections::BTreeSet<String> =
        met.iter().filter_map(|m| m.2.clone()).collect();
    println!(
        "{n} attacking connections from one address: {} accepted and closed by the server \
         (slowest close after: /register {:?}, /token {:?}, idle HTTP/1.1 {:?}, idle HTTP/2 {:?}; \
         answers {statuses:?}), {turned_away} turned away at the cap; the other client's page: \
         p50 {:?}, p99 {:?}, max {:?}",
        closed.len(),
        slowest(0),
        slowest(1),
        slowest(2),
        slowest(3),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().unwrap()
    );
    assert_eq!(met.len(), n);
    // The stopped bodies got a 408 (their deadline), never a framework's
    // text.
    for (kind, _, said) in &met {
        if *kind < 2
            && let Some(line) = said
        {
            assert_eq!(line, "HTTP/1.1 408 Request Timeout", "kind {kind}");
        }
    }
    // Every kind got in at least once, and every one that got in was
    // closed by the server (`until_closed` and `idle_h2` panic otherwise).
    for kind in 0..4 {
        assert!(
            closed.iter().any(|(k, _)| *k == kind),
            "kind {kind} never got in"
        );
    }
    // Once they are gone, the attacker's address is served again.
    let r = demo.client().get(demo.at("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_cap_of_connections() {
    let cap = 24;
    let mut demo = Demo::start_with(|s| {
        s.limits.connections_per_client = cap;
        s.limits.idle_secs = 600;
    })
    .await;
    let to = demo.running.as_ref().unwrap().addr();
    let h2 = connector(&demo, b"h2");
    // HTTP/2 connections that stay open (pings answered, no header
    // deadline): the first `cap` get in.
    let mut held = Vec::new();
    for _ in 0..cap {
        let s = open(&h2, to, ATTACKER).await.expect("within the cap");
        held.push(tokio::spawn(idle_h2(s)));
    }
    for _ in 0..5 {
        assert!(
            open(&h2, to, ATTACKER).await.is_none(),
            "a connection over the cap was served"
        );
    }
    // Another address is not affected.
    let other = demo.client_from(Some(OTHER));
    let r = other.get(demo.at("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // One closed: one more may open (once the server has seen it go).
    held.pop().unwrap().abort();
    let mut again = None;
    for _ in 0..200 {
        again = open(&h2, to, ATTACKER).await;
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "a freed slot was not given back");
    for h in held {
        h.abort();
    }
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_declaring_more_than_the_limit_is_refused_before_its_body() {
    let mut demo = Demo::start().await;
    let grey = demo.login("doctor-grey").await;
    // 2 GiB declared, not a byte sent: the answer comes without the body.
    let body = futures::stream::pending::<Result<Vec<u8>, std::io::Error>>();
    let r = tokio::time::timeout(
        HELD,
        grey.client
            .post(demo.at("/medicloud/upload"))
            .header("content-type", "multipart/form-data; boundary=x")
            .header("content-length", (2u64 << 30).to_string())
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    )
    .await
    .expect("answered before the body")
    .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    demo.stop().await;
}
