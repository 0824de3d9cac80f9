#!/usr/bin/env python3
"""Replication lag and S3 request rates of walsync vs Litestream, side by side.

Both tools replicate the same workload to the same kind of target: an s3s-fs
S3 server on loopback (one per tool run, fresh data directory), reached
through a small counting HTTP proxy (this script, `--_proxy`), with a 1 s sync
interval for both and other settings default. N WAL-mode databases (default
100), each written by a writer subprocess at --rate commits per second (one
small INSERT per commit; every row carries its wall-clock time).

Per run and tool (tools interleaved run by run):
  1. start s3s-fs, the proxy, the tool and the writer; wait until every
     database has an object in the bucket (bounded), then --warmup s;
  2. active window (--window s): the writer keeps writing;
  3. stop the writer, wait --settle s (the last commits get shipped), idle
     window (--idle-window s, default 60): no writes at all;
  4. stop the tool (SIGTERM, SIGKILL after --stop-timeout s), the proxy and
     s3s-fs; compute the figures below.

Requests: the proxy logs every request with its method, key and the time the
server's response arrived. GET on the bucket is a LIST; PUT includes multipart
parts; DELETE includes batch deletes (POST ?delete). Per minute = count in the
window / window length.

Lag, the same method for both tools: lag of a commit = (time the first PUT
that makes the commit restorable from the bucket got its response from the
server) - (the commit's wall-clock time, written in its row just before
COMMIT). To know which commits an uploaded object makes restorable, the proxy
hard-links every uploaded object (and s3s-fs's metadata files) into an archive
as soon as the PUT succeeds, so later deletes (retention, Litestream's
compaction) do not lose it. Afterwards, for --sample databases, the objects
are taken in PUT order; for each one whose key names a transaction id higher
than any before it (walsync: the last txid of a segment or the txid of a
snapshot; Litestream: the max TXID of an LTX file, any level) the tool itself
restores the database from the archive up to that txid (`walsync restore
--dir ARCHIVE --txid N`; `litestream restore -txid X` through an s3s-fs
serving the archive), and the newest row id in the result is what the bucket
held from that moment on. No assumption is made about how either tool's txids
relate to SQLite commits, only that restoring to a higher txid of the same
database restores no fewer commits and that objects a restore needs were
uploaded no later than the object naming that txid (both tools upload in txid
order). Commits of the active window only. Lag includes the proxy's own
latency (sub-millisecond to a few ms on an idle machine, but it is one Python
process: with many concurrent connections on a busy machine it adds more, and
to the tool that sends more requests at once). --no-proxy checks that: the
tools talk to s3s-fs directly, the time an object reached the bucket is its
file's mtime (s3s-fs writes the file, then answers), restores read the live
bucket, and requests are not counted.

  python3 bench/lag.py                          # N=100, rate 1/s, 3 runs, 60 s windows
  python3 bench/lag.py --quick                  # smoke run, < 2 minutes
  python3 bench/lag.py --out bench/results-lag.md --json /tmp/lag.json
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.dont_write_bytecode = True  # no bench/__pycache__ in the work tree
from common import (BUCKET, S3Server, add_common_args, start_shaper, db_name, f, finish, free_port, header_md, kill_all,
                    litestream_s3_config, log, log_summary, make_template, md_table, med, percentile,
                    prepare_binaries, ratio, spawn_writer, stop_process, stop_writer, wait_port,
                    walsync_s3_config, workspace)

TOOLS = ("walsync", "litestream")
KINDS = ("PUT", "GET", "LIST", "HEAD", "DELETE", "POST")


# ---------------------------------------------------------------------------
# Counting proxy (python3 lag.py --_proxy PORT UPSTREAM_PORT LOG DATA_ROOT ARCHIVE_ROOT)


def proxy_main(port: int, upstream: int, log_path: str, data_root: str, archive_root: str) -> None:
    logf = open(log_path, "a", buffering=1)
    lock = threading.Lock()
    local = threading.local()

    def upstream_conn(fresh=False):
        if fresh or getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=300)
        return local.conn

    def archive(key: str) -> None:
        src = Path(data_root) / BUCKET / key
        dst = Path(archive_root) / BUCKET / key
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
            # s3s-fs's own files for the object, named from bucket and key (no
            # directory scan: the data root holds two per object).
            b64 = lambda t: base64.urlsafe_b64encode(t.encode()).decode().rstrip("=")  # noqa: E731
            for suffix in ("metadata.json", "internal.json"):
                name = f".bucket-{b64(BUCKET)}.object-{b64(key)}.{suffix}"
                if (Path(data_root) / name).exists():
                    os.link(Path(data_root) / name, Path(archive_root) / name)
        except OSError:
            pass

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # no per-request stderr
            pass

        def handle_any(self):
            t0 = time.time()
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    body += self.rfile.read(size)
                    self.rfile.readline()
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            for attempt in (0, 1):
                conn = upstream_conn(fresh=attempt == 1)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (http.client.HTTPException, OSError):
                    conn.close()
                    local.conn = None
                    if attempt == 1:
                        self.send_error(502)
                        return
            t1 = time.time()
            u = urlsplit(self.path)
            parts = unquote(u.path).lstrip("/").split("/", 1)
            key = parts[1] if len(parts) > 1 else ""
            kind = self.command
            if self.command == "GET" and not key:
                kind = "LIST"
            elif self.command == "POST" and "delete" in u.query.split("&"):
                kind = "DELETE"
            if kind == "PUT" and resp.status == 200 and key and "partNumber" not in u.query:
                archive(key)
            self.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            if self.command == "HEAD":
                self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
            else:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            line = json.dumps({"t0": round(t0, 4), "t1": round(t1, 4), "kind": kind, "key": key,
                               "status": resp.status, "in": len(body), "out": len(data)})
            with lock:
                logf.write(line + "\n")

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def read_proxy_log(path: Path) -> list[dict]:
    out = []
    try:
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    except OSError:
        pass
    return out


def objects_as_puts(bucket_dir: Path) -> list[dict]:
    """--no-proxy: the objects left in the bucket, as PUTs at their file's mtime
    (s3s-fs writes the file before it answers the PUT). Deleted objects are
    missed, so only lag is reported then, not request rates."""
    out = []
    for p in bucket_dir.rglob("*"):
        if p.is_file():
            t = p.stat().st_mtime
            out.append({"t0": t, "t1": t, "kind": "PUT", "key": str(p.relative_to(bucket_dir)), "status": 200,
                        "in": p.stat().st_size, "out": 0})
    return out


def rates(reqs: list[dict], t0: float, t1: float) -> dict:
    """Requests per minute by kind in [t0, t1), plus the raw counts."""
    counts = {k: 0 for k in KINDS}
    errors = 0
    last = None
    for r in reqs:
        if t0 <= r["t1"] < t1:
            counts[r["kind"]] = counts.get(r["kind"], 0) + 1
            errors += r["status"] >= 400
            last = max(last or 0, r["t1"] - t0)
    minutes = (t1 - t0) / 60
    out = {f"{k}_per_min": round(v / minutes, 1) for k, v in counts.items()}
    out.update({"counts": counts, "total_per_min": round(sum(counts.values()) / minutes, 1),
                "total": sum(counts.values()), "error_responses": errors, "seconds": round(t1 - t0, 1),
                "last_request_s": round(last, 1) if last is not None else None})
    return out


def put_spread(tool: str, reqs: list[dict], n: int, t0: float, t1: float) -> dict:
    """How evenly the uploads went to the databases in [t0, t1), and how long the
    server took per PUT (as the proxy saw it)."""
    per = {db_prefix(tool, i) + "/": 0 for i in range(n)}
    ms = []
    for r in reqs:
        if r["kind"] == "PUT" and t0 <= r["t1"] < t1:
            ms.append((r["t1"] - r["t0"]) * 1000)
            pre = "/".join(r["key"].split("/")[:2 if tool == "walsync" else 1]) + "/"
            if pre in per:
                per[pre] += 1
    counts = sorted(per.values())
    return {"min": counts[0] if counts else None, "median": med(counts), "max": counts[-1] if counts else None,
            "dbs_without_put": sum(1 for c in counts if c == 0),
            "put_ms_p50": percentile(ms, 50), "put_ms_p99": percentile(ms, 99)}


# ---------------------------------------------------------------------------
# Which commits each uploaded object makes restorable


def object_txid(tool: str, key: str) -> int | None:
    """The transaction id an uploaded data object brings the backup up to, from its key."""
    name = key.rsplit("/", 1)[-1]
    try:
        if tool == "walsync":
            if name.endswith(".seg"):
                return int(name[:-4].split("-")[1], 16)
            if name.endswith(".snap"):
                return int(name[:-5].split("-")[0], 16)
        elif name.endswith(".ltx"):
            return int(name[:-4].split("-")[1], 16)
    except (ValueError, IndexError):
        pass
    return None


def db_prefix(tool: str, i: int) -> str:
    return f"b/db{i:05d}" if tool == "walsync" else f"db{i:05d}"


def newest_row(path: Path) -> int | None:
    try:
        c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return c.execute("SELECT max(id) FROM t").fetchone()[0]
        finally:
            c.close()
    except sqlite3.Error:
        return None


def restore_at(tool: str, bin_path: Path, i: int, txid: int, out: Path, arch: dict) -> int | None:
    """Restores database i up to txid from the archive; returns its newest row id."""
    for suffix in ("", "-wal", "-shm"):  # newest_row's connection leaves -wal/-shm behind
        Path(f"{out}{suffix}").unlink(missing_ok=True)
    if tool == "walsync":
        cmd = [str(bin_path), "restore", "--dir", str(arch["root"] / BUCKET), "--prefix", db_prefix(tool, i),
               "-o", str(out), "--txid", str(txid)]
    else:
        cmd = [str(bin_path), "restore", "-config", str(arch["config"]), "-o", str(out), "-txid", f"{txid:016x}",
               str(arch["dbdir"] / db_name(i))]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=arch["env"])
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0:
        arch.setdefault("errors", []).append((r.stderr or r.stdout).strip()[-200:])
        return None
    return newest_row(out)


def measure_lag(tool: str, bin_path: Path, ws: Path, reqs: list[dict], sample: list[int], t0: float,
                t1: float, env: dict, archive: Path) -> dict:
    """Lag of every commit made in [t0, t1) to the sampled databases (see the docstring)."""
    arch = {"root": archive, "dbdir": ws / "dbs", "env": env}
    server = None
    lags: list[float] = []
    unshipped = restores = 0
    per_db: dict[str, dict] = {}
    try:
        if tool == "litestream":
            server = S3Server(ws, root=arch["root"])
            arch["env"] = server.env()
            arch["config"] = litestream_s3_config(ws / "archive.yml", server.endpoint,
                                                  [(ws / "dbs" / db_name(i), db_prefix(tool, i)) for i in sample])
        for i in sample:
            pre = db_prefix(tool, i) + "/"
            puts = sorted((r["t1"], object_txid(tool, r["key"])) for r in reqs
                          if r["kind"] == "PUT" and r["status"] == 200 and r["key"].startswith(pre)
                          and r["t1"] >= t0)
            covered = []  # (time, newest row id restorable from then on)
            best_txid, best_row = -1, -1
            for t, txid in puts:
                if txid is None or txid <= best_txid:
                    continue
                best_txid = txid
                row = restore_at(tool, bin_path, i, txid, ws / "at.db", arch)
                restores += 1
                if row is not None and row > best_row:
                    best_row = row
                    covered.append((t, row))
            c = sqlite3.connect(f"file:{ws / 'dbs' / db_name(i)}?mode=ro", uri=True)
            commits = [(rid, float(v.split()[2])) for rid, v in c.execute("SELECT id, v FROM t WHERE v LIKE 'row %'")]
            c.close()
            k = 0
            mine = []
            for rid, tc in sorted(commits):
                if not t0 <= tc < t1:
                    continue
                while k < len(covered) and covered[k][1] < rid:
                    k += 1
                if k == len(covered):
                    unshipped += 1
                else:
                    mine.append(covered[k][0] - tc)
            lags += mine
            per_db[db_name(i)] = {"commits": len(mine), "uploads": len(covered), "p50": percentile(mine, 50),
                                  "max": max(mine) if mine else None}
    finally:
        if server is not None:
            server.stop()
    return {"commits": len(lags) + unshipped, "unshipped": unshipped, "restores": restores,
            "restore_errors": len(arch.get("errors", [])), "restore_error_example": (arch.get("errors") or [None])[0],
            "p50": percentile(lags, 50), "p90": percentile(lags, 90), "p99": percentile(lags, 99),
            "max": max(lags) if lags else None, "min": min(lags) if lags else None, "per_db": per_db}


# ---------------------------------------------------------------------------
# One run


def wait_objects(bucket_dir: Path, tool: str, n: int, proc, args) -> tuple[int, float | None]:
    """Bounded wait until every database has an object in the bucket."""
    t_start = time.monotonic()
    pending = set(range(n))
    last = t_start
    while pending and proc.poll() is None:
        done = {i for i in pending if (bucket_dir / db_prefix(tool, i)).exists()}
        if done:
            pending -= done
            last = time.monotonic()
        now = time.monotonic()
        if not pending or now - t_start > args.ready_timeout or now - last > args.stall:
            break
        time.sleep(0.5)
    return n - len(pending), (round(time.monotonic() - t_start, 1) if not pending else None)


def run_one(tool: str, bin_path: Path, run: int, args, template: Path, base: Path) -> dict:
    res: dict = {"tool": tool, "run": run, "n": args.n}
    ws = Path(tempfile.mkdtemp(prefix=f"lag-{tool}-r{run}-", dir=base))
    proc = writer = proxy = shaper = None
    server = None
    logf = None
    try:
        server = S3Server(ws, shape=args.shape if args.no_proxy else None)
        if args.no_proxy:
            endpoint = server.endpoint
        else:
            (ws / "archive" / BUCKET).mkdir(parents=True)
            pport = free_port()
            with open(ws / "proxy.err", "wb") as err:
                proxy = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_proxy", str(pport),
                                          str(server.port), str(ws / "proxy.jsonl"), str(server.root),
                                          str(ws / "archive")],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)
            if not wait_port(pport, proxy):
                raise RuntimeError("proxy did not start")
            endpoint = f"http://127.0.0.1:{pport}"
            if args.shape:
                # The tool -> the shaping proxy -> the counting proxy -> s3s-fs:
                # an upload counts as arrived when the server has it, before
                # the tool hears back (one first-byte latency later).
                shaper, sport = start_shaper(args.shape, pport, ws)
                endpoint = f"http://127.0.0.1:{sport}"
        dbdir = ws / "dbs"
        dbdir.mkdir()
        for i in range(args.n):
            shutil.copyfile(template, dbdir / db_name(i))
        dbs = [(dbdir / db_name(i), db_prefix(tool, i)) for i in range(args.n)]
        if tool == "walsync":
            cfg = walsync_s3_config(ws / "walsync.toml", endpoint, dbs, args.walsync_setting)
            cmd = [str(bin_path), "watch", "-c", str(cfg)]
        else:
            cfg = litestream_s3_config(ws / "litestream.yml", endpoint, dbs)
            cmd = [str(bin_path), "replicate", "-config", str(cfg)]
        logf = open(ws / "tool.log", "wb")
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=server.env())
        writer = spawn_writer(dbdir, args.n, args.rate)
        res["ready_dbs"], res["ready_s"] = wait_objects(server.bucket_dir, tool, args.n, proc, args)
        if res["ready_s"] is None:
            log(f"  {tool}: only {res['ready_dbs']}/{args.n} databases have objects; measuring anyway")
        time.sleep(args.warmup)
        t_act = time.time()
        time.sleep(args.window)
        t_act_end = time.time()
        res["writer"] = stop_writer(writer)
        time.sleep(args.settle)
        t_idle = time.time()
        time.sleep(args.idle_window)
        t_idle_end = time.time()
        res["alive_at_end"] = proc.poll() is None
        code, secs, killed = stop_process(proc, args.stop_timeout)
        res["exit_code"], res["stop_s"], res["killed"] = code, round(secs, 1), killed
        logf.close()
        logf = None
        if shaper is not None:
            stop_process(shaper, 5)
        if proxy is not None:
            stop_process(proxy, 5)
        server.stop()
        reqs = objects_as_puts(server.bucket_dir) if args.no_proxy else read_proxy_log(ws / "proxy.jsonl")
        res["active"] = rates(reqs, t_act, t_act_end)
        res["idle"] = rates(reqs, t_idle, t_idle_end)
        res["put_spread"] = put_spread(tool, reqs, args.n, t_act, t_act_end)
        res["uploaded_bytes_active"] = sum(r["in"] for r in reqs if r["kind"] == "PUT" and t_act <= r["t1"] < t_act_end)
        step = max(1, args.n // args.sample)
        sample = list(range(0, args.n, step))[:args.sample]
        t = time.monotonic()
        res["lag"] = measure_lag(tool, bin_path, ws, reqs, sample, t_act, t_act_end, server.env(),
                                 server.root if args.no_proxy else ws / "archive")
        res["lag"]["seconds"] = round(time.monotonic() - t, 1)
        res["log"] = log_summary(ws / "tool.log", tool, ws)
        if args.keep:
            res["workspace"] = str(ws)
    finally:
        kill_all((writer, proc, proxy, shaper))
        if server is not None:
            server.stop()
        if logf is not None:
            logf.close()
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------
# Reporting


def aggregate(results: list[dict], tool: str) -> dict:
    rs = [r for r in results if r["tool"] == tool and "active" in r]
    g = lambda *path: med([_dig(r, path) for r in rs])  # noqa: E731
    out = {"runs": len(rs)}
    for q in ("p50", "p90", "p99", "max"):
        out[q] = g("lag", q)
    for ph in ("active", "idle"):
        for k in KINDS + ("total",):
            out[f"{ph}_{k}"] = g(ph, f"{k}_per_min")
    out["idle_total_count"] = g("idle", "total")
    out["commits"] = sum(_dig(r, ("lag", "commits")) or 0 for r in rs)
    out["unshipped"] = sum(_dig(r, ("lag", "unshipped")) or 0 for r in rs)
    out["restore_errors"] = sum(_dig(r, ("lag", "restore_errors")) or 0 for r in rs)
    out["kib_per_min"] = med([r["uploaded_bytes_active"] / 1024 / (r["active"]["seconds"] / 60) for r in rs])
    return out


def _dig(d, path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


HEAD = ["tool", "runs", "lag p50 s", "lag p90 s", "lag p99 s", "lag max s", "commits (unshipped)",
        "PUT/min", "LIST/min", "GET/min", "HEAD/min", "DELETE/min", "all/min", "KiB up/min",
        "idle PUT/min", "idle LIST/min", "idle GET/min", "idle all/min"]


def table_rows(results) -> list[list[str]]:
    rows = []
    for tool in TOOLS:
        a = aggregate(results, tool)
        if not a["runs"]:
            continue
        rows.append([tool, str(a["runs"]), f(a["p50"], 2), f(a["p90"], 2), f(a["p99"], 2), f(a["max"], 2),
                     f"{a['commits']} ({a['unshipped']})", f(a["active_PUT"]), f(a["active_LIST"]),
                     f(a["active_GET"]), f(a["active_HEAD"]), f(a["active_DELETE"]), f(a["active_total"]),
                     f(a["kib_per_min"]), f(a["idle_PUT"]), f(a["idle_LIST"]), f(a["idle_GET"]),
                     f(a["idle_total"])])
    return rows


def ratio_rows(results) -> list[list[str]]:
    w, l = aggregate(results, "walsync"), aggregate(results, "litestream")
    if not (w["runs"] and l["runs"]):
        return []
    return [[name, "", f(w[k], 2), f(l[k], 2), f(ratio(w[k], l[k]), 2)]
            for name, k in [("lag p50 s", "p50"), ("lag p99 s", "p99"), ("PUT/min", "active_PUT"),
                            ("LIST/min", "active_LIST"), ("GET/min", "active_GET"),
                            ("all requests/min, active", "active_total"), ("all requests/min, idle", "idle_total")]]


def run_rows(results) -> list[list[str]]:
    rows = []
    for r in results:
        lg, a, i, w = r.get("lag", {}), r.get("active", {}), r.get("idle", {}), r.get("writer", {})
        lc = r.get("log", {}).get("counts", {})
        rows.append([r["tool"], str(r["run"]), f(lg.get("p50"), 2), f(lg.get("p99"), 2), f(lg.get("max"), 2),
                     f"{lg.get('commits', '-')} ({lg.get('unshipped', '-')})", str(lg.get("restores", "-")),
                     str(lg.get("restore_errors", "-")),
                     "{}/{}/{}".format(*(f(r.get("put_spread", {}).get(k), 0) for k in ("min", "median", "max"))),
                     f"{f(r.get('put_spread', {}).get('put_ms_p50'))}/{f(r.get('put_spread', {}).get('put_ms_p99'))}",
                     " ".join(f"{k} {v}" for k, v in a.get("counts", {}).items() if v) or "-",
                     (" ".join(f"{k} {v}" for k, v in i.get("counts", {}).items() if v) or "0")
                     + (f" (last at +{i['last_request_s']:g} s)" if i.get("last_request_s") is not None else ""),
                     f"{a.get('error_responses', '-')}/{i.get('error_responses', '-')}",
                     f"{w.get('writes', '-')} ({w.get('errors', '-')})", f(w.get("max_commit_ms")),
                     f"{r.get('ready_dbs', '-')}/{r['n']}", f(r.get("exit_code")) + (" killed" if r.get("killed") else ""),
                     f"{lc.get('WARN', 0)}/{lc.get('ERROR', 0)}"])
    return rows


RUN_HEAD = ["tool", "run", "p50 s", "p99 s", "max s", "commits (unshipped)", "restores", "restore errors",
            "PUTs per DB min/med/max", "PUT ms p50/p99",
            "requests, active window", "requests, idle window", "HTTP errors act/idle", "writes (errors)",
            "writer max commit ms", "DBs ready", "exit", "log WARN/ERROR"]


def markdown(ctx: dict, results: list[dict]) -> str:
    a = ctx["args"]
    L = header_md(ctx, "Replication lag and S3 requests: walsync vs Litestream")
    L += [f"- Workload: {a['n']} WAL-mode databases, each written {a['rate']:g}x/s (one small INSERT per commit, "
          f"synchronous=NORMAL) by one writer process; sync interval 1 s for both, other settings default; S3 "
          f"{'directly (--no-proxy: request counts below are objects left in the bucket)' if a.get('no_proxy') else 'through a counting proxy'}. Warm-up: every DB has an object, then {a['warmup']:g} s; active window "
          f"{a['window']:g} s; writer stopped, {a['settle']:g} s settle, idle window {a['idle_window']:g} s. "
          f"Tools interleaved run by run; medians over runs.",
          f"- Lag: commit wall-clock time to the response of the first PUT after which the commit is restorable "
          f"from the bucket, found by restoring {a['sample']} of the {a['n']} databases (every "
          f"{max(1, a['n'] // a['sample'])}. from db00000) with the tool itself at every new txid an upload brings "
          f"(see `bench/lag.py`'s docstring). Percentiles over all commits of those databases in the active "
          f"window, median over runs.", ""]
    L += md_table(HEAD, table_rows(results)).splitlines() + [""]
    rr = ratio_rows(results)
    if rr:
        L += ["Ratios walsync / Litestream (medians):", ""]
        L += md_table(["", " ", "walsync", "Litestream", "ratio"], rr).splitlines() + [""]
    L += ["Per run:", ""] + md_table(RUN_HEAD, run_rows(results)).splitlines() + [""]
    notes = []
    for r in results:
        lg = r.get("lag", {})
        per = lg.get("per_db") or {}
        if per:
            notes.append(f"- {r['tool']} run {r['run']}, lag per sampled database (p50/max s, uploads that "
                         f"brought new commits): " + ", ".join(
                             f"{k[:-3]} {f(v['p50'], 1)}/{f(v['max'], 1)} ({v['uploads']})" for k, v in per.items()))
        if lg.get("restore_error_example"):
            notes.append(f"- {r['tool']} run {r['run']}: {lg['restore_errors']} restores failed, e.g. "
                         f"`{lg['restore_error_example']}`")
        for mm in r.get("log", {}).get("messages", [])[:5]:
            notes.append(f"- {r['tool']} run {r['run']} log {mm['level']} x{mm['count']}: "
                         f"`{mm['example'][:300].replace('`', chr(39))}`")
    if notes:
        L += ["Per database, warnings, errors and failed restores ($WS = the run's work directory):", ""] + notes + [""]
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) == 7 and sys.argv[1] == "--_proxy":
        proxy_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="databases, all written (default 100)")
    ap.add_argument("--rate", type=float, default=1.0, help="commits per second per database (default 1)")
    ap.add_argument("--warmup", type=float, default=10)
    ap.add_argument("--window", type=float, default=60, help="active window, s (default 60)")
    ap.add_argument("--settle", type=float, default=5, help="pause after stopping the writer, s")
    ap.add_argument("--idle-window", type=float, default=60, help="idle window, s (default 60)")
    ap.add_argument("--sample", type=int, default=10, help="databases whose lag is measured (default 10)")
    ap.add_argument("--tools", default="walsync,litestream")
    ap.add_argument("--walsync-setting", action="append", default=[], metavar="KEY=VALUE",
                    help="a top-level line for walsync's config, e.g. 'workers = 16' (repeatable)")
    ap.add_argument("--no-proxy", action="store_true",
                    help="no counting proxy: tools talk to s3s-fs directly; lag from the object files' mtimes, "
                         "restores from the live bucket (objects deleted meanwhile are missed); request rates "
                         "are then objects left in the bucket, not requests")
    ap.add_argument("--ready-timeout", type=float, default=300)
    ap.add_argument("--stall", type=float, default=30)
    ap.add_argument("--stop-timeout", type=float, default=90)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: N=10, 1 run, 2 s warm-up, 15 s windows, 3 sampled DBs (< 2 minutes)")
    add_common_args(ap, runs=3)
    args = ap.parse_args()
    if args.quick:  # smaller defaults; options given explicitly still win
        ap.set_defaults(n=10, runs=1, warmup=2, window=15, idle_window=15, settle=3, sample=3)
        args = ap.parse_args()
    args.sample = max(1, min(args.sample, args.n))
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if any(t not in TOOLS for t in tools):
        ap.error(f"--tools: choose from {TOOLS}")

    results: list[dict] = []
    ctx: dict = {}
    interrupted = False
    with workspace(args, "walsync-lag-") as base:
        try:
            bins, ctx = prepare_binaries(args, base)
            template = base / "template.db"
            make_template(template)
            for run in range(1, args.runs + 1):
                for tool in tools:
                    log(f"run {run}/{args.runs}: {tool}, {args.n} databases")
                    r = run_one(tool, bins[tool], run, args, template, base)
                    lg = r.get("lag", {})
                    log(f"  lag p50 {f(lg.get('p50'), 2)} s p99 {f(lg.get('p99'), 2)} s over {lg.get('commits')} "
                        f"commits ({lg.get('unshipped')} unshipped, {lg.get('restore_errors')} restore errors); "
                        f"active {r.get('active', {}).get('counts')}; idle {r.get('idle', {}).get('counts')}; "
                        f"writer {r.get('writer')}; exit {r.get('exit_code')}; log {r.get('log', {}).get('counts')}")
                    results.append(r)
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted; reporting what was measured")
    if not ctx:
        return 130 if interrupted else 1
    md = markdown(ctx, results)
    print(md)
    finish(ctx, results, md, args)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
