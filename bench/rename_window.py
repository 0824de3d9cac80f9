#!/usr/bin/env python3
"""How soon after the application's last close a database can be replaced by
rename under walsync (README "Replacing a database"). (How often the
application's own RESTART/TRUNCATE checkpoints stall: bench/checkpoint_stalls.py.)

Window: for each delay, N rounds of the issue's steps on a fresh database
held by a running `walsync watch` (local-directory target, sync_interval 1s,
idle_release_after 1h, so that only the last close can make walsync let go):
300 rows, walsync holds the database, then 50 inserts and a DELETE of a
third, `VACUUM INTO x.db`, the application's only connection closed, and
`mv x.db app.db` DELAY ms after the close ("after close"), or after the last
commit, made after the VACUUM INTO, right before the close ("after commit").
The application then opens app.db again; the round is corrupt if it cannot,
if `PRAGMA integrity_check` is not ok, or if the rows are not those of x.db.
With --max-size (e.g. 16KiB, below the test database's few hundred KB),
walsync's `idle_release_max_size`: the window of a database larger than it.

Usage:
  python3 bench/rename_window.py --bin new=target/release/walsync \
      --bin main=/path/to/main/walsync [--litestream PATH] [--runs 10]
Stdlib only. Prints figures; exits 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DELAYS_MS = [0, 1, 2, 5, 10, 20, 50, 100]


def holds(pid: int, db: Path) -> bool:
    """Whether process `pid` has the database's -shm or -wal open (an SQLite
    connection; walsync keeps only the database file's descriptor once it
    has let go)."""
    side = {f"{db}-shm", f"{db}-wal"}
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in side:
                    return True
            except OSError:
                pass
    except OSError:
        pass
    return False


def wait_for(cond, what: str, timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"waited {timeout}s for {what}")
        time.sleep(0.01)


def app_open(db: Path) -> sqlite3.Connection:
    c = sqlite3.connect(db, isolation_level=None, timeout=5)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    return c


def rows(db: Path) -> list:
    c = sqlite3.connect(db)
    try:
        return c.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        c.close()


class Tool:
    """A replicator started on one database: walsync (a binary) or Litestream."""

    def __init__(self, kind: str, exe: str, max_size: str | None = None):
        self.kind, self.exe, self.max_size = kind, exe, max_size

    def start(self, work: Path, db: Path) -> subprocess.Popen:
        if self.kind == "litestream":
            cfg = work / "litestream.yml"
            cfg.write_text(f"dbs:\n  - path: {db}\n    replica:\n      type: file\n"
                           f"      path: {work / 'backup'}\n      sync-interval: 1s\n")
            cmd = [self.exe, "replicate", "-config", str(cfg)]
        else:
            cfg = work / "walsync.toml"
            limit = f'idle_release_max_size = "{self.max_size}"\n' if self.max_size else ""
            cfg.write_text('sync_interval = "1s"\nidle_release_after = "1h"\n' + limit +
                           f'[storage]\ndir = "{work / "backup"}"\n'
                           f'[[databases]]\npath = "{db}"\nprefix = "app"\n')
            cmd = [self.exe, "watch", "--config", str(cfg)]
        log = open(work / "tool.log", "w")
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work)


def stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def one_round(tool: Tool, root: Path, delay_ms: int, after: str) -> str:
    """One rename; returns "ok" or what went wrong."""
    work = Path(tempfile.mkdtemp(dir=root))
    db, new = work / "app.db", work / "x.db"
    c = app_open(db)
    for i in range(1, 301):
        c.execute("INSERT INTO t(id, v) VALUES (?, ?)", (i, "v" * (i % 97 * 20)))
    p = tool.start(work, db)
    try:
        wait_for(lambda: holds(p.pid, db), f"{tool.kind} to hold the database")
        for i in range(1000, 1050):
            c.execute("INSERT INTO t(id, v) VALUES (?, ?)", (i, "w" * (i % 97 * 20)))
        c.execute("DELETE FROM t WHERE id % 3 = 0")
        if after == "commit":
            c.execute(f"VACUUM INTO '{new}'")
            c.execute("INSERT INTO t(id, v) VALUES (5000, 'last')")
            t = time.monotonic()
            c.close()
        else:
            c.execute(f"VACUUM INTO '{new}'")
            c.close()
            t = time.monotonic()
        expected = rows(new)
        time.sleep(max(0.0, t + delay_ms / 1000 - time.monotonic()))
        os.rename(new, db)
        try:
            a = app_open(db)
            ok = a.execute("PRAGMA integrity_check").fetchone()[0]
            got = a.execute("SELECT id, v FROM t ORDER BY id").fetchall()
            a.close()
        except sqlite3.Error as e:
            return f"error: {e}"
        if ok != "ok":
            return "integrity: " + ok.splitlines()[-1][:60]
        if got != expected:
            return f"rows: {len(got)} instead of {len(expected)}"
        return "ok"
    finally:
        stop(p)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", action="append", default=[], metavar="LABEL=PATH",
                    help="a walsync binary to measure (repeatable)")
    ap.add_argument("--litestream", metavar="PATH", help="also measure this litestream binary")
    ap.add_argument("--runs", type=int, default=10, help="rounds per delay")
    ap.add_argument("--litestream-runs", type=int, default=3)
    ap.add_argument("--delays", default=",".join(map(str, DELAYS_MS)))
    ap.add_argument("--max-size", metavar="SIZE",
                    help="walsync's idle_release_max_size (e.g. 16KiB: the database is larger)")
    ap.add_argument("--after", default="close,commit",
                    help="after what the delay runs: close, commit or both")
    args = ap.parse_args()
    tools = []
    for b in args.bin:
        label, _, path = b.partition("=")
        tools.append((label, Tool("walsync", str(Path(path).resolve()), args.max_size), args.runs))
    if args.litestream:
        tools.append(("litestream", Tool("litestream", args.litestream), args.litestream_runs))
    if not tools:
        ap.error("give at least one --bin or --litestream")
    delays = [int(d) for d in args.delays.split(",")]
    root = Path(tempfile.mkdtemp(prefix="walsync-rename-window-"))
    if args.max_size:
        print(f"walsync's idle_release_max_size: {args.max_size}")
    print(f"machine: {os.cpu_count()} cpus, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"Linux {platform.release()}, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}")
    try:
        for label, tool, runs in tools:
            for after in args.after.split(","):
                print(f"\n{label}: rename DELAY ms after the application's {after}, "
                      f"{runs} rounds each: corrupt rounds")
                for d in delays:
                    outcomes = [one_round(tool, root, d, after) for _ in range(runs)]
                    bad = [o for o in outcomes if o != "ok"]
                    what = f"  ({'; '.join(sorted(set(bad)))[:100]})" if bad else ""
                    print(f"  {d:4d} ms: {len(bad)}/{runs}{what}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
