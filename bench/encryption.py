#!/usr/bin/env python3
"""What encryption costs: walsync with and without `[encryption]`, side by
side in one run, on the same binary, against s3s-fs on 127.0.0.1.

  replicate  `walsync watch` while a writer (Python's sqlite3, one
             connection) commits --commits transactions of --rows rows of
             ~200 bytes of text each, then SIGTERM. Measured: the CPU time
             (user + system) of the walsync process over its whole life and
             its peak RSS (from wait4), and the bytes it uploaded.
  restore    one database of --size-mib MiB (text rows and 4 KiB random
             blobs, checkpointed), backed up once by `walsync snapshot` under
             each setting, then `walsync restore` timed: MB/s of database
             restored (MB = 10^6 bytes), and the restore's peak RSS.

Runs are interleaved (plain, encrypted, plain, ...); figures are medians
over --runs. Every restore is checked (row count and a SHA-256 of the rows
equal the source's) and a restore that is wrong is reported and not counted.

  python3 bench/encryption.py                       # 3 runs, 256 MiB restore
  python3 bench/encryption.py --quick               # 1 run, small (< 1 minute)
  python3 bench/encryption.py --walsync-bin target/x86_64-unknown-linux-musl/release/walsync --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no bench/__pycache__ in the work tree
from common import (REPO, S3Server, build_walsync, f, file_info, log, machine_info, md_table, med,
                    walsync_s3_config, workspace)

SETTINGS = ["plain", "encrypted"]


def rows_digest(db: Path) -> tuple[int, str]:
    c = sqlite3.connect(db)
    h = hashlib.sha256()
    n = 0
    for row in c.execute("SELECT id, v, b FROM t ORDER BY id"):
        h.update(repr(row).encode())
        n += 1
    c.close()
    return n, h.hexdigest()


def make_db(path: Path, mib: int) -> None:
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL, b BLOB)")
    target = mib << 20
    i = 0
    while True:
        c.executemany("INSERT INTO t(v, b) VALUES (?, ?)",
                      [(f"row {i + k} " + "lorem ipsum dolor sit amet " * 6, os.urandom(4096) if (i + k) % 2 else None)
                       for k in range(256)])
        c.commit()
        i += 256
        if path.stat().st_size + Path(str(path) + "-wal").stat().st_size >= target:
            break
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


def config(ws: Path, server: S3Server, db: Path, prefix: str, encrypted: bool, key: Path) -> Path:
    extra = ['idle_release_after = "1h"']
    cfg = walsync_s3_config(ws / f"walsync-{prefix.replace('/', '-')}.toml", server.endpoint, [(db, prefix)], extra)
    if encrypted:
        with open(cfg, "a") as fh:
            fh.write(f'[encryption]\nkey_file = "{key}"\n')
    return cfg


def vm_hwm_kib(pid: int) -> int | None:
    """A process's peak RSS since its exec (VmHWM). wait4's ru_maxrss would
    count the Python parent's RSS at fork."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def wait4(p: subprocess.Popen, hwm: int | None = None) -> tuple[int, float, int | None]:
    """Exit status, CPU seconds (user + system), and the peak RSS (KiB)
    sampled while it ran (`hwm`, updated here until it exits)."""
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        hwm = max(hwm or 0, vm_hwm_kib(p.pid) or 0) or hwm
        time.sleep(0.005)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_utime + ru.ru_stime, hwm


