#!/usr/bin/env python3
"""How often the application's own RESTART and TRUNCATE checkpoints stall
while walsync runs, and how long they take (issue 10; Litestream's #724).

A RESTART or TRUNCATE checkpoint waits (the application's busy timeout) for
every reader to be done with the WAL, then returns busy=1 if one still is.
walsync holds a read transaction so that no frame is checkpointed away before
it is shipped; once it has shipped everything, it should not be such a reader.

One process, the application, on a fresh database watched by `walsync watch`
(local-directory target, sync_interval 1 s, idle_release_after 1 h), with
busy_timeout 200 ms, in three patterns, alternating RESTART and TRUNCATE:
- caught up: 20 commits, then WAIT s (default 1.5: one sync_interval and
  some), then the checkpoint: walsync has shipped every commit;
- random: 20 commits, a pause drawn from 0 to 2 s, then the checkpoint;
- steady: 100 commits a second, a checkpoint every 0.5 s right after a
  commit: walsync has never shipped the newest commit.
Prints, per binary, pattern and mode, the calls that returned busy=1 and the
time the calls took (median and max). Then checks that walsync's backup
restores to exactly the application's rows.

Usage:
  python3 bench/checkpoint_stalls.py --bin new=target/release/walsync \
      --bin main=/path/to/main/walsync [--rounds 20] [--wait 1.5]
Stdlib only. Prints figures; exits 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rename_window import Tool, app_open, holds, rows, stop, wait_for  # noqa: E402


def checkpoint(c: sqlite3.Connection, mode: str) -> tuple[int, float]:
    """(busy, milliseconds) of one application checkpoint."""
    t = time.monotonic()
    busy = c.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0]
    return busy, (time.monotonic() - t) * 1000


def run(tool: Tool, root: Path, pattern: str, rounds: int, wait: float,
        seconds: float, rng: random.Random) -> tuple[dict, str]:
    """{mode: [(busy, ms), ...]} for one pattern, and the restore check."""
    work = Path(tempfile.mkdtemp(dir=root))
    db = work / "app.db"
    c = app_open(db)
    c.execute("PRAGMA busy_timeout=200")
    c.execute("INSERT INTO t(v) VALUES ('first')")
    p = tool.start(work, db)
    out: dict[str, list] = {"RESTART": [], "TRUNCATE": []}
    modes = ["RESTART", "TRUNCATE"]
    try:
        wait_for(lambda: holds(p.pid, db), f"{tool.kind} to hold the database")
        if pattern == "steady":
            t0 = time.monotonic()
            next_ck, n, k = t0 + 0.5, 0, 0
            while time.monotonic() - t0 < seconds:
                c.execute("INSERT INTO t(v) VALUES (?)", ("x" * 200,))
                n += 1
                if time.monotonic() >= next_ck:
                    out[modes[k % 2]].append(checkpoint(c, modes[k % 2]))
                    k += 1
                    next_ck += 0.5
                time.sleep(max(0.0, t0 + n / 100 - time.monotonic()))
        else:
            for k in range(rounds):
                for _ in range(20):
                    c.execute("INSERT INTO t(v) VALUES (?)", ("x" * 200,))
                time.sleep(wait if pattern == "caught up" else rng.uniform(0.0, 2.0))
                out[modes[k % 2]].append(checkpoint(c, modes[k % 2]))
        want = rows(db)
        c.close()
        time.sleep(1.5)
    finally:
        stop(p)
    restored = work / "restored.db"
    r = subprocess.run([tool.exe, "restore", "--dir", str(work / "backup"), "--prefix", "app",
                        "-o", str(restored)], capture_output=True, text=True)
    if r.returncode != 0:
        check = f"restore failed: {r.stderr.strip()[:200]}"
    else:
        got = rows(restored)
        check = "exact" if got == want else f"{len(got)} rows instead of {len(want)}"
    shutil.rmtree(work, ignore_errors=True)
    return out, check


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", action="append", default=[], metavar="LABEL=PATH",
                    help="a walsync binary to measure (repeatable)")
    ap.add_argument("--rounds", type=int, default=20, help="checkpoints per pattern")
    ap.add_argument("--wait", type=float, default=1.5,
                    help="seconds from the last commit to the checkpoint when caught up")
    ap.add_argument("--steady-seconds", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not args.bin:
        ap.error("give at least one --bin")
    root = Path(tempfile.mkdtemp(prefix="walsync-checkpoint-stalls-"))
    print(f"machine: {os.cpu_count()} cpus, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"Linux {platform.release()}, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}")
    print("busy_timeout 200 ms, sync_interval 1 s; busy=1 calls / calls, "
          "time per call median / max")
    try:
        for b in args.bin:
            label, _, path = b.partition("=")
            tool = Tool("walsync", str(Path(path).resolve()))
            for pattern in ("caught up", "random", "steady"):
                rng = random.Random(args.seed)
                res, check = run(tool, root, pattern, args.rounds, args.wait,
                                 args.steady_seconds, rng)
                parts = []
                for mode, calls in res.items():
                    busy = sum(b for b, _ in calls)
                    ms = [t for _, t in calls]
                    parts.append(f"{mode} busy {busy}/{len(calls)}, "
                                 f"{statistics.median(ms):.1f} / {max(ms):.1f} ms")
                print(f"{label:>8} {pattern:>9}: {'; '.join(parts)}; restore {check}",
                      flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
