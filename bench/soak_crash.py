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
"""
import argparse, hashlib, os, random, shutil, signal, socket, sqlite3, subprocess
import sys, tempfile, threading, time

from common import s3s_fs_binary  # bench/common.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def walsync_binary():
    for p in ("target/release/walsync", "target/debug/walsync"):
        if os.path.exists(os.path.join(ROOT, p)):
            return os.path.join(ROOT, p)
    subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target/release/walsync")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Writer(threading.Thread):
    def __init__(self, path, seed, stop):
        super().__init__(daemon=True)
        self.path, self.rng, self.stop = path, random.Random(seed), stop
        self.committed = {}  # id -> sha256 of the value
        self.txns = 0
        self.error = None

    def run(self):
        try:
            c = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA wal_autocheckpoint=%d" % self.rng.choice([0, 100, 1000]))
            c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            next_id = 1
            while not self.stop.is_set():
                kind = self.rng.random()
                if kind < 0.7:
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
    args = ap.parse_args()
    rng = random.Random(args.seed)
    binary = walsync_binary()
    work = tempfile.mkdtemp(prefix="walsync-soak-")
    server = None
    env = dict(os.environ, RUST_LOG="info")
    try:
        if args.s3:
            s3s = str(s3s_fs_binary())
            port = free_port()
            os.makedirs(os.path.join(work, "s3/bucket"))
            server = subprocess.Popen([s3s, "--host", "127.0.0.1", "--port", str(port), "--access-key", "AKSOAK",
                                       "--secret-key", "soaksecret", os.path.join(work, "s3")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            storage = '[storage]\nbucket = "bucket"\nendpoint = "http://127.0.0.1:%d"\n' % port
            env.update(AWS_ACCESS_KEY_ID="AKSOAK", AWS_SECRET_ACCESS_KEY="soaksecret")
        else:
            storage = '[storage]\ndir = "backup"\n'
        cfg = os.path.join(work, "walsync.toml")
        with open(cfg, "w") as f:
            f.write('sync_interval = "200ms"\ncheckpoint_threshold = "1MiB"\ntruncate_threshold = "8MiB"\n'
                    'snapshot_interval = "5s"\nidle_release_after = "2s"\n' + storage)
            for i in range(args.databases):
                f.write('[[databases]]\npath = "db%d.db"\nprefix = "soak/db%d"\n' % (i, i))
        stop = threading.Event()
        writers = [Writer(os.path.join(work, "db%d.db" % i), args.seed + i, stop) for i in range(args.databases)]
        for w in writers:
            w.start()
        log = open(os.path.join(work, "walsync.log"), "ab")
        kills = 0
        for cycle in range(args.cycles):
            p = subprocess.Popen([binary, "watch", "--config", cfg], cwd=work, env=env, stdout=log, stderr=log)
            time.sleep(rng.random() * args.max_run)
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            time.sleep(rng.random() * 0.3)
            print("cycle %d/%d, %d transactions so far" % (cycle + 1, args.cycles, sum(w.txns for w in writers)),
                  file=sys.stderr)
        p = subprocess.Popen([binary, "watch", "--config", cfg], cwd=work, env=env, stdout=log, stderr=log)
        time.sleep(2)
        stop.set()
        for w in writers:
            w.join()
        time.sleep(3)
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=120)
        lost = 0
        failed = []
        for i, w in enumerate(writers):
            if w.error:
                failed.append("writer %d: %s" % (i, w.error))
            out = os.path.join(work, "restored%d.db" % i)
            r = subprocess.run([binary, "restore", "--config", cfg, "--prefix", "soak/db%d" % i, "-o", out],
                               cwd=work, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                failed.append("restore db%d: %s" % (i, r.stderr.strip()))
                continue
            got = {rid: hashlib.sha256(v).hexdigest()
                   for rid, v in sqlite3.connect(out).execute("SELECT id, v FROM t")}
            lost += sum(1 for k, h in w.committed.items() if got.get(k) != h)
            extra = set(got) - set(w.committed)
            if extra:
                failed.append("db%d: %d rows restored that were never committed" % (i, len(extra)))
        txns = sum(w.txns for w in writers)
        rows = sum(len(w.committed) for w in writers)
        print("seed %d: %d cycles, %d kills, %d transactions, %d rows, lost rows: %d, final SIGTERM exit %d"
              % (args.seed, args.cycles, kills, txns, rows, lost, code))
        for f in failed:
            print("FAILED: " + f)
        return 1 if lost or failed or code != 0 else 0
    finally:
        if server:
            server.kill()
        if args.keep:
            print("work directory kept: " + work, file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
