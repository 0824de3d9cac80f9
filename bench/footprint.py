#!/usr/bin/env python3
"""Resource footprint of walsync vs Litestream on the same workload.

For each N (number of databases) and each run, each tool is started alone on a
fresh copy of N WAL-mode databases, replicating to a local directory
(walsync `[storage] dir`, Litestream `type: file`), with a 1 s sync interval.
A writer subprocess commits one small INSERT twice a second into each of
min(50, N) databases; the rest stay idle.

Per run:
  1. start the tool and the writer;
  2. wait until every database has at least one object in the target
     directory (bounded: gives up after --stall s without progress or
     --ready-timeout s in all), then --warmup s more;
  3. active window (--window s): sample /proc/<pid>/status (VmRSS, VmHWM,
     Threads), /proc/<pid>/fd and /proc/<pid>/stat (utime+stime) every second;
  4. stop the writer, wait --settle s, idle window (--idle-window s): the same
     samples with no writes;
  5. stop the tool (SIGTERM; SIGKILL after --stop-timeout s), then check the
     replication: databases with objects in the target, objects under the
     written databases, and a restore of one written database whose row count
     must equal the source's.

Every metric is the median over --runs runs. CPU % is of one core (100 % =
one core busy for the whole window). Stdlib only; Python 3.11.

  python3 bench/footprint.py                      # N = 1,100,1000, 3 runs
  python3 bench/footprint.py --big                # also N = 10000 (1 run)
  python3 bench/footprint.py --out BENCHMARKS.md  # append a Markdown section
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no bench/__pycache__ in the work tree
from common import (REPO, add_common_args, db_name, f, file_info, kill_all, log, log_summary,
                    make_template, md_table, med, prepare_binaries, sh, spawn_writer, stop_process,
                    stop_writer, workspace)

CLK_TCK = os.sysconf("SC_CLK_TCK")
WRITTEN_MAX = 50  # databases written to: min(50, N)
WALSYNC_FDS_PER_DB = 6  # walsync's own estimate (src/daemon/fds.rs)
WALSYNC_MAX_OPEN = 2048  # databases opened from nothing at once (src/daemon/schedule.rs)


def walsync_fds_asked(n: int) -> int:
    """The open-file limit walsync asks for n databases (fds_recommended)."""
    return n + min(n, WALSYNC_MAX_OPEN) * (WALSYNC_FDS_PER_DB - 1) + 32


# ---------------------------------------------------------------------------
# The static binary (its size is reported)


def ensure_musl(args) -> Path | None:
    musl = REPO / "target/x86_64-unknown-linux-musl/release/walsync"
    script = REPO / "contrib/build-musl.sh"
    if not musl.exists() and script.exists() and not args.no_build:
        log("building the static musl binary (contrib/build-musl.sh)")
        try:
            subprocess.run(["bash", str(script)], cwd=REPO, capture_output=True, timeout=1800)
        except subprocess.TimeoutExpired:
            log("contrib/build-musl.sh timed out")
    return musl if musl.exists() else None


# ---------------------------------------------------------------------------
# Workspace


def setup_workspace(ws: Path, n: int, tool: str, template: Path) -> Path:
    dbdir = ws / "dbs"
    dbdir.mkdir()
    for i in range(n):
        shutil.copyfile(template, dbdir / db_name(i))
    (ws / "target").mkdir()
    cfg = ws / ("walsync.toml" if tool == "walsync" else "litestream.yml")
    lines = []
    if tool == "walsync":
        lines += ['sync_interval = "1s"', "", "[storage]", f'dir = "{ws / "target"}"', ""]
        for i in range(n):
            lines += ["[[databases]]", f'path = "{dbdir / db_name(i)}"', f'prefix = "b/db{i:05d}"', ""]
    else:
        lines.append("dbs:")
        for i in range(n):
            lines += [f"  - path: {dbdir / db_name(i)}",
                      "    replica:",
                      "      type: file",
                      f"      path: {ws / 'target' / f'db{i:05d}'}",
                      "      sync-interval: 1s"]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def db_target(ws: Path, tool: str, i: int) -> Path:
    return ws / "target" / ("b" if tool == "walsync" else "") / f"db{i:05d}"


def has_object(d: Path) -> bool:
    # walsync writes its lease (<prefix>/lease) before the first snapshot:
    # only objects under generations/ count.
    for root, _dirs, files in os.walk(d):
        if files and (root != str(d) or any(f != "lease" for f in files)):
            return True
    return False


def count_objects(d: Path) -> int:
    return sum(len(files) for _r, _d, files in os.walk(d))


# ---------------------------------------------------------------------------
# /proc sampling


def proc_alive(p: subprocess.Popen) -> bool:
    return p.poll() is None


def sample(pid: int) -> dict | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    s = {"t": time.monotonic(), "fds": fds}
    for line in status.splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            s[k] = int(v.split()[0]) / 1024  # MiB
        elif k == "Threads":
            s["threads"] = int(v)
    fields = stat[stat.rindex(")") + 2:].split()
    s["ticks"] = int(fields[11]) + int(fields[12])  # utime + stime
    return s


def sample_window(p: subprocess.Popen, seconds: float) -> tuple[list[dict], bool]:
    out = []
    first = sample(p.pid)
    if first is None:
        return out, False
    out.append(first)
    t0 = first["t"]
    k = 1
    while k <= seconds:
        time.sleep(max(0.0, t0 + k - time.monotonic()))
        s = sample(p.pid)
        if s is None or not proc_alive(p):
            return out, False
        out.append(s)
        k += 1
    return out, True


def summarize(samples: list[dict]) -> dict:
    if len(samples) < 2:
        return {}
    rss = [s["VmRSS"] for s in samples]
    cpu = (samples[-1]["ticks"] - samples[0]["ticks"]) / CLK_TCK / (samples[-1]["t"] - samples[0]["t"]) * 100
    return {
        "rss_med": statistics.median(rss),
        "rss_max": max(rss),
        "rss_anon_med": statistics.median(s.get("RssAnon", 0) for s in samples),
        "rss_file_med": statistics.median(s.get("RssFile", 0) for s in samples),
        "hwm": samples[-1].get("VmHWM", 0),
        "fds": statistics.median(s["fds"] for s in samples),
        "fds_max": max(s["fds"] for s in samples),
        "threads": statistics.median(s["threads"] for s in samples),
        "threads_max": max(s["threads"] for s in samples),
        "cpu": cpu,
        "samples": len(samples),
    }


# ---------------------------------------------------------------------------
# One measurement


def restore_check(tool: str, bin_path: Path, ws: Path, cfg: Path, i: int) -> dict:
    src = ws / "dbs" / db_name(i)
    out = ws / f"restored-{i}.db"
    try:
        c = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        src_rows = c.execute("SELECT count(*) FROM t").fetchone()[0]
        c.close()
    except sqlite3.Error as e:
        return {"ok": False, "error": f"source: {e}"}
    if tool == "walsync":
        cmd = [str(bin_path), "restore", "-c", str(cfg), "--prefix", f"b/db{i:05d}", "-o", str(out)]
    else:
        cmd = [str(bin_path), "restore", "-config", str(cfg), "-o", str(out), str(src)]
    try:
        r = sh(cmd, timeout=120)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "restore timed out", "src_rows": src_rows}
    if r.returncode != 0 or not out.exists():
        return {"ok": False, "error": (r.stderr or r.stdout).strip()[-300:], "src_rows": src_rows}
    try:
        c = sqlite3.connect(out)
        rows = c.execute("SELECT count(*) FROM t").fetchone()[0]
        c.close()
    except sqlite3.Error as e:
        return {"ok": False, "error": f"restored: {e}", "src_rows": src_rows}
    return {"ok": rows == src_rows, "src_rows": src_rows, "restored_rows": rows}


def run_one(tool: str, bin_path: Path, n: int, run: int, args, template: Path, base: Path) -> dict:
    res: dict = {"tool": tool, "n": n, "run": run}
    ws = Path(tempfile.mkdtemp(prefix=f"{tool}-n{n}-r{run}-", dir=base))
    proc = writer = None
    logf = None
    k = min(WRITTEN_MAX, n)
    try:
        t = time.monotonic()
        cfg = setup_workspace(ws, n, tool, template)
        res["setup_s"] = round(time.monotonic() - t, 1)
        cmd = ([str(bin_path), "watch", "-c", str(cfg)] if tool == "walsync"
               else [str(bin_path), "replicate", "-config", str(cfg)])
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        logf = open(ws / "tool.log", "wb")
        t_start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
        writer = spawn_writer(ws / "dbs", k, args.rate)
        # Wait until every database has an object in the target (initial snapshots).
        pending = set(range(n))
        last_progress = time.monotonic()
        deadline = t_start + args.ready_timeout
        while pending and proc_alive(proc):
            done = {i for i in pending if has_object(db_target(ws, tool, i))}
            if done:
                pending -= done
                last_progress = time.monotonic()
            now = time.monotonic()
            if not pending or now > deadline or now - last_progress > args.stall:
                break
            time.sleep(1.0)
        res["ready_dbs"] = n - len(pending)
        res["ready_s"] = round(time.monotonic() - t_start, 1) if not pending else None
        if pending:
            log(f"  {tool} N={n}: only {n - len(pending)}/{n} databases have objects after "
                f"{time.monotonic() - t_start:.0f}s; measuring anyway")
        # Warm-up.
        t_end = time.monotonic() + args.warmup
        while time.monotonic() < t_end and proc_alive(proc):
            time.sleep(0.5)
        if not proc_alive(proc):
            res["exited_early"] = proc.returncode
            log(f"  {tool} N={n}: exited with code {proc.returncode} before the active window")
        else:
            s, ok = sample_window(proc, args.window)
            res["active"] = summarize(s)
            if not ok:
                res["exited_early"] = proc.poll()
        # Stop the writer; idle phase.
        res["writer"] = stop_writer(writer)
        if proc_alive(proc):
            time.sleep(args.settle)
            s, ok = sample_window(proc, args.idle_window)
            res["idle"] = summarize(s)
            if not ok:
                res["exited_early"] = proc.poll()
        # Stop the tool.
        code, secs, killed = stop_process(proc, args.stop_timeout)
        res["exit_code"], res["stop_s"], res["killed"] = code, round(secs, 1), killed
        logf.close()
        logf = None
        # Verify replication.
        res["dbs_with_objects"] = sum(1 for i in range(n) if has_object(db_target(ws, tool, i)))
        res["objects_written_dbs"] = sum(count_objects(db_target(ws, tool, i)) for i in range(k))
        res["restore"] = restore_check(tool, bin_path, ws, cfg, 0)
        res["log"] = log_summary(ws / "tool.log", tool, ws)
        res["replicating"] = (res["dbs_with_objects"] == n and res["restore"].get("ok", False))
        if args.keep:
            res["workspace"] = str(ws)
    finally:
        kill_all((writer, proc))
        if logf is not None:
            logf.close()
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------
# Reporting


def aggregate(results: list[dict], tool: str, n: int) -> dict:
    rs = [r for r in results if r["tool"] == tool and r["n"] == n]
    a = lambda ph, key: med([r.get(ph, {}).get(key) for r in rs])  # noqa: E731
    return {
        "runs": len(rs),
        "rss_med": a("active", "rss_med"), "rss_max": a("active", "rss_max"),
        "rss_anon": a("active", "rss_anon_med"), "rss_file": a("active", "rss_file_med"),
        "hwm": med([(r.get("idle") or r.get("active") or {}).get("hwm") for r in rs]),
        "fds": a("active", "fds"), "threads": a("active", "threads"),
        "cpu": a("active", "cpu"), "cpu_idle": a("idle", "cpu"),
        "rss_idle": a("idle", "rss_med"),
        "ready_s": med([r.get("ready_s") for r in rs]),
        "ready_dbs": min((r.get("ready_dbs", 0) for r in rs), default=0),
        "replicating": sum(1 for r in rs if r.get("replicating")),
        "exited_early": [r.get("exited_early") for r in rs if "exited_early" in r],
        "writes": med([r.get("writer", {}).get("writes") for r in rs]),
        "writer_errors": sum(r.get("writer", {}).get("errors", 0) or 0 for r in rs),
        "commit_ms": max((r.get("writer", {}).get("max_commit_ms") or 0 for r in rs), default=None),
        "warn": sum(r["log"]["counts"].get("WARN", 0) for r in rs if "log" in r),
        "error": sum(r["log"]["counts"].get("ERROR", 0) for r in rs if "log" in r),
    }




COLS = [("N", None), ("tool", None), ("runs", "runs"), ("RSS med MiB", "rss_med"), ("RSS max MiB", "rss_max"),
        ("anon MiB", "rss_anon"), ("file MiB", "rss_file"), ("peak (HWM) MiB", "hwm"), ("fds", "fds"),
        ("threads", "threads"), ("CPU % active", "cpu"), ("CPU % idle", "cpu_idle"),
        ("ready s", "ready_s"), ("writer max commit ms", "commit_ms"), ("replicating", "replicating")]


def rows_for(results, ns, tools):
    rows = []
    for n in ns:
        for tool in tools:
            ag = aggregate(results, tool, n)
            if not ag["runs"]:
                continue
            row = [str(n), tool]
            for _h, key in COLS[2:]:
                v = ag[key]
                if key == "replicating":
                    v = f"{v}/{ag['runs']}"
                elif key in ("cpu", "cpu_idle"):
                    v = f(v, 2)
                elif key in ("fds", "threads"):
                    v = f(v, 0) if isinstance(v, float) else f(v)
                else:
                    v = f(v)
                row.append(v)
            rows.append(row)
    return rows


def ratios(results, ns, tools):
    out = []
    if "walsync" not in tools or "litestream" not in tools:
        return out
    for n in ns:
        w, l = aggregate(results, "walsync", n), aggregate(results, "litestream", n)
        if w["rss_med"] and l["rss_med"]:
            out.append((n, w["rss_med"] / l["rss_med"], w["rss_med"], l["rss_med"],
                        (w["fds"] / l["fds"]) if w["fds"] and l["fds"] else None,
                        (w["cpu"] / l["cpu"]) if w["cpu"] is not None and l["cpu"] else None))
    return out


def text_table(rows) -> str:
    head = [h for h, _ in COLS]
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) if rows else len(head[i]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.rjust(widths[i]) if i >= 2 else c.ljust(widths[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def markdown(ctx: dict, results: list[dict], ns, tools) -> str:
    m = ctx["machine"]
    L = [f"## Footprint: walsync vs Litestream ({ctx['date']})", ""]
    L += ["```sh", ctx["command"], "```", ""]
    L += [f"- Machine: {m.get('cpu', '?')}, {m['nproc']} CPUs, {m.get('ram_gib', '?')} GiB RAM, "
          f"Linux {m['kernel']}, open-file limit {m['nofile_soft']}/{m['nofile_hard']} (soft/hard), "
          f"work dir on {m['workdir_fs']}, Python {m['python']}"]
    w = ctx["walsync"]
    L += [f"- walsync measured: `{w['path']}` ({w['mib']} MiB, {w['linkage']}, sha256 {w['sha256']}, "
          f"built {w['mtime']}): {ctx['walsync_source']}"]
    l = ctx["litestream"]
    L += [f"- Litestream measured: `{l['path']}` ({l['mib']} MiB, {l['linkage']}), version {ctx['litestream_version']}"]
    L += [f"- Workload: N WAL-mode databases (one table), min(50, N) written {ctx['args']['rate']:g}x/s each "
          f"(one INSERT per commit, synchronous=NORMAL) by a separate writer process; local-directory target; "
          f"sync interval 1 s for both. Warm-up: until every DB has an object in the target, then "
          f"{ctx['args']['warmup']} s; active window {ctx['args']['window']} s; writer stopped, "
          f"{ctx['args']['settle']} s settle, idle window {ctx['args']['idle_window']} s; 1 sample/s; "
          f"medians over runs. Each tool alone, tools interleaved run by run."]
    L += [""]
    L += ["Binary sizes:", ""]
    L += md_table(["binary", "", "bytes", "MiB"],
                  [[name, info["linkage"], str(info["bytes"]), f"{info['mib']:.2f}"]
                   for name, info in ctx["binaries"] if info]).splitlines()
    L += [""]
    L += ["Results (medians over runs; RSS/fds/threads from the active window; CPU % of one core):", ""]
    L += md_table([h for h, _ in COLS], rows_for(results, ns, tools)).splitlines()
    L += [""]
    rt = ratios(results, ns, tools)
    if rt:
        L += ["Ratios walsync / Litestream (active-window medians):", ""]
        L += md_table(["N", "", "RSS ratio", "walsync MiB", "Litestream MiB", "fds ratio", "CPU ratio"],
                      [[str(n), "", f"{r:.2f}", f"{a:.1f}", f"{b:.1f}", f(fr, 2), f(cr, 2)]
                       for n, r, a, b, fr, cr in rt]).splitlines()
        L += [""]
    L += ["Per run:", ""]
    head = ["tool", "N", "run", "RSS med", "RSS max", "fds", "thr", "CPU% act", "CPU% idle", "ready s",
            "DBs with objects", "objects (written DBs)", "restore rows (src/restored)", "writes (errors)",
            "writer max commit ms",
            "exit", "stop s", "log WARN/ERROR"]
    rows = []
    for r in results:
        a, i = r.get("active", {}), r.get("idle", {})
        rs = r.get("restore", {})
        wr = r.get("writer", {})
        lc = r.get("log", {}).get("counts", {})
        rows.append([r["tool"], str(r["n"]), str(r["run"]), f(a.get("rss_med")), f(a.get("rss_max")),
                     f(a.get("fds"), 0), f(a.get("threads"), 0), f(a.get("cpu"), 2), f(i.get("cpu"), 2),
                     f(r.get("ready_s")), f"{r.get('dbs_with_objects', '-')}/{r['n']}",
                     str(r.get("objects_written_dbs", "-")),
                     f"{rs.get('src_rows', '-')}/{rs.get('restored_rows', '-')}" + ("" if rs.get("ok") else " FAIL"),
                     f"{wr.get('writes', '-')} ({wr.get('errors', '-')})", f(wr.get("max_commit_ms")),
                     f(r.get("exit_code")) + (" killed" if r.get("killed") else ""), f(r.get("stop_s")),
                     f"{lc.get('WARN', 0)}/{lc.get('ERROR', 0)}"])
    L += md_table(head, rows).splitlines()
    L += [""]
    notes = log_notes(results)
    if notes:
        L += ["Warnings and errors logged (grouped with digits normalised; $WS = the run's work directory; "
              "first run of each tool/N shown):", ""]
        L += notes
        L += [""]
    for n in ns:
        need = walsync_fds_asked(n)
        if need > m["nofile_hard"]:
            L += [f"- N={n}: walsync asks for an open-file limit of {need} > hard limit {m['nofile_hard']}."]
    L += [""]
    return "\n".join(L)


def log_notes(results) -> list[str]:
    seen = set()
    out = []
    for r in results:
        key = (r["tool"], r["n"])
        if key in seen or "log" not in r:
            continue
        seen.add(key)
        msgs = r["log"].get("messages", [])
        if not msgs:
            continue
        out.append(f"- {r['tool']} N={r['n']} run {r['run']} ({r['log'].get('distinct', 0)} distinct groups, "
                   f"first {len(msgs)} by first appearance):")
        for mm in msgs:
            ex = mm["example"].replace("`", "'")
            out.append(f"  - {mm['level']} x{mm['count']}: `{ex}`")
    return out


# ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="1,100,1000", help="comma-separated database counts (default 1,100,1000)")
    ap.add_argument("--big", action="store_true", help="also N=10000 (with --big-runs runs)")
    ap.add_argument("--big-runs", type=int, default=1)
    ap.add_argument("--tools", default="walsync,litestream")
    ap.add_argument("--warmup", type=float, default=10)
    ap.add_argument("--window", type=int, default=20, help="active sampling window, s")
    ap.add_argument("--idle-window", type=int, default=20, help="idle sampling window, s")
    ap.add_argument("--settle", type=float, default=3, help="pause after stopping the writer, s")
    ap.add_argument("--rate", type=float, default=2.0, help="writes per second per written database")
    ap.add_argument("--ready-timeout", type=float, default=600, help="max wait for initial snapshots, s")
    ap.add_argument("--stall", type=float, default=30,
                    help="stop waiting for initial snapshots after this long without progress, s")
    ap.add_argument("--stop-timeout", type=float, default=90)
    add_common_args(ap, runs=3)
    args = ap.parse_args()

    ns = [int(x) for x in args.n.split(",") if x.strip()]
    plan_ns = [(n, args.runs) for n in ns]
    if args.big and 10000 not in ns:
        plan_ns.append((10000, args.big_runs))
    all_ns = [n for n, _ in plan_ns]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in tools:
        if t not in ("walsync", "litestream"):
            ap.error(f"unknown tool {t!r}")

    results: list[dict] = []
    interrupted = False
    ctx: dict = {}
    with workspace(args, "walsync-footprint-") as base:
        try:
            musl = ensure_musl(args)
            bins, ctx = prepare_binaries(args, base)
            release = REPO / "target/release/walsync"
            ctx["binaries"] = [
                ("walsync (target/release)", file_info(release) if release.exists() else None),
                ("walsync static musl (target/x86_64-unknown-linux-musl/release)", file_info(musl)),
                (f"litestream {ctx['litestream_version']}", ctx["litestream"]),
            ]
            m = ctx["machine"]
            template = base / "template.db"
            make_template(template)
            for n, runs in plan_ns:
                need = walsync_fds_asked(n)
                if "walsync" in tools and need > m["nofile_hard"]:
                    log(f"N={n}: walsync asks for {need} open files, above the hard limit {m['nofile_hard']}; "
                        f"expect it to budget descriptors (or refuse below N + 32) -- recording what it does")
                for run in range(1, runs + 1):
                    for tool in tools:
                        log(f"N={n} run {run}/{runs}: {tool}")
                        r = run_one(tool, bins[tool], n, run, args, template, base)
                        a, i = r.get("active", {}), r.get("idle", {})
                        log(f"  rss {f(a.get('rss_med'))} MiB (max {f(a.get('rss_max'))}), fds {f(a.get('fds'), 0)}, "
                            f"threads {f(a.get('threads'), 0)}, cpu {f(a.get('cpu'), 2)}% active / "
                            f"{f(i.get('cpu'), 2)}% idle, ready {f(r.get('ready_s'))}s, "
                            f"{r.get('dbs_with_objects')}/{n} DBs with objects, restore {r.get('restore')}, "
                            f"exit {r.get('exit_code')}, log {r.get('log', {}).get('counts')}")
                        results.append(r)
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted; reporting what was measured")

    if not ctx:
        return 130 if interrupted else 1
    print()
    print(f"walsync: {ctx['walsync']['path']} ({ctx['walsync']['mib']} MiB) -- {ctx['walsync_source']}")
    print(f"litestream: {ctx['litestream']['path']} ({ctx['litestream']['mib']} MiB) -- {ctx['litestream_version']}")
    for name, info in ctx["binaries"]:
        if info:
            print(f"binary size: {name}: {info['bytes']} bytes ({info['mib']:.2f} MiB, {info['linkage']})")
    print()
    print(text_table(rows_for(results, all_ns, tools)))
    print()
    for n, r, a, b, fr, cr in ratios(results, all_ns, tools):
        print(f"N={n}: RSS walsync/litestream = {r:.2f} ({a:.1f} / {b:.1f} MiB); fds ratio {f(fr, 2)}; "
              f"CPU ratio {f(cr, 2)}")
    for n in all_ns:
        for tool in tools:
            ag = aggregate(results, tool, n)
            if ag["runs"] and (ag["replicating"] < ag["runs"] or ag["exited_early"]):
                print(f"NOTE: {tool} N={n}: replicated correctly in {ag['replicating']}/{ag['runs']} runs; "
                      f"min DBs with objects before measuring {ag['ready_dbs']}/{n}; "
                      f"exited early: {ag['exited_early'] or 'no'}")
    notes = log_notes(results)
    if notes:
        print("\nlogged warnings/errors:")
        print("\n".join(notes))
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n" + markdown(ctx, results, all_ns, tools))
        log(f"appended a section to {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps({"context": {k: v for k, v in ctx.items()}, "results": results},
                                              indent=1, default=str))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
