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

# Seed corpora from the vectors (hex files, one envelope per file).
seed() { # target files...
  local dir="fuzz/corpus/$1"; shift
  mkdir -p "$dir"
  for f in "$@"; do
    [ -f "$f" ] || continue
    xxd -r -p "$f" > "$dir/$(basename "$f" .hex)" 2>/dev/null || python3 -c \
      'import sys,binascii;sys.stdout.buffer.write(binascii.unhexlify("".join(open(sys.argv[1]).read().split())))' "$f" > "$dir/$(basename "$f" .hex)"
  done
}
seed envelope_header docs/vectors/*.hex
seed open_any docs/vectors/*.hex
seed keyring_file docs/vectors/keyset*.hex

log=$(mktemp); trap 'rm -f "$log"' EXIT
for target in envelope_header open_any keyring_file; do
  echo "fuzz $target for ${secs}s"
  status=0
  cargo fuzz run --fuzz-dir fuzz "$target" -- -max_total_time="$secs" -rss_limit_mb=2048 \
    >"$log" 2>&1 || status=$?
  grep -E '^(Done|==[0-9]+==|SUMMARY|thread .* panicked)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz target $target failed (exit $status); see fuzz/artifacts/$target" >&2
    exit "$status"
  fi
done
echo "fuzz smoke ok"
