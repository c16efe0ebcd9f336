#!/usr/bin/env bash
# Measures the crypto hot path and prints, from one run:
#  - envelope seal/open vs the raw AEAD of the same provider on the same
#    buffer (256 B, 4 KiB, 64 KiB, 1 MiB), both suites, both providers;
#  - the per-message key cost (HKDF) next to the AEAD key schedule;
#  - document streaming (1 MiB, 64 MiB) vs raw chunked AEAD;
#  - `openssl speed -evp` for both suites, measured before and after;
#  - peak memory when streaming 64 MiB and 512 MiB documents.
# Ratios are what to read: these machines are noisy, absolute times are not.
#   BENCH_FILTER=regex   only benchmarks whose id matches (criterion filter)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v openssl >/dev/null; then
  echo "installing openssl (Debian package)"
  (sudo -n true 2>/dev/null && SUDO=sudo || SUDO=) ; ${SUDO:-} apt-get install -y -q openssl >/dev/null
fi
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
crit="$target_dir/criterion"
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT

openssl_speed() { # tag
  for alg in aes-256-gcm chacha20-poly1305; do
    for bytes in 256 4096 65536 1048576; do
      openssl speed -evp "$alg" -bytes "$bytes" -seconds 1 2>/dev/null \
        | awk -v a="$alg" -v b="$bytes" -v t="$1" 'tolower($1) == a { v=$NF; sub(/k$/,"",v); print t, a, b, v*1000 }'
    done
  done >> "$out/openssl.txt"
}

echo "==> openssl speed (before)"; openssl_speed before
echo "==> criterion (cargo bench --features ring --bench envelope), about 5 minutes"
rm -rf "$crit"/record_* "$crit"/document_* "$crit"/kdf
cargo bench -q --features ring --bench envelope -- ${BENCH_FILTER:+"$BENCH_FILTER"} > "$out/criterion.log" 2>&1 \
  || { tail -30 "$out/criterion.log"; exit 1; }
echo "==> openssl speed (after)"; openssl_speed after
echo "==> streaming memory"
for p in rustcrypto ring; do
  for mib in 64 512; do
    cargo bench -q --features ring --bench stream_memory -- "$mib" "$p" aes-256-gcm 2>/dev/null | grep '^stream' >> "$out/stream.txt"
  done
done

python3 - "$crit" "$out" <<'PY'
import json, os, sys, statistics
crit, out = sys.argv[1], sys.argv[2]
ns = {}
for root, _, files in os.walk(crit):
    if root.endswith("/new") and "benchmark.json" in files:
        b = json.load(open(os.path.join(root, "benchmark.json")))
        e = json.load(open(os.path.join(root, "estimates.json")))
        ns[b["full_id"]] = e["median"]["point_estimate"]
ossl = {}
for line in open(os.path.join(out, "openssl.txt")):
    tag, alg, size, bps = line.split()
    ossl.setdefault((alg, int(size)), []).append(float(bps))

def gbs(size, t): return size / t  # bytes per ns == GB/s
def fmt(x): return f"{x:6.2f}"
targets = []

print("\n## Records: throughput GB/s (median) and envelope/raw ratios")
print(f"{'provider-suite':32} {'size':>8} | {'raw':>6} {'raw+key':>7} {'env':>6} {'env/raw':>7} {'env/(raw+key)':>13} | {'open raw':>8} {'open env':>8} {'ratio':>6}")
for group in sorted({k.rsplit('/', 2)[0] for k in ns if k.startswith("record/")}):
    name = group.split("/", 1)[1]
    for size in (256, 4096, 65536, 1048576):
        g = lambda op: ns.get(f"{group}/{op}/{size}")
        sr, sk, se, orw, oe = g("seal-raw"), g("seal-raw+key"), g("seal-envelope"), g("open-raw"), g("open-envelope")
        if None in (sr, sk, se, orw, oe): continue
        print(f"{name:32} {size:>8} | {fmt(gbs(size,sr))} {gbs(size,sk):7.2f} {fmt(gbs(size,se))} {sr/se:7.2f} {sk/se:13.2f} | {gbs(size,orw):8.2f} {gbs(size,oe):8.2f} {orw/oe:6.2f}")
        need = 0.9 if size >= 65536 else (0.4 if size == 256 else None)
        if need:
            targets.append((f"record {name} {size} B seal env/raw >= {need}", sr/se, need))
            targets.append((f"record {name} {size} B open env/raw >= {need}", orw/oe, need))

print("\n## Per-message key cost (ns, median)")
for k in sorted(k for k in ns if k.startswith("kdf/")):
    print(f"  {k[4:]:48} {ns[k]:8.1f}")

print("\n## Documents (64 KiB chunks): GB/s and ratio to raw chunked AEAD seal")
for group in sorted({k.rsplit('/', 2)[0] for k in ns if k.startswith("document/")}):
    name = group.split("/", 1)[1]
    for size in (1 << 20, 64 << 20):
        sr, se, oe = (ns.get(f"{group}/{op}/{size}") for op in ("seal-raw", "seal-envelope", "open-envelope"))
        if None in (sr, se, oe): continue
        print(f"  {name:32} {size>>20:>3} MiB  raw {gbs(size,sr):6.2f}  seal {gbs(size,se):6.2f} ({sr/se:4.2f}x)  open {gbs(size,oe):6.2f} ({sr/oe:4.2f}x)")
        targets.append((f"document {name} {size>>20} MiB seal/raw >= 0.85", sr/se, 0.85))
        targets.append((f"document {name} {size>>20} MiB open/raw >= 0.85", sr/oe, 0.85))
        if name == "ring-AES-256-GCM" and size == 1 << 20 and ("aes-256-gcm", size) in ossl:
            o = statistics.median(ossl[("aes-256-gcm", size)]) / 1e9
            targets.append((f"document ring AES-256-GCM 1 MiB seal vs openssl ({o:.2f} GB/s) >= 1.5", gbs(size,se)/o, 1.5))
            targets.append((f"document ring AES-256-GCM 1 MiB open vs openssl ({o:.2f} GB/s) >= 1.5", gbs(size,oe)/o, 1.5))

print("\n## openssl speed -evp (GB/s; before / after the criterion run)")
for (alg, size), v in sorted(ossl.items()):
    print(f"  {alg:18} {size:>8}  " + " / ".join(f"{x/1e9:5.2f}" for x in v))
print("\n## Streaming memory (through a temporary file)")
for line in open(os.path.join(out, "stream.txt")):
    print("  " + line.strip())
print("\n## Targets (issue 2)")
for what, got, need in targets:
    print(f"  {'ok  ' if got >= need else 'MISS'} {what:70} {got:5.2f}")
PY
