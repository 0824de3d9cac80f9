#!/usr/bin/env bash
# Runs the static walsync binaries of other architectures under qemu
# user-mode emulation through the crash scenario of bench/soak_crash.py, and
# restores every backup with every architecture. Not part of contrib/test.sh
# (it takes minutes of emulated CPU); run it after changing anything that
# touches formats, offsets, sizes or system calls.
#
#   bash contrib/cross-test.sh                       # writers x86_64, aarch64, armv7
#   bash contrib/cross-test.sh --writers aarch64 --cycles 20
#   bash contrib/cross-test.sh --no-build            # use the binaries in target/
#   bash contrib/cross-test.sh --big                 # also a 4.1 GB database on armv7
#
# For each writer architecture W: `walsync watch` is W's static binary
# (under qemu-W-static unless x86_64) on 3 WAL-mode databases that Python
# writers fill (random transaction sizes, checkpoints of every mode,
# autocheckpoint, and one 20 MiB transaction per database: more than one
# 16 MiB segment), against s3s-fs running natively; watch is SIGKILLed at
# random moments and restarted --cycles times, then stopped with SIGTERM.
# Then each of the three binaries (x86_64, aarch64, armv7) runs `restore` of
# every database, `restore-all` and `verify` (from the bucket flags alone),
# and every restored file must be byte-identical to the checkpointed source
# and hold every committed row. Prints rows, kills, sizes, the peak RSS of
# watch (under emulation: qemu included) and a table; exits 1 on any loss,
# difference or failed command.
#
# --big adds bench/sparse_4gib.py on armv7: a sparse 4.1 GB database (a few
# hundred KB on disk) whose new rows land past 4 GiB, snapshotted, shipped,
# restored and compared by the 32-bit binary (needs ~9 GB of free disk for
# a minute: the restored copy is not sparse).
#
# Idempotent: installs Debian's qemu-user-static and s3s-fs (as
# contrib/test.sh does) when missing, and builds the binaries with
# contrib/build-musl.sh --target all unless --no-build.
set -euo pipefail
cd "$(dirname "$0")/.."

S3S_FS_VERSION=0.14.1
writers=(x86_64 aarch64 armv7)
cycles=6
databases=3
max_run=6
build=1
big=0
seed=${SEED:-$(date +%s)}

while (($# > 0)); do
    case "$1" in
        --writers) IFS=, read -r -a writers <<<"${2:?}"; shift 2 ;;
        --cycles) cycles=${2:?}; shift 2 ;;
        --databases) databases=${2:?}; shift 2 ;;
        --max-run) max_run=${2:?}; shift 2 ;;
        --seed) seed=${2:?}; shift 2 ;;
        --no-build) build=0; shift ;;
        --big) big=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "cross-test.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

fail() {
    echo "cross-test.sh: error: $*" >&2
    exit 1
}

triple_of() {
    case "$1" in
        x86_64) echo x86_64-unknown-linux-musl ;;
        aarch64) echo aarch64-unknown-linux-musl ;;
        armv7) echo armv7-unknown-linux-musleabihf ;;
        *) fail "unknown architecture '$1' (x86_64, aarch64 or armv7)" ;;
    esac
}

runner_of() {
    case "$1" in
        x86_64) echo "" ;;
        aarch64) echo qemu-aarch64-static ;;
        armv7) echo qemu-arm-static ;;
    esac
}

if ! command -v qemu-aarch64-static >/dev/null || ! command -v qemu-arm-static >/dev/null; then
    echo "installing qemu-user-static (Debian)"
    if ! apt-get install -y --no-install-recommends qemu-user-static >/dev/null 2>&1; then
        apt-get update >/dev/null
        apt-get install -y --no-install-recommends qemu-user-static >/dev/null
    fi
fi
echo "qemu: $(qemu-aarch64-static --version | head -1)"

