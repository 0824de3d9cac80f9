#!/usr/bin/env bash
# Builds static, stripped walsync binaries for Linux (musl) and checks each
# one: an ELF for the right CPU, static (no interpreter, no shared
# libraries), at most 4,000,000 bytes, and the bundled SQLite built with the
# options of .cargo/config.toml. Fails (exit 1) if any check fails.
#
#   bash contrib/build-musl.sh                    # x86_64 (the default)
#   bash contrib/build-musl.sh --target aarch64   # Raspberry Pi 3/4/5 and other 64-bit ARM
#   bash contrib/build-musl.sh --target armv7     # 32-bit ARMv7 with hardware float
#   bash contrib/build-musl.sh --target all       # the three, one after the other
#
# --target also takes the Docker/buildx names (amd64, arm64, arm) and the
# full triples. Binaries land in target/TRIPLE/release/walsync
# (x86_64-unknown-linux-musl, aarch64-unknown-linux-musl,
# armv7-unknown-linux-musleabihf); CARGO_TARGET_DIR is honoured.
#
# Idempotent, on an x86_64 Debian machine with Rust (rustup): installs what
# is missing, from package registries only, and reuses what is there:
#   - every target: its Rust standard library (rustup target add);
#   - x86_64: Debian's musl-tools (the C compiler for the bundled SQLite and
#     ring); linked by GNU ld as a static-pie;
#   - aarch64, armv7: zig as the C compiler and linker, from PyPI's
#     `ziglang` (pip install --target ~/.cache/walsync-tools/ziglang-VERSION),
#     driven by `cargo-zigbuild` from crates.io (cargo install --root
#     ~/.cache/walsync-tools/cargo-zigbuild-VERSION); zig brings the musl
#     headers and C library of every target. The first install of
#     cargo-zigbuild compiles it: a few minutes, once.
#   - when rustup cannot provide a target's standard library (a rustup mirror
#     without it: seen for armv7-unknown-linux-musleabihf), it is built from
#     the toolchain's own rust-src with -Zbuild-std (RUSTC_BOOTSTRAP=1, the
#     same compiler version; needs `rustup component add rust-src`).
#
# The size settings (no unwind tables for the C code, the bundled SQLite's
# options, RELR relocations for the x86_64 static-pie) are in
# .cargo/config.toml, and build.rs links the x86_64 release binary with
# contrib/no-eh-frame.ld (no unwind tables for the Rust code), so a plain
# `cargo build --release --target ...` gets them too. Environment: MAX_BYTES overrides the 4,000,000-byte limit (for a
# measurement only; the limit is the one the README promises).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_BYTES=${MAX_BYTES:-4000000}
ZIGLANG_VERSION=0.17.0
CARGO_ZIGBUILD_VERSION=0.24.1
TOOLS="$HOME/.cache/walsync-tools"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit "${1:-2}"
}

fail() {
    echo "build-musl.sh: error: $*" >&2
    exit 1
}

want=x86_64
while (($# > 0)); do
    case "$1" in
        --target) want=${2:?--target needs a value}; shift 2 ;;
        --target=*) want=${1#--target=}; shift ;;
        -h | --help) usage 0 ;;
        *) echo "build-musl.sh: unknown argument: $1" >&2; usage 2 ;;
    esac
done

triple_of() {
    case "$1" in
        x86_64 | amd64 | x86_64-unknown-linux-musl) echo x86_64-unknown-linux-musl ;;
        aarch64 | arm64 | aarch64-unknown-linux-musl) echo aarch64-unknown-linux-musl ;;
        armv7 | arm | armhf | armv7-unknown-linux-musleabihf) echo armv7-unknown-linux-musleabihf ;;
        *) return 1 ;;
    esac
}

if [[ "$want" == all ]]; then
    triples=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf)
else
    t=$(triple_of "$want") || { echo "build-musl.sh: unknown target '$want' (x86_64, aarch64, armv7 or all)" >&2; exit 2; }
    triples=("$t")
fi

apt_install() {
    # Quietly first; `apt-get update` only when the package lists are stale.
    if ! apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1; then
        apt-get update >/dev/null
        apt-get install -y --no-install-recommends "$@" >/dev/null
    fi
}

