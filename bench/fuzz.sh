#!/usr/bin/env bash
# Long run of the fuzz tests of decoders and parsers (not part of the test
# command).
#
# The unit tests that feed damaged and random inputs to everything that reads
# outside input try a few thousand inputs on every `cargo test`:
# - the decoders of objects (segment, snapshot, idle mark), the opener of
#   sealed (encrypted) objects, a sealed segment as restore reads it from
#   the bucket (`sealed::open`, then the segment decoder), the WAL header and frame scanner and the
#   wal-index header of the -shm file: `fuzz` in src/format/mod.rs and
#   `random_garbage_never_panics` in src/wal.rs;
#   the watcher's look at new WAL frames (`fuzz` in
#   src/replica/commit_times.rs);
# - the text parsers, each in a `fuzz` module beside its code: timestamps
#   (src/time.rs), durations, sizes, prefixes, bucket names, endpoints,
#   regions, AWS_* variables and whole config files (src/config/), glob
#   patterns (src/file_pattern.rs), prefixes, prefix templates and template
#   matching (src/keys/prefix.rs), object keys and listings (src/keys/),
#   key files (src/keyfile.rs), S3 listings, error answers and keys
#   (src/storage/s3/), dir storage keys (src/storage/dir.rs). They
#   get random bytes, random UTF-8 (multi-byte characters included) and
#   valid inputs mutated at character boundaries (see `fuzz_text` in
#   src/lib.rs).
# This runs the same tests in release mode with WALSYNC_FUZZ_ITERS inputs
# per loop and prints, per decoder or parser, the inputs tried, the panics
# and the inputs accepted. Panics must be 0, and damaged objects accepted
# (sealed ones included: they must fail authentication) must be 0; the
# tests fail otherwise (a parser of text may accept a mutated input that is
# still valid).
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
    fuzz:: wal::tests::random_garbage_never_panics >"$log" 2>&1 || status=$?
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
