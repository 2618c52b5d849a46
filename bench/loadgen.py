"""The load generator: worker processes holding many picows WebSocket clients each.

The parent (bench.scenarios) drives workers over a multiprocessing Pipe with small commands
(connect, measure, send_rate, stats, collect, close_all). Each worker runs one uvloop event loop.

Two client kinds:
- "simple": the baselines' mini-protocol (tutorial style): URL /ws/chat/<room>/, sends
  {"message": "T<time_ns>"}, every text frame received is a delivery.
- "parley": docs/protocol.md: bearer token, hello, join (optionally resuming with after_seq/epoch),
  send with ref + client_id, ack; deliveries are `message` frames.
- "parley" with `conv` in its spec (ConvClient, the conversation scenario): protocol version 2
  (docs/protocol.md §10); its turns are sends, edits and reactions (bench.conversation), and
  every `message`, `edit` and `reaction` frame is a delivery.

Latency of a delivery = receive time.time_ns() - the time.time_ns() the sender put in the text
("T<ns>"); all processes share the machine's clock.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import resource
import time
import traceback
from array import array
from typing import Any

import orjson

from bench.conversation import EDIT, SEND, Mix, ReactionState, next_action

try:  # picows is imported lazily in workers only; the parent does not need it
    from picows import WSListener, WSMsgType, ws_connect
except ImportError:  # pragma: no cover
    WSListener = object  # type: ignore[misc,assignment]

MSG_HEAD = b'"message"'
ACK_HEAD = b'"ack"'
TS_MARK = b'"T1'  # text "T<19-digit time_ns>"; no other field of a frame starts with T1
EDIT_HEAD = b'{"type":"edit",'
REACTION_HEAD = b'{"type":"reaction",'
REPLY_HEADS = (b'{"type":"ack",', b'{"type":"edited",', b'{"type":"reacted",')


class Client(WSListener):  # type: ignore[misc]
    def __init__(self, w: Worker, spec: dict[str, Any]) -> None:
        self.w = w
        self.idx: int = spec["idx"]
        self.role: str = spec.get("role", "sub")  # sub | send | both | driver
        self.rooms: list[str] = spec.get("rooms", [])
        self.track: bool = spec.get("track", False)
        self.measure = self.role in ("sub", "both")
        self.transport: Any = None
        self.waiters: dict[str, asyncio.Future] = {}
        self.pending: dict[bytes, int] = {}
        self.high = 0
        self.gaps = 0
        self.dups = 0
        self.recovered: bool | None = None
        self.join_info: dict[str, Any] = {}
        self.closed = False
        self.sent = 0

    # picows callbacks ----------------------------------------------------------------------
    def on_ws_connected(self, transport: Any) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            if frame.msg_type == WSMsgType.CLOSE:
                code = frame.get_close_code()
                self.w.close_codes[int(code)] = self.w.close_codes.get(int(code), 0) + 1
                transport.send_close(code)
                transport.disconnect()
            return
        p = frame.get_payload_as_bytes()
        w = self.w
        if w.simple:
            w.msg_frames += 1
            if self.measure and w.measuring:
                i = p.find(TS_MARK)
                if i >= 0:
                    now = time.time_ns()
                    w.lat.append((now - int(p[i + 2:i + 21])) // 1000)
                    w.recv.append(now // 1000)
            return
        head = p[:24]
        if MSG_HEAD in head:
            w.msg_frames += 1
            if self.measure and w.measuring:
                i = p.find(TS_MARK)
                if i >= 0:
                    now = time.time_ns()
                    w.lat.append((now - int(p[i + 2:i + 21])) // 1000)
                    w.recv.append(now // 1000)
            if self.track:
                j = p.find(b'"seq":')
                seq = int(p[j + 6:p.index(b",", j)])
                if seq == self.high + 1:
                    self.high = seq
                elif seq <= self.high:
                    self.dups += 1
                else:
                    self.gaps += 1
                    self.high = seq
            return
        if ACK_HEAD in head:
            d = orjson.loads(p)
            sent = self.pending.pop(d.get("ref", "").encode(), None)
            if sent is not None:
                now = time.time_ns()
                w.ack_lat.append((now - sent) // 1000)
                w.ack_recv.append(now // 1000)
            room = d.get("room")
            seq = d.get("seq", 0)
            if seq > w.room_seq.get(room, 0):
                w.room_seq[room] = seq
            return
        d = orjson.loads(p)
        kind = d.get("type")
        if kind == "error":
            w.error(f"error frame: {d.get('code')}: {d.get('message')}")
            fut = self.waiters.pop("joined", None)
            if fut is not None and not fut.done():
                fut.set_exception(RuntimeError(f"join refused: {d.get('code')}"))
            return
        fut = self.waiters.pop(kind, None)
        if fut is not None and not fut.done():
            fut.set_result(d)

    def on_ws_disconnected(self, transport: Any) -> None:
        self.closed = True
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("disconnected"))
        self.waiters.clear()

    # helpers -------------------------------------------------------------------------------
    def expect(self, kind: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.waiters[kind] = fut
        return fut


class ConvClient(Client):
    """A protocol version 2 client of the conversation scenario. Its own class, so the other
    scenarios' frame path (Client.on_ws_frame) is the same code as before it existed."""

    def __init__(self, w: Worker, spec: dict[str, Any]) -> None:
        super().__init__(w, spec)
        self.state = ReactionState()
        self.reply_kind: dict[bytes, str] = {}  # ref -> SEND | EDIT | REACT | UNREACT

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return super().on_ws_frame(transport, frame)
        p = frame.get_payload_as_bytes()
        w = self.w
        head = p[:24]
        if MSG_HEAD in head:
            kind = "message"
            j = p.find(b'"seq":')  # the message object's: the frame has no other seq before it
            self.state.saw_message(int(p[j + 6:p.index(b",", j)]))
        elif p.startswith(EDIT_HEAD):
            kind = "edit"
        elif p.startswith(REACTION_HEAD):
            kind = "reaction"
        elif p.startswith(REPLY_HEADS):
            self._reply(p)
            return
        else:  # hello, joined, presence, pong, errors: as any Parley client
            return super().on_ws_frame(transport, frame)
        w.msg_frames += 1
        if w.measuring:
            now = time.time_ns()
            w.entries[kind] += 1
            w.recv.append(now // 1000)
            if kind != "reaction":  # a reaction carries no text, so no stamp: counted, not timed
                i = p.find(TS_MARK)
                if i >= 0:
                    (w.lat if kind == "message" else w.edit_lat).append((now - int(p[i + 2:i + 21])) // 1000)

    def _reply(self, p: bytes) -> None:
        d = orjson.loads(p)
        ref = d.get("ref", "").encode()
        sent = self.pending.pop(ref, None)
        kind = self.reply_kind.pop(ref, None)
        seq = d.get("seq")
        if d["type"] == "ack" and seq:
            self.state.acked(seq)
        if seq is None:  # a no-op: the request changed nothing and made no entry
            self.w.noops += 1
        if sent is not None:
            now = time.time_ns()
            if kind == SEND:
                self.w.ack_lat.append((now - sent) // 1000)
                self.w.ack_recv.append(now // 1000)
            else:
                self.w.reply_lat.append((now - sent) // 1000)


class Worker:
    def __init__(self, conn: Any, wid: int) -> None:
        self.conn = conn
        self.wid = wid
        self.simple = True
        self.clients: list[Client] = []
        self.measuring = False
        self.lat = array("q")
        self.recv = array("q")
        self.ack_lat = array("q")
        self.ack_recv = array("q")
        self.msg_frames = 0
        # The conversation scenario's: entries delivered by kind, edit latencies, and the
        # latencies of the replies to edits and reactions (`edited`, `reacted`).
        self.entries = {"message": 0, "edit": 0, "reaction": 0}
        self.edit_lat = array("q")
        self.reply_lat = array("q")
        self.noops = 0
        self.errors: list[str] = []
        self.n_errors = 0
        self.close_codes: dict[int, int] = {}  # server-sent close frames by code
        self.room_seq: dict[str, int] = {}
        self.stop = asyncio.Event()

    def error(self, text: str) -> None:
        self.n_errors += 1
        if len(self.errors) < 20:
            self.errors.append(text)

    async def run(self) -> None:
        import threading

        loop = asyncio.get_running_loop()

        def reader() -> None:  # blocking reads in a thread: add_reader would make the pipe non-blocking
            while True:
                try:
                    cid, name, kw = self.conn.recv()
                except (EOFError, OSError):
                    loop.call_soon_threadsafe(self.stop.set)
                    return
                loop.call_soon_threadsafe(lambda a=(cid, name, kw): asyncio.ensure_future(self._handle(*a)))
                if name == "exit":
                    return

        threading.Thread(target=reader, daemon=True).start()
        pinger = asyncio.ensure_future(self._heartbeat())
        await self.stop.wait()
        pinger.cancel()

    async def _heartbeat(self, interval: float = 20.0) -> None:
        """Parley closes a socket silent for 2 x heartbeat_secs + 5 s (docs/protocol.md §3): ping
        every Parley client every `interval` s, spread evenly over the interval as independent
        clients would be (a burst of 1,000 pings at once delays broadcasts by hundreds of ms)."""
        slices = 50
        while True:
            clients = [c for c in self.clients if not c.closed and c.transport is not None]
            if self.simple or not clients:
                await asyncio.sleep(interval)
                continue
            per = -(-len(clients) // slices)
            for k in range(slices):
                for c in clients[k * per:(k + 1) * per]:
                    if not c.closed:
                        c.transport.send(WSMsgType.TEXT, b'{"type":"ping"}')
                await asyncio.sleep(interval / slices)

    async def _handle(self, cid: int, name: str, kw: dict[str, Any]) -> None:
        try:
            res = await getattr(self, "cmd_" + name)(**kw)
            self.conn.send((cid, True, res))
        except Exception:
            self.conn.send((cid, False, traceback.format_exc()))

    # commands ------------------------------------------------------------------------------
    async def cmd_exit(self) -> None:
        asyncio.get_running_loop().call_later(0.05, self.stop.set)

    async def cmd_setup(self, kind: str) -> None:
        self.simple = kind == "simple"
        self.errors = []
        self.n_errors = 0
        self.room_seq = {}

    async def cmd_connect(self, specs: list[dict[str, Any]], concurrency: int = 200,
                          timeout: float = 60.0, info: bool = False) -> dict[str, Any]:
        sem = asyncio.Semaphore(concurrency)
        t0 = time.monotonic()
        done: list[float] = []
        greeted: list[float] = []  # handshake done (hello received): apart from the join

        async def one(spec: dict[str, Any]) -> Client | None:
            async with sem:
                c = ConvClient(self, spec) if spec.get("conv") else Client(self, spec)
                headers = {"Authorization": f"Bearer {spec['token']}"} if spec.get("token") else None
                hello = None if self.simple else c.expect("hello")
                try:
                    await asyncio.wait_for(
                        ws_connect(lambda: c, spec["url"], extra_headers=headers,
                                   websocket_handshake_timeout=timeout), timeout)
                    if hello is not None:
                        await asyncio.wait_for(hello, timeout)
                        greeted.append(time.monotonic() - t0)
                        for room in c.rooms:
                            await self._join(c, room, spec.get("resume", {}).get(room), timeout)
                except Exception as exc:
                    self.error(f"connect {spec['idx']}: {type(exc).__name__}: {exc}")
                    if c.transport is not None:
                        c.transport.disconnect()
                    return None
                done.append(time.monotonic() - t0)
                # Registered at once, not when the whole batch is in: the pinger only pings
                # registered clients, and Parley closes a socket silent for 55 s (4408) — a
                # 10,000-socket batch takes longer than that to connect.
                self.clients.append(c)
                return c

        results = await asyncio.gather(*(one(s) for s in specs))
        ok = [c for c in results if c is not None]
        res: dict[str, Any] = {"ok": len(ok), "failed": len(specs) - len(ok), "secs": time.monotonic() - t0,
                               "done_secs": sorted(done), "hello_secs": sorted(greeted),
                               "errors": self.errors[-5:]}
        if info:
            res["info"] = {c.idx: c.join_info for c in ok}
            res["recovered"] = sum(1 for c in ok if c.recovered is True)
            res["not_recovered"] = sum(1 for c in ok if c.recovered is False)
        return res

    async def _join(self, c: Client, room: str, resume: list | None, timeout: float) -> None:
        frame: dict[str, Any] = {"type": "join", "ref": "j", "room": room}
        if resume is not None:
            frame["after_seq"], frame["epoch"] = resume
        fut = c.expect("joined")
        c.transport.send(WSMsgType.TEXT, orjson.dumps(frame))
        d = await asyncio.wait_for(fut, timeout)
        r = d["room"]
        seqs = [m["seq"] for m in d["messages"]]
        c.recovered = d.get("recovered")
        if c.track:
            if resume is not None and d.get("recovered"):
                c.high = resume[0]
                for s in seqs:
                    if s == c.high + 1:
                        c.high = s
                    elif s <= c.high:
                        c.dups += 1
                    else:
                        c.gaps += 1
                        c.high = s
            else:
                c.high = seqs[-1] if seqs else 0
        c.join_info[room] = {"epoch": r["epoch"], "last_seq": r["last_seq"], "high": c.high,
                             "recovered": d.get("recovered")}

    async def cmd_measure(self, on: bool = True) -> None:
        self.lat = array("q")
        self.recv = array("q")
        self.ack_lat = array("q")
        self.ack_recv = array("q")
        self.msg_frames = 0
        self.entries = {"message": 0, "edit": 0, "reaction": 0}
        self.edit_lat = array("q")
        self.reply_lat = array("q")
        self.noops = 0
        self.measuring = on

    async def cmd_stats(self) -> dict[str, Any]:
        return {"deliveries": len(self.lat), "acks": len(self.ack_lat), "msg_frames": self.msg_frames,
                "entries": sum(self.entries.values()), "replies": len(self.ack_lat) + len(self.reply_lat),
                "clients": len(self.clients), "open": sum(1 for c in self.clients if not c.closed),
                "n_errors": self.n_errors, "close_codes": dict(self.close_codes)}

    async def cmd_collect(self) -> dict[str, Any]:
        tracked = [c for c in self.clients if c.track]
        return {"lat": self.lat.tobytes(), "recv": self.recv.tobytes(), "ack_lat": self.ack_lat.tobytes(), "ack_recv": self.ack_recv.tobytes(),
                "msg_frames": self.msg_frames, "errors": self.errors[-10:], "n_errors": self.n_errors,
                "gaps": sum(c.gaps for c in tracked), "dups": sum(c.dups for c in tracked),
                "highs": {c.idx: c.high for c in tracked}, "room_seq": dict(self.room_seq),
                "open": sum(1 for c in self.clients if not c.closed),
                "entries": dict(self.entries), "edit_lat": self.edit_lat.tobytes(),
                "reply_lat": self.reply_lat.tobytes(), "noops": self.noops}

    async def cmd_send_rate(self, rate: float, duration: float, roles: tuple[str, ...] = ("send", "both"),
                            shuffle: bool = True) -> dict[str, Any]:
        """Open-loop sending: `rate` frames/s in total over this worker's sending clients, for
        `duration` seconds, on an absolute schedule (a late loop catches up, bounded by `total`)."""
        senders = [c for c in self.clients if c.role in roles and not c.closed]
        if not senders or rate <= 0:
            return {"sent": 0, "t0_ns": time.time_ns(), "t1_ns": time.time_ns()}
        if shuffle:
            random.shuffle(senders)
        total = max(1, int(rate * duration))
        t0 = time.monotonic()
        t0_ns = time.time_ns()
        sent = 0
        k = 0
        simple = self.simple
        text = WSMsgType.TEXT
        while sent < total:
            due = min(total, int((time.monotonic() - t0) * rate) + 1)
            while sent < due:
                c = senders[k % len(senders)]
                k += 1
                if c.closed:
                    sent += 1
                    continue
                ts = time.time_ns()
                if simple:
                    c.transport.send(text, b'{"message":"T%d"}' % ts)
                else:
                    c.sent += 1
                    room = c.rooms[c.sent % len(c.rooms)]
                    ref = b"%d" % c.sent
                    c.pending[ref] = ts
                    c.transport.send(text, b'{"type":"send","ref":"%s","room":"%s","text":"T%d","client_id":"c%d-%d-%d"}'
                                     % (ref, room.encode(), ts, c.idx, os.getpid(), c.sent))
                sent += 1
            if time.monotonic() - t0 > duration * 3 + 5:  # bound: never loop forever
                break
            nxt = t0 + sent / rate
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
        return {"sent": sent, "t0_ns": t0_ns, "t1_ns": time.time_ns()}

    async def cmd_conv_rate(self, rate: float, duration: float, mix: tuple[float, float, float],
                            seed: int | None = None) -> dict[str, Any]:
        """cmd_send_rate for ConvClients: `rate` turns/s on the same open-loop schedule, each a
        send, an edit or a reaction toggle as bench.conversation.next_action picks it."""
        senders = [c for c in self.clients if isinstance(c, ConvClient) and not c.closed]
        actions = {"send": 0, "edit": 0, "react": 0, "unreact": 0}
        if not senders or rate <= 0:
            return {"sent": 0, "actions": actions, "t0_ns": time.time_ns(), "t1_ns": time.time_ns()}
        rng = random.Random(seed)
        rng.shuffle(senders)
        the_mix = Mix(*mix)
        total = max(1, int(rate * duration))
        t0 = time.monotonic()
        t0_ns = time.time_ns()
        sent = 0
        k = 0
        text = WSMsgType.TEXT
        while sent < total:
            due = min(total, int((time.monotonic() - t0) * rate) + 1)
            while sent < due:
                c = senders[k % len(senders)]
                k += 1
                sent += 1
                if c.closed:
                    continue
                kind, target, emoji = next_action(the_mix, c.state, rng)
                ts = time.time_ns()
                c.sent += 1
                ref = b"%d" % c.sent
                c.pending[ref] = ts
                c.reply_kind[ref] = kind
                room = c.rooms[0].encode()
                if kind == SEND:
                    frame = (b'{"type":"send","ref":"%s","room":"%s","text":"T%d","client_id":"c%d-%d-%d"}'
                             % (ref, room, ts, c.idx, os.getpid(), c.sent))
                elif kind == EDIT:
                    frame = b'{"type":"edit","ref":"%s","room":"%s","seq":%d,"text":"T%d"}' % (ref, room, target, ts)
                else:
                    frame = orjson.dumps({"type": kind, "ref": ref.decode(), "room": c.rooms[0], "seq": target,
                                          "emoji": emoji})
                c.transport.send(text, frame)
                actions[kind] += 1
            if time.monotonic() - t0 > duration * 3 + 5:  # bound: never loop forever
                break
            nxt = t0 + sent / rate
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
        return {"sent": sent, "actions": actions, "t0_ns": t0_ns, "t1_ns": time.time_ns()}

    async def cmd_close_all(self, abrupt: bool = True, wait: float = 5.0) -> dict[str, Any]:
        for c in self.clients:
            if not c.closed and c.transport is not None:
                if abrupt:
                    c.transport.disconnect()
                else:
                    c.transport.send_close()
        deadline = time.monotonic() + wait
        while any(not c.closed for c in self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        n = len(self.clients)
        kept = [c for c in self.clients if c.track]
        self.clients = []
        return {"closed": n, "tracked": {c.idx: (c.high, c.gaps, c.dups) for c in kept}}


def _worker_main(conn: Any, wid: int) -> None:
    import uvloop

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(Worker(conn, wid).run())


class Pool:
    """The parent's handle on N worker processes."""

    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns = []
        self.procs = []
        self._next = 0
        self._buffered: dict[tuple[int, int], Any] = {}
        for i in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(child, i), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    def __len__(self) -> int:
        return len(self.conns)

    def call(self, wid: int, name: str, **kw: Any) -> int:
        self._next += 1
        self.conns[wid].send((self._next, name, kw))
        return self._next

    def result(self, wid: int, cid: int, timeout: float = 300.0) -> Any:
        deadline = time.monotonic() + timeout
        while (wid, cid) not in self._buffered:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conns[wid].poll(left):
                raise TimeoutError(f"worker {wid} did not answer command {cid} within {timeout} s")
            rid, ok, res = self.conns[wid].recv()
            self._buffered[(wid, rid)] = (ok, res)
        ok, res = self._buffered.pop((wid, cid))
        if not ok:
            raise RuntimeError(f"worker {wid} failed:\n{res}")
        return res

    def run(self, wid: int, name: str, timeout: float = 300.0, **kw: Any) -> Any:
        return self.result(wid, self.call(wid, name, **kw), timeout)

    def all(self, name: str, per_worker: list[dict[str, Any]] | None = None, timeout: float = 300.0,
            wids: list[int] | None = None, **kw: Any) -> list[Any]:
        wids = list(range(len(self))) if wids is None else wids
        ids = []
        for j, wid in enumerate(wids):
            args = dict(kw)
            if per_worker is not None:
                args.update(per_worker[j])
            ids.append(self.call(wid, name, **args))
        return [self.result(wid, cid, timeout) for wid, cid in zip(wids, ids, strict=True)]

    def close(self) -> None:
        for wid in range(len(self)):
            try:
                self.call(wid, "exit")
            except (OSError, BrokenPipeError):
                pass
        for p in self.procs:
            p.join(timeout=3)
            if p.is_alive():
                p.kill()