def replicate_once(bin: Path, ws: Path, server: S3Server, setting: str, run: int, args, key: Path) -> dict:
    db = ws / f"rep-{setting}-{run}.db"
    c = sqlite3.connect(db)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL, b BLOB)")
    c.commit()
    prefix = f"rep/{setting}/{run}"
    cfg = config(ws, server, db, prefix, setting == "encrypted", key)
    logf = open(ws / f"watch-{setting}-{run}.log", "wb")
    p = subprocess.Popen([str(bin), "watch", "--config", str(cfg)], env=server.env(), stdin=subprocess.DEVNULL,
                         stdout=logf, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    start = time.monotonic()
    n = 0
    for _ in range(args.commits):
        c.executemany("INSERT INTO t(v) VALUES (?)",
                      [(f"commit {n} row {k} " + os.urandom(256).hex() + " the quick brown fox " * 24,)
                       for k in range(args.rows)])
        c.commit()
        n += 1
    write_secs = time.monotonic() - start
    time.sleep(2.5)  # the last commits ship (sync_interval 1 s)
    c.close()
    if p.poll() is not None:
        raise SystemExit(f"walsync watch exited early ({p.returncode}); see {logf.name}")
    os.kill(p.pid, signal.SIGTERM)
    code, cpu, rss = wait4(p)
    logf.close()
    up = sum(f.stat().st_size for f in (server.bucket_dir / prefix).rglob("*") if f.is_file())
    # The backup holds every commit: checked by a restore (untimed).
    out = ws / f"rep-check-{setting}-{run}.db"
    r = subprocess.run([str(bin), "restore", "--config", str(cfg), "--prefix", prefix, "-o", str(out)],
                       env=server.env(), capture_output=True, text=True)
    ok = code == 0 and r.returncode == 0 and rows_digest(out) == rows_digest(db)
    if not ok:
        log(f"replicate {setting} run {run}: NOT COUNTED (exit {code}, restore {r.returncode}: {r.stderr.strip()})")
    out.unlink(missing_ok=True)
    return {"ok": ok, "cpu_s": cpu, "rss_kib": rss, "uploaded": up, "write_s": write_secs}


def restore_once(bin: Path, ws: Path, server: S3Server, cfg: Path, prefix: str, src: tuple[int, str],
                 db_bytes: int) -> dict:
    out = ws / "restored.db"
    out.unlink(missing_ok=True)
    start = time.monotonic()
    p = subprocess.Popen([str(bin), "restore", "--config", str(cfg), "--prefix", prefix, "-o", str(out)],
                         env=server.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    code, cpu, rss = wait4(p)
    secs = time.monotonic() - start
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    ok = code == 0 and rows_digest(out) == src
    if not ok:
        log(f"restore {prefix}: NOT COUNTED (exit {code}: {err.strip()})")
    out.unlink(missing_ok=True)
    return {"ok": ok, "secs": secs, "mb_s": db_bytes / 1e6 / secs, "cpu_s": cpu, "rss_kib": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--commits", type=int, default=2000, help="transactions written while watch runs")
    ap.add_argument("--rows", type=int, default=16, help="rows per transaction (~1.5 KB each)")
    ap.add_argument("--size-mib", type=int, default=256, help="size of the database restored")
    ap.add_argument("--quick", action="store_true", help="1 run, 300 commits, 32 MiB")
    ap.add_argument("--walsync-bin", help="measure this walsync binary (no build)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--build-retries", type=int, default=1)
    ap.add_argument("--build-wait", type=float, default=60)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", help="append a Markdown section to this file")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.commits, args.size_mib = 1, 300, 32
    wbin, source = build_walsync(args)
    with workspace(args, "walsync-bench-enc-") as ws:
        bin = ws / "walsync"
        bin.write_bytes(wbin.read_bytes())
        bin.chmod(0o755)
        machine = machine_info(ws)
        server = S3Server(ws)
        try:
            key = ws / "bench.key"
            r = subprocess.run([str(bin), "keygen", "-o", str(key)], capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"keygen: {r.stderr}")
            rep: dict[str, list] = {s: [] for s in SETTINGS}
            for run in range(args.runs):
                for s in SETTINGS:
                    log(f"replicate {s}, run {run + 1}")
                    rep[s].append(replicate_once(bin, ws, server, s, run, args, key))
            log(f"making a {args.size_mib} MiB database")
            src = ws / "big.db"
            make_db(src, args.size_mib)
            src_digest = rows_digest(src)
            db_bytes = src.stat().st_size
            cfgs = {}
            for s in SETTINGS:
                cfgs[s] = config(ws, server, src, f"big/{s}", s == "encrypted", key)
                r = subprocess.run([str(bin), "snapshot", "--config", str(cfgs[s])], env=server.env(),
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"snapshot {s}: {r.stderr}")
            res: dict[str, list] = {s: [] for s in SETTINGS}
            for run in range(args.runs):
                for s in SETTINGS:
                    log(f"restore {s}, run {run + 1}")
                    res[s].append(restore_once(bin, ws, server, cfgs[s], f"big/{s}", src_digest, db_bytes))
        finally:
            server.stop()

    def m(rs, k):
        return med([r[k] for r in rs if r["ok"]])

    rows = []
    for s in SETTINGS:
        rows.append([s, f"{sum(r['ok'] for r in rep[s])}/{len(rep[s])}", f(m(rep[s], "cpu_s"), 2),
                     f(m(rep[s], "rss_kib") / 1024, 1) if m(rep[s], "rss_kib") else "-",
                     f(m(rep[s], "uploaded") / 1e6, 2) if m(rep[s], "uploaded") else "-",
                     f"{sum(r['ok'] for r in res[s])}/{len(res[s])}", f(m(res[s], "mb_s"), 0),
                     f(m(res[s], "cpu_s"), 2),
                     f(m(res[s], "rss_kib") / 1024, 1) if m(res[s], "rss_kib") else "-"])

    def ratio(table, k):
        a, b = m(table["encrypted"], k), m(table["plain"], k)
        return f"{(a / b - 1) * 100:+.1f} %" if a and b else "-"

    rows.append(["encrypted vs plain", "", ratio(rep, "cpu_s"), ratio(rep, "rss_kib"), ratio(rep, "uploaded"), "",
                 ratio(res, "mb_s"), ratio(res, "cpu_s"), ratio(res, "rss_kib")])
    w = file_info(wbin)
    md = [f"## Encryption: cost (`bench/encryption.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
          "```sh", "python3 " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
          "```", "",
          f"- Machine: {machine.get('cpu', '?')}, {machine['nproc']} CPUs, {machine.get('ram_gib', '?')} GiB RAM, "
          f"Linux {machine['kernel']}, load average at the start {machine.get('loadavg', '?')} (shared machine)",
          f"- walsync: `{w['path']}` ({w['mib']} MiB, {w['linkage']}): {source}",
          f"- replicate: {args.commits} commits of {args.rows} rows while `watch` runs, then SIGTERM; "
          f"restore: a {db_bytes / 1e6:.0f} MB database; medians of {args.runs} runs, interleaved", "",
          md_table(["setting", "replicate ok", "watch CPU s", "watch peak RSS MiB", "uploaded MB",
                    "restore ok", "restore MB/s", "restore CPU s", "restore peak RSS MiB"], rows), ""]
    text = "\n".join(md)
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n" + text)
        log(f"appended a section to {args.out}")


if __name__ == "__main__":
    main()
