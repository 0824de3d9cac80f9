#!/usr/bin/env python3
"""A database past 4 GiB, cheaply, for 32-bit builds (contrib/cross-test.sh --big).

The database is made sparse: a small WAL-mode database with 64 KiB pages is
grown to PAGES pages by extending the file (a hole) and putting every new page
on SQLite's freelist (a few trunk pages list the rest), so it passes
`PRAGMA integrity_check` while only a few MB are written. The freelist's first
trunk lists the pages past 4 GiB, so the rows the application then commits
land at file offsets above 2^32. `walsync watch` (the given binary, e.g. an
armv7 one under qemu-arm-static) snapshots it and ships the commits to s3s-fs,
is stopped with SIGTERM, and the database is restored (by the same binary) and
compared byte for byte with the checkpointed source.

    python3 bench/sparse_4gib.py --walsync-bin target/armv7-unknown-linux-musleabihf/release/walsync \\
        --runner qemu-arm-static

Needs about 2 x 4.1 GB of free disk (the restored copy is not sparse).
"""
import argparse, hashlib, os, shlex, shutil, signal, sqlite3, struct, subprocess, sys, tempfile, time

import common

PAGE = 65536
PAGES = 4 * 1024 * 16 + 1024  # 4 GiB + 64 MiB
LOCK_PAGE = (1 << 30) // PAGE + 1  # SQLite never uses the page holding the lock bytes


def make_sparse_db(path):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA page_size=%d" % PAGE)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
    c.execute("INSERT INTO t(v) VALUES (randomblob(1000))")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    with open(path, "r+b") as f:
        head = bytearray(f.read(100))
        used = struct.unpack(">I", head[28:32])[0]
        assert struct.unpack(">II", head[32:40]) == (0, 0), "a new database has no freelist"
        free = [p for p in range(used + 1, PAGES + 1) if p != LOCK_PAGE]
        per_trunk = PAGE // 4 - 2
        # The first trunk lists only the pages past 4 GiB: SQLite hands out
        # the leaf of the first trunk nearest to where it wants a page, so
        # the application's next pages are all up there. The other trunks
        # (the lowest free pages) list the rest.
        high = [p for p in free if p > (1 << 32) // PAGE]
        low = [p for p in free if p <= (1 << 32) // PAGE]
        assert len(high) <= per_trunk
        n_more = -(-len(low) // (per_trunk + 1))
        trunks, low = [low[0]] + low[1:1 + n_more], low[1 + n_more:]
        lists = [high] + [low[i * per_trunk:(i + 1) * per_trunk] for i in range(n_more)]
        for i, (t, mine) in enumerate(zip(trunks, lists)):
            nxt = trunks[i + 1] if i + 1 < len(trunks) else 0
            f.seek((t - 1) * PAGE)
            f.write(struct.pack(">II", nxt, len(mine)) + b"".join(struct.pack(">I", p) for p in mine))
        assert sum(map(len, lists)) + len(trunks) == len(free)
        f.truncate(PAGES * PAGE)
        head[28:32] = struct.pack(">I", PAGES)
        head[32:40] = struct.pack(">II", trunks[0], len(free))
        f.seek(0)
        f.write(head)
    c = sqlite3.connect(path)
    ok = c.execute("PRAGMA integrity_check").fetchall()
    c.close()
    if ok != [("ok",)]:
        raise SystemExit("error: the crafted sparse database fails integrity_check: %s" % ok[:5])


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                return h.hexdigest()
            h.update(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--walsync-bin", required=True)
    ap.add_argument("--runner", default="", help="command prefix, e.g. qemu-arm-static")
    ap.add_argument("--rows", type=int, default=40, help="rows of 100 KB committed after the snapshot")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    binary = shlex.split(args.runner) + [os.path.abspath(args.walsync_bin)]
    work = tempfile.mkdtemp(prefix="walsync-4gib-")
    server = None
    try:
        server = common.S3Server(common.Path(work))
        db = os.path.join(work, "big.db")
        t0 = time.monotonic()
        make_sparse_db(db)
        print("sparse database: %d bytes (%d pages of 64 KiB), %d KB on disk, made in %.1f s"
              % (os.path.getsize(db), PAGES, os.stat(db).st_blocks // 2, time.monotonic() - t0), flush=True)
        cfg = common.walsync_s3_config(common.Path(work) / "walsync.toml", server.endpoint, [(db, "edge/big")])
        env = dict(server.env(), RUST_LOG="info")
        log = open(os.path.join(work, "walsync.log"), "ab")
        t0 = time.monotonic()
        p = subprocess.Popen(binary + ["watch", "--config", str(cfg)], cwd=work, env=env, stdout=log, stderr=log)
        c = sqlite3.connect(db, isolation_level=None, timeout=60)
        for i in range(args.rows):
            c.execute("INSERT INTO t(v) VALUES (randomblob(100000))")
            time.sleep(0.05)
        top = c.execute("SELECT max(rowid) FROM t").fetchone()[0]
        c.close()
        time.sleep(3)
        rss = common.Path("/proc/%d/status" % p.pid).read_text().split("VmHWM:")[1].split()[0]
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=1800)
        print("watch: snapshot and %d commits shipped, SIGTERM exit %d after %.0f s; peak RSS %s KiB%s"
              % (args.rows, code, time.monotonic() - t0, rss, " (qemu included)" if args.runner else ""),
              flush=True)
        c = sqlite3.connect(db)
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        # The pages the rows went to: past 4 GiB, as intended.
        high = c.execute("SELECT count(*) FROM dbstat WHERE pageno > 65536").fetchone()[0] \
            if c.execute("SELECT 1 FROM pragma_module_list WHERE name='dbstat'").fetchone() else None
        c.close()
        out = os.path.join(work, "restored.db")
        t0 = time.monotonic()
        r = subprocess.run(binary + ["restore", "--config", str(cfg), "--prefix", "edge/big", "-o", out],
                           cwd=work, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print("FAILED: restore: " + r.stderr.strip()[-800:])
            return 1
        secs = time.monotonic() - t0
        same = os.path.getsize(out) == os.path.getsize(db) and digest(out) == digest(db)
        print("restore: %d bytes in %.0f s; byte-identical to the checkpointed source: %s; last row id %d; "
              "pages past 4 GiB in use: %s" % (os.path.getsize(out), secs, same, top, high))
        return 0 if same and code == 0 else 1
    finally:
        if server:
            server.stop()
        if args.keep:
            print("work directory kept: " + work, file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
