//! Helpers shared by the storage test files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

/// A store on the S3-compatible server (`scripts/moto.sh` starts one), in
/// `bucket` (which must exist) or in a fresh bucket it creates.
pub(crate) fn s3_store_in(bucket: Option<&str>, prefix: &str) -> careconnect::storage::S3BlobStore {
    let endpoint =
        std::env::var("CARECONNECT_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5555".into());
    let hostport = endpoint.trim_start_matches("http://").to_owned();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let bucket = match bucket {
        Some(b) => b.to_owned(),
        None => {
            let b = format!("cc-{}-{nanos:x}", std::process::id());
            create_bucket(&hostport, &endpoint, &b);
            b
        }
    };
    careconnect::storage::S3BlobStore::open_with(
        &format!("s3://{bucket}/{prefix}"),
        [
            ("aws_endpoint", endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "testing"),
            ("aws_secret_access_key", "testing"),
        ],
    )
    .unwrap()
}

/// object_store cannot create buckets; moto accepts an unsigned CreateBucket.
fn create_bucket(hostport: &str, endpoint: &str, bucket: &str) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(hostport).unwrap_or_else(|e| {
        panic!("no S3 server at {endpoint} ({e}): run scripts/test.sh, which starts one")
    });
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "CreateBucket: {resp}");
}

/// A store in a fresh bucket.
pub(crate) fn s3_store(prefix: &str) -> careconnect::storage::S3BlobStore {
    s3_store_in(None, prefix)
}

/// The name of the bucket behind a store made by [`s3_store`]: fresh, created here.
pub(crate) fn fresh_bucket() -> String {
    let endpoint =
        std::env::var("CARECONNECT_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5555".into());
    let hostport = endpoint.trim_start_matches("http://").to_owned();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let b = format!("cc-{}-{nanos:x}", std::process::id());
    create_bucket(&hostport, &endpoint, &b);
    b
}
