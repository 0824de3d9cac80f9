#!/usr/bin/env python3
"""A TCP proxy that makes a loopback S3 server look like one across a network.

Loopback answers in microseconds and streams at memory speed; real S3 answers
a request after 10-50 ms and streams about 50-100 MB/s per connection. This
proxy adds both, per connection, so that benchmarks see what matters there:
how many requests a tool makes one after another, and how many connections it
streams over at once.

  - first-byte latency: the first byte of each answer is held until
    --latency-ms after the first byte of its request arrived (a connection
    carries one request at a time: HTTP/1.1 without pipelining, which is how
    both tools and their SDKs talk);
  - bandwidth: each direction of each connection is paced to --mbps
    (10^6 bytes per second), in chunks of at most 64 KiB.

It does not parse HTTP: a chunk from the client after the server has sent
anything starts a new request. (An `Expect: 100-continue` upload therefore
pays the latency twice: once for the interim answer, once for the final one,
as it would over a network.)

  python3 bench/shape_proxy.py --port 9001 --upstream 9000 --latency-ms 30 --mbps 80

Benchmarks start it through `common.S3Server(..., shape=...)` (the `--shape
LAT_MS:MBPS` option of bench/restore.py, bench/lag.py and bench/snapshot_stall.py).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

CHUNK = 64 * 1024


class Link:
    """The state both pumps of one connection share."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # When the request being answered began (None: none waits), and
        # whether the next client bytes start a new request.
        self.request_at: float | None = None
        self.new_request = True


class Pacer:
    """Paces one direction of one connection to `rate` bytes per second."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.free_at = 0.0

    def send(self, sock: socket.socket, data: bytes) -> None:
        for i in range(0, len(data), CHUNK):
            part = data[i:i + CHUNK]
            now = time.monotonic()
            start = max(self.free_at, now)
            if start > now:
                time.sleep(start - now)
            sock.sendall(part)
            self.free_at = start + len(part) / self.rate


def pump(src: socket.socket, dst: socket.socket, link: Link, upstream: bool, latency: float, rate: float) -> None:
    pacer = Pacer(rate)
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            if upstream:
                with link.lock:
                    if link.new_request:
                        link.new_request = False
                        link.request_at = time.monotonic()
            else:
                with link.lock:
                    at, link.request_at = link.request_at, None
                    link.new_request = True
                if at is not None:
                    wait = at + latency - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
            pacer.send(dst, data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(port: int, upstream: int, latency_ms: float, mbps: float, ready: threading.Event | None = None) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(512)
    if ready is not None:
        ready.set()
    latency, rate = latency_ms / 1000.0, mbps * 1e6
    while True:
        client, _ = listener.accept()
        try:
            server = socket.create_connection(("127.0.0.1", upstream))
        except OSError:
            client.close()
            continue
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = Link()
        for args in ((client, server, link, True), (server, client, link, False)):
            threading.Thread(target=pump, args=args + (latency, rate), daemon=True).start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    ap.add_argument("--upstream", type=int, required=True, help="port of the server on 127.0.0.1")
    ap.add_argument("--latency-ms", type=float, default=30, help="first-byte latency per request (default 30)")
    ap.add_argument("--mbps", type=float, default=80, help="bandwidth per connection and direction, MB/s (default 80)")
    a = ap.parse_args()
    serve(a.port, a.upstream, a.latency_ms, a.mbps)


if __name__ == "__main__":
    main()
