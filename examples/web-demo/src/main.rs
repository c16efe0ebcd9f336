//! St John's Clinic, the web demo.
//!
//! ```text
//! cargo run --release -p careconnect-web-demo                       # embedded defaults under ./data
//! cargo run --release -p careconnect-web-demo -- --config demo.toml # PostgreSQL, S3, AWS KMS, a real issuer
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use careconnect::core::seed::DEMO_USERS;
use careconnect_web_demo::{Settings, start};
use clap::Parser;

/// St John's Clinic over TLS 1.3, with OpenID Connect login.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A settings file (TOML; see the README). Without one: embedded
    /// defaults under --data-dir.
    #[arg(long, env = "CARECONNECT_CONFIG")]
    config: Option<PathBuf>,
    /// Where the embedded defaults live (SQLite, local KMS, blobs,
    /// development certificate).
    #[arg(long, env = "CARECONNECT_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Where to listen (overrides the settings file).
    #[arg(long, env = "CARECONNECT_LISTEN")]
    listen: Option<SocketAddr>,
    /// The URL browsers use (overrides the settings file).
    #[arg(long, env = "CARECONNECT_PUBLIC_URL")]
    public_url: Option<String>,
    /// The database (overrides the settings file): `sqlite://…` or `postgres://…`.
    #[arg(long, env = "CARECONNECT_STORAGE_URL")]
    storage_url: Option<String>,
    /// The blob store (overrides the settings file): `file:///…` or `s3://bucket/prefix`.
    #[arg(long, env = "CARECONNECT_BLOBS_URL")]
    blobs_url: Option<String>,
    /// Where the development issuer listens.
    #[arg(long, env = "CARECONNECT_DEV_ISSUER")]
    dev_issuer: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CARECONNECT_LOG")
                .unwrap_or_else(|_| "info,hyper=warn,sqlx=warn".into()),
        )
        .init();
    let args = Args::parse();
    let mut settings = match &args.config {
        Some(path) => Settings::from_file(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
            &args.data_dir,
        )?,
        None => Settings::embedded(&args.data_dir, "127.0.0.1:8443".parse()?),
    };
    if let Some(listen) = args.listen {
        settings.listen = listen;
        if args.public_url.is_none() {
            settings.public_url = format!("https://{listen}");
        }
    }
    if let Some(url) = args.public_url {
        settings.public_url = url;
    }
    if let Some(url) = args.storage_url {
        settings.clinic.storage_url = Some(url);
    }
    if let Some(url) = args.blobs_url {
        settings.clinic.blobs_url = Some(url);
    }
    if let Some(addr) = args.dev_issuer {
        settings.dev_issuer = addr;
    }
    if let Some((_, secret)) = &mut settings.oidc {
        *secret = std::env::var("CARECONNECT_OIDC_CLIENT_SECRET").ok();
    }
    let dev = settings.oidc.is_none();
    let tls_dir = settings.dev_tls_dir();
    let dev_udap = settings.udap.is_none().then(|| settings.dev_udap_dir());
    let running = start(settings).await?;
    println!("St John's Clinic is open at {}", running.url());
    if dev {
        println!(
            "  development certificate: trust {} (or accept the browser's warning)",
            tls_dir.join("ca.pem").display()
        );
        println!(
            "  sign in at the development issuer {} as:",
            running.issuer()
        );
        for u in &DEMO_USERS {
            println!("    {:<18} {:<26} {}", u.subject, u.name, u.role);
        }
    }
    if let Some(dir) = dev_udap {
        println!(
            "  UDAP apps register at {}/register: a development community and a client certificate are in {} (docs/udap.md)",
            running.url(),
            dir.display()
        );
    }
    println!("  Ctrl-C stops it (requests in flight finish first).");
    running.run_until_signal().await;
    Ok(())
}
