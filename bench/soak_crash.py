#!/usr/bin/env python3
"""Crash-loop soak for walsync (not part of the test command).

Writers commit transactions of random size (one small row up to several MB)
to several WAL-mode databases, with random checkpoints of every mode and
autocheckpoint, while `walsync watch` is killed with SIGKILL at random moments
(during snapshots, uploads and its own checkpoints as they happen) and
restarted, for N cycles. At the end walsync is stopped with SIGTERM, every
database is restored, and every committed row is checked.

    python3 bench/soak_crash.py --cycles 50 --databases 4
    python3 bench/soak_crash.py --cycles 200 --s3     # against s3s-fs

Prints cycles, transactions, kills and lost rows (must be 0); exits 1 if
anything was lost or a restore failed.

Other architectures (contrib/cross-test.sh runs this): `--walsync-bin` and
`--runner` run `watch` as another binary, e.g. an aarch64 one under
qemu-aarch64-static; `--big-txn-mib` adds one transaction of that size per
database; each `--restorer LABEL=RUNNER:BIN` (RUNNER may be empty; default:
the watch binary) restores every database with that binary, compares it byte for byte with
the checkpointed source, and (with --s3) runs `restore-all` and `verify`,
all from the bucket flags alone, as on a machine without the config.
"""
import argparse, hashlib, json, os, random, shlex, shutil, signal, sqlite3, subprocess
import sys, tempfile, threading, time

import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def walsync_binary():
    for p in ("target/release/walsync", "target/debug/walsync"):
        if os.path.exists(os.path.join(ROOT, p)):
            return os.path.join(ROOT, p)
    subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target/release/walsync")


