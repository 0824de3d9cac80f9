#!/usr/bin/env python3
"""A fleet of small databases restored, verified and listed: walsync before
and after a change, side by side in one run, against s3s-fs on loopback.

For each N (default 1,000): N SQLite databases in WAL mode (`--rows` rows
each, written by Python's sqlite3) under src/tenants/, backed up once by
`walsync snapshot` (the "after" binary) into a local directory backend, whose
objects are then copied into the bucket directory of a fresh s3s-fs. That is
the same objects walsync writes to S3 (the directory backend uses the same
keys and bytes), made much faster than N snapshots over S3, whose cost grows
with the bucket on s3s-fs. Then, for each run and each binary, interleaved:

  restore-all -c CFG --output-dir OUT           (config listing every database)
  restore-all --bucket B --endpoint E --prefix tenants/ --output-dir OUT
  verify -c CFG
  list -c CFG --json

with default flags, each timed (wall clock) and its peak RSS read from
wait4(). Every restored database is checked: `PRAGMA integrity_check`, row
count and SHA-256 of all rows equal to the source's; `verify` must say
"N ok, 0 failed"; `list --json` must show N databases, each with its newest
txid. Medians over runs. Stdlib only; Python 3.11.

  python3 bench/fleet_restore.py --before-bin /tmp/walsync-main \\
      --walsync-bin target/release/walsync --n 1000 --runs 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BUCKET, S3Server, file_info, finish, log, machine_info, md_table,  # noqa: E402
                    med, f, workspace)

STEPS = ["restore-all -c", "restore-all --bucket --prefix tenants/", "verify -c", "list -c --json"]


def make_db(path: Path, i: int, rows: int) -> tuple[int, str]:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=OFF")  # only to make the fleet faster; not stored in the file
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    c.execute("BEGIN")
    h = hashlib.sha256()
    for rid in range(1, rows + 1):
        v = f"db {i} row {rid} " + os.urandom(16).hex()
        h.update(rid.to_bytes(8, "little"))
        h.update(v.encode())
        c.execute("INSERT INTO t(id, v) VALUES (?, ?)", (rid, v))
    c.execute("COMMIT")
    c.close()
    return rows, h.hexdigest()


def check_db(path: Path, want: tuple[int, str]) -> str | None:
    if not path.is_file():
        return f"{path}: missing"
    try:
        c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            ok = c.execute("PRAGMA integrity_check").fetchone()[0]
            h, n = hashlib.sha256(), 0
            for rid, v in c.execute("SELECT id, v FROM t ORDER BY id"):
                h.update(rid.to_bytes(8, "little"))
                h.update(v.encode())
                n += 1
        finally:
            c.close()
    except sqlite3.Error as e:
        return f"{path}: {e}"
    if ok != "ok":
        return f"{path}: integrity_check: {ok}"
    return None if (n, h.hexdigest()) == want else f"{path}: {n} rows, not the source's {want[0]}"


def timed_rss(cmd: list[str], env: dict, timeout: float) -> dict:
    """Runs cmd; wall seconds, exit code, peak RSS (MiB) and output. The RSS
    comes from /usr/bin/time -f %M: a child forked from this Python process
    would carry Python's own high-water mark across exec into wait4's figure."""
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "rss"
        t = time.monotonic()
        p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cmd], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
            code = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            out, err = p.communicate()
            code, err = -9, err + b" timed out"
        except BaseException:  # interrupted: walsync must not outlive the run
            os.killpg(p.pid, 9)
            raise
        secs = time.monotonic() - t
        try:
            rss = int(rss_file.read_text().split()[-1]) / 1024
        except (OSError, ValueError, IndexError):
            rss = float("nan")
    return {"seconds": secs, "exit": code, "rss_mib": rss,
            "stdout": out.decode(errors="replace"), "stderr": err.decode(errors="replace")}


def run_step(step: str, bin_path: Path, ctx: dict, wants: dict, ws: Path, timeout: float) -> dict:
    env, cfg, n = ctx["env"], str(ctx["s3_cfg"]), len(wants)
    out = ws / "out"
    shutil.rmtree(out, ignore_errors=True)
    if step == "restore-all -c":
        cmd = [str(bin_path), "restore-all", "-c", cfg, "--output-dir", str(out)]
    elif step.startswith("restore-all --bucket"):
        cmd = [str(bin_path), "restore-all", "--bucket", BUCKET, "--endpoint", ctx["endpoint"],
               "--prefix", "tenants/", "--output-dir", str(out)]
    elif step == "verify -c":
        tmp = ws / "verify-tmp"
        tmp.mkdir(exist_ok=True)
        cmd = [str(bin_path), "verify", "-c", cfg, "--temp-dir", str(tmp)]
    else:
        cmd = [str(bin_path), "list", "-c", cfg, "--json"]
    r = timed_rss(cmd, env, timeout)
    res = {"seconds": r["seconds"], "rss_mib": r["rss_mib"], "exit": r["exit"], "error": None}
    lines = r["stdout"].strip().splitlines()
    res["last_line"] = lines[-1][:160] if lines and not step.startswith("list") else ""
    if r["exit"] != 0:
        res["error"] = f"exit {r['exit']}: {(r['stderr'] or r['stdout']).strip()[-400:]}"
    elif step.startswith("restore-all"):
        bad = [e for name, want in wants.items() if (e := check_db(out / "tenants" / f"{name}.db", want))]
        if bad or f"{n} ok, 0 failed" not in r["stdout"]:
            res["error"] = f"{len(bad)} of {n} restored databases wrong, e.g. {bad[:1]}; {res['last_line']}"
    elif step == "verify -c":
        if f"{n} ok, 0 failed" not in r["stdout"]:
            res["error"] = f"verify did not say {n} ok: {res['last_line']}"
    else:
        try:
            items = json.loads(r["stdout"])
            got = {i["prefix"]: i["newest_txid"] for i in items}
            missing = [p for p in (f"tenants/{name}" for name in wants) if got.get(p) is None]
            if len(items) != n or missing:
                res["error"] = f"list shows {len(items)} databases, {len(missing)} without a newest txid"
        except (ValueError, KeyError, TypeError) as e:
            res["error"] = f"list --json did not parse: {e}"
    shutil.rmtree(out, ignore_errors=True)
    # The deletes are written out (and, on a disk mounted with `discard`,
    # trimmed) now, not during the next command's fsyncs.
    os.sync()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="1000", help="comma-separated fleet sizes (default 1000)")
    ap.add_argument("--rows", type=int, default=10, help="rows per database (default 10)")
    ap.add_argument("--runs", type=int, default=3, help="runs of the after binary (default 3); medians")
    ap.add_argument("--before-runs", type=int, default=None, help="runs of the before binary (default --runs)")
    ap.add_argument("--before-max-n", type=int, default=1000,
                    help="measure the before binary only up to this N (default 1000: it needs minutes)")
    ap.add_argument("--walsync-bin", required=True, help="the binary measured as 'after'")
    ap.add_argument("--before-bin", help="the binary measured as 'before' (e.g. main's)")
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of: " + ", ".join(STEPS))
    ap.add_argument("--before-steps", default=None, help="the steps measured with the before binary (default --steps)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--cache", help="keep the databases and their backup here and use them again in later "
                                    "runs of the same N and --rows (making 10,000 takes minutes)")
    ap.add_argument("--out", help="append a Markdown section to this file")
    ap.add_argument("--json", help="write the raw results as JSON to this file")
    args = ap.parse_args()
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    before_steps = steps if args.before_steps is None else [s.strip() for s in args.before_steps.split(",")]
    before_runs = args.runs if args.before_runs is None else args.before_runs
    bins = {"after": Path(args.walsync_bin).resolve()}
    if args.before_bin:
        bins["before"] = Path(args.before_bin).resolve()
    results: list[dict] = []
    with workspace(args, "walsync-fleet-") as base:
        for name, p in list(bins.items()):  # a rebuild during the run cannot change what is measured
            shutil.copy2(p, base / f"walsync-{name}")
        ctx = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "command": "python3 bench/fleet_restore.py " + " ".join(sys.argv[1:]),
               "machine": machine_info(base), "bins": {k: file_info(v) for k, v in bins.items()},
               "setup": {}}
        try:
            for n in [int(x) for x in args.n.split(",")]:
                ws = base / f"n{n}"
                made_in = Path(args.cache) / f"n{n}-rows{args.rows}" if args.cache else ws
                src = made_in / "src" / "tenants"
                wants_file = made_in / "wants.json"
                ws.mkdir(parents=True)
                if wants_file.exists():
                    wants = {k: tuple(v) for k, v in json.loads(wants_file.read_text()).items()}
                    made = snap = 0.0
                    log(f"N={n}: databases and backup from {made_in}")
                else:
                    shutil.rmtree(made_in, ignore_errors=True)
                    src.mkdir(parents=True)
                    t = time.monotonic()
                    wants = {f"db{i:05d}": make_db(src / f"db{i:05d}.db", i, args.rows) for i in range(n)}
                    made = time.monotonic() - t
                    dir_cfg = made_in / "dir.toml"
                    dir_cfg.write_text(f'[storage]\ndir = "{made_in / "backup"}"\n[[directories]]\n'
                                       f'dir = "{src}"\npattern = "*.db"\nprefix = "tenants/{{name}}"\n')
                    t = time.monotonic()
                    r = subprocess.run([str(base / "walsync-after"), "snapshot", "-c", str(dir_cfg)],
                                       capture_output=True, text=True, timeout=args.timeout)
                    snap = time.monotonic() - t
                    if r.returncode != 0:
                        raise SystemExit(f"snapshot failed: {r.stderr[-500:]}")
                    wants_file.write_text(json.dumps(wants))
                (ws / "s3").mkdir()
                shutil.copytree(made_in / "backup", ws / "s3" / BUCKET)
                objects = sum(1 for p in (ws / "s3" / BUCKET).rglob("*") if p.is_file())
                ctx["setup"][n] = {"create_s": round(made, 1), "snapshot_s": round(snap, 1), "objects": objects}
                log(f"N={n}: databases made in {made:.0f}s, snapshot to a directory in {snap:.0f}s, "
                    f"{objects} objects")
                server = S3Server(ws, root=ws / "s3")
                try:
                    ctx["env"], ctx["endpoint"] = server.env(), server.endpoint
                    ctx["s3_cfg"] = ws / "s3.toml"
                    lines = ["[storage]", f'bucket = "{BUCKET}"', f'endpoint = "{server.endpoint}"',
                             'region = "us-east-1"', "path_style = true", ""]
                    for name in wants:
                        lines += ["[[databases]]", f'path = "{src / name}.db"', f'prefix = "tenants/{name}"', ""]
                    ctx["s3_cfg"].write_text("\n".join(lines))
                    runs = max(args.runs, before_runs)
                    for run in range(1, runs + 1):
                        for name in bins:
                            if name == "before" and (run > before_runs or n > args.before_max_n):
                                continue
                            for step in (before_steps if name == "before" else steps):
                                res = run_step(step, base / f"walsync-{name}", ctx, wants, ws, args.timeout)
                                res.update(n=n, run=run, binary=name, step=step)
                                log(f"N={n} run {run} {name} {step}: {res['seconds']:.2f}s, "
                                    f"{res['rss_mib']:.1f} MiB" + (f" FAILED {res['error']}" if res["error"]
                                                                   else " (checked)"))
                                results.append(res)
                finally:
                    server.stop()
                shutil.rmtree(ws, ignore_errors=True) if not args.keep else None
        except KeyboardInterrupt:
            log("interrupted; reporting what was measured")
    for k in ("env", "s3_cfg"):
        ctx.pop(k, None)
    md = markdown(ctx, results)
    print(md)
    finish(ctx, results, md, args)
    return 1 if any(r["error"] for r in results) else 0


def markdown(ctx: dict, results: list[dict]) -> str:
    m = ctx["machine"]
    out = [f"### Fleet restore, verify and list ({ctx['date']})", "", "```sh", ctx["command"], "```", "",
           f"- Machine: {m.get('cpu', '?')}, {m['nproc']} CPUs, {m.get('ram_gib', '?')} GiB RAM, Linux "
           f"{m['kernel']}; load average at the start {m.get('loadavg', '?')}. The machine is shared with "
           f"other builds while this runs: figures are noisy, compare the side-by-side columns."]
    for name, info in ctx["bins"].items():
        out.append(f"- {name}: `{info['path']}` ({info['mib']} MiB, sha256 {info['sha256']}, built {info['mtime']})")
    for n, s in ctx["setup"].items():
        out.append(f"- N={n}: databases made in {s['create_s']} s; `walsync snapshot` to a directory in "
                   f"{s['snapshot_s']} s; {s['objects']} objects copied into s3s-fs's bucket")
    out += ["", "Seconds (median of the runs; runs in brackets), peak RSS in MiB; every result checked "
            "(see the script's docstring).", ""]
    rows = []
    keys = sorted({(r["n"], r["step"]) for r in results}, key=lambda k: (k[0], STEPS.index(k[1])))
    for n, step in keys:
        row = [str(n), f"`{step}`"]
        for name in ("before", "after"):
            rs = [r for r in results if (r["n"], r["step"], r["binary"]) == (n, step, name)]
            ok = [r for r in rs if not r["error"]]
            if not rs:
                row += ["-", "-"]
                continue
            secs = med([r["seconds"] for r in ok])
            row += [f"{f(secs, 2)} ({len(ok)}/{len(rs)} ok)", f(max(r["rss_mib"] for r in rs), 1)]
        b = med([r["seconds"] for r in results if (r["n"], r["step"], r["binary"]) == (n, step, "before")
                 and not r["error"]])
        a = med([r["seconds"] for r in results if (r["n"], r["step"], r["binary"]) == (n, step, "after")
                 and not r["error"]])
        row.append(f"{b / a:.1f}x" if a and b else "-")
        rows.append(row)
    out.append(md_table(["N", "command", "before s", "before RSS", "after s", "after RSS", "speed-up"], rows))
    bad = [r for r in results if r["error"]]
    if bad:
        out += ["", "Failures:"] + [f"- N={r['n']} run {r['run']} {r['binary']} `{r['step']}`: {r['error']}"
                                    for r in bad]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
