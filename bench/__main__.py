"""`python -m bench [--quick] [--only fanout,chat,...,conversation] [--ws websockets-sansio] [--profile]`

Runs the scenarios against Parley and the baselines, prints tables + PASS/MISS per target, and
writes results.json, results.md and PNG plots to bench/results/<UTC timestamp>/.
`python -m bench profile` records Parley's fan-out under load with py-spy instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report, scenarios, servers
from bench import search as search_bench
from bench.conversation import Mix
from bench.loadgen import Pool

ALL = ["fanout", "chat", "idle", "ingest", "reconnect", "scaleout", "conversation", "search"]


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil
    import uvicorn

    versions = {"python": platform.python_version(), "uvicorn": uvicorn.__version__}
    for mod in ("django", "channels", "channels_redis", "websockets", "picows", "uvloop", "httptools", "orjson"):
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", None) or getattr(getattr(m, "version", None), "__version__", "?")
        except Exception:
            versions[mod] = "?"
    if versions.get("django") == "?":
        import django
        versions["django"] = django.get_version()
    return {"nproc": os.cpu_count(), "loadavg_at_start": os.getloadavg(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "cpu": cpu,
            "kernel": platform.release(), "open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            **versions}


def server_revision() -> dict[str, Any]:
    """Which Parley code was measured: HEAD and any uncommitted changes under chat/ and config/
    (the tree is shared with other engineers, so a run may measure work in progress)."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=servers.ROOT, capture_output=True, text=True,
                                  timeout=20).stdout.strip()
        except Exception:
            return "?"
    return {"head": git("rev-parse", "--short", "HEAD"),
            "uncommitted": git("status", "--porcelain", "--", "parley", "config").splitlines()}


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isinf(obj) or math.isnan(obj)):
        return None if math.isnan(obj) else "inf"
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def run(args: argparse.Namespace) -> int:
    only = ALL if not args.only else args.only.split(",")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    outdir = Path(args.out or (servers.ROOT / "bench" / "results" / stamp))
    outdir.mkdir(parents=True, exist_ok=True)
    work = outdir / "work"
    work.mkdir(exist_ok=True)
    cfg = scenarios.Config.make(args.quick, work, ws=args.ws)
    cmdline = "scripts/bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    res: dict[str, Any] = {"command": cmdline.strip(), "started": stamp, "quick": args.quick, "ws": args.ws,
                           "machine": machine(), "server_revision": server_revision(), "config": {k: str(v) for k, v in vars(cfg).items()}}
    fan_targets = ["parley", "parley-v2", "parley-asgi", "parley-layer", "bare", "tutorial-memory", "tutorial-redis"]
    if args.targets:
        fan_targets = [t for t in fan_targets if t in args.targets.split(",")]
    est = {"fanout": 11 * len(fan_targets), "chat": 3, "idle": 3, "ingest": 14, "reconnect": 1, "scaleout": 30,
           "conversation": 6, "search": 10}
    progress = scenarios.Progress(sum(est[s] for s in only))
    pool = Pool(cfg.conn_workers + 1)
    t_start = time.monotonic()
    chat_rooms = math.ceil(cfg.chat_conns / 10)

    def attempt(section: str, label: str, fn: Any) -> None:
        try:
            out = fn()
        except Exception:
            err = traceback.format_exc()
            progress.write(f"!! {section}/{label} failed:\n{err}")
            out = {"target": label, "failed": err.splitlines()[-1]}
        if isinstance(res.get(section), list):
            if "failed" not in out:
                res[section].append(out)
            else:
                res.setdefault("failures", []).append({section: out})
        else:
            res[section] = out if "failed" not in out else None
        (outdir / "results.json").write_text(json.dumps(_clean(res), indent=1))

    try:
        if "fanout" in only:
            res["fanout"] = []
            for name in fan_targets:
                base, _, ws = name.partition("@")
                ws = {"sansio": "websockets-sansio"}.get(ws, ws) or None

                def go(name: str = name, base: str = base, ws: str | None = ws) -> dict[str, Any]:
                    with scenarios.target(cfg, base, users=cfg.fanout_users + 1, rooms=["fan"], ws=ws) as t:
                        return scenarios.fanout_ramp(cfg, pool, t, progress, name)
                attempt("fanout", name, go)
        if "chat" in only:
            res["chat"] = []
            for name in ["parley", "bare", "tutorial-memory"]:
                def go(name: str = name) -> dict[str, Any]:
                    with scenarios.target(cfg, name, users=cfg.chat_conns, rooms=chat_rooms) as t:
                        return scenarios.chat_mix(cfg, pool, t, progress, name)
                attempt("chat", name, go)
        if "idle" in only:
            res["idle"] = []
            n_idle = cfg.idle_conns + 20
            for name in ["parley", "bare", "tutorial-memory"]:
                def go(name: str = name) -> dict[str, Any]:
                    with scenarios.target(cfg, name, users=n_idle, rooms=math.ceil(n_idle / 10)) as t:
                        return scenarios.idle(cfg, pool, t, progress, name)
                attempt("idle", name, go)
        if "ingest" in only:
            res["ingest"] = []
            for db in ["sqlite", "postgres"]:
                def go(db: str = db) -> dict[str, Any]:
                    with scenarios.target(cfg, "parley", users=cfg.ingest_senders,
                                          rooms=math.ceil(cfg.ingest_senders / 10), db=db) as t:
                        return scenarios.ingest(cfg, pool, t, progress, db)
                attempt("ingest", db, go)
        if "reconnect" in only:
            n = cfg.reconnect_clients

            def go() -> dict[str, Any]:
                with scenarios.target(cfg, "parley", users=n + 10, rooms=math.ceil(n / 10)) as t:
                    return scenarios.reconnect_storm(cfg, pool, t, progress, "parley")
            attempt("reconnect", "parley", go)
        if "scaleout" in only:
            res["scaleout"] = []
            for name, base, nproc in [("parley-redis x1", "parley-redis", 1), ("parley-redis x2", "parley-redis", 2),
                                      ("tutorial-redis x2", "tutorial-redis", 2)]:
                def go(name: str = name, base: str = base, nproc: int = nproc) -> dict[str, Any]:
                    with scenarios.target(cfg, base, users=cfg.fanout_users + 1, rooms=["fan"], nproc=nproc) as t:
                        out = scenarios.fanout_ramp(cfg, pool, t, progress, name)
                        out["procs"] = nproc
                        return out
                attempt("scaleout", name, go)
        if "conversation" in only:
            res["conversation"] = []
            # Beside the conversation mix, in the same run, at the same sizes, by the same client
            # code and warm-up (a fresh server each): the plain chat mix (protocol 1, sends only)
            # and the same sends on protocol 2 sockets. The report reads every row as a ratio to
            # its round's plain chat mix: on a shared machine, rows run side by side compare and
            # absolute figures don't. Two rounds, the second in the reverse order, so a stall or
            # an order effect shows as rounds that disagree rather than as a ratio.
            sends = Mix(1.0, 0.0, 0.0)
            rows = [("chat v1 (sends)", sends, 1), ("chat v2 (sends)", sends, 2), ("conversation v2", Mix(), 2)]
            for rnd, order in ((1, rows), (2, rows[::-1])):
                for name, mix, version in order:
                    def go(name: str = name, mix: Mix = mix, version: int = version, rnd: int = rnd) -> dict[str, Any]:
                        with scenarios.target(cfg, "parley", users=cfg.chat_conns, rooms=chat_rooms) as t:
                            out = scenarios.conversation(cfg, pool, t, progress, name, mix, protocol=version)
                            out["round"] = rnd
                            return out
                    attempt("conversation", name, go)
        if "search" in only:
            # Search latency on a million messages (100,000 with --quick), beside a history page
            # read of the same database in the same run; each database in a process of its own.
            res["search"] = []
            for db in ["sqlite", "postgres"]:
                def go(db: str = db) -> dict[str, Any]:
                    progress.note(f"search on {db}: seeding and measuring")
                    return search_bench.scenario(db, args.quick, work)
                attempt("search", db, go)
    finally:
        pool.close()
        progress.close()
    res["elapsed_secs"] = round(time.monotonic() - t_start, 1)
    write_report(res, outdir)
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nresults: {outdir}")
    return 0


