#!/usr/bin/env bash
# Builds every fuzz target and runs each for a short, bounded time on the
# stable toolchain (RUSTC_BOOTSTRAP lets cargo-fuzz use -Z flags). Seeds come
# from the known-answer vectors in docs/vectors, so runs start deep.
#   FUZZ_SECONDS=N   time per target (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-20}"

if ! command -v cargo-fuzz >/dev/null && ! [ -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
export PATH="$HOME/.cargo/bin:$PATH" RUSTC_BOOTSTRAP=1

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
# Debug assertions (overflow checks) stay on. All targets build in one go.
log=$(mktemp); trap 'rm -f "$log"' EXIT
echo "building fuzz targets (-s none)"
cargo fuzz build -s none --debug-assertions --fuzz-dir fuzz >"$log" 2>&1 || { tail -40 "$log" >&2; exit 1; }
for target in envelope_header open_any keyring_file tls_pem authz_config clinic_input web_input udap_statement; do
  echo "fuzz $target for ${secs}s"
  status=0
  cargo fuzz run -s none --debug-assertions --fuzz-dir fuzz "$target" -- -max_total_time="$secs" -rss_limit_mb=2048 \
    >"$log" 2>&1 || status=$?
  grep -E '^(Done|==[0-9]+==|SUMMARY|thread .* panicked)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz target $target failed (exit $status); see fuzz/artifacts/$target" >&2
    exit "$status"
  fi
done
echo "fuzz smoke ok"
