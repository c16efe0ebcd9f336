//! Serving the router over TLS 1.3 (the crypto crate's config), HTTP/1.1
//! and HTTP/2 by ALPN, with a graceful stop: no new connections, in-flight
//! requests finish (bounded), then the process ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use careconnect::core::udap::client_source;
use careconnect::crypto::tls::Negotiated;

use crate::settings::Limits;

use crate::web::{ClientAddr, ConnTls, PerKey};

/// ALPN protocols offered, preferred first.
pub(crate) const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A handshake taking longer than this is dropped (slowloris).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Request headers must arrive within this (HTTP/1.1, also between requests
/// on a kept-alive connection).
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// HTTP/2 pings an idle connection this often and drops it when a ping
/// goes unanswered for [`PING_TIMEOUT`].
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams one HTTP/2 connection may have open at once.
const MAX_STREAMS: u32 = 64;

/// Connections (and handshakes) served at once; past it the listener
/// waits (the kernel's backlog holds the rest).
pub(crate) const MAX_CONNECTIONS: usize = 2048;

/// How long in-flight requests get to finish after a stop.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(64 * 1024);
    b
}

/// Accepts connections on `listener` until `stop` turns true, then waits
/// for open connections (at most [`DRAIN_TIMEOUT`]). One client address
/// holds at most `limits.connections_per_client` connections (more are
/// closed on accept); a connection that starts no request for
/// `limits.idle_secs` is closed gracefully (requests in flight finish), so
/// an HTTP/2 client that answers pings cannot hold one for ever.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    stop: watch::Receiver<bool>,
    limits: Limits,
) {
    let acceptor = TlsAcceptor::from(tls);
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Connections open per client address (an IPv6 address by its /64).
    let per_client = PerKey::new(limits.connections_per_client);
    let idle = Duration::from_secs(limits.idle_secs);
    // The protocol ALPN chose decides; nothing is sniffed.
    let h1 = Arc::new(builder().http1_only());
    let h2 = Arc::new(builder().http2_only());
    let mut stopping = stop.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = async { let _ = stopping.wait_for(|s| *s).await; } => break,
        };
        // Over its cap, a client's new connection is closed at once; only
        // then does it wait for one of the server's slots.
        let Some(client_slot) = per_client.take(client_source(peer.ip())) else {
            tracing::debug!("connection closed: the client has too many open");
            continue;
        };
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            () = async { let _ = stopping.wait_for(|s| *s).await; } => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let mut stop = stop.clone();
        let (h1, h2) = (h1.clone(), h2.clone());
        tracker.spawn(async move {
            let _slots = (slot, client_slot);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
            let builder = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                h2
            } else {
                h1
            };
            // What the handshake settled on, for the pages to show.
            let conn_tls = Negotiated::of(tls.get_ref().1).map(ConnTls);
            let client = ClientAddr(peer.ip());
            let opened = Instant::now();
            // Milliseconds after `opened` that the last request started.
            let last = Arc::new(AtomicU64::new(0));
            let seen = last.clone();
            let app = app.map_request(move |mut req: axum::extract::Request<_>| {
                if let Some(t) = conn_tls {
                    req.extensions_mut().insert(t);
                }
                req.extensions_mut().insert(client);
                let ms = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
                seen.store(ms, Ordering::Relaxed);
                req
            });
            let service = TowerToHyperService::new(app);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            let mut conn = std::pin::pin!(conn.into_owned());
            let mut closing = false;
            loop {
                let quiet_until =
                    opened + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                tokio::select! {
                    done = conn.as_mut() => {
                        if let Err(e) = done {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = tokio::time::sleep_until(quiet_until.into()), if !closing => {
                        let since = Duration::from_millis(last.load(Ordering::Relaxed));
                        if opened + since + idle <= Instant::now() {
                            tracing::debug!("closing an idle connection");
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                    () = async { let _ = stop.wait_for(|s| *s).await; }, if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        });
    }
    drop(listener);
    tracing::info!("stopping: draining open connections");
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
}
