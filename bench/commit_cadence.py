#!/usr/bin/env python3
"""What walsync's syncs cost the application's commits, and why (issue 12
part 3: "Commit latency during a snapshot").

An application process commits one small INSERT every --interval-ms
(default 10) with `synchronous=NORMAL`, timing each commit (BEGIN IMMEDIATE
to COMMIT), on a fresh WAL-mode database of a few MiB. For each binary:
--idle s without walsync, then `walsync watch` (a `dir` target,
sync_interval 1 s, RUST_LOG=walsync=debug; --s3: s3s-fs on loopback, --shape
LAT_MS:MBPS through the shaping proxy) for --seconds s. With --strace,
both processes run under `strace -f -tt -T` for their fsync/fdatasync calls
(`--seccomp-bpf`: only those calls stop the process), and every slow commit
(over --slow-ms) is matched to what happened during it: an fsync of the
application's own (SQLite restarting the WAL syncs its new header, even at
synchronous=NORMAL), an fsync of walsync's, or walsync's debug log lines.

Prints, per binary and window: commits, latency p50/p99/max, slow commits,
walsync's CPU time per second, fsyncs per second of the application and of
walsync (of the database and its WAL apart from the backup's files), and
what the slow commits overlapped. --rt runs the application at real-time
priority: on a 2-core machine shared with other work, a commit that waits
for a CPU is the commonest slow commit, and --rt leaves only what walsync
does to the application's files and locks.

  python3 bench/commit_cadence.py --bin main=/path/to/main/walsync \\
      --bin new=target/release/walsync [--seconds 20] [--strace] [--rt] [--runs 2]
Stdlib only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import S3Server, percentile, walsync_s3_config  # noqa: E402


def day_start() -> float:
    now = dt.datetime.now(dt.timezone.utc)
    return now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def fsyncs(path: Path) -> list[tuple[float, float, str]]:
    """(start, seconds, file) of each fsync/fdatasync in an strace -f -tt -T
    -y log (unfinished/resumed pairs joined); the file when -y named it."""
    if not path.exists():
        return []
    base = day_start()
    out = []
    pending: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        m = re.match(r"^(\d+)\s+(\d\d):(\d\d):(\d\d\.\d+) (.*)$", line)
        if not m:
            continue
        pid, h, mi, s, rest = m.groups()
        t = base + int(h) * 3600 + int(mi) * 60 + float(s)
        call = rest.split("(", 1)[0]
        if "<unfinished ...>" in rest:
            pending[pid] = t
            continue
        if rest.startswith("<... "):
            call = rest[5:].split(" ", 1)[0]
            start = pending.pop(pid, t)
        else:
            start = t
        if call not in ("fsync", "fdatasync"):
            continue
        d = re.search(r"<([\d.]+)>$", rest)
        target = re.search(r"\(\d+<([^>]*)>", rest)
        out.append((start, float(d.group(1)) if d else 0.0, target.group(1) if target else call))
    return out


def log_lines(path: Path) -> list[tuple[float, str]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = re.match(r"^\[(\S+) (\w+) ([\w:]+)\] (.*)$", line)
        if not m:
            continue
        try:
            t = dt.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        out.append((t, m.group(4)))
    return out


def own_pid(proc: subprocess.Popen) -> int:
    """The process itself, not an strace or chrt in front of it."""
    pid = proc.pid
    if os.path.basename(proc.args[0]) == "strace":
        try:
            pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process itself (strace does not pass the signal on),
    and wait for it."""
    os.kill(own_pid(proc), signal.SIGTERM)
    proc.wait(timeout=30)


def summary(lat: list[tuple[float, float]]) -> dict:
    ms = [d * 1000 for _, d in lat]
    return {"commits": len(ms), "p50": percentile(ms, 50), "p99": percentile(ms, 99),
            "max": max(ms) if ms else None}


def kind_of(msg: str) -> str:
    """A short name for what a walsync debug line says it did."""
    for key, name in (("read mark moved at the shipped end", "rest at mark 0"), ("settled at the end", "settle"),
                      ("settled:", "settle (move mark + checkpoint)"), ("PASSIVE checkpoint", "sync point"),
                      ("TRUNCATE", "truncate"), ("segment", "ship"), ("snapshot", "snapshot")):
        if key in msg:
            return name
    return msg[:40]


