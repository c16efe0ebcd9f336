#!/usr/bin/env bash
# TLS 1.3 handshakes per second, in process, per suite and key-exchange group
# (X25519, and the post-quantum hybrid X25519MLKEM768): full and resumed.
# Prints the criterion medians as handshakes/s, the resumed/full ratio and
# the hybrid/X25519 ratio (issue 19's target: full handshakes >= 0.7).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
rm -rf "$target_dir/criterion/tls13-handshake"
cargo bench -q --features aws-lc --bench tls > /dev/null 2>&1
python3 - "$target_dir/criterion/tls13-handshake" <<'PY'
import json, os, sys
root = sys.argv[1]
ns = {}
for d, _, files in os.walk(root):
    if d.endswith("/new") and "benchmark.json" in files:
        b = json.load(open(os.path.join(d, "benchmark.json")))
        e = json.load(open(os.path.join(d, "estimates.json")))
        ns[b["full_id"]] = e["median"]["point_estimate"]
print(f"{'suite':34} {'group':16} {'full/s':>8} {'resumed/s':>10} {'resumed/full':>13} {'full vs X25519':>15}")
for suite in ("TLS13_AES_256_GCM_SHA384", "TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_128_GCM_SHA256"):
    for group in ("X25519", "X25519MLKEM768"):
        f = ns.get(f"tls13-handshake/full/{suite}/{group}"); r = ns.get(f"tls13-handshake/resumed/{suite}/{group}")
        base = ns.get(f"tls13-handshake/full/{suite}/X25519")
        if f and r:
            vs = f"{base / f:15.2f}" if base else ""
            print(f"{suite:34} {group:16} {1e9/f:8.0f} {1e9/r:10.0f} {f/r:13.2f} {vs}")
            if group != "X25519" and base:
                mark = "ok  " if base / f >= 0.7 else "MISS"
                print(f"  {mark} {group} full handshakes >= 0.7x X25519: {base / f:.2f}")
print("(client and server in one thread, in memory: the cost of both sides; ECDSA P-256 dev certificate)")
PY
