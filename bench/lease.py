#!/usr/bin/env python3
"""What the lease (README "One writer per prefix") costs in S3 requests.

walsync watch replicates K databases into s3s-fs on loopback with a short
lease_ttl; a writer commits to every database for BUSY seconds, then all of
them stay idle for IDLE seconds. walsync's debug log names every request
(`PUT "<key>"`, `GET "<key>"`, ...); this script counts those whose key is
a lease or its probe, per phase, next to all requests, and prints the
figures. Usage: python3 bench/lease.py [--dbs 20] [--ttl 10] [--busy 30]
[--idle 60] [--walsync target/release/walsync]
"""

from __future__ import annotations

import argparse
import calendar
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

REQUEST = re.compile(r'^\[(\S+) DEBUG walsync::storage::s3\S*\] .*?\): (PUT|GET|LIST|DELETE|DeleteObjects of \d+ keys from|create multipart upload) "([^"]*)"')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dbs", type=int, default=20)
    ap.add_argument("--ttl", type=float, default=10)
    ap.add_argument("--busy", type=float, default=30)
    ap.add_argument("--idle", type=float, default=60)
    ap.add_argument("--walsync", type=Path, default=common.REPO / "target/release/walsync")
    args = ap.parse_args()
    if not args.walsync.is_file():
        raise SystemExit(f"error: {args.walsync} not found; cargo build --release first")
    import tempfile
    with tempfile.TemporaryDirectory(prefix="walsync-bench-lease-") as tmp:
        ws = Path(tmp)
        server = common.S3Server(ws)
        dbs = []
        for i in range(args.dbs):
            db = ws / f"db{i}.db"
            c = sqlite3.connect(db, isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            c.close()
            dbs.append((db, f"bench/db{i}"))
        config = common.walsync_s3_config(ws / "walsync.toml", server.endpoint, dbs,
                                          [f'lease_ttl = "{int(args.ttl)}s"', 'idle_release_after = "5s"'])
        env = server.env()
        env["RUST_LOG"] = "info,walsync::storage::s3=debug"
        logp = ws / "watch.log"
        with open(logp, "wb") as logf:
            watch = subprocess.Popen([str(args.walsync), "watch", "--config", str(config)], env=env,
                                     stdout=logf, stderr=subprocess.STDOUT)
        time.sleep(2)
        t_busy = time.time()
        conns = [sqlite3.connect(db, isolation_level=None) for db, _ in dbs]
        n = 0
        while time.time() - t_busy < args.busy:
            for c in conns:
                c.execute("INSERT INTO t(v) VALUES (?)", ("x" * 100,))
            n += 1
            time.sleep(0.1)
        for c in conns:
            c.close()
        t_idle = time.time() + 5  # the last commits ship and the idle release runs
        time.sleep(args.idle + 5)
        t_end = time.time()
        t_end = time.time()
        watch.terminate()
        watch.wait(timeout=60)
        server.stop()
        counts = {"start": [0, 0], "busy": [0, 0], "idle": [0, 0], "stop": [0, 0]}
        for line in logp.read_text(errors="replace").splitlines():
            m = REQUEST.match(line)
            if not m:
                continue
            stamp = m.group(1)  # 2026-11-29T15:05:13.305Z
            t = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + stamp[19:-1])
            phase = "start" if t < t_busy else "busy" if t < t_idle else "idle" if t < t_end else "stop"
            counts[phase][0] += 1
            if m.group(3).endswith("/lease") or m.group(3).endswith("/lease.probe"):
                counts[phase][1] += 1
        print(f"{args.dbs} databases, lease_ttl {args.ttl:g}s; busy {args.busy:g}s "
              f"({n} commits per database, one every 100 ms), then idle {args.idle:g}s")
        print(common.md_table(["phase", "all requests", "lease requests"],
                              [[k, str(v[0]), str(v[1])] for k, v in counts.items()]))
        busy_lease = counts["busy"][1]
        print(f"busy: {busy_lease / args.dbs / (args.busy / args.ttl):.2f} lease PUTs per database per TTL "
              f"(expected at most 2: one renewal per half TTL); idle: {counts['idle'][1]} lease requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
