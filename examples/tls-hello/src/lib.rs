//! A tiny blocking HTTPS server on the careconnect TLS configuration: one
//! thread per connection, answers every request with `ok` and the
//! negotiated protocol, suite and client certificate subject.
//!
//! Used by `main.rs` and by the workspace's TLS tests against real clients.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use careconnect_crypto::tls::cert_info;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// The ALPN protocols this server speaks: HTTP/1.1 only.
pub const ALPN: &[&[u8]] = &[b"http/1.1"];

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` (use port 0 for any) and serves until dropped.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound.
    pub fn start(addr: &str, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let config = Arc::clone(&config);
                std::thread::spawn(move || {
                    if let Err(e) = serve(stream, config) {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        });
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(tcp: TcpStream, config: Arc<ServerConfig>) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let conn = ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    // Read the request head (up to the blank line) and answer.
    let mut reader = BufReader::new(&mut tls);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let conn = &tls.conn;
    let version = conn
        .protocol_version()
        .map_or("?".into(), |v| format!("{v:?}"));
    let suite = conn
        .negotiated_cipher_suite()
        .map_or("?".into(), |s| format!("{:?}", s.suite()));
    let group = conn
        .negotiated_key_exchange_group()
        .map_or("?".into(), |g| format!("{:?}", g.name()));
    let client = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| cert_info(c).ok())
        .map_or("none".into(), |i| i.subject);
    let body = format!("ok {version} {suite} group={group} client={client}\n");
    write!(
        tls,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    tls.conn.send_close_notify();
    tls.flush()
}
