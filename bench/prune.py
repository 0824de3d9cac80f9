#!/usr/bin/env python3
"""Prune of 10,000 objects: S3 requests and seconds of `walsync prune`.

A fresh s3s-fs serves a bucket whose prefix holds an old generation of
10,000 objects (one snapshot and 9,999 one-transaction segments, written
straight into s3s-fs's directory) and a newer generation with one
snapshot, older than the retention window: `walsync prune --retention 1h`
then deletes the whole old generation. Each run gets a fresh bucket.

Runs, same binary:
  direct     walsync talks to s3s-fs (seconds only);
  counted    through a counting HTTP proxy (requests by method, seconds);
  dry-run    direct, `--dry-run`: the listing and the plan, nothing
             deleted (what the seconds above spend before deleting);
  refused    through the proxy, which answers DeleteObjects 501 Not
             Implemented as a server without it does: walsync falls back to
             one DELETE per key, which is what every prune did before
             DeleteObjects (one request per key).
Seconds are wall-clock of the `walsync prune` process. The proxy (Python,
one upstream connection per client connection) adds its own time per
request; compare `counted` with `refused`, and `direct` with a `direct` run
of an older binary (--walsync-bin).

  python3 bench/prune.py [--walsync-bin PATH] [--objects N] [--runs N]
"""

import argparse
import http.client
import http.server
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import S3Server, machine_info, walsync_s3_config  # noqa: E402

PREFIX = "bench/app"


def seg_key(gen, first, last, t0, t1):
    return f"{PREFIX}/generations/{gen:016x}/segments/{first:016x}-{last:016x}-{t0:016x}-{t1:016x}.seg"


def snap_key(gen, txid, t):
    return f"{PREFIX}/generations/{gen:016x}/snapshots/{txid:016x}-{t:016x}.snap"


def populate(bucket_dir: Path, objects: int) -> None:
    """`objects` old objects in generation 1 and one snapshot in generation
    2, all two days old."""
    t0 = int(time.time() * 1000) - 2 * 86400 * 1000
    keys = [snap_key(1, 1, t0)]
    keys += [seg_key(1, i, i, t0 + i, t0 + i) for i in range(2, objects + 1)]
    keys.append(snap_key(2, 1, t0 + objects + 1000))
    for key in keys:
        path = bucket_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"0123456789abcdef")


class Counter:
    def __init__(self, refuse_batch: bool):
        self.refuse_batch = refuse_batch
        self.lock = threading.Lock()
        self.by_method: dict[str, int] = {}

    def add(self, name: str) -> None:
        with self.lock:
            self.by_method[name] = self.by_method.get(name, 0) + 1


def start_proxy(upstream_port: int, counter: Counter):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def handle_any(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            batch = self.command == "POST" and re.search(r"[?&]delete(=|&|$)", self.path)
            counter.add("POST ?delete" if batch else self.command)
            if batch and counter.refuse_batch:
                page = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NotImplemented</Code>"
                        b"<Message>A header you provided implies functionality that is not implemented</Message></Error>")
                self.send_response(501)
                self.send_header("content-type", "application/xml")
                self.send_header("content-length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
            if not hasattr(self, "upstream"):
                self.upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
            self.upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                self.upstream.putheader(name, value)
            self.upstream.endheaders(body)
            resp = self.upstream.getresponse()
            data = resp.read()
            self.send_response(resp.status, resp.reason)
            for name, value in resp.getheaders():
                if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(binary: Path, work: Path, objects: int, mode: str) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"prune-{mode}-", dir=work))
    s3 = S3Server(run_dir)
    proxy = None
    try:
        populate(s3.bucket_dir, objects)
        endpoint = s3.endpoint
        counter = Counter(refuse_batch=(mode == "refused"))
        if mode in ("counted", "refused"):
            proxy = start_proxy(s3.port, counter)
            endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
        db = run_dir / "app.db"
        sqlite3.connect(db).close()
        config = walsync_s3_config(run_dir / "walsync.toml", endpoint, [(db, PREFIX)])
        start = time.monotonic()
        dry = ["--dry-run"] if mode == "dry-run" else []
        done = subprocess.run([str(binary), "prune", "-c", str(config), "--retention", "1h", *dry],
                              env=s3.env(), capture_output=True, text=True, timeout=1800)
        seconds = time.monotonic() - start
        if done.returncode != 0:
            raise SystemExit(f"walsync prune failed ({done.returncode}):\n{done.stderr[-3000:]}")
        left = sum(1 for p in (s3.bucket_dir / PREFIX).rglob("*") if p.is_file())
        warn = [line for line in done.stderr.splitlines() if "WARN" in line]
        return {"mode": mode, "seconds": seconds, "requests": dict(counter.by_method),
                "objects_left": left, "summary": done.stdout.strip().splitlines()[-1:], "warn": warn}
    finally:
        if proxy is not None:
            proxy.shutdown()
        s3.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--walsync-bin", default="target/release/walsync")
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--modes", default="direct,counted,refused")
    args = ap.parse_args()
    binary = Path(args.walsync_bin).resolve()
    work = Path(tempfile.mkdtemp(prefix="walsync-bench-prune-"))
    info = machine_info(work)
    print(f"binary: {binary}; objects: {args.objects}; machine: {info}")
    for _ in range(args.runs):
        for mode in args.modes.split(","):
            r = run(binary, work, args.objects, mode)
            total = sum(r["requests"].values())
            print(f"{r['mode']:8} {r['seconds']:7.2f} s  requests {total if r['requests'] else '-'} "
                  f"{r['requests']}  objects left {r['objects_left']}  {r['summary']}  warn {len(r['warn'])}")


if __name__ == "__main__":
    main()
