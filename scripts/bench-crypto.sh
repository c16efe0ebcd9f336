#!/usr/bin/env bash
# Measures the crypto hot path and prints, from one run (about 7 minutes):
#  - envelope seal/open vs the raw AEAD of the same provider on the same
#    buffer (256 B, 4 KiB, 64 KiB, 1 MiB), both suites, every provider;
#  - the per-message key cost (HKDF) next to the AEAD key schedule;
#  - document streaming (1 MiB, 64 MiB) vs raw chunked AEAD;
#  - `openssl speed -evp` for both suites, measured before and after;
#  - peak memory when streaming 64 MiB and 512 MiB documents.
# Ratios are what to read: these machines are noisy, absolute times are not.
# The ratios come from benches/ratios.rs, which interleaves the variants so a
# slow moment slows both sides; criterion (benches/envelope.rs) gives absolute
# throughput.
#   BENCH_FILTER=regex   only benchmarks whose id matches (criterion filter)
#   OPENSSL_ia32cap='~0x0:~0x10000'   hides AVX-512 from AWS-LC and OpenSSL
#       (ring does not use it), to see what the chooser does on a CPU without it
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v openssl >/dev/null; then
  echo "installing openssl (Debian package)"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q openssl >/dev/null; else sudo apt-get install -y -q openssl >/dev/null; fi
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
# The bar for the auto-chosen provider's documents: the best of three 1 MiB
# runs, so a slow moment of OpenSSL's cannot flatter us.
aes_1mib=$(for _ in 1 2 3; do openssl speed -evp aes-256-gcm -bytes 1048576 -seconds 1 2>/dev/null \
  | awk 'tolower($1) == "aes-256-gcm" { v=$NF; sub(/k$/,"",v); print v / 1e6 }'; done | sort -g | tail -1)
echo "==> interleaved ratios (cargo bench --features ring,aws-lc --bench ratios), about 1 minute"
OPENSSL_AES_1MIB_GBS="$aes_1mib" cargo bench -q --features ring,aws-lc --bench ratios 2>/dev/null | tee "$out/ratios.txt"
echo "==> criterion (cargo bench --features ring,aws-lc --bench envelope), about 5 minutes"
rm -rf "$crit"/record_* "$crit"/document_* "$crit"/kdf
cargo bench -q --features ring,aws-lc --bench envelope -- ${BENCH_FILTER:+"$BENCH_FILTER"} > "$out/criterion.log" 2>&1 \
  || { tail -30 "$out/criterion.log"; exit 1; }
echo "==> openssl speed (after)"; openssl_speed after
echo "==> streaming memory"
for p in rustcrypto ring aws-lc; do
  for mib in 64 512; do
    cargo bench -q --features ring,aws-lc --bench stream_memory -- "$mib" "$p" aes-256-gcm 2>/dev/null | grep '^stream' >> "$out/stream.txt"
  done
done

python3 scripts/bench_report.py "$crit" "$out"