# The Rust standard library for $1, as rustup ships it; else (exit 1) the
# caller builds it from rust-src.
have_prebuilt_std() {
    rustup target list --installed | grep -qx "$1" && return 0
    echo "rustup target add $1"
    if rustup target add "$1" >/dev/null 2>&1; then
        return 0
    fi
    echo "  rustup cannot provide the standard library for $1; it will be built from rust-src (-Zbuild-std)"
    rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
    return 1
}

zig_tools() {
    local zigdir="$TOOLS/ziglang-$ZIGLANG_VERSION"
    if [[ ! -x "$zigdir/ziglang/zig" ]]; then
        echo "installing zig $ZIGLANG_VERSION (PyPI ziglang) into $zigdir"
        command -v python3 >/dev/null || apt_install python3
        python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
        # --target: a private directory, so no virtualenv is needed and an
        # "externally managed" system Python (PEP 668) is left alone.
        python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
            --target "$zigdir" "ziglang==$ZIGLANG_VERSION"
        [[ -x "$zigdir/ziglang/zig" ]] || fail "pip installed ziglang but $zigdir/ziglang/zig is missing"
    fi
    local czb="$TOOLS/cargo-zigbuild-$CARGO_ZIGBUILD_VERSION"
    if [[ ! -x "$czb/bin/cargo-zigbuild" ]]; then
        echo "installing cargo-zigbuild $CARGO_ZIGBUILD_VERSION into $czb (compiles it: a few minutes, once)"
        # --force: a half-finished earlier install may have left its records
        # without the binary.
        cargo install --locked --force --quiet cargo-zigbuild --version "$CARGO_ZIGBUILD_VERSION" --root "$czb"
    fi
    export PATH="$zigdir/ziglang:$czb/bin:$PATH"
}

# SQLite's compile options (sqlite3_compileoption_get's list, kept in the
# binary as strings) against LIBSQLITE3_FLAGS in .cargo/config.toml: each
# -DSQLITE_X is there, each -USQLITE_X is not.
check_sqlite_options() {
    local bin=$1 opts flags f name bad=()
    opts=$(strings -n 4 "$bin" | grep -E '^[A-Z][A-Z0-9_]+(=.*)?$' | sort -u)
    flags=$(sed -n '/^LIBSQLITE3_FLAGS/,/"""$/p' .cargo/config.toml | grep -oE -- '-[DU]SQLITE_[A-Z0-9_]+(=[^ "\\]+)?')
    [[ -n "$flags" ]] || fail "no LIBSQLITE3_FLAGS found in .cargo/config.toml"
    grep -qx 'THREADSAFE=1' <<<"$opts" || fail "$bin: SQLite's compile options not found (strings)"
    for f in $flags; do
        name=${f#-?SQLITE_}
        case "$f" in
            -D*) grep -qx -- "$name" <<<"$opts" || bad+=("$f missing") ;;
            -U*) grep -qE -- "^${name}(=.*)?\$" <<<"$opts" && bad+=("$f but SQLite has $name") ;;
        esac
    done
    ((${#bad[@]} == 0)) || fail "$bin: the bundled SQLite is not built with .cargo/config.toml's LIBSQLITE3_FLAGS: ${bad[*]}"
    echo "sqlite options: $(wc -w <<<"$flags") flags of .cargo/config.toml checked"
}

# The x86_64 binary is linked with contrib/no-eh-frame.ld (build.rs):
# what is left of .eh_frame is crtbeginS.o's and crtendS.o's 80 bytes.
check_no_unwind_tables() {
    local bin=$1 hex eh
    # "[Nr] Name Type Address Off Size ...": the size, in hex.
    hex=$(readelf -SW "$bin" | sed -n 's/.* \.eh_frame  *PROGBITS  *[0-9a-f]*  *[0-9a-f]*  *\([0-9a-f]*\) .*/\1/p')
    eh=$((16#${hex:-0}))
    ((eh <= 1024)) || fail "$bin has $eh bytes of .eh_frame: build.rs did not link it with contrib/no-eh-frame.ld"
    echo "unwind tables: .eh_frame is $eh bytes (contrib/no-eh-frame.ld)"
}

# The CPU name readelf prints for each target.
machine_of() {
    case "$1" in
        x86_64-*) echo "Advanced Micro Devices X86-64" ;;
        aarch64-*) echo "AArch64" ;;
        armv7-*) echo "ARM" ;;
    esac
}

# The qemu user-mode emulator for a foreign target, if installed.
qemu_of() {
    case "$1" in
        aarch64-*) command -v qemu-aarch64-static || command -v qemu-aarch64 || true ;;
        armv7-*) command -v qemu-arm-static || command -v qemu-arm || true ;;
    esac
}

