#!/usr/bin/env bash
# The test command of walsync: every check a change must pass, in the order
# CI runs them (`.ci/run` runs exactly this script).
#
#   bash contrib/test.sh
#
# Needs: Rust 1.95 with rustfmt and clippy, and network access to crates.io
# the first time (to install the S3 test server). Idempotent: run it as often
# as you like; tools already installed are reused.
#
# Steps:
#   1. install s3s-fs (the S3-compatible server the integration tests start)
#      into ~/.cache/walsync-tools unless it is already there
#   2. cargo fmt --check
#   3. cargo clippy --all-targets -- -D warnings
#   4. cargo test --no-fail-fast (unit and integration tests, debug build)
#   5. the size gate: contrib/build-musl.sh builds the static x86_64 binary
#      (release, musl) and fails if it is over 4,000,000 bytes (about 2.5
#      minutes cold on 2 cores). It needs rustup's x86_64-unknown-linux-musl
#      standard library; where rustup cannot fetch it, the gate says loudly
#      that it was not run, and contrib/build-musl.sh must be run elsewhere.
# Steps 2-5 all run even if one fails; the script exits 1 if any failed.
#
# Environment:
#   WALSYNC_S3S_FS   use this s3s-fs binary instead of installing one
#   CI=true          also pass --locked to cargo (Cargo.lock must be current)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# S3S_FS_VERSION
source contrib/tools.versions

section() {
    printf '\n==> %s\n' "$*"
}

fail() {
    printf '\ncontrib/test.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

locked=()
if [[ "${CI:-}" == "true" ]]; then
    locked=(--locked)
fi

section "toolchain"
command -v cargo >/dev/null || fail "cargo not found; install Rust 1.95 (rustup) first"
cargo --version
rustc --version
cargo fmt --version >/dev/null 2>&1 \
    || fail "rustfmt is missing; install it with: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 \
    || fail "clippy is missing; install it with: rustup component add clippy"

section "s3s-fs ${S3S_FS_VERSION} (S3 server for the integration tests)"
if [[ -n "${WALSYNC_S3S_FS:-}" ]]; then
    [[ -x "$WALSYNC_S3S_FS" ]] || fail "WALSYNC_S3S_FS=$WALSYNC_S3S_FS is not an executable file"
    echo "using WALSYNC_S3S_FS=$WALSYNC_S3S_FS"
else
    s3s_root="$HOME/.cache/walsync-tools/s3s-fs-${S3S_FS_VERSION}"
    s3s_bin="$s3s_root/bin/s3s-fs"
    if [[ -x "$s3s_bin" ]]; then
        echo "already installed: $s3s_bin"
    else
        echo "installing into $s3s_root (takes a few minutes, once)"
        mkdir -p "$s3s_root"
        # --force: a half-finished earlier install may have left its records
        # without the binary.
        cargo install --locked --force s3s-fs --version "$S3S_FS_VERSION" \
            --features binary --root "$s3s_root" \
            || fail "cargo install s3s-fs ${S3S_FS_VERSION}"
        [[ -x "$s3s_bin" ]] || fail "cargo install finished but $s3s_bin is missing"
    fi
    export WALSYNC_S3S_FS="$s3s_bin"
fi

# The three checks all run, so one report shows every problem; the script
# fails at the end if any of them failed.
failed=()

section "cargo fmt --check"
cargo fmt --check || failed+=("cargo fmt --check (run: cargo fmt)")

section "cargo clippy --all-targets -- -D warnings"
cargo clippy "${locked[@]}" --all-targets -- -D warnings || failed+=("cargo clippy")

section "cargo test --no-fail-fast"
cargo test "${locked[@]}" --no-fail-fast || failed+=("cargo test")

section "size gate: static x86_64 binary at most 4,000,000 bytes"
musl=x86_64-unknown-linux-musl
if rustup target list --installed | grep -qx "$musl" || rustup target add "$musl"; then
    bash contrib/build-musl.sh --target x86_64 \
        || failed+=("size gate (contrib/build-musl.sh --target x86_64)")
else
    printf '\nWARNING: size gate NOT RUN: rustup cannot install %s here; run contrib/build-musl.sh where it can\n' "$musl" >&2
fi

if ((${#failed[@]} > 0)); then
    printf '\n==> FAILED:\n' >&2
    printf '    %s\n' "${failed[@]}" >&2
    exit 1
fi
printf '\n==> all checks passed\n'
