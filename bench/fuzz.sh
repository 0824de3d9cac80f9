#!/usr/bin/env bash
# Long run of the decoders' fuzz tests (not part of the test command).
#
# The unit tests that feed the pure decoders damaged and random inputs
# (segment and snapshot decoders, object-key parser, WAL header and frame
# scanner; see `fuzz` in src/format/mod.rs and `random_garbage_never_panics`
# in src/wal.rs) try a few thousand inputs on every `cargo test`. This runs
# the same tests in release mode with WALSYNC_FUZZ_ITERS inputs per loop and
# prints, per decoder, the inputs tried, the panics and the damaged objects
# accepted (both must be 0; the tests fail otherwise).
#
#   bash bench/fuzz.sh              # 1,000,000 inputs per loop
#   bash bench/fuzz.sh 200000
#
# Exits non-zero if any test failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

iters="${1:-1000000}"
[[ "$iters" =~ ^[0-9]+$ ]] || { echo "usage: bash bench/fuzz.sh [inputs per loop]" >&2; exit 2; }

echo "==> building the unit tests (release)"
cargo test --release --lib --no-run 2>&1 | tail -1

echo "==> fuzzing with WALSYNC_FUZZ_ITERS=$iters"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
start=$(date +%s)
status=0
WALSYNC_FUZZ_ITERS="$iters" cargo test --release --lib -- --nocapture \
    format::fuzz:: wal::tests::random_garbage_never_panics >"$log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - start ))

grep '^fuzz: ' "$log" | sed 's/^fuzz: /  /'
grep -E '^test result:' "$log" || true
if [[ $status -ne 0 ]]; then
    echo "==> FAILED (exit $status); the failing test's output:" >&2
    grep -E 'panicked|assertion|FAILED' "$log" >&2 || cat "$log" >&2
    exit 1
fi
total=$(grep '^fuzz: ' "$log" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^inputs,?$/) { s += $(i-2) } } END { print s + 0 }')
echo "==> ${total} inputs in ${elapsed}s, 0 panics, 0 damaged objects accepted"
