"""The scenarios, each run against Parley and the baselines (bench/baselines) in one run: the six of
issue "Fan-out speed", and the conversation mix of protocol version 2 (issue 15)."""

from __future__ import annotations

import contextlib
import math
import os
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import servers
from bench.conversation import Mix
from bench.loadgen import Pool
from bench.stats import Ramp, deciles, judge_step, listen_overflows, percentile, summarize


@dataclass
class Config:
    quick: bool
    workdir: Path
    ws: str = "auto"
    fanout_subs: int = 1000
    fanout_users: int = 50
    step_secs: float = 4.0
    ramp_start: float = 2.0  # messages/s into the room (deliveries/s = rate x subscribers)
    ramp_factor: float = 2.0
    ramp_max: float = 400.0
    # Three bisections between the best pass and the first failure: with two, a ramp that passed
    # 2,000 and failed 4,000 ingest msg/s never tried a rate between 2,000 and 2,378, so a target
    # of "2,000" could not be told from the rate just below it. Quick runs bisect once.
    bisect_steps: int = 3
    drain_max: float = 8.0
    chat_conns: int = 5000
    chat_period: float = 5.0
    chat_secs: float = 12.0
    idle_conns: int = 10000
    ingest_start: float = 250.0
    ingest_senders: int = 200
    reconnect_clients: int = 5000
    sub_workers: int = 2
    confirm_failures: bool = True
    min_step_msgs: int = 10
    connect_concurrency: int = 50  # per worker; Parley handshakes are slow (DB + presence)
    conn_workers: int = 4

    @classmethod
    def make(cls, quick: bool, workdir: Path, ws: str = "auto") -> Config:
        cfg = cls(quick=quick, workdir=workdir, ws=ws)
        if quick:
            cfg.step_secs = 2.0
            cfg.bisect_steps = 1
            cfg.drain_max = 5.0
            cfg.chat_conns = 1000
            cfg.chat_secs = 6.0
            cfg.idle_conns = 2000
            cfg.reconnect_clients = 1000
            cfg.ingest_senders = 100
        return cfg


def lat_array(raw: bytes) -> array:
    a = array("q")
    a.frombytes(raw)
    return a


def merge(results: list[dict[str, Any]], key: str) -> array:
    out = array("q")
    for r in results:
        out.frombytes(r[key])
    return out


def chunks(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i::n] for i in range(n)]


