// Test doubles: a scriptable WebSocket, a manual clock, a network with online/offline events.
import { ParleyClient } from "../../../parley/static/parley/parley-client.js";

export class FakeClock {
  constructor() {
    this.t = 1_000_000;
    this.timers = new Map();
    this.nextId = 1;
  }
  now = () => this.t;
  setTimeout = (fn, ms) => {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  };
  clearTimeout = (id) => {
    this.timers.delete(id);
  };
  /** Move time forward, firing due timers in order (timers may schedule more timers). */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let due = null;
      for (const [id, t] of this.timers) if (t.at <= end && (!due || t.at < due[1].at)) due = [id, t];
      if (!due) break;
      this.timers.delete(due[0]);
      this.t = due[1].at;
      due[1].fn();
    }
    this.t = end;
  }
  /** The delays (from now) of pending timers, sorted. */
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.t).sort((a, b) => a - b);
  }
}

export class FakeSocket {
  static instances = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedByClient = null;
    FakeSocket.instances.push(this);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(data));
  }
  close(code, reason) {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }
  // --- server side ---
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  hello(extra = {}) {
    this.receive({ type: "hello", protocol: 1, user: { id: 1, username: "ada" }, heartbeat_secs: 25,
      limits: { max_text_chars: 4000, history_page_max: 100 }, ...extra });
  }
  serverClose(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  framesOfType(type) {
    return this.sent.filter((f) => f.type === type);
  }
  lastOfType(type) {
    const all = this.framesOfType(type);
    return all[all.length - 1];
  }
}

export class FakeNetwork {
  constructor() {
    this.online = true;
    this.listeners = { online: [], offline: [] };
  }
  isOnline = () => this.online;
  addEventListener(type, fn) {
    this.listeners[type].push(fn);
  }
  goOffline() {
    this.online = false;
    for (const fn of this.listeners.offline) fn();
  }
  goOnline() {
    this.online = true;
    for (const fn of this.listeners.online) fn();
  }
}

export function makeClient(extra = {}) {
  FakeSocket.instances = [];
  const clock = new FakeClock();
  const network = new FakeNetwork();
  let ids = 0;
  const client = new ParleyClient({
    url: "ws://test/ws/chat/",
    WebSocket: FakeSocket,
    timers: clock,
    now: clock.now,
    random: () => 0.5,
    network,
    clientId: () => `cid-${++ids}`,
    ...extra,
  });
  const states = [];
  client.on("state", (s) => states.push(s));
  const sock = () => FakeSocket.instances[FakeSocket.instances.length - 1];
  return { client, clock, network, states, sock, sockets: FakeSocket.instances };
}

export const room = (slug = "lobby", extra = {}) => ({ slug, title: "Lobby", private: false, epoch: "E1", last_seq: 0, ...extra });
export const msg = (seq, extra = {}) => ({ room: "lobby", seq, id: 100 + seq, client_id: null,
  author: { id: 2, username: "bob" }, text: `m${seq}`, ts: "2026-11-25T10:00:00.000Z", ...extra });

/** Connect, say hello, join `lobby` answering with these messages. Returns the socket. */
export async function connectAndJoin(env, messages = [], joinedExtra = {}) {
  env.client.connect();
  const ws = env.sock();
  ws.open();
  ws.hello();
  const p = env.client.join("lobby");
  const join = ws.lastOfType("join");
  ws.receive({ type: "joined", ref: join.ref, room: room(), messages, has_more: false,
    members: [{ id: 1, username: "ada" }], recovered: null, ...joinedExtra });
  await p;
  return ws;
}

export const tick = () => new Promise((r) => setImmediate(r));

/** Version 2 (docs/protocol.md §10): hello says protocol 2; `joined` carries room.last_seq. */
export async function connectAndJoinV2(env, messages = [], { lastSeq = null, ...joinedExtra } = {}) {
  env.client.connect();
  const ws = env.sock();
  ws.open();
  ws.hello({ protocol: 2 });
  const p = env.client.join("lobby");
  const join = ws.lastOfType("join");
  const last = lastSeq ?? (messages.length ? messages[messages.length - 1].seq : 0);
  ws.receive({ type: "joined", ref: join.ref, room: room("lobby", { last_seq: last }), messages, has_more: false,
    members: [{ id: 1, username: "ada" }], recovered: null, ...joinedExtra });
  await p;
  return ws;
}

export const edit = (seq, target, text, extra = {}) => ({ type: "edit", room: "lobby", seq, target, text,
  edited_at: "2026-12-02T10:00:00.000Z", by: { id: 2, username: "bob" }, ...extra });
export const del = (seq, target, extra = {}) => ({ type: "delete", room: "lobby", seq, target, by: { id: 2, username: "bob" }, ...extra });
export const reaction = (seq, target, emoji, op, count, user = { id: 2, username: "bob" }) => ({ type: "reaction", room: "lobby",
  seq, target, emoji, op, count, user });
export const msgEvent = (seq, extra = {}) => ({ type: "message", room: "lobby", message: msg(seq, extra) });
