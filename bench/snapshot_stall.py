#!/usr/bin/env python3
"""The application's commit latency while walsync or Litestream snapshots a
large database, side by side.

A database of --size-mib MiB (default 1024; 64 KiB random blobs, so nothing
compresses) is copied fresh for each tool run. An application process
commits one small INSERT every --interval-ms (default 10) with
`synchronous=NORMAL` and a 30 s busy timeout, timing each commit (BEGIN
IMMEDIATE to COMMIT), for the whole run:

  1. idle window (--idle s, default 10): the tool is not running;
  2. the tool starts on an empty bucket, so its first act is a full snapshot
     of the database (walsync `watch`, Litestream `replicate`, both with a
     1 s sync interval), through the same S3 path (s3s-fs on loopback, or
     with --shape LAT_MS:MBPS through bench/shape_proxy.py);
  3. the snapshot window: from the tool's start until the bucket holds at
     least 90 % of the database's size (polled every 0.1 s), then --after s
     more; then the tool is stopped (SIGTERM).

Per run and tool: commits and their latency p50/p99/max in the idle window,
in the snapshot window and in the --after window; the ratio of the snapshot
window's p99 to the idle window's (the target is <= 2). A commit that waits
for a lock shows up as a latency spike: Litestream holds SQLite's write lock
while it copies the database (its issue #1332); walsync snapshots from its
read transaction. Medians over --runs runs, tools interleaved run by run.

  python3 bench/snapshot_stall.py --shape 30:80             # 1 GiB, 3 runs
  python3 bench/snapshot_stall.py --quick                   # 64 MiB, 1 run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
from common import (S3Server, add_common_args, f, finish, header_md, litestream_s3_config, log, md_table, med,
                    percentile, prepare_binaries, ratio, stop_process, walsync_s3_config, workspace)

BLOB = 64 * 1024


def make_db(path: Path, mib: int) -> None:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
    c.execute("CREATE TABLE app (id INTEGER PRIMARY KEY, t REAL NOT NULL)")
    rows = mib * 1024 * 1024 // BLOB
    for start in range(0, rows, 1024):
        c.execute("BEGIN")
        for _ in range(start, min(rows, start + 1024)):
            c.execute("INSERT INTO blobs(v) VALUES (?)", (os.urandom(BLOB),))
        c.execute("COMMIT")
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


def app_main(db: str, interval_ms: float, out: str) -> None:
    """The application (run as a subprocess): commits until SIGTERM, then
    writes [(start, seconds), ...] as JSON to `out`."""
    import signal

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    c = sqlite3.connect(db, isolation_level=None, timeout=30)
    c.execute("PRAGMA synchronous=NORMAL")
    times = []
    nxt = time.time()
    while not stop:
        t0 = time.time()
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO app(t) VALUES (?)", (t0,))
        c.execute("COMMIT")
        times.append((t0, time.time() - t0))
        nxt += interval_ms / 1000
        time.sleep(max(0.0, nxt - time.time()))
    c.close()
    Path(out).write_text(json.dumps(times))


def bucket_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def stats(lat: list[float]) -> dict:
    ms = [x * 1000 for x in lat]
    return {"commits": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
            "max_ms": max(ms) if ms else None}


def run_one(tool: str, bin_path: Path, template: Path, base: Path, run: int, args) -> dict:
    ws = Path(tempfile.mkdtemp(prefix=f"stall-{tool}-r{run}-", dir=base))
    db = ws / "big.db"
    shutil.copyfile(template, db)
    # The copy's writeback must not land in the measured windows: the
    # application's WAL writes would wait behind it, whichever tool runs.
    os.sync()
    size = db.stat().st_size
    server = app = proc = None
    res: dict = {"tool": tool, "run": run}
    try:
        server = S3Server(ws, shape=args.shape)
        if tool == "walsync":
            cfg = walsync_s3_config(ws / "w.toml", server.endpoint, [(db, "big")])
            cmd = [str(bin_path), "watch", "-c", str(cfg)]
        else:
            cfg = litestream_s3_config(ws / "l.yml", server.endpoint, [(db, "big")])
            cmd = [str(bin_path), "replicate", "-config", str(cfg)]
        out = ws / "app.json"
        app = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_app", str(db),
                                str(args.interval_ms), str(out)], start_new_session=True)
        time.sleep(args.idle)
        t_start = time.time()
        with open(ws / "tool.log", "wb") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=server.env())
            t_done = None
            while time.time() - t_start < args.timeout:
                if bucket_bytes(server.bucket_dir) >= 0.9 * size:
                    t_done = time.time()
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
            res["snapshot_s"] = round(t_done - t_start, 2) if t_done else None
            t_end = (t_done or time.time())
            time.sleep(args.after)
            stop_process(proc, 60)
            proc = None
        stop_process(app, 30)
        app = None
        times = json.loads(out.read_text())
        res["idle"] = stats([d for t, d in times if t < t_start])
        res["snapshot"] = stats([d for t, d in times if t_start <= t < t_end])
        res["after"] = stats([d for t, d in times if t_end <= t < t_end + args.after])
        res["p99_ratio"] = ratio(res["snapshot"]["p99_ms"], res["idle"]["p99_ms"])
        res["size_mib"] = round(size / 1048576)
    finally:
        for p in (proc, app):
            if p is not None:
                stop_process(p, 10)
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    return res


def markdown(ctx: dict, results: list[dict]) -> str:
    L = header_md(ctx, "Commit latency during a snapshot: walsync vs Litestream")
    a = ctx["args"]
    L += [f"- Workload: a {ctx['size_mib']} MiB database (64 KiB random blobs), an application committing one "
          f"small INSERT every {a['interval_ms']:g} ms (synchronous=NORMAL); {a['idle']:g} s idle without the "
          f"tool, then the tool starts on an empty bucket (a full snapshot first) and runs until the bucket holds "
          f"90 % of the database, plus {a['after']:g} s; {a['runs']} run(s), medians over runs", ""]
    rows = []
    by_tool: dict[str, list[dict]] = {}
    for r in results:
        by_tool.setdefault(r["tool"], []).append(r)
    for tool, rs in by_tool.items():
        def m(path):
            vals = []
            for r in rs:
                v = r
                for k in path:
                    v = v.get(k) if isinstance(v, dict) else None
                vals.append(v)
            return med([v for v in vals if v is not None])
        rows.append([tool, f(m(["snapshot_s"])), f(m(["idle", "p99_ms"])), f(m(["snapshot", "commits"]), 0),
                     f(m(["snapshot", "p50_ms"])), f(m(["snapshot", "p99_ms"])), f(m(["snapshot", "max_ms"])),
                     f(m(["after", "p99_ms"])), f(m(["p99_ratio"]), 2)])
    L.append(md_table(["tool", "snapshot s", "idle p99 ms", "commits during", "during p50 ms", "during p99 ms",
                       "during max ms", "after p99 ms", "p99 during / idle"], rows))
    return "\n".join(L) + "\n"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_app":
        app_main(sys.argv[2], float(sys.argv[3]), sys.argv[4])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--interval-ms", type=float, default=10)
    ap.add_argument("--idle", type=float, default=10, help="idle window before the tool starts, s")
    ap.add_argument("--after", type=float, default=5, help="window after the snapshot, s")
    ap.add_argument("--timeout", type=float, default=600, help="limit for the snapshot, s")
    ap.add_argument("--tools", default="walsync,litestream")
    ap.add_argument("--quick", action="store_true", help="64 MiB, 1 run")
    add_common_args(ap, runs=3)
    args = ap.parse_args()
    if args.quick:
        ap.set_defaults(size_mib=64, runs=1, idle=5)
        args = ap.parse_args()
    names = [t.strip() for t in args.tools.split(",") if t.strip()]
    results: list[dict] = []
    with workspace(args, "walsync-stall-") as base:
        bins, ctx = prepare_binaries(args, base)
        template = base / "template.db"
        t = time.monotonic()
        make_db(template, args.size_mib)
        log(f"{args.size_mib} MiB database made in {time.monotonic() - t:.0f}s")
        ctx["size_mib"] = round(template.stat().st_size / 1048576)
        try:
            for run in range(1, args.runs + 1):
                for name in names:
                    r = run_one(name, bins[name], template, base, run, args)
                    log(f"run {run} {name}: snapshot {r.get('snapshot_s')}s; idle {r.get('idle')}; "
                        f"during {r.get('snapshot')}; after {r.get('after')}")
                    results.append(r)
        except KeyboardInterrupt:
            log("interrupted; reporting what was measured")
    md = markdown(ctx, results)
    print(md)
    finish(ctx, results, md, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
