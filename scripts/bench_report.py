#!/usr/bin/env python3
"""Prints criterion's absolute throughput for scripts/bench-crypto.sh.

Ratios and targets come from benches/ratios.rs (interleaved, robust to
noise); these tables are sequential criterion medians, for absolute figures.

Usage: bench_report.py CRITERION_DIR OUT_DIR
OUT_DIR may hold openssl.txt and stream.txt (written by bench-crypto.sh).
Medians throughout: these machines are noisy.
"""
import json
import os
import sys

crit, out = sys.argv[1], sys.argv[2]
ns = {}
for root, _, files in os.walk(crit):
    if root.endswith("/new") and "benchmark.json" in files:
        b = json.load(open(os.path.join(root, "benchmark.json")))
        e = json.load(open(os.path.join(root, "estimates.json")))
        ns[b["full_id"]] = e["median"]["point_estimate"]


def lines(name):
    path = os.path.join(out, name)
    return open(path).read().splitlines() if os.path.exists(path) else []


ossl = {}
for line in lines("openssl.txt"):
    tag, alg, size, bps = line.split()
    ossl.setdefault((alg, int(size)), []).append(float(bps))


def gbs(size, t):
    return size / t  # bytes per ns == GB/s


SIZES = (256, 4096, 65536, 1048576)

print("\n## Criterion, records: GB/s (median); ratios here are sequential, see the interleaved ones above")
print("   raw = AEAD keyed once; raw+key = with its key schedule per message;")
print("   env = Keyring::seal/open (allocating); inpl = seal_in_place/open_in_place (zero-copy)")
hdr = f"{'provider-suite':30} {'size':>8} | {'raw':>6} {'raw+key':>7} {'env':>6} {'inpl':>6} {'env/raw':>7} {'inpl/raw':>8} {'inpl/(raw+key)':>14} | {'open raw':>8} {'env':>6} {'inpl':>6} {'inpl/raw':>8}"
print(hdr)
for group in sorted({k.rsplit("/", 2)[0] for k in ns if k.startswith("record/")}):
    name = group.split("/", 1)[1]
    for size in SIZES:
        def g(op):
            return ns.get(f"{group}/{op}/{size}")
        sr, sk, se, si = g("seal-raw"), g("seal-raw+key"), g("seal-envelope"), g("seal-envelope-in-place")
        orw, oe, oi = g("open-raw"), g("open-envelope"), g("open-envelope-in-place")
        if None in (sr, sk, se, si, orw, oe, oi):
            continue
        print(
            f"{name:30} {size:>8} | {gbs(size, sr):6.2f} {gbs(size, sk):7.2f} {gbs(size, se):6.2f} {gbs(size, si):6.2f}"
            f" {sr / se:7.2f} {sr / si:8.2f} {sk / si:14.2f} | {gbs(size, orw):8.2f} {gbs(size, oe):6.2f} {gbs(size, oi):6.2f} {orw / oi:8.2f}"
        )

kdf = sorted(k for k in ns if k.startswith("kdf/"))
if kdf:
    print("\n## Per-message key cost (ns, median)")
    for k in kdf:
        print(f"  {k[4:]:48} {ns[k]:8.1f}")

docs = sorted({k.rsplit("/", 2)[0] for k in ns if k.startswith("document/")})
if docs:
    print("\n## Documents (64 KiB chunks, std::io streaming API): GB/s and ratio to the raw AEAD over the same chunks")
for group in docs:
    name = group.split("/", 1)[1]
    for size in (1 << 20, 64 << 20):
        sr, se, oe = (ns.get(f"{group}/{op}/{size}") for op in ("seal-raw", "seal-envelope", "open-envelope"))
        if None in (sr, se, oe):
            continue
        print(
            f"  {name:30} {size >> 20:>3} MiB  raw {gbs(size, sr):6.2f}  seal {gbs(size, se):6.2f} ({sr / se:4.2f}x)"
            f"  open {gbs(size, oe):6.2f} ({sr / oe:4.2f}x)"
        )

if ossl:
    print("\n## openssl speed -evp (GB/s; before / after the criterion run)")
    for (alg, size), v in sorted(ossl.items()):
        print(f"  {alg:18} {size:>8}  " + " / ".join(f"{x / 1e9:5.2f}" for x in v))
stream = lines("stream.txt")
if stream:
    print("\n## Streaming memory (sealed to a temporary file and read back)")
    for line in stream:
        print("  " + line.strip())
