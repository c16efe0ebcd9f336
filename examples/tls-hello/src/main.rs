//! Serves a TLS 1.3 endpoint with the development certificate.
//!
//! ```text
//! cargo run -p careconnect-tls-hello -- --dir data/tls --addr 127.0.0.1:8443
//! curl --cacert data/tls/ca.pem https://localhost:8443/
//! openssl s_client -connect 127.0.0.1:8443 -tls1_3 -CAfile data/tls/ca.pem
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use careconnect_crypto::tls::{ClientAuth, DevPki, ServerTls};
use careconnect_tls_hello::Server;
use clap::Parser;

/// Serve a TLS 1.3 hello endpoint with the development certificate.
#[derive(Parser)]
struct Args {
    /// Where the development CA and certificates live (made once, reused).
    #[arg(long, default_value = "data/tls")]
    dir: PathBuf,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8443")]
    addr: String,
    /// Require a client certificate signed by the development CA (mTLS).
    #[arg(long)]
    mtls: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let pki = DevPki::load_or_create(&args.dir).context("development PKI")?;
    let auth = if args.mtls {
        ClientAuth::required_from_pem(&pki.ca_cert)?
    } else {
        ClientAuth::Off
    };
    let (config, resolver) = ServerTls::new()
        .client_auth(auth)
        .alpn(careconnect_tls_hello::ALPN)
        .build_reloading(pki.server.clone())?;
    // Pick up replaced certificate files within a few seconds.
    let _watcher = resolver.spawn_watcher(std::time::Duration::from_secs(5));
    let server = Server::start(&args.addr, config)?;
    println!("serving TLS 1.3 on https://{}/", server.addr());
    println!(
        "  curl --cacert {} https://localhost:{}/",
        pki.ca_cert.display(),
        server.addr().port()
    );
    if args.mtls {
        println!(
            "  with --cert {} --key {}",
            pki.client.cert.display(),
            pki.client.key.display()
        );
    }
    loop {
        std::thread::park();
    }
}