def run(name: str, binary: Path, args) -> dict:
    ws = Path(tempfile.mkdtemp(prefix=f"cadence-{name}-", dir=args.workdir))
    db = ws / "app.db"
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE app (id INTEGER PRIMARY KEY, t REAL NOT NULL)")
    c.execute("CREATE TABLE pad (v BLOB)")
    c.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) "
              "INSERT INTO pad SELECT randomblob(4096) FROM n")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    os.sync()
    cfg = ws / "w.toml"
    server = None
    env = dict(os.environ)
    if args.s3:
        server = S3Server(ws, shape=args.shape)
        walsync_s3_config(cfg, server.endpoint, [(db, "app")])
        env = server.env()
    else:
        cfg.write_text(f'sync_interval = "1s"\n\n[storage]\ndir = "{ws / "backup"}"\n\n'
                       f'[[databases]]\npath = "{db}"\nprefix = "app"\n')
    out = ws / "app.json"
    # The application of bench/snapshot_stall.py: one small INSERT every
    # --interval-ms, synchronous=NORMAL, each commit timed.
    app_cmd = [sys.executable, str(Path(__file__).resolve().parent / "snapshot_stall.py"), "--_app", str(db),
               str(args.interval_ms), str(out)]
    ws_cmd = [str(binary), "watch", "-c", str(cfg)]
    if args.rt:
        # Real-time priority for the application: the other processes of a
        # busy machine then cost it no CPU time, and what is left is what
        # walsync does to its files and locks.
        app_cmd = ["chrt", "-f", "50"] + app_cmd
    if args.app_syscalls:
        app_cmd = ["strace", "-f", "-tt", "-T", "-o", str(ws / "app.syscalls")] + app_cmd
    elif args.strace:
        app_cmd = ["strace", "-f", "--seccomp-bpf", "-y", "-tt", "-T", "-e", "trace=fsync,fdatasync",
                   "-o", str(ws / "app.strace")] + app_cmd
        ws_cmd = ["strace", "-f", "--seccomp-bpf", "-y", "-tt", "-T", "-e", "trace=fsync,fdatasync",
                  "-o", str(ws / "walsync.strace")] + ws_cmd
    env["RUST_LOG"] = "walsync=debug"
    app = subprocess.Popen(app_cmd, start_new_session=True)
    time.sleep(args.idle)
    t_start = time.time()
    with open(ws / "walsync.log", "wb") as logf:
        proc = subprocess.Popen(ws_cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
        time.sleep(2)
        cpu0 = cpu_seconds(own_pid(proc))
        time.sleep(args.seconds - 2.5)
        cpu1 = cpu_seconds(own_pid(proc))
        time.sleep(0.5)
        stop(proc)
    t_end = time.time()
    stop(app)
    if server:
        server.stop()
    lat = json.loads(out.read_text())
    # The first two seconds of walsync take the database up (a snapshot).
    idle = [x for x in lat if x[0] < t_start - 0.5]
    during = [x for x in lat if t_start + 2 <= x[0] < t_end - 0.5]
    res = {"name": name, "idle": summary(idle), "during": summary(during), "dir": str(ws)}
    span = t_end - 0.5 - (t_start + 2)
    slow = [x for x in during if x[1] * 1000 > args.slow_ms]
    res["slow"] = len(slow)
    res["walsync_cpu_ms_per_s"] = (cpu1 - cpu0) * 1000 / (args.seconds - 2.5)
    if args.strace:
        app_f = [x for x in fsyncs(ws / "app.strace") if t_start + 2 <= x[0] < t_end - 0.5]
        ws_f = [x for x in fsyncs(ws / "walsync.strace") if t_start + 2 <= x[0] < t_end - 0.5]
        idle_app_f = [x for x in fsyncs(ws / "app.strace") if x[0] < t_start - 0.5]
        res["app_fsyncs_per_s"] = len(app_f) / span
        res["app_fsyncs_idle"] = len(idle_app_f)
        res["walsync_fsyncs_per_s"] = len(ws_f) / span
        # Of those, the application's files (the database and its WAL), not
        # the backup directory's.
        res["walsync_app_file_fsyncs_per_s"] = len([f for f in ws_f if f[2] in (str(db), f"{db}-wal")]) / span
        lines = log_lines(ws / "walsync.log")
        causes = {"app fsync": 0, "walsync fsync": 0, "neither": 0}
        acts: dict[str, int] = {}
        for t0, d in slow:
            t1 = t0 + d
            mine = [f for f in app_f if t0 <= f[0] <= t1]
            theirs = [f for f in ws_f if f[0] <= t1 and f[0] + f[1] >= t0]
            if mine:
                causes["app fsync"] += 1
            elif theirs:
                causes["walsync fsync"] += 1
            else:
                causes["neither"] += 1
            for lt, msg in lines:
                if t0 - 0.2 <= lt <= t1:
                    k = kind_of(msg)
                    acts[k] = acts.get(k, 0) + 1
            if args.verbose:
                print(f"  slow {d * 1000:.2f} ms at {t0:.3f}: app fsyncs "
                      f"{[round(f[1] * 1000, 2) for f in mine]}, walsync fsyncs "
                      f"{[(round(f[0] - t0, 4), round(f[1] * 1000, 2)) for f in theirs]}")
        res["slow_overlapping"] = causes
        res["walsync_lines_near_slow"] = acts
        ms = sorted(f[1] * 1000 for f in app_f)
        res["app_fsync_ms_p50"] = percentile(ms, 50)
    if not args.keep:
        shutil.rmtree(ws, ignore_errors=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", action="append", required=True, help="NAME=PATH of a walsync binary (repeatable)")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--idle", type=float, default=8)
    p.add_argument("--interval-ms", type=float, default=10)
    p.add_argument("--slow-ms", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--strace", action="store_true")
    p.add_argument("--app-syscalls", action="store_true",
                   help="trace every system call of the application (kept in app.syscalls; slows it)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--workdir", default=None)
    p.add_argument("--rt", action="store_true",
                   help="run the application at real-time priority (chrt -f 50): CPU contention out of the figures")
    p.add_argument("--s3", action="store_true", help="back up to s3s-fs on loopback instead of a directory")
    p.add_argument("--shape", default=None, metavar="LAT_MS:MBPS",
                   help="with --s3: through bench/shape_proxy.py (first-byte latency, bandwidth)")
    args = p.parse_args()
    bins = [(n, Path(b)) for n, b in (x.split("=", 1) for x in args.bin)]
    for r in range(args.runs):
        for name, binary in bins:
            res = run(name, binary, args)
            i, d = res["idle"], res["during"]
            line = (f"run {r + 1} {name}: idle p50/p99/max {i['p50']:.2f}/{i['p99']:.2f}/{i['max']:.2f} ms "
                    f"({i['commits']}), with walsync {d['p50']:.2f}/{d['p99']:.2f}/{d['max']:.2f} ms "
                    f"({d['commits']}), slow (> {args.slow_ms} ms) {res['slow']}; walsync CPU "
                    f"{res['walsync_cpu_ms_per_s']:.1f} ms/s")
            if args.strace:
                line += (f"; fsyncs/s app {res['app_fsyncs_per_s']:.2f} (idle window: {res['app_fsyncs_idle']}),"
                         f" walsync {res['walsync_fsyncs_per_s']:.2f} (of the database and its WAL: "
                         f"{res['walsync_app_file_fsyncs_per_s']:.2f}); app fsync p50 "
                         f"{res['app_fsync_ms_p50'] or 0:.2f} ms; slow commits overlapping "
                         f"{res['slow_overlapping']}; walsync lines within 0.2 s before a slow commit "
                         f"{res['walsync_lines_near_slow']}")
            print(line, flush=True)
            if args.keep:
                print(f"  kept: {res['dir']}")


if __name__ == "__main__":
    main()