def peak_rss_kib(pid):
    """VmHWM of a running process (under qemu-user: the emulator with the
    guest in it), or None once it has gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def parse_restorer(spec):
    """LABEL=RUNNER:BIN -> (label, [runner...] + [bin])."""
    label, _, rest = spec.partition("=")
    runner, _, binary = rest.rpartition(":")
    if not label or not binary:
        raise SystemExit("error: --restorer wants LABEL=RUNNER:BIN (RUNNER may be empty), got %r" % spec)
    return label, shlex.split(runner) + [os.path.abspath(binary)]


class Writer(threading.Thread):
    def __init__(self, path, seed, stop, big_txn_mib=0):
        super().__init__(daemon=True)
        self.path, self.rng, self.stop = path, random.Random(seed), stop
        self.committed = {}  # id -> sha256 of the value
        self.txns = 0
        self.error = None
        # One transaction of this many MiB, after a few small ones (0: none).
        self.big_txn_mib = big_txn_mib

    def run(self):
        try:
            c = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA wal_autocheckpoint=%d" % self.rng.choice([0, 100, 1000]))
            c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            next_id = 1
            while not self.stop.is_set():
                kind = self.rng.random()
                if self.big_txn_mib and self.txns == 20:
                    rows = [os.urandom(256 * 1024) for _ in range(self.big_txn_mib * 4)]
                elif kind < 0.7:
                    rows = [os.urandom(self.rng.randint(10, 200))]
                elif kind < 0.95:
                    rows = [os.urandom(self.rng.randint(100, 4000)) for _ in range(self.rng.randint(2, 200))]
                else:  # a large transaction: up to several MB
                    rows = [os.urandom(256 * 1024) for _ in range(self.rng.randint(1, 16))]
                pending = {}
                while True:
                    try:
                        c.execute("BEGIN IMMEDIATE")
                        for v in rows:
                            c.execute("INSERT INTO t(id, v) VALUES (?, ?)", (next_id + len(pending), v))
                            pending[next_id + len(pending)] = hashlib.sha256(v).hexdigest()
                        c.execute("COMMIT")
                        break
                    except sqlite3.OperationalError:
                        try:
                            c.execute("ROLLBACK")
                        except sqlite3.OperationalError:
                            pass
                        pending = {}
                        time.sleep(0.01)
                self.committed.update(pending)
                next_id += len(pending)
                self.txns += 1
                if self.rng.random() < 0.03:
                    mode = self.rng.choice(["PASSIVE", "FULL", "RESTART", "TRUNCATE"])
                    try:
                        c.execute("PRAGMA busy_timeout=50")
                        c.execute("PRAGMA wal_checkpoint(%s)" % mode).fetchall()
                    except sqlite3.OperationalError:
                        pass
                    c.execute("PRAGMA busy_timeout=10000")
                time.sleep(self.rng.random() * 0.01)
            c.close()
        except Exception as e:  # reported at the end
            self.error = e


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=30)
    ap.add_argument("--databases", type=int, default=3)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--max-run", type=float, default=3.0, help="longest walsync run between kills (s)")
    ap.add_argument("--s3", action="store_true", help="use an s3s-fs server instead of a directory")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--walsync-bin", help="the walsync binary that runs `watch` (default: target/release)")
    ap.add_argument("--runner", default="", help="command prefix for it, e.g. qemu-aarch64-static")
    ap.add_argument("--big-txn-mib", type=int, default=0, help="one transaction of this size per database")
    ap.add_argument("--restorer", action="append", default=[], metavar="LABEL=RUNNER:BIN",
                    help="also restore (and with --s3 restore-all and verify) with this binary; repeatable")
    ap.add_argument("--json", help="write the figures as JSON to this file")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    binary = shlex.split(args.runner) + [os.path.abspath(args.walsync_bin) if args.walsync_bin
                                         else walsync_binary()]
    restorers = [parse_restorer(r) for r in args.restorer] or [("watch binary", binary)]
    work = tempfile.mkdtemp(prefix="walsync-soak-")
    server = None
    env = dict(os.environ, RUST_LOG="info")
    try:
        if args.s3:
            server = common.S3Server(common.Path(work))
            storage = '[storage]\nbucket = "%s"\nendpoint = "%s"\nregion = "%s"\npath_style = true\n' % (
                common.BUCKET, server.endpoint, common.REGION)
            env = dict(server.env(), RUST_LOG="info")
        else:
            storage = '[storage]\ndir = "backup"\n'
        cfg = os.path.join(work, "walsync.toml")
        with open(cfg, "w") as f:
            f.write('sync_interval = "200ms"\ncheckpoint_threshold = "1MiB"\ntruncate_threshold = "8MiB"\n'
                    'snapshot_interval = "5s"\nidle_release_after = "2s"\n' + storage)
            for i in range(args.databases):
                f.write('[[databases]]\npath = "db%d.db"\nprefix = "soak/db%d"\n' % (i, i))
        stop = threading.Event()
        writers = [Writer(os.path.join(work, "db%d.db" % i), args.seed + i, stop, args.big_txn_mib)
                   for i in range(args.databases)]
        for w in writers:
            w.start()
        log = open(os.path.join(work, "walsync.log"), "ab")
        kills = 0
        rss = []  # peak RSS (KiB) of each walsync run, read just before it is stopped
        for cycle in range(args.cycles):
            p = subprocess.Popen(binary + ["watch", "--config", cfg], cwd=work, env=env, stdout=log, stderr=log)
            time.sleep(rng.random() * args.max_run)
            rss.append(peak_rss_kib(p.pid))
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            time.sleep(rng.random() * 0.3)
            print("cycle %d/%d, %d transactions so far" % (cycle + 1, args.cycles, sum(w.txns for w in writers)),
                  file=sys.stderr)
        p = subprocess.Popen(binary + ["watch", "--config", cfg], cwd=work, env=env, stdout=log, stderr=log)
        time.sleep(2)
        stop.set()
        for w in writers:
            w.join()
        time.sleep(3)
        rss.append(peak_rss_kib(p.pid))
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=300)
        lost = 0
        failed = []
        # With the WAL checkpointed into it (walsync has stopped), each source
        # file is the bytes a restore of the newest point must give.
        sources = []
        for i, w in enumerate(writers):
            if w.error:
                failed.append("writer %d: %s" % (i, w.error))
            src = os.path.join(work, "db%d.db" % i)
            c = sqlite3.connect(src)
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            c.close()
            with open(src, "rb") as f:
                sources.append(f.read())
        restores = []
        for label, rbin in restorers:
            res = {"by": label, "restore_identical": 0, "restore_all_identical": None, "verify": None}
            for i, w in enumerate(writers):
                out = os.path.join(work, "restored-%s-%d.db" % (label.replace(" ", "_"), i))
                r = subprocess.run(rbin + ["restore", "--config", cfg, "--prefix", "soak/db%d" % i, "-o", out],
                                   cwd=work, env=env, capture_output=True, text=True)
                if r.returncode != 0:
                    failed.append("%s: restore db%d: %s" % (label, i, r.stderr.strip()))
                    continue
                got = {rid: hashlib.sha256(v).hexdigest()
                       for rid, v in sqlite3.connect(out).execute("SELECT id, v FROM t")}
                lost += sum(1 for k, h in w.committed.items() if got.get(k) != h)
                extra = set(got) - set(w.committed)
                if extra:
                    failed.append("%s: db%d: %d rows restored that were never committed" % (label, i, len(extra)))
                with open(out, "rb") as f:
                    if f.read() == sources[i]:
                        res["restore_identical"] += 1
                    else:
                        failed.append("%s: db%d restored differs from the checkpointed source" % (label, i))
            if args.s3:
                # As on a new machine: the bucket flags, no config file.
                flags = ["--bucket", common.BUCKET, "--endpoint", server.endpoint, "--region", common.REGION]
                outdir = os.path.join(work, "all-%s" % label.replace(" ", "_"))
                r = subprocess.run(rbin + ["restore-all", "--output-dir", outdir, "--prefix", "soak"] + flags,
                                   cwd=work, env=env, capture_output=True, text=True)
                if r.returncode != 0:
                    failed.append("%s: restore-all: %s" % (label, (r.stdout + r.stderr).strip()[-500:]))
                else:
                    res["restore_all_identical"] = 0
                    for i in range(args.databases):
                        with open(os.path.join(outdir, "soak/db%d.db" % i), "rb") as f:
                            if f.read() == sources[i]:
                                res["restore_all_identical"] += 1
                            else:
                                failed.append("%s: restore-all db%d differs from the source" % (label, i))
                r = subprocess.run(rbin + ["verify", "--prefix", "soak"] + flags, cwd=work, env=env,
                                   capture_output=True, text=True)
                res["verify"] = r.returncode
                if r.returncode != 0:
                    failed.append("%s: verify: %s" % (label, (r.stdout + r.stderr).strip()[-500:]))
            restores.append(res)
            print("restored by %s: %d/%d restore byte-identical, restore-all %s, verify exit %s"
                  % (label, res["restore_identical"], args.databases,
                     "-" if res["restore_all_identical"] is None
                     else "%d/%d byte-identical" % (res["restore_all_identical"], args.databases),
                     "-" if res["verify"] is None else res["verify"]))
        txns = sum(w.txns for w in writers)
        rows = sum(len(w.committed) for w in writers)
        sizes = [len(b) for b in sources]
        peak = max((r for r in rss if r), default=None)
        print("seed %d: %d cycles, %d kills, %d transactions, %d rows, lost rows: %d, final SIGTERM exit %d"
              % (args.seed, args.cycles, kills, txns, rows, lost, code))
        print("database sizes (bytes): %s; peak RSS of watch: %s KiB%s"
              % (", ".join(str(n) for n in sizes), peak, " (qemu included)" if args.runner else ""))
        for f in failed:
            print("FAILED: " + f)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"seed": args.seed, "watch": binary, "cycles": args.cycles, "kills": kills,
                           "transactions": txns, "rows": rows, "lost_rows": lost, "sigterm_exit": code,
                           "db_bytes": sizes, "peak_rss_kib": peak, "restores": restores, "failed": failed},
                          f, indent=1)
        return 1 if lost or failed or code != 0 else 0
    finally:
        if server:
            server.stop()
        if args.keep:
            print("work directory kept: " + work, file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
