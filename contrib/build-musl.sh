#!/usr/bin/env bash
# Builds the static, stripped walsync binary for x86_64 Linux (musl) and
# checks that it is static. Idempotent: installs the musl target and Debian's
# musl-tools (the C compiler for the bundled SQLite and ring) when missing.
#
#   bash contrib/build-musl.sh        # -> target/x86_64-unknown-linux-musl/release/walsync
#
# The size settings for this target (RELR relocations, no unwind tables for
# the C code, the bundled SQLite's options) are in .cargo/config.toml, so a
# plain `cargo build --release --target x86_64-unknown-linux-musl` (as in
# contrib/Dockerfile) gets them too.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl

if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
if ! command -v x86_64-linux-musl-gcc >/dev/null; then
    if ! apt-get install -y musl-tools >/dev/null 2>&1; then
        apt-get update >/dev/null
        apt-get install -y musl-tools >/dev/null
    fi
fi

cargo build --release --locked --target "$target"
bin="${CARGO_TARGET_DIR:-target}/$target/release/walsync"

# Static: no interpreter, no shared libraries.
if command -v file >/dev/null; then
    desc=$(file -b "$bin")
    echo "file: $desc"
    case "$desc" in
        *"statically linked"* | *"static-pie linked"*) ;;
        *) echo "error: $bin is not statically linked" >&2; exit 1 ;;
    esac
fi
ldd_out=$(ldd "$bin" 2>&1 || true)
case "$ldd_out" in
    *"not a dynamic executable"* | *"statically linked"*) ;;
    *) echo "error: ldd finds dynamic dependencies in $bin:" >&2; echo "$ldd_out" >&2; exit 1 ;;
esac
size=$(stat -c %s "$bin")
echo "walsync static binary: $bin, $size bytes ($(awk "BEGIN{printf \"%.2f\", $size/1048576}") MiB)"
"$bin" --help >/dev/null
