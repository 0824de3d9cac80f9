#!/usr/bin/env python3
"""Restore speed of walsync vs Litestream from a loopback S3 server.

Two workloads, each backed up once by each tool to its own s3s-fs on
127.0.0.1 (fresh data directory per tool), then restored --runs times, tools
interleaved run by run:

  big    one database of --size-mib MiB (default 1024): a table of 64 KiB
         random blobs (incompressible), checkpointed into the main file.
         Timed: `walsync restore -c CFG --prefix big -o OUT` vs
         `litestream restore -config CFG -o OUT DB` (its default
         -parallelism 8).
  small  --small databases (default 1,000) of --small-rows rows of random
         text each (about 20 KiB per database). Timed:
           walsync restore-all -c CFG --output-dir DIR --jobs 1
           walsync restore-all -c CFG --output-dir DIR --jobs J
           litestream restore, one process per database, one after another
           litestream restore, one process per database, J at a time
         with J = --jobs (default 16: `restore-all`'s default, the same
         parallelism for both tools; --no-sequential skips the one-at-a-time
         variants). Litestream 0.5 has no restore-all; each of its
         processes reads a one-database config (the same replica settings as
         the backup's config), so that 1,000 processes do not each parse a
         1,000-database file.

Backups: `walsync snapshot -c CFG` and `litestream replicate -once -config
CFG` (each syncs every database once and exits: a natural completion point;
their durations are reported too). Both read the same source files, one tool
after the other. Each tool's first restore is checked before anything is
timed; every timed restore is verified afterwards (untimed): row count and a
SHA-256 of all rows in id order equal to the source's, and for the small
databases `PRAGMA integrity_check`; a failed verification is reported and the
run is not counted, so a fast but wrong restore cannot win. Output files are
deleted between runs; the page cache is not dropped (the machine is shared):
the bucket files are as warm for one tool as for the other. MB = 10^6 bytes
of the source database file(s).

  python3 bench/restore.py                     # 1 GiB + 1,000 small, 3 runs
  python3 bench/restore.py --quick             # 64 MiB + 50 small, 1 run (< 2 minutes)
  python3 bench/restore.py --shape 30:80 --no-sequential   # as across a network (bench/shape_proxy.py)
  python3 bench/restore.py --walsync-bin /path/to/walsync --out bench/results-restore.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.dont_write_bytecode = True  # no bench/__pycache__ in the work tree
from common import (S3Server, add_common_args, f, finish, header_md, litestream_s3_config, log, md_table, med,
                    prepare_binaries, ratio, walsync_s3_config, workspace)

BLOB = 64 * 1024
VARIANTS = ["walsync restore", "litestream restore",
            "walsync restore-all --jobs 1", "walsync restore-all --jobs J",
            "litestream restore x N, sequential", "litestream restore x N, J at a time"]


# ---------------------------------------------------------------------------
# Source databases and their digests


def digest(path: Path, table: str) -> tuple[int, str]:
    """(row count, sha256 of all rows in id order)."""
    h = hashlib.sha256()
    n = 0
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for rid, v in c.execute(f"SELECT id, v FROM {table} ORDER BY id"):
            h.update(rid.to_bytes(8, "little"))
            h.update(v if isinstance(v, bytes) else v.encode())
            n += 1
    finally:
        c.close()
    return n, h.hexdigest()


def make_big(path: Path, mib: int) -> tuple[int, str]:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
    rows = mib * 1024 * 1024 // BLOB
    h = hashlib.sha256()
    per_tx = 1024  # 64 MiB per transaction
    for start in range(0, rows, per_tx):
        c.execute("BEGIN")
        for rid in range(start + 1, min(rows, start + per_tx) + 1):
            b = os.urandom(BLOB)
            h.update(rid.to_bytes(8, "little"))
            h.update(b)
            c.execute("INSERT INTO blobs(id, v) VALUES (?, ?)", (rid, b))
        c.execute("COMMIT")
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    return rows, h.hexdigest()


def make_small(path: Path, i: int, rows: int) -> tuple[int, str]:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    c.execute("BEGIN")
    h = hashlib.sha256()
    for rid in range(1, rows + 1):
        v = f"db {i} row {rid} " + os.urandom(250).hex()
        h.update(rid.to_bytes(8, "little"))
        h.update(v.encode())
        c.execute("INSERT INTO t(id, v) VALUES (?, ?)", (rid, v))
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    return rows, h.hexdigest()


def verify(path: Path, table: str, want: tuple[int, str], integrity: bool) -> str | None:
    """None if the restored database holds exactly the source's rows, else why not."""
    if not path.exists():
        return f"{path.name}: missing"
    try:
        if integrity:
            c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            ok = c.execute("PRAGMA integrity_check").fetchone()[0]
            c.close()
            if ok != "ok":
                return f"{path.name}: integrity_check: {ok}"
        got = digest(path, table)
    except sqlite3.Error as e:
        return f"{path.name}: {e}"
    return None if got == want else f"{path.name}: {got[0]} rows, sha256 {got[1][:12]} != {want[0]}, {want[1][:12]}"


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Backups and restores


