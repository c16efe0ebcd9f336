//! Helpers the integration tests of several crates share, to reach the real
//! servers `scripts/test.sh` starts on loopback: a PostgreSQL database of a
//! test's own (`CARECONNECT_PG_URL`), and KMS keys and S3 buckets on moto
//! (`CARECONNECT_MOTO_ENDPOINT`), and the headless browser's drivers
//! (`CARECONNECT_BROWSER_DIR`). Test-only: they panic, naming the script
//! to run, when a server is missing.
//!
//! ```no_run
//! # async fn demo() {
//! let db = careconnect_testkit::OwnDb::create("example").await;
//! // ... connect to db.url ...
//! db.drop_db().await;
//! # }
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers panic

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Connection;

/// Where `scripts/browser.sh` put the browser drivers (`tests/browser/*.mjs`
/// beside playwright-core): `CARECONNECT_BROWSER_DIR`, or its default under
/// the user's cache.
pub fn browser_dir() -> std::path::PathBuf {
    let dir = std::env::var("CARECONNECT_BROWSER_DIR").map_or_else(
        |_| {
            let home = std::env::var("HOME").unwrap_or_default();
            std::path::PathBuf::from(home).join(".cache/careconnect/browser")
        },
        std::path::PathBuf::from,
    );
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "no browser driver in {}: run scripts/test.sh (or scripts/browser.sh)",
        dir.display()
    );
    dir
}

/// Copies a data directory (a database, its KMS file, blobs), skipping
/// files that vanish meanwhile (SQLite's -wal and -shm as a closed clinic's
/// last connection finishes).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            match std::fs::copy(e.path(), to.join(e.file_name())) {
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => panic!("{err}"),
            }
        }
    }
}

/// Nanoseconds since the epoch, to name things a test makes.
pub fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A PostgreSQL database of the calling test's own, dropped by
/// [`OwnDb::drop_db`].
#[derive(Debug)]
pub struct OwnDb {
    admin: String,
    name: String,
    /// Its URL.
    pub url: String,
}

impl OwnDb {
    /// Creates `<prefix>_<nanos>` on the server of `CARECONNECT_PG_URL`
    /// (default `postgres://postgres@127.0.0.1:5432/test`).
    pub async fn create(prefix: &str) -> Self {
        let admin = std::env::var("CARECONNECT_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("{prefix}_{}", nanos());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no PostgreSQL at {admin} ({e}): run scripts/test.sh, or set CARECONNECT_PG_URL"
                )
            });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        Self { admin, name, url }
    }

    /// Drops the database (closing whatever is still connected).
    pub async fn drop_db(self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

/// The KMS-compatible server's endpoint (moto): `CARECONNECT_MOTO_ENDPOINT`,
/// default `http://127.0.0.1:5555`.
pub fn moto_endpoint() -> String {
    std::env::var("CARECONNECT_MOTO_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5555".into())
}

/// The S3-compatible server's endpoint (moto): `CARECONNECT_S3_ENDPOINT`,
/// default `http://127.0.0.1:5555`.
pub fn s3_endpoint() -> String {
    std::env::var("CARECONNECT_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5555".into())
}

/// The options an S3 client needs for the S3 server ([`s3_endpoint`], plain
/// HTTP, `us-east-1`, test credentials), as `S3BlobStore::open_with` takes
/// them.
pub fn s3_options() -> Vec<(&'static str, String)> {
    vec![
        ("aws_endpoint", s3_endpoint()),
        ("aws_allow_http", "true".into()),
        ("aws_region", "us-east-1".into()),
        ("aws_access_key_id", "testing".into()),
        ("aws_secret_access_key", "testing".into()),
    ]
}

/// Creates bucket `name` on the S3 server (object_store cannot create
/// buckets; moto accepts an unsigned CreateBucket).
pub fn create_bucket(name: &str) {
    use std::io::{Read, Write};
    let endpoint = s3_endpoint();
    let hostport = endpoint.trim_start_matches("http://").to_owned();
    let mut s = std::net::TcpStream::connect(&hostport).unwrap_or_else(|e| {
        panic!("no S3 server at {endpoint} ({e}): run scripts/test.sh, which starts one")
    });
    write!(
        s,
        "PUT /{name} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "CreateBucket: {resp}");
}

/// A fresh bucket on the S3 server, by name.
pub fn fresh_bucket() -> String {
    let b = format!("cc-{}-{:x}", std::process::id(), nanos());
    create_bucket(&b);
    b
}

/// An administrator's client of moto's KMS (`us-east-1`, test credentials).
#[cfg(feature = "aws")]
pub async fn kms_admin() -> aws_sdk_kms::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(moto_endpoint())
        .load()
        .await;
    aws_sdk_kms::Client::new(&conf)
}

/// A new KMS key on moto named by `alias`.
#[cfg(feature = "aws")]
pub async fn kms_key_with_alias(admin: &aws_sdk_kms::Client, alias: &str) {
    let k = admin
        .create_key()
        .description(alias)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no KMS server at {} ({e:?}): run scripts/test.sh",
                moto_endpoint()
            )
        });
    admin
        .create_alias()
        .alias_name(alias)
        .target_key_id(k.key_metadata().unwrap().key_id())
        .send()
        .await
        .unwrap();
}