check_binary() {
    local triple=$1 bin=$2 size machine runner version
    [[ -f "$bin" ]] || fail "$bin was not built"
    command -v readelf >/dev/null || apt_install binutils
    machine=$(readelf -hW "$bin" | sed -n 's/^ *Machine: *//p')
    [[ "$machine" == "$(machine_of "$triple")" ]] || fail "$bin is for '$machine', not $triple"
    # Static: no program interpreter, no shared libraries.
    if readelf -lW "$bin" | grep -q 'INTERP'; then
        fail "$bin is not statically linked: it names a program interpreter"
    fi
    if readelf -dW "$bin" | grep -q '(NEEDED)'; then
        fail "$bin is not statically linked: it needs $(readelf -dW "$bin" | grep '(NEEDED)' | tr -s ' ' | cut -d' ' -f6- | tr '\n' ' ')"
    fi
    command -v file >/dev/null && echo "file: $(file -b "$bin")"
    check_sqlite_options "$bin"
    if [[ "$triple" == x86_64-* ]]; then check_no_unwind_tables "$bin"; fi
    size=$(stat -c %s "$bin")
    echo "walsync static binary: $bin, $size bytes ($(awk "BEGIN{printf \"%.2f\", $size/1048576}") MiB)"
    if ((size > MAX_BYTES)); then
        fail "$bin is $size bytes, over the limit of $MAX_BYTES bytes by $((size - MAX_BYTES)); see the size settings in .cargo/config.toml and Cargo.toml's [profile.release]"
    fi
    # It runs: natively, or under qemu when installed (contrib/cross-test.sh
    # installs it and runs the whole scenario).
    case "$triple" in
        x86_64-*) runner=() ;;
        *) runner=$(qemu_of "$triple"); runner=(${runner:+"$runner"}) ;;
    esac
    if [[ "$triple" == x86_64-* || ${#runner[@]} -gt 0 ]]; then
        version=$("${runner[@]}" "$bin" --version) || fail "$bin --version failed"
        grep -qx "target: $triple" <<<"$version" || fail "$bin --version does not say target $triple: $version"
        echo "$version" | sed 's/^/  /'
    else
        echo "(no qemu for $triple: not run; contrib/cross-test.sh installs it)"
    fi
    sizes+=("$triple $size")
}

sizes=()
times=()
for triple in "${triples[@]}"; do
    echo "==> $triple"
    start=$SECONDS
    build_std=()
    if ! have_prebuilt_std "$triple"; then
        export RUSTC_BOOTSTRAP=1
        build_std=(-Zbuild-std=std,panic_abort)
        # The musl start files (crt1.o, ...) and libunwind.a that rustc
        # links "self-contained" come with rustup's standard library, which
        # is what is missing: zig's own musl start files and libunwind then.
        rustflags_var="CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$triple")_RUSTFLAGS"
        export "$rustflags_var=-C link-self-contained=no"
    fi
    case "$triple" in
        x86_64-unknown-linux-musl)
            command -v x86_64-linux-musl-gcc >/dev/null || apt_install musl-tools
            cargo build --release --locked --target "$triple" "${build_std[@]}"
            ;;
        *)
            zig_tools
            cargo zigbuild --release --locked --target "$triple" "${build_std[@]}"
            ;;
    esac
    unset RUSTC_BOOTSTRAP "${rustflags_var:-RUSTC_BOOTSTRAP}"
    times+=("$triple $((SECONDS - start))")
    check_binary "$triple" "${CARGO_TARGET_DIR:-target}/$triple/release/walsync"
done

echo "==> summary (limit $MAX_BYTES bytes)"
for i in "${!sizes[@]}"; do
    read -r t s <<<"${sizes[$i]}"
    read -r _ secs <<<"${times[$i]}"
    printf '%-32s %9d bytes  %4d s (install + build)\n' "$t" "$s" "$secs"
done
