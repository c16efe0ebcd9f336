//! Serving the router over TLS 1.3 (the crypto crate's config), HTTP/1.1
//! and HTTP/2 by ALPN, with a graceful stop: no new connections, in-flight
//! requests finish (bounded), then the process ends.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use careconnect::crypto::tls::Negotiated;

use crate::web::{ClientAddr, ConnTls};

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
/// for open connections (at most [`DRAIN_TIMEOUT`]).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // The protocol ALPN chose decides; nothing is sniffed.
    let h1 = Arc::new(builder().http1_only());
    let h2 = Arc::new(builder().http2_only());
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
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
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        let (h1, h2) = (h1.clone(), h2.clone());
        tokio::spawn(async move {
            let _slot = slot;
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
            let app = app.map_request(move |mut req: axum::extract::Request<_>| {
                if let Some(t) = conn_tls {
                    req.extensions_mut().insert(t);
                }
                req.extensions_mut().insert(client);
                req
            });
            let service = TowerToHyperService::new(app);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("stopping: draining open connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
}
