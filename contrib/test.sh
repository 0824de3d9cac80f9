#!/usr/bin/env bash
# The test command of walsync: every check a change must pass, in the order
# CI runs them (`.ci/run` runs exactly this script).
#
#   bash contrib/test.sh
#
# Needs: Rust 1.95 with rustfmt and clippy, Python 3 with venv, Node.js 18+
# with npm, and network access to crates.io, PyPI and npm the first time (to
# install the S3 test servers). Idempotent: run it as often as you like;
# tools already installed are reused.
#
# Steps:
#   1. install the three S3 servers the integration tests start, at the
#      versions contrib/tools.versions names, into ~/.cache/walsync-tools
#      unless they are already there: s3s-fs (crates.io), moto's server
#      (PyPI, in a venv) and s3rver (npm)
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
#   WALSYNC_MOTO_SERVER, WALSYNC_S3RVER
#                    the same for moto_server and s3rver
#   CI=true          also pass --locked to cargo (Cargo.lock must be current)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# S3S_FS_VERSION, MOTO_VERSION, S3RVER_VERSION
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

# moto and s3rver are installed into a directory of their own, which is
# complete once it holds this marker; a directory without it (an install cut
# short) is removed and installed again.
installed_marker=.walsync-installed

section "moto[server] ${MOTO_VERSION} (S3 server for the integration tests)"
if [[ -n "${WALSYNC_MOTO_SERVER:-}" ]]; then
    [[ -x "$WALSYNC_MOTO_SERVER" ]] \
        || fail "WALSYNC_MOTO_SERVER=$WALSYNC_MOTO_SERVER is not an executable file"
    echo "using WALSYNC_MOTO_SERVER=$WALSYNC_MOTO_SERVER"
else
    moto_root="$HOME/.cache/walsync-tools/moto-${MOTO_VERSION}"
    if [[ -f "$moto_root/$installed_marker" ]]; then
        echo "already installed: $moto_root"
    else
        command -v python3 >/dev/null || fail "python3 not found; moto's server needs Python 3.9+"
        echo "installing into $moto_root (a venv; about a minute, once)"
        rm -rf "$moto_root"
        python3 -m venv "$moto_root" \
            || fail "python3 -m venv $moto_root (on Debian/Ubuntu: apt-get install python3-venv)"
        "$moto_root/bin/pip" install --quiet --disable-pip-version-check \
            "moto[server]==${MOTO_VERSION}" \
            || fail "pip install moto[server]==${MOTO_VERSION}"
        [[ -x "$moto_root/bin/moto_server" ]] || fail "pip finished but moto_server is missing"
        touch "$moto_root/$installed_marker"
    fi
    export WALSYNC_MOTO_SERVER="$moto_root/bin/moto_server"
fi

section "s3rver ${S3RVER_VERSION} (S3 server for the integration tests)"
if [[ -n "${WALSYNC_S3RVER:-}" ]]; then
    [[ -x "$WALSYNC_S3RVER" ]] || fail "WALSYNC_S3RVER=$WALSYNC_S3RVER is not an executable file"
    echo "using WALSYNC_S3RVER=$WALSYNC_S3RVER"
else
    s3rver_root="$HOME/.cache/walsync-tools/s3rver-${S3RVER_VERSION}"
    if [[ -f "$s3rver_root/$installed_marker" ]]; then
        echo "already installed: $s3rver_root"
    else
        command -v npm >/dev/null || fail "npm not found; s3rver needs Node.js 18+ with npm"
        echo "installing into $s3rver_root (a few seconds, once)"
        rm -rf "$s3rver_root"
        mkdir -p "$s3rver_root"
        npm install --prefix "$s3rver_root" --no-audit --no-fund --loglevel=error \
            "s3rver@${S3RVER_VERSION}" \
            || fail "npm install s3rver@${S3RVER_VERSION}"
        [[ -x "$s3rver_root/node_modules/.bin/s3rver" ]] \
            || fail "npm finished but node_modules/.bin/s3rver is missing"
        touch "$s3rver_root/$installed_marker"
    fi
    export WALSYNC_S3RVER="$s3rver_root/node_modules/.bin/s3rver"
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
