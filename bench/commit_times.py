#!/usr/bin/env python3
"""How close each commit's recorded time is to when it was made, and how
exact `restore --timestamp` is (README "Point in time").

A writer commits one row every ~20 ms in bursts, with 300 ms pauses, and
records the time just before each INSERT and just after it returns, while
`walsync watch` replicates the database to a directory (the storage plays no
part in the dating). Then `walsync history --json` gives each commit's
recorded time, and `restore --timestamp T` is run for T 150 ms into each
pause and at random instants. Prints:
- recorded time minus the writer's end time (ms): min, p50, p99, max
  (negative: the commit frame was in the WAL before COMMIT returned, which
  then synced the WAL);
- commits dated before their writer began (must be 0);
- instants where the restore held exactly the commits the rule asks for
  (every commit ended by T - 10 ms, none begun after T).

    python3 bench/commit_times.py [--walsync PATH (default: the newer of
        target/release and target/debug)] [--sync-interval 1s]
        [--bursts 20] [--per-burst 15] [--random-instants 50]
        [--synchronous FULL|NORMAL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, log, percentile  # noqa: E402


def rfc3339(ms: int) -> str:
    t = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_ms(s: str) -> int:
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return round(t.timestamp() * 1000)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    built = [p for p in (REPO / "target/release/walsync", REPO / "target/debug/walsync") if p.exists()]
    default = max(built, key=lambda p: p.stat().st_mtime) if built else REPO / "target/release/walsync"
    ap.add_argument("--walsync", type=Path, default=default)
    ap.add_argument("--sync-interval", default="1s")
    ap.add_argument("--bursts", type=int, default=20)
    ap.add_argument("--per-burst", type=int, default=15)
    ap.add_argument("--random-instants", type=int, default=50)
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    args = ap.parse_args()
    if not args.walsync.exists():
        sys.exit(f"{args.walsync} not found: cargo build --release, or pass --walsync")

    ws = Path(tempfile.mkdtemp(prefix="walsync-commit-times-"))
    db = ws / "app.db"
    cfg = ws / "walsync.toml"
    cfg.write_text(
        f'sync_interval = "{args.sync_interval}"\n[storage]\ndir = "{ws / "backup"}"\n'
        f'[[databases]]\npath = "{db}"\nprefix = "bench/app"\n'
    )
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute(f"PRAGMA synchronous={args.synchronous}")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    watch = subprocess.Popen([str(args.walsync), "watch", "-c", str(cfg)],
                             stdout=open(ws / "watch.log", "w"), stderr=subprocess.STDOUT)
    try:
        time.sleep(1.5)
        log(f"writing {args.bursts} bursts of {args.per_burst} commits, sync_interval {args.sync_interval}")
        timed = []  # (id, start_us, end_us)
        pauses = []
        for b in range(args.bursts):
            for i in range(args.per_burst):
                rid = b * args.per_burst + i + 1
                start = time.time_ns() // 1000
                c.execute("INSERT INTO t(id, v) VALUES (?, ?)", (rid, "x" * 100))
                timed.append((rid, start, time.time_ns() // 1000))
                time.sleep(0.02)
            pauses.append(timed[-1][2] // 1000 + 150)
            time.sleep(0.3)
        interval_s = float(args.sync_interval.rstrip("ms")) / (1000 if args.sync_interval.endswith("ms") else 1)
        time.sleep(interval_s + 1.5)
    finally:
        watch.send_signal(signal.SIGTERM)
        watch.wait(timeout=60)

    out = subprocess.run([str(args.walsync), "history", "--dir", str(ws / "backup"),
                          "--prefix", "bench/app", "--json"], capture_output=True, text=True, check=True)
    commits = [i for i in json.loads(out.stdout) if i["kind"] == "commit"][-len(timed):]
    if len(commits) != len(timed):
        sys.exit(f"history holds {len(commits)} commits, {len(timed)} were written")
    late = []
    before_start = 0
    for (rid, start, end), item in zip(timed, commits):
        ms = parse_ms(item["time"])
        late.append(ms - end / 1000)
        if ms * 1000 < start:
            before_start += 1

    rng = random.Random(7)
    first, last = timed[0][1] // 1000, timed[-1][2] // 1000
    instants = pauses + [rng.randint(first, last) for _ in range(args.random_instants)]
    exact = 0
    misses = []
    for n, t in enumerate(instants):
        o = ws / f"at-{n}.db"
        r = subprocess.run([str(args.walsync), "restore", "--dir", str(ws / "backup"), "--prefix",
                            "bench/app", "-o", str(o), "--timestamp", rfc3339(t)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"restore to {rfc3339(t)}: {r.stderr}")
        k = sqlite3.connect(o).execute("SELECT count(*) FROM t").fetchone()[0]
        must = sum(1 for x in timed if x[2] + 10_000 <= t * 1000)
        may = sum(1 for x in timed if x[1] <= t * 1000)
        if must <= k <= may:
            exact += 1
        else:
            misses.append(f"{rfc3339(t)}: {k} rows, {must} to {may} expected")

    print(f"walsync {args.walsync}, sync_interval {args.sync_interval}, synchronous={args.synchronous}, "
          f"{len(timed)} commits")
    print(f"recorded time - writer's end (ms): min {min(late):.1f}, p50 {percentile(late, 50):.1f}, "
          f"p99 {percentile(late, 99):.1f}, max {max(late):.1f}")
    print(f"commits dated before their writer began: {before_start}")
    print(f"restore --timestamp exact at {exact} of {len(instants)} instants "
          f"({len(pauses)} at 150 ms into a pause, {args.random_instants} random)")
    for m in misses:
        print(f"  miss: {m}")
    subprocess.run(["rm", "-rf", str(ws)])
    return 0 if before_start == 0 and not misses else 1


if __name__ == "__main__":
    sys.exit(main())