class Progress:
    """A tqdm bar on stderr, one tick per step; the postfix says what runs now."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, leave=True)

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text[:70], refresh=True)

    def tick(self, n: int = 1) -> None:
        if self.bar.n + n > self.bar.total:
            self.bar.total = self.bar.n + n
        self.bar.update(n)

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()


# --- targets: what to start and how clients talk to it ------------------------------------------

@dataclass
class Target:
    name: str
    kind: str  # parley | simple
    server: servers.Server
    env: servers.ParleyEnv | None = None
    redis_prefix: str | None = None
    tokens: list[str] | None = None

    def url(self, i: int, room: str) -> str:
        port = self.server.ports[i % len(self.server.ports)]
        if self.kind == "simple":
            return f"ws://127.0.0.1:{port}/ws/chat/{room}/"
        if self.name == "parley-v2":  # the same server, its sockets on protocol version 2
            return f"ws://127.0.0.1:{port}/ws/chat/?protocol=2"
        return f"ws://127.0.0.1:{port}/ws/chat/"

    def spec(self, i: int, room: str | list[str], role: str, *, server_index: int | None = None,
             track: bool = False, user: int | None = None) -> dict[str, Any]:
        rooms = [room] if isinstance(room, str) else room
        url = self.url(i if server_index is None else server_index, rooms[0])
        s: dict[str, Any] = {"idx": i, "url": url, "rooms": rooms, "role": role, "track": track}
        if self.kind == "parley":
            assert self.tokens is not None
            s["token"] = self.tokens[(i if user is None else user) % len(self.tokens)]
        return s

    def stop(self) -> None:
        self.server.stop()
        if self.env is not None:
            self.env.cleanup()
        if self.redis_prefix:
            servers.delete_redis_prefix(self.redis_prefix)


@contextlib.contextmanager
def target(cfg: Config, name: str, *, users: int = 0, rooms: list[str] | int = 0, db: str = "sqlite",
           nproc: int = 1, ws: str | None = None) -> Iterator[Target]:
    """name: parley | parley-v2 | parley-asgi | parley-redis | parley-layer | bare | tutorial-memory | tutorial-redis.

    parley-v2 is Parley with every client on protocol version 2 (docs/protocol.md §10: a plain
    message's frame is the same bytes; the server's per-socket protocol checks are what differs).

    parley-asgi is Parley with PARLEY_PREPARED_FRAMES=0: every frame through the ASGI send, as
    the bare app's go (parley/realtime/uvicorn_writer.py). parley-layer is Parley with its broadcasts
    through the stock channel layer (group_send) instead of the per-process hub
    (bench/baselines/parley_layer.py)."""
    ws = ws or cfg.ws
    if name.startswith("parley"):
        extra = {"parley-asgi": {"PARLEY_PREPARED_FRAMES": "0"}}.get(name)
        app = servers.PARLEY_LAYER_APP if name == "parley-layer" else servers.PARLEY_APP
        env = servers.ParleyEnv(cfg.workdir, db=db, redis=name == "parley-redis", extra_env=extra)
        try:
            minted = env.mint(users, rooms)
            srv = env.start(nproc=nproc, ws=ws, name=name, app=app)
        except Exception:
            env.cleanup()
            raise
        t = Target(name, "parley", srv, env=env, tokens=minted["tokens"])
    else:
        srv, prefix = servers.start_baseline(name, cfg.workdir, nproc=nproc, ws=ws)
        t = Target(name, "simple", srv, redis_prefix=prefix)
    try:
        yield t
    finally:
        t.stop()


def connect(pool: Pool, wids: list[int], specs: list[dict[str, Any]], *, concurrency: int = 50,
            timeout: float = 120.0, info: bool = False) -> list[dict[str, Any]]:
    parts = chunks(specs, len(wids))
    res = pool.all("connect", [{"specs": p} for p in parts], wids=wids, concurrency=concurrency,
                   timeout=timeout + 30, info=info)
    return res


def setup_pool(pool: Pool, kind: str) -> None:
    pool.all("setup", kind=kind)
    pool.all("close_all", wait=5.0)


def drain(pool: Pool, wids: list[int], expected: int, key: str, cap: float) -> tuple[int, bool]:
    """Wait until `expected` deliveries (or acks) arrived, progress stalls for 1 s, or `cap` s."""
    deadline = time.monotonic() + cap
    last, last_change = -1, time.monotonic()
    while True:
        got = sum(s[key] for s in pool.all("stats", wids=wids))
        if got >= expected:
            return got, True
        now = time.monotonic()
        if got != last:
            last, last_change = got, now
        elif now - last_change > 1.0:
            return got, False
        if now > deadline:
            return got, False
        time.sleep(0.1)


def quiesce(pool: Pool, wids: list[int], key: str, cap: float = 30.0) -> None:
    """Wait for a backlog from an overloaded step to finish arriving (no change for 0.7 s)."""
    deadline = time.monotonic() + cap
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        got = sum(s[key] for s in pool.all("stats", wids=wids))
        if got != last:
            last, last_change = got, time.monotonic()
        elif time.monotonic() - last_change > 0.7:
            return
        time.sleep(0.1)


# --- 1 + 6: fan-out ramp --------------------------------------------------------------------

def fanout_ramp(cfg: Config, pool: Pool, t: Target, progress: Progress, label: str,
                subs: int | None = None) -> dict[str, Any]:
    subs = subs or cfg.fanout_subs
    sub_w = list(range(cfg.sub_workers))
    send_w = [cfg.sub_workers]
    setup_pool(pool, t.kind)
    room = "fan"
    progress.note(f"{label}: connecting {subs}")
    # Sockets are spread over cfg.fanout_users users (not one user each): every user's first join
    # broadcasts a presence event to the whole room, which is O(users²) frames while connecting.
    specs = [t.spec(i + 1, room, "sub", user=1 + i % cfg.fanout_users) for i in range(subs)]
    c = connect(pool, sub_w, specs)
    n_ok = sum(r["ok"] for r in c)
    connect(pool, send_w, [t.spec(0, room, "send", server_index=0, user=0)])
    errors = [e for r in c for e in r["errors"]]
    quiesce(pool, sub_w, "msg_frames", cap=60)  # presence events of the joins
    ramp = Ramp(start=cfg.ramp_start, factor=cfg.ramp_factor, max_rate=cfg.ramp_max, min_rate=0.2,
                bisect_steps=cfg.bisect_steps, max_steps=14)
    # Warm-up, not measured: the first messages pay for lazy imports, thread pools, DB connections.
    progress.note(f"{label}: warm-up")
    pool.run(send_w[0], "send_rate", rate=cfg.ramp_start, duration=1.0, timeout=60)
    quiesce(pool, sub_w, "msg_frames", cap=10)
    steps: list[dict[str, Any]] = []

    def step(rate: float, probe: bool = False) -> dict[str, Any]:
        progress.note(f"{label}: {rate:g} msg/s x {n_ok}" + (" (saturation probe)" if probe else ""))
        pool.all("measure", on=True, wids=sub_w)
        # At least min_step_msgs messages per step (a p99 over 2 broadcasts is one slow broadcast),
        # but never more than 4 step lengths.
        secs = min(max(cfg.step_secs, cfg.min_step_msgs / rate), 4 * cfg.step_secs)
        s = pool.run(send_w[0], "send_rate", rate=rate, duration=secs, timeout=secs * 4 + 30)
        expected = s["sent"] * n_ok
        _got, drained = drain(pool, sub_w, expected, "deliveries", cfg.drain_max)
        res = pool.all("collect", wids=sub_w)
        pool.all("measure", on=False, wids=sub_w)
        lat = sorted(merge(res, "lat"))
        recv = merge(res, "recv")
        t0, t1 = s["t0_ns"] // 1000, s["t1_ns"] // 1000
        secs = max(1e-6, (t1 - t0) / 1e6)
        in_window = sum(1 for r in recv if t0 <= r <= t1)
        missing = max(0, expected - len(lat))
        summ = summarize(lat, missing=missing)
        verdict = judge_step(p99_ms=summ["p99_ms"], expected=expected, received=len(lat), p99_limit_ms=100)
        out = {"offered_msgs_per_s": rate, "offered_deliveries_per_s": rate * n_ok, "sent": s["sent"],
               "expected": expected, "received": len(lat), "deliveries_per_s": in_window / secs,
               "passed": verdict.passed and not probe, "reason": verdict.reason, "probe": probe,
               "drained": drained, "loadavg_1m": round(os.getloadavg()[0], 2), **summ}
        stride = max(1, len(lat) // 5000)  # a sample of latencies for the distribution plot
        out["lat_sample_ms"] = [v / 1000 for v in lat[::stride]]
        steps.append(out)
        progress.tick()
        return out

    while (rate := ramp.next_rate()) is not None:
        if not t.server.alive():
            errors.append("server died: " + t.server.log_tail(5))
            break
        out = step(rate)
        if not out["passed"] and out["drained"] and cfg.confirm_failures:
            # The machine may be shared: confirm a failure once before the ramp believes it.
            out["retried"] = True
            again = step(rate)
            again["retry_of_failed_step"] = True
            if again["passed"]:
                out = again
        ramp.record(rate, out["passed"])
        if not out["drained"]:
            quiesce(pool, sub_w, "msg_frames")
    # Saturation probe: twice the highest offered load, to see how many deliveries/s the server
    # pushes when overloaded (the ramp of a server that misses p99 at any rate never gets there).
    if steps and t.server.alive():
        step(2 * max(s["offered_msgs_per_s"] for s in steps), probe=True)
    pool.all("close_all", wait=5.0)
    passing = [s for s in steps if s["passed"]]
    best = max(passing, key=lambda s: s["deliveries_per_s"]) if passing else None
    return {"target": label, "subscribers": n_ok, "steps": steps, "errors": errors[:5],
            "best_deliveries_per_s": best["deliveries_per_s"] if best else 0.0,
            "best_p99_ms": best["p99_ms"] if best else None,
            "peak_deliveries_per_s": max((s["deliveries_per_s"] for s in steps), default=0.0)}


# --- 2: chat mix ----------------------------------------------------------------------------

def chat_mix(cfg: Config, pool: Pool, t: Target, progress: Progress, label: str) -> dict[str, Any]:
    n = cfg.chat_conns
    wids = list(range(cfg.conn_workers))
    setup_pool(pool, t.kind)
    progress.note(f"{label}: connecting {n}")
    t0 = time.monotonic()
    specs = [t.spec(i, f"r{i // 10:04d}", "both") for i in range(n)]
    c = connect(pool, wids, specs)
    connect_secs = time.monotonic() - t0
    n_ok = sum(r["ok"] for r in c)
    per_worker = [{"rate": r["ok"] / cfg.chat_period} for r in c]
    progress.note(f"{label}: {n_ok} users, each sends every {cfg.chat_period:g} s")
    pool.all("measure", on=True, wids=wids)
    sends = pool.all("send_rate", per_worker, wids=wids, duration=cfg.chat_secs, timeout=cfg.chat_secs * 4 + 30)
    sent = sum(s["sent"] for s in sends)
    expected = sent * 10
    drain(pool, wids, expected, "deliveries", cfg.drain_max)
    if t.kind == "parley":
        drain(pool, wids, sent, "acks", 3.0)
    res = pool.all("collect", wids=wids)
    pool.all("close_all", wait=5.0)
    progress.tick()
    lat = sorted(merge(res, "lat"))
    ack = sorted(merge(res, "ack_lat"))
    t_start = min(s["t0_ns"] for s in sends) // 1000
    t_end = max(s["t1_ns"] for s in sends) // 1000
    recv = merge(res, "recv")
    in_window = sum(1 for r in recv if t_start <= r <= t_end)
    out = {"target": label, "connections": n_ok, "connect_secs": connect_secs, "sent": sent,
           "expected": expected, "received": len(lat),
           "deliveries_per_s": in_window / max(1e-6, (t_end - t_start) / 1e6),
           "offered_msgs_per_s": n_ok / cfg.chat_period,
           **summarize(lat, missing=max(0, expected - len(lat))),
           "errors": [e for r in c + res for e in r["errors"]][:5]}
    if t.kind == "parley":
        a = summarize(ack, missing=max(0, sent - len(ack)))
        out["ack_p50_ms"], out["ack_p99_ms"] = a["p50_ms"], a["p99_ms"]
    return out


# --- 7: conversation (protocol version 2) ----------------------------------------------------

def conversation(cfg: Config, pool: Pool, t: Target, progress: Progress, label: str, mix: Mix,
                 protocol: int = 2) -> dict[str, Any]:
    """The chat mix's rooms, users and pace, on sockets of `protocol` whose turns follow `mix`
    (bench.conversation; protocol 1 and sends only is the plain chat mix). Every turn makes one
    entry of the room's log, which reaches the room's 10 sockets: deliveries are `message`,
    `edit` and `reaction` frames, latency is measured on the stamped ones (messages and edits),
    and ack/reply latency per kind."""
    n = cfg.chat_conns
    wids = list(range(cfg.conn_workers))
    setup_pool(pool, t.kind)
    progress.note(f"{label}: connecting {n}")
    t0 = time.monotonic()
    specs = []
    for i in range(n):
        spec = t.spec(i, f"r{i // 10:04d}", "both")
        if protocol != 1:
            spec["url"] += f"?protocol={protocol}"
        spec["conv"] = True
        specs.append(spec)
    c = connect(pool, wids, specs)
    connect_secs = time.monotonic() - t0
    n_ok = sum(r["ok"] for r in c)
    # Warm-up, not measured: every user posts one message first, so an edit has its own message
    # to change and a reaction a recent message from the first measured turn on (a quick run
    # gives each user about one turn, and the mix's fallback to a send would otherwise turn
    # most edits into sends). It also pays the server's first-message costs in every row alike.
    # At most 1,000 messages/s (2 s for the quick run's 1,000 users, 5 s for the full 5,000): the
    # warm-up must not be an ingest test of its own.
    progress.note(f"{label}: warm-up, one message per user")
    warm_secs = max(2.0, n_ok / 1000)
    warm = pool.all("conv_rate", [{"rate": r["ok"] / warm_secs} for r in c], wids=wids, duration=warm_secs,
                    mix=(1.0, 0.0, 0.0), timeout=60)
    warm_sent = sum(s["sent"] for s in warm)
    drain(pool, wids, warm_sent, "replies", 10.0)
    quiesce(pool, wids, "msg_frames", cap=10)
    per_worker = [{"rate": r["ok"] / cfg.chat_period, "seed": 15 + j} for j, r in enumerate(c)]
    progress.note(f"{label}: {n_ok} users, a turn every {cfg.chat_period:g} s")
    pool.all("measure", on=True, wids=wids)
    turns = pool.all("conv_rate", per_worker, wids=wids, duration=cfg.chat_secs,
                     mix=(mix.send, mix.edit, mix.react), timeout=cfg.chat_secs * 4 + 30)
    sent = sum(s["sent"] for s in turns)
    actions = {k: sum(s["actions"][k] for s in turns) for k in turns[0]["actions"]}
    made = sum(actions.values())  # turns of clients still open: each one entry, to 10 sockets
    expected = made * 10
    drain(pool, wids, expected, "entries", cfg.drain_max)
    drain(pool, wids, made, "replies", 3.0)
    res = pool.all("collect", wids=wids)
    pool.all("close_all", wait=5.0)
    progress.tick()
    lat = sorted(merge(res, "lat"))
    edit_lat = sorted(merge(res, "edit_lat"))
    ack = sorted(merge(res, "ack_lat"))
    reply = sorted(merge(res, "reply_lat"))
    entries = {k: sum(r["entries"][k] for r in res) for k in res[0]["entries"]}
    received = sum(entries.values())
    t_start = min(s["t0_ns"] for s in turns) // 1000
    t_end = max(s["t1_ns"] for s in turns) // 1000
    recv = merge(res, "recv")
    in_window = sum(1 for r in recv if t_start <= r <= t_end)
    stamped = (actions["send"] + actions["edit"]) * 10
    out = {"target": label, "protocol": protocol, "mix": mix.label(), "connections": n_ok, "connect_secs": connect_secs,
           "sent": sent, "actions": actions, "expected": expected, "received": received, "entries": entries,
           "deliveries_per_s": in_window / max(1e-6, (t_end - t_start) / 1e6),
           "offered_msgs_per_s": n_ok / cfg.chat_period,
           # Latency of the stamped deliveries (messages and edits together); a stamped delivery
           # that never came counts as infinitely late, as in the chat mix.
           **summarize(sorted(lat + edit_lat), missing=max(0, stamped - len(lat) - len(edit_lat))),
           "noops": sum(r["noops"] for r in res),
           "errors": [e for r in c + res for e in r["errors"]][:5]}
    e = summarize(edit_lat, missing=max(0, actions["edit"] * 10 - len(edit_lat)))
    out["edit_p50_ms"], out["edit_p99_ms"] = e["p50_ms"], e["p99_ms"]
    a = summarize(ack, missing=max(0, actions["send"] - len(ack)))
    out["ack_p50_ms"], out["ack_p99_ms"] = a["p50_ms"], a["p99_ms"]
    r = summarize(reply, missing=max(0, made - actions["send"] - len(reply)))
    out["reply_p50_ms"], out["reply_p99_ms"] = r["p50_ms"], r["p99_ms"]
    return out


# --- 3: idle --------------------------------------------------------------------------------

def idle(cfg: Config, pool: Pool, t: Target, progress: Progress, label: str) -> dict[str, Any]:
    n = cfg.idle_conns
    wids = list(range(cfg.conn_workers))
    setup_pool(pool, t.kind)
    warm = 20
    progress.note(f"{label}: warm-up")
    connect(pool, wids[:1], [t.spec(n + i, f"r{(n + i) // 10:04d}", "sub") for i in range(warm)])
    time.sleep(1.0)
    rss0 = t.server.rss_bytes()
    progress.note(f"{label}: connecting {n} idle sockets")
    t0 = time.monotonic()
    c = connect(pool, wids, [t.spec(i, f"r{i // 10:04d}", "sub") for i in range(n)])
    connect_secs = time.monotonic() - t0
    n_ok = sum(r["ok"] for r in c)
    time.sleep(3.0)
    rss1 = t.server.rss_bytes()
    stats = pool.all("stats", wids=wids)
    still_open = sum(s["open"] for s in stats) - warm
    close_codes: dict[str, int] = {}
    for s in stats:
        for code, count in s.get("close_codes", {}).items():
            close_codes[str(code)] = close_codes.get(str(code), 0) + count
    pool.all("close_all", wait=10.0)
    progress.tick()
    return {"target": label, "connections": n_ok, "open_after_settle": still_open,
            "connect_secs": connect_secs, "connects_per_s": n_ok / connect_secs if connect_secs else None,
            "rss_before_mb": rss0 / 2**20, "rss_after_mb": rss1 / 2**20,
            "rss_per_conn_kb": (rss1 - rss0) / max(1, n_ok) / 1024,
            "close_codes": close_codes, "errors": [e for r in c for e in r["errors"]][:5]}


# --- 4: ingest ------------------------------------------------------------------------------

def ingest(cfg: Config, pool: Pool, t: Target, progress: Progress, label: str) -> dict[str, Any]:
    n = cfg.ingest_senders
    wids = list(range(cfg.sub_workers))
    setup_pool(pool, t.kind)
    progress.note(f"{label}: connecting {n} senders")
    connect(pool, wids, [t.spec(i, f"r{i // 10:04d}", "send") for i in range(n)])
    # Warm-up, about one message per sender, outside the steps: a new user's first join and
    # first send have one-time costs (the room state a first join of a public room writes after
    # its reply, protocol §11), and a step is decided by its p99: one stall of ~130 ms failed
    # PostgreSQL's first step in every run of issue 16's tree, and the ramp never climbed back.
    progress.note(f"{label}: warm-up")
    pool.all("measure", on=True, wids=wids)
    warm = pool.all("send_rate", wids=wids, rate=n / 2.0 / len(wids), duration=2.0, timeout=2.0 * 4 + 30)
    drain(pool, wids, sum(s["sent"] for s in warm), "acks", cfg.drain_max)
    ramp = Ramp(start=cfg.ingest_start, factor=2.0, max_rate=16000, min_rate=10,
                bisect_steps=cfg.bisect_steps, max_steps=12)
    steps = []
    while (rate := ramp.next_rate()) is not None:
        if not t.server.alive():
            break
        progress.note(f"{label}: {rate:g} msg/s")
        pool.all("measure", on=True, wids=wids)
        sends = pool.all("send_rate", wids=wids, rate=rate / len(wids), duration=cfg.step_secs,
                         timeout=cfg.step_secs * 4 + 30)
        sent = sum(s["sent"] for s in sends)
        _got, drained = drain(pool, wids, sent, "acks", cfg.drain_max)
        res = pool.all("collect", wids=wids)
        ack = sorted(merge(res, "ack_lat"))
        t0, t1 = min(s["t0_ns"] for s in sends) // 1000, max(s["t1_ns"] for s in sends) // 1000
        secs = (t1 - t0) / 1e6
        in_window = sum(1 for r in merge(res, "ack_recv") if t0 <= r <= t1)
        summ = summarize(ack, missing=max(0, sent - len(ack)))
        verdict = judge_step(p99_ms=summ["p99_ms"], expected=sent, received=len(ack), p99_limit_ms=50)
        steps.append({"offered_msgs_per_s": rate, "sent": sent, "acked": len(ack),
                      "acked_per_s": in_window / max(1e-6, secs), "passed": verdict.passed,
                      "reason": verdict.reason, **summ})
        ramp.record(rate, verdict.passed)
        progress.tick()
        if not drained:
            quiesce(pool, wids, "acks")
    pool.all("close_all", wait=5.0)
    passing = [s for s in steps if s["passed"]]
    best = max(passing, key=lambda s: s["acked_per_s"]) if passing else None
    return {"target": label, "senders": n, "steps": steps,
            "best_acked_per_s": best["acked_per_s"] if best else 0.0,
            "best_ack_p99_ms": best["p99_ms"] if best else None,
            "peak_acked_per_s": max((s["acked_per_s"] for s in steps), default=0.0)}


# --- 5: reconnect storm ---------------------------------------------------------------------

def reconnect_storm(cfg: Config, pool: Pool, t: Target, progress: Progress, label: str) -> dict[str, Any]:
    n = cfg.reconnect_clients
    n_rooms = math.ceil(n / 10)
    rooms = [f"r{i:04d}" for i in range(n_rooms)]
    client_w = list(range(cfg.conn_workers))
    driver_w = [cfg.conn_workers]
    setup_pool(pool, "parley")
    progress.note(f"{label}: connecting {n} clients")
    specs = [t.spec(i, rooms[i // 10], "sub", track=True) for i in range(n)]
    first = connect(pool, client_w, specs, info=True)
    epochs = {room: j["epoch"] for r in first for joins in r["info"].values() for room, j in joins.items()}
    n_drivers = 10
    drivers = [t.spec(n + d, rooms[d::n_drivers], "driver") for d in range(n_drivers)]
    connect(pool, driver_w, drivers, concurrency=n_drivers, timeout=300)

    def post(per_room: int, secs: float) -> dict[str, Any]:
        return pool.run(driver_w[0], "send_rate", rate=per_room * n_rooms / secs, duration=secs,
                        roles=("driver",), shuffle=False, timeout=secs * 4 + 60)

    progress.note(f"{label}: live traffic")
    post(1, 2.0)
    drain(pool, driver_w, n_rooms, "acks", 10)
    drain(pool, client_w, n_rooms * 10, "msg_frames", 10)
    progress.note(f"{label}: dropping all {n}")
    closed = pool.all("close_all", wids=client_w, wait=10.0)
    highs: dict[int, int] = {}
    for r in closed:
        for idx, (high, _g, _d) in r["tracked"].items():
            highs[int(idx)] = high
    time.sleep(1.0)
    progress.note(f"{label}: messages while offline")
    pool.run(driver_w[0], "measure", on=True)
    post(2, 2.0)
    drain(pool, driver_w, 2 * n_rooms, "acks", 15)
    progress.note(f"{label}: storm: {n} resume at once")
    resume_specs = []
    for s in specs:
        i = s["idx"]
        spec = dict(s)
        spec["resume"] = {rooms[i // 10]: [highs.get(i, 0), epochs.get(rooms[i // 10])]}
        resume_specs.append(spec)
    overflows_before = listen_overflows()
    t0 = time.monotonic()
    parts = chunks(resume_specs, len(client_w))
    ids = [pool.call(w, "connect", specs=p, concurrency=len(p), timeout=60.0, info=True)
           for w, p in zip(client_w, parts, strict=True)]
    live = pool.call(driver_w[0], "send_rate", rate=n_rooms / 3.0, duration=3.0, roles=("driver",), shuffle=False)
    res = [pool.result(w, i, timeout=200) for w, i in zip(client_w, ids, strict=True)]
    storm_secs = time.monotonic() - t0
    pool.result(driver_w[0], live, timeout=60)
    drain(pool, driver_w, 3 * n_rooms, "acks", 15)
    final = pool.run(driver_w[0], "collect")["room_seq"]
    # Wait until every client has caught up with its room's last seq (bounded).
    deadline = time.monotonic() + 20
    while True:
        col = pool.all("collect", wids=client_w)
        highs_now = {int(k): v for r in col for k, v in r["highs"].items()}
        behind = sum(1 for i, h in highs_now.items() if h < final.get(rooms[i // 10], 0))
        if behind == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    caught_up_secs = time.monotonic() - t0
    gaps = sum(r["gaps"] for r in col)
    dups = sum(r["dups"] for r in col)
    recovered = sum(r.get("recovered", 0) for r in res)
    ok = sum(r["ok"] for r in res)
    pool.all("close_all", wait=10.0)
    progress.tick()
    done = sorted(d for r in res for d in r["done_secs"])
    greeted = sorted(d for r in res for d in r.get("hello_secs", []))
    overflows_after = listen_overflows()
    return {"target": label, "clients": n, "resumed": ok, "recovered": recovered, "gaps": gaps,
            "duplicates": dups, "behind_at_end": behind, "storm_secs": storm_secs,
            "caught_up_secs": caught_up_secs,
            "join_p50_s": percentile(done, 50) if done else None,
            "join_p99_s": percentile(done, 99) if done else None,
            # When clients were through: the handshake (hello) and the join, as deciles from the
            # storm's start; and the listen-queue drops meanwhile (docs/benchmarks.md, "Connect path").
            "hello_deciles_s": deciles(greeted), "join_deciles_s": deciles(done),
            "listen_overflows": (overflows_after - overflows_before
                                 if overflows_before is not None and overflows_after is not None else None),
            "gap_free": ok == n and recovered == n and gaps == 0 and dups == 0 and behind == 0,
            "errors": [e for r in res for e in r["errors"]][:5]}

