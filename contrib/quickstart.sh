#!/usr/bin/env bash
# walsync in one minute, with no server: back up an example SQLite database
# to a local directory while an application writes to it, stop walsync,
# restore, and check that the copy matches.
#
#   bash contrib/quickstart.sh [DEMO_DIR]      (default: ./demo in the repo)
#
# DEMO_DIR is wiped and recreated (only if it does not exist yet or was made
# by this script). Needs cargo and python3. Everything it does is printed;
# walsync's own log goes to DEMO_DIR/walsync.log.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
demo_arg="${1:-$repo/demo}"
marker=".walsync-quickstart"

say() {
    printf '\n==> %s\n' "$*"
}

fail() {
    printf '\nquickstart: FAILED: %s\n' "$*" >&2
    if [[ -n "${demo:-}" && -f "$demo/walsync.log" ]]; then
        printf -- '--- last lines of %s ---\n' "$demo/walsync.log" >&2
        tail -n 20 "$demo/walsync.log" >&2 || true
    fi
    exit 1
}

command -v cargo >/dev/null || fail "cargo not found; install Rust first"
command -v python3 >/dev/null || fail "python3 not found"

if [[ -e "$demo_arg" && ! -f "$demo_arg/$marker" ]]; then
    fail "$demo_arg exists and was not made by this script; remove it or pass another directory"
fi

say "building walsync (cargo build --release)"
(cd "$repo" && cargo build --release)
target_dir="$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
walsync="$target_dir/release/walsync"
[[ -x "$walsync" ]] || fail "$walsync was not built"

rm -rf "$demo_arg"
mkdir -p "$demo_arg"
demo="$(cd "$demo_arg" && pwd)"
touch "$demo/$marker"
cd "$demo"

say "creating $demo/app.db (WAL mode) and $demo/walsync.toml"
python3 - app.db <<'PY' || fail "cannot create the example database"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print("journal_mode:", db.execute("PRAGMA journal_mode=WAL").fetchone()[0])
db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount_cents INTEGER NOT NULL)")
db.executemany("INSERT INTO orders (customer, amount_cents) VALUES (?, ?)",
               [(f"customer-{i % 7}", 100 + i) for i in range(50)])
db.commit()
db.close()
PY

cat > walsync.toml <<'TOML'
# Back up ./app.db to the local directory ./backup (paths are relative to
# this file). See walsync.toml.example in the repository for every setting.
sync_interval = "1s"

[storage]
dir = "backup"

[[databases]]
path = "app.db"
prefix = "demo/app"
TOML
cat walsync.toml

say "starting: walsync watch -c walsync.toml (log: $demo/walsync.log)"
"$walsync" watch -c walsync.toml >walsync.log 2>&1 &
watch_pid=$!
stop_watch() {
    if [[ -n "${watch_pid:-}" ]] && kill -0 "$watch_pid" 2>/dev/null; then
        kill -TERM "$watch_pid" 2>/dev/null || true
        wait "$watch_pid" 2>/dev/null || true
    fi
}
trap stop_watch EXIT

# The first sync uploads a full snapshot (a new generation).
for _ in $(seq 1 100); do
    if [[ -n "$(find backup -name '*.snap' 2>/dev/null | head -n 1)" ]]; then
        break
    fi
    kill -0 "$watch_pid" 2>/dev/null || fail "walsync watch exited early"
    sleep 0.1
done
[[ -n "$(find backup -name '*.snap' 2>/dev/null | head -n 1)" ]] \
    || fail "no snapshot in $demo/backup after 10s"
echo "first snapshot uploaded"

say "the application writes: 200 transactions, a TRUNCATE checkpoint, 100 more"
python3 - app.db <<'PY' || fail "the example writer failed"
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
for i in range(200):
    db.execute("INSERT INTO orders (customer, amount_cents) VALUES (?, ?)",
               (f"customer-{i % 7}", 1000 + i))
    db.commit()
    if i % 50 == 49:
        time.sleep(0.3)   # let walsync ship a few segments along the way
db.execute("UPDATE orders SET amount_cents = amount_cents + 1 WHERE id % 3 = 0")
db.commit()
# The application's own checkpoint. While walsync holds its read transaction
# a TRUNCATE (or RESTART) checkpoint cannot finish: it waits for the busy
# timeout and then reports busy=1. Nothing is lost; walsync checkpoints the
# WAL itself when it reaches checkpoint_threshold.
db.execute("PRAGMA busy_timeout = 200")
busy, log_frames, done = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
print(f"app: PRAGMA wal_checkpoint(TRUNCATE) -> busy={busy}, log={log_frames}, checkpointed={done}")
for i in range(100):
    db.execute("INSERT INTO orders (customer, amount_cents) VALUES (?, ?)",
               (f"customer-{i % 7}", 5000 + i))
    db.commit()
db.execute("DELETE FROM orders WHERE id % 10 = 0")
db.commit()
print("app: rows now:", db.execute("SELECT count(*) FROM orders").fetchone()[0])
db.close()
PY

say "stopping walsync with SIGTERM (it ships what is committed, then exits 0)"
kill -TERM "$watch_pid"
status=0
wait "$watch_pid" || status=$?
watch_pid=
[[ "$status" -eq 0 ]] || fail "walsync watch exited with status $status"
cat walsync.log

say "walsync list -c walsync.toml"
"$walsync" list -c walsync.toml || fail "walsync list"

say "walsync restore -c walsync.toml --prefix demo/app -o restored.db"
"$walsync" restore -c walsync.toml --prefix demo/app -o restored.db || fail "walsync restore"

say "comparing app.db and restored.db"
python3 - app.db restored.db <<'PY' || fail "restored.db does not match app.db"
import hashlib, sqlite3, sys

def describe(path):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    rows = db.execute("SELECT id, customer, amount_cents FROM orders ORDER BY id").fetchall()
    db.close()
    digest = hashlib.sha256(repr(rows).encode()).hexdigest()[:16]
    return integrity, len(rows), digest

original, restored = describe(sys.argv[1]), describe(sys.argv[2])
for name, (integrity, count, digest) in (("app.db", original), ("restored.db", restored)):
    print(f"{name:12} integrity_check={integrity} rows={count} sha256(rows)={digest}")
if restored[0] != "ok":
    sys.exit("restored.db failed PRAGMA integrity_check")
if original != restored:
    sys.exit("restored.db differs from app.db")
PY

printf '\nquickstart OK: restored.db matches app.db (backup in %s/backup)\n' "$demo"