def run_cmd(cmd: list[str], env: dict, timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        r = subprocess.CompletedProcess(cmd, -9, "", f"timed out after {timeout:g}s")
    return time.monotonic() - t, r


class Tool:
    """One tool's S3 server and configs (big, small, and one small-database
    config per database for Litestream's restores)."""

    def __init__(self, name: str, bin_path: Path, ws: Path, big: Path, small: list[Path], shape: str | None):
        self.name, self.bin, self.ws = name, bin_path, ws
        ws.mkdir()
        self.server = S3Server(ws, shape=shape)
        self.env = self.server.env()
        ep = self.server.endpoint
        if name == "walsync":
            self.big_cfg = walsync_s3_config(ws / "big.toml", ep, [(big, "big")])
            self.small_cfg = walsync_s3_config(ws / "small.toml", ep,
                                               [(p, f"small/{p.stem}") for p in small])
        else:
            self.big_cfg = litestream_s3_config(ws / "big.yml", ep, [(big, "big")])
            self.small_cfg = litestream_s3_config(ws / "small.yml", ep, [(p, f"small/{p.stem}") for p in small])
            (ws / "one").mkdir()
            self.one_cfg = {p: litestream_s3_config(ws / "one" / f"{p.stem}.yml", ep, [(p, f"small/{p.stem}")])
                            for p in small}

    def backup(self, cfg: Path, workload: str, timeout: float) -> dict:
        cmd = ([str(self.bin), "snapshot", "-c", str(cfg)] if self.name == "walsync"
               else [str(self.bin), "replicate", "-once", "-config", str(cfg)])
        secs, r = run_cmd(cmd, self.env, timeout)
        files = [p for p in (self.server.bucket_dir / workload).rglob("*") if p.is_file()]
        out = {"seconds": round(secs, 2), "exit": r.returncode, "objects": len(files),
               "bucket_mib": round(sum(p.stat().st_size for p in files) / 1048576, 1)}
        if r.returncode != 0:
            out["error"] = (r.stderr or r.stdout).strip()[-500:]
        return out

    def restore_big(self, src: Path, out: Path, timeout: float) -> tuple[float, subprocess.CompletedProcess]:
        if self.name == "walsync":
            cmd = [str(self.bin), "restore", "-c", str(self.big_cfg), "--prefix", "big", "-o", str(out)]
        else:
            cmd = [str(self.bin), "restore", "-config", str(self.big_cfg), "-o", str(out), str(src)]
        return run_cmd(cmd, self.env, timeout)

    def restore_one_small(self, src: Path, out: Path, timeout: float) -> subprocess.CompletedProcess:
        return run_cmd([str(self.bin), "restore", "-config", str(self.one_cfg[src]), "-o", str(out), str(src)],
                       self.env, timeout)[1]

    def restore_small(self, small: list[Path], outdir: Path, jobs: int, timeout: float) -> tuple[float, str | None]:
        """Restores every small database into outdir/small/<name>.db; (seconds, error)."""
        (outdir / "small").mkdir(parents=True)
        if self.name == "walsync":
            secs, r = run_cmd([str(self.bin), "restore-all", "-c", str(self.small_cfg), "--output-dir", str(outdir),
                               "--jobs", str(jobs)], self.env, timeout)
            self.last_output = r.stdout.strip().splitlines()[-1:] if r.stdout.strip() else []
            return secs, (None if r.returncode == 0 else (r.stderr or r.stdout).strip()[-500:])
        t = time.monotonic()
        with ThreadPoolExecutor(jobs) as pool:
            rs = list(pool.map(lambda p: self.restore_one_small(p, outdir / "small" / p.name, timeout), small))
        secs = time.monotonic() - t
        bad = [r for r in rs if r.returncode != 0]
        return secs, (f"{len(bad)} failed, e.g. {(bad[0].stderr or bad[0].stdout).strip()[-300:]}" if bad else None)

    def stop(self) -> None:
        self.server.stop()


def timed_big(tool: Tool, src: Path, want, ws: Path, timeout: float) -> dict:
    out = ws / f"big-{tool.name}.db"
    remove_db(out)
    secs, r = tool.restore_big(src, out, timeout)
    res = {"seconds": secs, "stdout": (r.stdout.strip() or r.stderr.strip().splitlines()[-1:] and
                                       r.stderr.strip().splitlines()[-1])[-300:]}
    res["error"] = ((r.stderr or r.stdout).strip()[-500:] if r.returncode != 0
                    else verify(out, "blobs", want, integrity=False))
    remove_db(out)
    return res


def timed_small(tool: Tool, small: list[Path], wants: dict, jobs: int, ws: Path, timeout: float) -> dict:
    outdir = ws / f"small-{tool.name}-{jobs}"
    shutil.rmtree(outdir, ignore_errors=True)
    tool.last_output = []
    secs, err = tool.restore_small(small, outdir, jobs, timeout)
    res = {"seconds": secs, "error": err, "stdout": " ".join(tool.last_output)}
    if err is None:
        bad = [e for p in small if (e := verify(outdir / "small" / p.name, "t", wants[p], integrity=True))]
        if bad:
            res["error"] = f"{len(bad)} of {len(small)} failed verification, e.g. {bad[0]}"
    shutil.rmtree(outdir, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------
# Reporting


def summary(results: list[dict], ctx: dict) -> list[list[str]]:
    a = ctx["args"]
    rows = []
    for v in VARIANTS:
        rs = [r for r in results if r["variant"] == v]
        if not rs:
            continue
        ok = [r["seconds"] for r in rs if not r.get("error")]
        m = med(ok)
        size = ctx["big_bytes"] if "restore-all" not in v and " x N" not in v else ctx["small_bytes"]
        count = 1 if size == ctx["big_bytes"] else a["small"]
        rows.append([v.replace(" J", f" {a['jobs']}").replace(" N", f" {a['small']}"), f"{len(ok)}/{len(rs)}",
                     f(m, 2), f(min(ok), 2) if ok else "-", f(max(ok), 2) if ok else "-",
                     f(size / 1e6 / m, 1) if m else "-", f(count / m, 1) if m and count > 1 else "-"])
    return rows


def ratios(results: list[dict], ctx: dict) -> list[list[str]]:
    def m(v):
        return med([r["seconds"] for r in results if r["variant"] == v and not r.get("error")])
    a = ctx["args"]
    pairs = [("big: walsync restore / litestream restore", "walsync restore", "litestream restore"),
             (f"small: walsync --jobs 1 / litestream sequential", "walsync restore-all --jobs 1",
              "litestream restore x N, sequential"),
             (f"small: walsync --jobs {a['jobs']} / litestream {a['jobs']} at a time",
              "walsync restore-all --jobs J", "litestream restore x N, J at a time"),
             (f"small: walsync --jobs {a['jobs']} / litestream sequential",
              "walsync restore-all --jobs J", "litestream restore x N, sequential")]
    return [[name, f(m(x), 2), f(m(y), 2), f(ratio(m(x), m(y)), 2)] for name, x, y in pairs if m(x) and m(y)]


def markdown(ctx: dict, results: list[dict]) -> str:
    a = ctx["args"]
    L = header_md(ctx, "Restore: walsync vs Litestream")
    parts = []
    if ctx["big_bytes"]:
        parts.append(f"one database of {ctx['big_bytes'] / 1e6:.0f} MB ({a['size_mib']} MiB of 64 KiB random "
                     f"blobs, {ctx['big_rows']} rows)")
    if ctx["small_bytes"]:
        parts.append(f"{a['small']} small databases ({a['small_rows']} rows of random text, "
                     f"{ctx['small_bytes'] / a['small'] / 1024:.1f} KiB each, {ctx['small_bytes'] / 1e6:.1f} MB "
                     f"in all)")
    L += [f"- Workload: {' and '.join(parts)}; "
          f"backed up once by each tool (`walsync snapshot`, `litestream replicate -once`), restored {a['runs']} "
          f"times, tools interleaved; each restore verified (row count and SHA-256 of all rows, plus "
          f"`PRAGMA integrity_check` for the small ones), failures not counted. J = {a['jobs']}: walsync "
          f"`restore-all --jobs`, and the number of concurrent `litestream restore` processes (one per "
          f"database, one-database config each; Litestream 0.5 has no restore-all). Times are wall-clock of "
          f"the whole command(s); MB/s = source bytes / time.", ""]
    L += ["Backups:", ""]
    L += md_table(["workload", "tool", "seconds", "objects in the bucket", "MiB in the bucket", "exit"],
                  [[w, t, f(b["seconds"], 1), str(b["objects"]), f(b["bucket_mib"]), str(b["exit"])]
                   for (w, t), b in ctx["backups"].items()]).splitlines() + [""]
    L += ["Restores (medians over the verified runs):", ""]
    L += md_table(["variant", "ok runs", "median s", "min s", "max s", "MB/s", "DBs/s"],
                  summary(results, ctx)).splitlines() + [""]
    rr = ratios(results, ctx)
    if rr:
        L += ["Ratios (time; below 1 = walsync faster):", ""]
        L += md_table(["", "walsync s", "Litestream s", "ratio"], rr).splitlines() + [""]
    L += ["Per run:", ""]
    L += md_table(["variant", "run", "seconds", "verified", "tool output / error"],
                  [[r["variant"], str(r["run"]), f(r["seconds"], 2), "no" if r.get("error") else "yes",
                    (r.get("error") or r.get("stdout") or "").replace("\n", " ").replace("|", "/")[:200]]
                   for r in results]).splitlines() + [""]
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the big database, MiB (default 1024)")
    ap.add_argument("--small", type=int, default=1000, help="number of small databases (default 1000)")
    ap.add_argument("--small-rows", type=int, default=20, help="rows per small database (default 20)")
    ap.add_argument("--jobs", type=int, default=16, help="parallelism J for the small restores (default 16)")
    ap.add_argument("--skip", default="", help="comma-separated: big, small")
    ap.add_argument("--no-sequential", action="store_true",
                    help="skip the one-at-a-time small restores (Litestream's take ~1 s per database "
                         "through --shape 30:80)")
    ap.add_argument("--timeout", type=float, default=1800, help="limit per backup or restore command, s")
    ap.add_argument("--tools", default="walsync,litestream")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 50 small databases, 1 run")
    add_common_args(ap, runs=3)
    args = ap.parse_args()
    if args.quick:  # smaller defaults; options given explicitly still win
        ap.set_defaults(size_mib=64, small=50, runs=1)
        args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    names = [t.strip() for t in args.tools.split(",") if t.strip()]

    results: list[dict] = []
    ctx: dict = {}
    tools: dict[str, Tool] = {}
    interrupted = False
    with workspace(args, "walsync-restore-") as base:
        try:
            bins, ctx = prepare_binaries(args, base)
            src = base / "src"
            src.mkdir()
            big = src / "big.db"
            small_dir = src / "small"
            small_dir.mkdir()
            t = time.monotonic()
            big_want = make_big(big, args.size_mib) if "big" not in skip else None
            small = [small_dir / f"db{i:05d}.db" for i in range(args.small)]
            wants = {p: make_small(p, i, args.small_rows) for i, p in enumerate(small)} if "small" not in skip else {}
            if "small" in skip:
                small = []
            log(f"source databases created in {time.monotonic() - t:.0f}s")
            ctx["big_bytes"] = big.stat().st_size if big.exists() else 0
            ctx["big_rows"] = big_want[0] if big_want else 0
            ctx["small_bytes"] = sum(p.stat().st_size for p in small)
            ctx["backups"] = {}
            for name in names:
                tools[name] = tool = Tool(name, bins[name], base / f"ws-{name}", big, small, args.shape)
                for w, cfg, on in (("big", tool.big_cfg, big_want), ("small", tool.small_cfg, small)):
                    if on:
                        b = tool.backup(cfg, w, args.timeout)
                        ctx["backups"][(w, name)] = b
                        log(f"{name} backup of {w}: {b}")
            for run in range(1, args.runs + 1):
                for name, tool in tools.items():
                    plan = []
                    if big_want:
                        plan.append((f"{name} restore", lambda: timed_big(tool, big, big_want, base, args.timeout)))
                    if small and name == "walsync":
                        if not args.no_sequential:
                            plan.append(("walsync restore-all --jobs 1",
                                         lambda: timed_small(tool, small, wants, 1, base, args.timeout)))
                        plan.append(("walsync restore-all --jobs J",
                                     lambda: timed_small(tool, small, wants, args.jobs, base, args.timeout)))
                    elif small:
                        if not args.no_sequential:
                            plan.append(("litestream restore x N, sequential",
                                         lambda: timed_small(tool, small, wants, 1, base, args.timeout)))
                        plan.append(("litestream restore x N, J at a time",
                                     lambda: timed_small(tool, small, wants, args.jobs, base, args.timeout)))
                    for variant, fn in plan:
                        r = fn()
                        r.update(variant=variant, run=run, tool=name)
                        log(f"run {run}: {variant}: {r['seconds']:.2f}s"
                            + (f" FAILED: {r['error']}" if r.get("error") else " (verified)"))
                        results.append(r)
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted; reporting what was measured")
        finally:
            for tool in tools.values():
                tool.stop()
    if not ctx or "backups" not in ctx:
        return 130 if interrupted else 1
    md = markdown(ctx, results)
    print(md)
    ctx["backups"] = {f"{w} {t}": b for (w, t), b in ctx["backups"].items()}
    finish(ctx, results, md, args)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