if [[ -z "${WALSYNC_S3S_FS:-}" ]]; then
    s3s_root="$HOME/.cache/walsync-tools/s3s-fs-${S3S_FS_VERSION}"
    if [[ ! -x "$s3s_root/bin/s3s-fs" ]]; then
        echo "installing s3s-fs ${S3S_FS_VERSION} into $s3s_root (a few minutes, once)"
        cargo install --locked --force s3s-fs --version "$S3S_FS_VERSION" --features binary --root "$s3s_root"
    fi
    export WALSYNC_S3S_FS="$s3s_root/bin/s3s-fs"
fi

if ((build)); then
    bash contrib/build-musl.sh --target all
fi
bins=()
for arch in x86_64 aarch64 armv7; do
    bin="${CARGO_TARGET_DIR:-target}/$(triple_of "$arch")/release/walsync"
    [[ -x "$bin" ]] || fail "$bin is missing: run contrib/build-musl.sh --target $arch"
    runner=$(runner_of "$arch")
    # The binary says what it is, under emulation too.
    $runner "$bin" --version | grep -qx "target: $(triple_of "$arch")" || fail "$bin --version does not name $(triple_of "$arch")"
    echo "$arch: $bin, $(stat -c %s "$bin") bytes, $($runner "$bin" --version | tr '\n' ' ')"
    bins+=("$arch=$runner:$bin")
done

results=$(mktemp -d "${TMPDIR:-/tmp}/walsync-cross-XXXXXX")
trap 'rm -rf "$results"' EXIT
status=0
for w in "${writers[@]}"; do
    triple=$(triple_of "$w")
    runner=$(runner_of "$w")
    echo
    echo "==> watch on $w ($triple${runner:+ under $runner}), $cycles SIGKILLs, seed $seed"
    restorers=()
    for b in "${bins[@]}"; do
        restorers+=(--restorer "$b")
    done
    start=$SECONDS
    if ! python3 bench/soak_crash.py --s3 --cycles "$cycles" --databases "$databases" --max-run "$max_run" \
        --big-txn-mib 20 --seed "$seed" --walsync-bin "${CARGO_TARGET_DIR:-target}/$triple/release/walsync" \
        --runner "$runner" "${restorers[@]}" --json "$results/$w.json"; then
        status=1
    fi
    echo "($((SECONDS - start)) s)"
done

if ((big)); then
    echo
    echo "==> a database past 4 GiB on armv7 (under qemu-arm-static)"
    python3 bench/sparse_4gib.py --runner qemu-arm-static \
        --walsync-bin "${CARGO_TARGET_DIR:-target}/armv7-unknown-linux-musleabihf/release/walsync" || status=1
fi

echo
echo "==> summary"
python3 - "$results" "${writers[@]}" <<'EOF'
import json, sys
from pathlib import Path
res = Path(sys.argv[1])
print("| watch on | kills | transactions | rows | lost | database bytes | peak RSS of watch | byte-identical restores by each binary: restore / restore-all; verify exit code |")
print("|---|---:|---:|---:|---:|---|---:|---|")
for w in sys.argv[2:]:
    p = res / f"{w}.json"
    if not p.exists():
        print(f"| {w} | run failed before the figures | | | | | | |")
        continue
    r = json.loads(p.read_text())
    by = "; ".join(f"{x['by']}: {x['restore_identical']}/{len(r['db_bytes'])} / "
                   f"{x['restore_all_identical']}/{len(r['db_bytes'])}; {x['verify']}"
                   for x in r["restores"])
    rss = f"{r['peak_rss_kib'] / 1024:.0f} MiB" if r["peak_rss_kib"] else "-"
    print(f"| {w} | {r['kills']} | {r['transactions']} | {r['rows']} | {r['lost_rows']} | "
          f"{', '.join(str(b) for b in r['db_bytes'])} | {rss} | {by} |")
    for f in r["failed"]:
        print(f"FAILED ({w}): {f}")
EOF
if ((status)); then
    echo "cross-test.sh: FAILED (see above)" >&2
fi
exit $status
