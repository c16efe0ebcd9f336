//! Helpers the `rotate` tool's tests share.

#![allow(clippy::unwrap_used, dead_code)]

use std::process::Output;

/// The JSON report a successful run printed (its stderr when it failed).
pub(crate) fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The id of the primary key in a `status` report's list of keys.
pub(crate) fn primary_in(keys: &serde_json::Value) -> String {
    keys.as_array()
        .unwrap()
        .iter()
        .find(|k| k["state"] == "Primary")
        .unwrap()["id"]
        .to_string()
}
