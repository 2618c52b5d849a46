"""`python -m bench.external_post [--posts 40] [--intervals 50,100,250] [--rooms 100] [--idle-secs 20]`

What posting from another process costs on each setup (parley.roomwatch, README "Posting from
your own code"). A real server (python -m config.serve) runs with one socket joined to a room;
a separate process (`manage.py shell`) calls parley.post_message every 0.2-0.4 s; the socket
notes when each message arrives. Latency = arrival − the poster's clock just before the call
(one machine, one clock), so it includes the commit.

- embedded default (SQLite, no Redis), one row per PARLEY_ROOM_LOG_POLL_MS in --intervals;
- with Redis (a private redis-server, when the binary is there): the hub's Redis channel;
- idle cost: the server's CPU time over --idle-secs with one socket joined to --rooms rooms
  and nothing posted, room-log poll on (the default interval) against off (0), side by side.

Prints a Markdown table; numbers are this machine's, to be read as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.server import RedisProcess, ServerProcess  # noqa: E402

SETUP = """
from django.contrib.auth import get_user_model
from parley import services
from parley.models import Room
User = get_user_model()
bot = User.objects.filter(username="bot").first() or services.user_create(username="bot")
reader = User.objects.filter(username="reader").first() or services.user_create(username="reader")
for i in range({rooms}):
    Room.objects.get_or_create(slug=f"r{{i}}", defaults={{"title": f"R{{i}}"}})
print(services.token_create(user=reader, name="bench")[1])
"""

POSTER = """
import random, time
import parley
from django.contrib.auth import get_user_model
bot = get_user_model().objects.get(username="bot")
for i in range({posts}):
    time.sleep(random.uniform(0.2, 0.4))
    t = time.time()
    m = parley.post_message("r0", "p", author=bot)
    print(m.seq, t, flush=True)
"""


def cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def open_socket(server: ServerProcess, token: str, rooms: list[str]) -> Any:
    from websockets.asyncio.client import connect

    ws = await connect(server.ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                       ping_interval=None, proxy=None, max_size=2**22)
    await ws.recv()  # hello
    for slug in rooms:
        await ws.send(json.dumps({"type": "join", "room": slug, "limit": 1}))
        while (reply := json.loads(await ws.recv()))["type"] != "joined":
            if reply["type"] == "error":
                raise RuntimeError(f"join {slug}: {reply}")
    return ws


async def latency_row(label: str, server: ServerProcess, token: str, posts: int) -> dict[str, Any]:
    ws = await open_socket(server, token, ["r0"])
    arrivals: dict[int, float] = {}

    async def read() -> None:
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] == "message":
                arrivals[frame["message"]["seq"]] = time.time()

    reader = asyncio.ensure_future(read())
    out = await asyncio.to_thread(server.manage, "shell", "-v", "0", "-c", POSTER.format(posts=posts),
                                  timeout=posts * 2 + 60)
    await asyncio.sleep(1.0)
    reader.cancel()
    await ws.close()
    sent = {int(seq): float(t) for seq, t in (line.split() for line in out.split("\n") if line.strip())}
    ms = sorted((arrivals[s] - t) * 1000 for s, t in sent.items() if s in arrivals)
    lost = len(sent) - len(ms)
    return {"setup": label, "posts": len(sent), "lost": lost,
            "p50_ms": statistics.median(ms) if ms else None,
            "p90_ms": ms[int(0.9 * (len(ms) - 1))] if ms else None, "max_ms": ms[-1] if ms else None}


def start(extra: dict[str, str], redis_url: str = "") -> ServerProcess:
    env = {"PARLEY_MESSAGES_PER_SEC": "1000", "PARLEY_MESSAGES_BURST": "1000",
           "PARLEY_FRAMES_PER_SEC": "100000", "PARLEY_FRAMES_BURST": "100000", **extra}
    return ServerProcess(extra_env=env, redis_url=redis_url).start()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=40)
    parser.add_argument("--intervals", default="50,100,250")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--idle-secs", type=float, default=20.0)
    parser.add_argument("--only", choices=["latency", "idle"], default=None)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []

    intervals = [int(v) for v in args.intervals.split(",") if v] if args.only != "idle" else []
    for interval in intervals:
        server = start({"PARLEY_ROOM_LOG_POLL_MS": str(interval)})
        try:
            token = server.manage("shell", "-v", "0", "-c", SETUP.format(rooms=1)).split()[-1]
            rows.append(await latency_row(f"SQLite, no Redis, room-log poll {interval} ms", server, token, args.posts))
        finally:
            server.cleanup()
        print(rows[-1], file=sys.stderr)

    if RedisProcess.available() and args.only != "idle":
        redis = RedisProcess().start()
        server = start({}, redis_url=redis.url)
        try:
            token = server.manage("shell", "-v", "0", "-c", SETUP.format(rooms=1)).split()[-1]
            rows.append(await latency_row("SQLite + Redis (hub's Redis channel)", server, token, args.posts))
        finally:
            server.cleanup()
            redis.stop()
        print(rows[-1], file=sys.stderr)

    idle: list[tuple[str, float]] = []
    cases = (("room-log poll on (100 ms)", "100"), ("room-log poll off (0)", "0"))
    for label, poll in cases if args.only != "latency" else ():
        server = start({"PARLEY_ROOM_LOG_POLL_MS": poll, "PARLEY_MAX_ROOMS_PER_SOCKET": str(args.rooms)})
        try:
            token = server.manage("shell", "-v", "0", "-c", SETUP.format(rooms=args.rooms)).split()[-1]
            ws = await open_socket(server, token, [f"r{i}" for i in range(args.rooms)])
            await asyncio.sleep(2.0)
            before = cpu_secs(server.pid)  # type: ignore[arg-type]
            await asyncio.sleep(args.idle_secs)
            used = cpu_secs(server.pid) - before  # type: ignore[arg-type]
            await ws.close()
        finally:
            server.cleanup()
        idle.append((label, 100 * used / args.idle_secs))
        print(idle[-1], file=sys.stderr)

    print("| setup | posts | lost | p50 ms | p90 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setup']} | {r['posts']} | {r['lost']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['max_ms']:.1f} |")
    print()
    print(f"| idle server, one socket in {args.rooms} rooms, {args.idle_secs:.0f} s | CPU % of one core |")
    print("|---|---|")
    for label, pct in idle:
        print(f"| {label} | {pct:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