def write_report(res: dict[str, Any], outdir: Path) -> None:
    """results.md + plots (+ results.json) from a results dict; prints the table and verdicts."""
    report.recompute(res)
    stamp = res["started"]
    table = report.tables(res)
    verdicts = report.targets(res)
    made = report.plots(res, outdir)
    md = [f"# Parley benchmark {stamp}", "", f"Command: `{res['command']}` ({'quick' if res.get('quick') else 'full'}, "
          f"{res.get('elapsed_secs') or 0:.0f} s)", "", "Machine: " + ", ".join(f"{k} {v}" for k, v in res["machine"].items()),
          "", f"Parley revision: {res['server_revision']['head']}, uncommitted: "
          f"{', '.join(res['server_revision']['uncommitted']) or 'none'}", "", table, "", "### Targets", "", "```", *verdicts, "```", ""]
    md += [f"![{p}]({p})" for p in made]
    if res.get("failures"):
        md += ["", "### Failures", "", "```", *[json.dumps(f) for f in res["failures"]], "```"]
    (outdir / "results.md").write_text("\n".join(md) + "\n")
    (outdir / "results.json").write_text(json.dumps(_clean(res), indent=1))
    print(table)
    print("\nTargets:")
    print("\n".join(verdicts))


def rerender(args: argparse.Namespace) -> int:
    """`python -m bench report DIR`: rebuild results.md and the plots from DIR/results.json."""
    outdir = Path(args.dir)
    res = json.loads((outdir / "results.json").read_text(), parse_constant=float)

    def unclean(obj: Any) -> Any:
        if obj == "inf":
            return math.inf
        if isinstance(obj, dict):
            return {k: unclean(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [unclean(v) for v in obj]
        return obj
    write_report(unclean(res), outdir)
    return 0


def profile(args: argparse.Namespace) -> int:
    """Parley in-memory fan-out at a fixed offered rate while py-spy samples the server."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    outdir = Path(args.out or (servers.ROOT / "bench" / "results" / f"profile-{args.what}-{args.fanout}-{args.db}-{stamp}"))
    outdir.mkdir(parents=True, exist_ok=True)
    cfg = scenarios.Config.make(True, outdir, ws=args.ws)
    pyspy = str(Path(sys.executable).parent / "py-spy")
    pool = Pool(cfg.sub_workers + 1)
    progress = scenarios.Progress(3)
    try:
        ingest = args.what == "ingest"
        users = cfg.ingest_senders if ingest else cfg.fanout_users + 1
        rooms: list[str] | int = math.ceil(users / 10) if ingest else ["fan"]
        name = "parley-layer" if args.fanout == "layer" else "parley"
        with scenarios.target(cfg, name, users=users, rooms=rooms, db=args.db) as t:
            pid = t.server.procs[0].pid
            sub_w, send_w = list(range(cfg.sub_workers)), cfg.sub_workers
            pool.all("setup", kind="parley")
            if ingest:  # 100 senders in rooms of 10, all in the sender worker
                scenarios.connect(pool, [send_w], [t.spec(i, f"r{i // 10:04d}", "send") for i in range(users)])
                sub_w = [send_w]
            else:
                scenarios.connect(pool, sub_w, [t.spec(i + 1, "fan", "sub", user=1 + i % cfg.fanout_users)
                                                for i in range(cfg.fanout_subs)])
                scenarios.connect(pool, [send_w], [t.spec(0, "fan", "send", user=0)])
                scenarios.quiesce(pool, sub_w, "msg_frames", cap=60)
            for fmt, name in (("raw", "profile.txt"), ("flamegraph", "profile.svg")):
                progress.note(f"py-spy {fmt} at {args.rate:g} msg/s")
                pool.all("measure", on=True, wids=sub_w)
                cid = pool.call(send_w, "send_rate", rate=args.rate, duration=args.seconds + 2)
                time.sleep(1.0)
                subprocess.run([pyspy, "record", "--pid", str(pid), "--duration", str(args.seconds), "--rate", "200",
                                "--format", fmt, "-o", str(outdir / name), "--nonblocking"], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=args.seconds + 60)
                s = pool.result(send_w, cid, timeout=60)
                key, per = ("acks", 1) if ingest else ("deliveries", cfg.fanout_subs)
                scenarios.drain(pool, sub_w, s["sent"] * per, key, 10)
                col = pool.all("collect", wids=sub_w)
                lat = sorted(scenarios.merge(col, "ack_lat" if ingest else "lat"))
                from bench.stats import summarize
                summ = summarize(lat, missing=max(0, s["sent"] * per - len(lat)))
                progress.write(f"{fmt}: sent {s['sent']} msgs, {len(lat):,} deliveries, p50 {summ['p50_ms']:.1f} ms "
                               f"p99 {summ['p99_ms']:.1f} ms")
                progress.tick()
                scenarios.quiesce(pool, sub_w, "deliveries")
    finally:
        pool.close()
        progress.close()
    from bench.pyspy_summary import summarize_raw
    text = summarize_raw((outdir / "profile.txt").read_text(), top=args.top)
    (outdir / "summary.txt").write_text(text)
    print(text)
    print(f"\nprofile: {outdir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="run", choices=["run", "profile", "report"])
    ap.add_argument("dir", nargs="?", help="report: a results directory to re-render")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, shorter and fewer ramp steps")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--targets", help="fanout: comma-separated subset of the fan-out targets (e.g. parley,bare)")
    ap.add_argument("--ws", default="auto", help="uvicorn --ws for every server (auto = what scripts/serve runs, config/serve.py)")
    # --no-sansio chose, before uvicorn's default became websockets-sansio, whether to add a
    # "parley@sansio" fan-out row; it is accepted (and ignored) so older commands still run.
    ap.add_argument("--no-sansio", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help="results directory (default bench/results/<timestamp>)")
    ap.add_argument("--rate", type=float, default=30.0, help="profile: messages/s into the 1,000-socket room")
    ap.add_argument("--seconds", type=int, default=10, help="profile: py-spy duration per recording")
    ap.add_argument("--top", type=int, default=30, help="profile: functions listed in the summary")
    ap.add_argument("--what", default="fanout", choices=["fanout", "ingest"], help="profile: which load")
    ap.add_argument("--fanout", default="hub", choices=["hub", "layer"],
                    help="profile: Parley's fan-out path (layer = the parley-layer baseline, stock group_send)")
    ap.add_argument("--db", default="sqlite", choices=["sqlite", "postgres"], help="profile: Parley's database")
    args = ap.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def _terminate(*_: Any) -> None:  # SIGTERM (and SIGINT when a shell ignores it) still cleans up
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    if args.command == "report":
        return rerender(args)
    return profile(args) if args.command == "profile" else run(args)


if __name__ == "__main__":
    sys.exit(main())
