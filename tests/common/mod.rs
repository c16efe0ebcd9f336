//! Helpers shared by the storage test files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

/// A store on the S3-compatible server (`scripts/moto.sh` starts one), in
/// `bucket` (which must exist) or in a fresh bucket it creates.
pub(crate) fn s3_store_in(bucket: Option<&str>, prefix: &str) -> careconnect::storage::S3BlobStore {
    let bucket = bucket.map_or_else(fresh_bucket, str::to_owned);
    let options = careconnect_testkit::s3_options();
    careconnect::storage::S3BlobStore::open_with(
        &format!("s3://{bucket}/{prefix}"),
        options.iter().map(|(k, v)| (*k, v.as_str())),
    )
    .unwrap()
}

/// A store in a fresh bucket.
pub(crate) fn s3_store(prefix: &str) -> careconnect::storage::S3BlobStore {
    s3_store_in(None, prefix)
}

pub(crate) use careconnect_testkit::fresh_bucket;
