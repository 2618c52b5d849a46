// Parley client: one WebSocket, many rooms, automatic reconnect and resume (docs/protocol.md).
//
// An ES module with no dependencies, for browsers and for node. Everything that touches the
// outside world — the WebSocket constructor, timers, the clock, randomness, the browser's
// online/offline events — can be injected, so the state machine can be tested with fakes.
//
//   import { ParleyClient } from "./parley-client.js";
//   const client = new ParleyClient({ url: "ws://127.0.0.1:8000/ws/chat/" });
//   client.on("state", (s) => console.log(s.state));
//   client.on("room", ({ slug }) => render(client.room(slug)));
//   client.connect();
//   await client.join("lobby");
//   await client.send("lobby", "hello");
//   await client.react("lobby", 42, "👍");
//
// It speaks protocol version 2 (docs/protocol.md §10): every change to a room (a message, an edit,
// a delete, a reaction) is an entry of the room's log with the next seq, applied to the room's
// messages in seq order, each once.

export const STATES = Object.freeze({
  IDLE: "idle", // not started yet
  CONNECTING: "connecting", // a socket is opening (or open, waiting for hello)
  CONNECTED: "connected", // hello received; rooms are (re)joined
  RECONNECTING: "reconnecting", // waiting for the next attempt (see nextAttemptAt)
  OFFLINE: "offline", // the browser says there is no network; retry on "online"
  REVOKED: "revoked", // close code 4401: credentials no longer valid; no more attempts
  CLOSED: "closed", // close() was called
});

export const CLOSE_CREDENTIALS_REVOKED = 4401;
export const PROTOCOL_VERSION = 2;

// Event frames that are entries of a room's log (§10): each carries the entry's seq.
const ENTRY_TYPES = new Set(["message", "edit", "delete", "reaction"]);
const EXCERPT_CHARS = 100; // reply quotes hold the first 100 characters of their target (§10)

// Errors after which retrying the same send (same client_id) can succeed.
const RETRIABLE_SEND_ERRORS = new Set(["commit_failed", "internal_error", "not_joined", "rate_limited"]);

const DEFAULTS = {
  baseDelayMs: 500, // first backoff ceiling
  maxDelayMs: 15000, // backoff cap
  stableAfterMs: 10000, // a connection that lived this long resets the backoff
  connectTimeoutMs: 10000, // socket open + hello must take less than this
  heartbeatSecs: 25, // until hello tells us the server's value
  typingIntervalMs: 2000, // send `typing` at most this often per room
  typingShowMs: 5000, // show a peer as typing this long
  typingRelayMs: 1000, // the server relays one typing per socket and room this often (protocol §3)
  recountDelayMs: 1000, // after an edit or delete of an unread message: ask for the counts this much later
  maxSendAttempts: 8, // per message, for retriable errors (reconnects do not count)
  joinLimit: 50,
};

export class ParleyError extends Error {
  constructor(code, message, frame = null) {
    super(message || code);
    this.name = "ParleyError";
    this.code = code;
    this.frame = frame;
  }
}

/** "Full jitter" backoff: uniform in [0, min(cap, base * 2^attempt)). */
export function fullJitterDelay(attempt, baseMs, capMs, random = Math.random) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** A random id for idempotent sends; crypto.randomUUID needs a secure context, so fall back. */
export function makeClientId(cryptoObj = globalThis.crypto) {
  if (cryptoObj && typeof cryptoObj.randomUUID === "function") return "c-" + cryptoObj.randomUUID();
  const bytes = new Uint8Array(16);
  if (cryptoObj && typeof cryptoObj.getRandomValues === "function") cryptoObj.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `c-${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new Error("ParleyClient: pass options.url outside a browser");
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws/chat/`;
}

/** The URL with protocol=2 in its query (replacing any protocol= already there). */
export function withProtocol(url, version = PROTOCOL_VERSION) {
  const [base, hash = null] = url.split("#", 2);
  const [path, query = ""] = base.split("?", 2);
  const params = query.split("&").filter((p) => p && !p.startsWith("protocol="));
  params.push(`protocol=${version}`);
  return `${path}?${params.join("&")}${hash === null ? "" : `#${hash}`}`;
}

const excerptOf = (text) => Array.from(text || "").slice(0, EXCERPT_CHARS).join("");

/** A message's state after one edit/delete/reaction entry (a new object: snapshots stay immutable). */
export function applyEntry(message, entry, meId) {
  if (entry.type === "edit") {
    if (message.deleted) return message; // an edit read back after the delete carries no text
    const next = { ...message, text: entry.text, edited_at: entry.edited_at };
    delete next.mentions;
    delete next.mention_room;
    if (entry.mentions && entry.mentions.length) next.mentions = entry.mentions;
    if (entry.mention_room) next.mention_room = true;
    return next;
  }
  if (entry.type === "delete") {
    const next = { ...message, text: "", deleted: true };
    delete next.mentions;
    delete next.mention_room;
    delete next.reactions;
    return next;
  }
  if (entry.type === "reaction") {
    if (message.deleted) return message;
    const mine = meId != null && entry.user && entry.user.id === meId;
    const list = (message.reactions || []).map((r) => ({ ...r }));
    let r = list.find((x) => x.emoji === entry.emoji);
    if (!r) {
      r = { emoji: entry.emoji, count: 0, me: false };
      list.push(r);
    }
    r.count = entry.count;
    if (mine) r.me = entry.op === "add";
    const next = { ...message, reactions: list.filter((x) => x.count > 0) };
    if (!next.reactions.length) delete next.reactions;
    return next;
  }
  return message;
}

/** Per-room state. Messages are kept in ascending seq order, each seq once. */
class RoomState {
  constructor(slug) {
    this.slug = slug;
    this.wanted = true; // the app asked to be in this room: (re)join on every connection
    this.live = false; // joined on the current socket
    this.everJoined = false;
    this.info = null; // the `room` object from the last `joined`
    this.epoch = null;
    this.messages = [];
    this.bySeq = new Map();
    this.highSeq = 0; // highest entry seq applied (joined/events/live entries; not acks)
    this.early = new Map(); // seq -> entry frame that arrived past a gap, applied once it closes
    this.resyncing = false; // a resume join is in flight to fill a gap
    this.hasMore = false;
    this.members = new Map(); // user id -> user
    this.typing = new Map(); // user id -> {user, until}
    this.lastTypingSentAt = -Infinity;
    this.joinWaiters = [];
    this.loadingOlder = false;
  }

  /** Insert one message by seq; returns true if the list changed. */
  add(message, { fromAck = false, fromPage = false } = {}) {
    const existing = this.bySeq.get(message.seq);
    if (existing) {
      if (existing._fromAck && !fromAck) {
        // The server's copy wins over the one we built from our own ack.
        const i = this.messages.indexOf(existing);
        this.messages[i] = message;
        this.bySeq.set(message.seq, message);
        return true;
      }
      return false;
    }
    const stored = fromAck ? { ...message, _fromAck: true } : message;
    this.bySeq.set(message.seq, stored);
    const list = this.messages;
    if (!list.length || list[list.length - 1].seq < message.seq) {
      list.push(stored);
    } else {
      let lo = 0;
      let hi = list.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (list[mid].seq < message.seq) lo = mid + 1;
        else hi = mid;
      }
      list.splice(lo, 0, stored);
    }
    // A history page is older than what was applied; only the log's entries move highSeq.
    if (!fromAck && !fromPage && message.seq > this.highSeq) this.highSeq = message.seq;
    return true;
  }

  reset() {
    this.messages = [];
    this.bySeq = new Map();
    this.highSeq = 0;
    this.early = new Map();
  }

  /** Replace the stored copy of message `seq` (edits, deletes, reactions; quotes of it). */
  replace(seq, next) {
    const old = this.bySeq.get(seq);
    if (!old || old === next) return false;
    this.messages[this.messages.indexOf(old)] = next;
    this.bySeq.set(seq, next);
    return true;
  }

  /** Keep reply quotes of `target` in step with it (they quote it as it is now). */
  requote(target, message) {
    for (const m of this.messages) {
      if (!m.reply_to || m.reply_to.seq !== target) continue;
      const quote = message.deleted
        ? { ...m.reply_to, excerpt: "", deleted: true }
        : { ...m.reply_to, excerpt: excerptOf(message.text) };
      this.replace(m.seq, { ...m, reply_to: quote });
    }
  }

  /**
   * Apply one entry frame of the log. Returns "old" (seq already applied), "gap" (kept until
   * the entries before it arrive) or "applied"; each seq is applied once, in order.
   */
  applyFrame(frame, meId) {
    const seq = entrySeq(frame);
    if (!(seq > this.highSeq)) return "old";
    if (seq > this.highSeq + 1) {
      this.early.set(seq, frame);
      return "gap";
    }
    this._applyOne(frame, meId);
    for (let next = this.early.get(this.highSeq + 1); next; next = this.early.get(this.highSeq + 1)) {
      this.early.delete(this.highSeq + 1);
      this._applyOne(next, meId);
    }
    for (const s of this.early.keys()) if (s <= this.highSeq) this.early.delete(s);
    return "applied";
  }

  _applyOne(frame, meId) {
    const seq = entrySeq(frame);
    if (frame.type === "message") {
      this.add(frame.message);
    } else {
      const target = this.bySeq.get(frame.target);
      // An entry for a message older than what is loaded changes nothing here: a page brings
      // that message in its current state.
      if (target) {
        const next = applyEntry(target, frame, meId);
        if (this.replace(frame.target, next) && frame.type !== "reaction") this.requote(frame.target, next);
      }
    }
    if (seq > this.highSeq) this.highSeq = seq;
  }
}

const entrySeq = (frame) => (frame.type === "message" ? frame.message?.seq : frame.seq);
// `room` events after which the outbox changed (and is saved to options.storage).
const OUTBOX_REASONS = new Set(["pending", "failed", "ack", "joined", "reset", "removed"]);


export class ParleyClient {
  /**
   * @param {object} options
   * @param {string} [options.url] ws(s):// URL; defaults to /ws/chat/ on the page's host
   *   (protocol=2 is added to its query)
   * @param {Function} [options.WebSocket] constructor called as new WebSocket(url)
   * @param {Function} [options.createSocket] (url) => socket; overrides WebSocket (e.g. to add headers in node)
   * @param {object} [options.timers] {setTimeout, clearTimeout}
   * @param {Function} [options.now] () => ms
   * @param {Function} [options.random] () => [0, 1)
   * @param {object} [options.network] {isOnline(): bool, addEventListener(type, fn)}; defaults to window/navigator
   * @param {Function} [options.clientId] () => string
   * @param {object} [options.storage] {getItem, setItem, removeItem} (e.g. localStorage): the
   *   outbox — pending and failed sends — is kept there under options.storageKey and restored
   *   by the next client (a page reload): a send is never dropped without the user seeing it
   * @param {string} [options.storageKey] defaults to "parley:outbox"
   */
  constructor(options = {}) {
    this.opts = { ...DEFAULTS, ...options };
    this.url = withProtocol(options.url || defaultUrl());
    this.protocol = null; // hello.protocol of the current connection
    const WS = options.WebSocket || globalThis.WebSocket;
    this._createSocket = options.createSocket || ((url) => new WS(url));
    const timers = options.timers || globalThis;
    this._setTimeout = (fn, ms) => timers.setTimeout(fn, ms);
    this._clearTimeout = (id) => (id != null ? timers.clearTimeout(id) : undefined);
    this._now = options.now || (() => Date.now());
    this._random = options.random || Math.random;
    this._clientId = options.clientId || (() => makeClientId());
    this.network = options.network !== undefined ? options.network : browserNetwork();

    this.state = STATES.IDLE;
    this.nextAttemptAt = null;
    this.attempt = 0; // failed attempts since the last stable connection
    this.user = null;
    this.limits = { max_text_chars: 4000, history_page_max: 100 };
    this.heartbeatSecs = this.opts.heartbeatSecs;
    this.rooms = new Map();
    this.roomStates = new Map(); // slug -> room-state (protocol §11): the user's room list
    this.outbox = []; // unacked sends, in the order the user made them (failed ones included)
    this._storage = options.storage || null;
    this._storageKey = options.storageKey || "parley:outbox";

    this._listeners = new Map();
    this._ws = null;
    this._openedAt = null;
    this._helloAt = null;
    this._refSeq = 0;
    this._requests = new Map(); // ref -> {resolve, reject, type}
    this._reconnectTimer = null;
    this._connectTimer = null;
    this._recountTimer = null;
    this._pingTimer = null;
    this._deadTimer = null;
    this._lastReceivedAt = 0;
    this._typingTimers = new Map();
    this._flushTimers = new Map(); // room slug -> timer for the next paced send
    this._bucket = { tokens: null, stamp: 0 }; // client-side pacing of sends

    if (this.network && this.network.addEventListener) {
      this.network.addEventListener("online", () => this._onOnline());
      this.network.addEventListener("offline", () => this._onOffline());
    }
    this._restoreOutbox();
  }

  // --- events -------------------------------------------------------------------------------

  /** Subscribe; returns an unsubscribe function. Events: state, hello, room, error, revoked,
   * attention ({kind: "rooms"|"read"|"room_state"|"count", slug?}: roomStates changed). */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type).delete(fn);
  }

  _emit(type, detail) {
    for (const fn of [...(this._listeners.get(type) || [])]) {
      try {
        fn(detail);
      } catch (err) {
        // A broken listener must not break the connection logic.
        (globalThis.console || { error() {} }).error("parley listener failed", err);
      }
    }
  }

  _setState(state, extra = {}) {
    this.state = state;
    this.nextAttemptAt = extra.nextAttemptAt ?? null;
    this._emit("state", { state, nextAttemptAt: this.nextAttemptAt, attempt: this.attempt, ...extra });
  }

  /** `room` event: {slug, reason, seq?}; seq is the message a live entry touched. */
  _roomChanged(slug, reason, seq = undefined) {
    if (OUTBOX_REASONS.has(reason)) this._saveOutbox();
    this._emit("room", seq === undefined ? { slug, reason } : { slug, reason, seq });
  }

  // --- connection lifecycle -------------------------------------------------------------------

  /** Start connecting (idempotent). */
  connect() {
    if (this.state === STATES.CLOSED || this.state === STATES.REVOKED) return;
    if (this._ws) return;
    this._clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    if (!this._isOnline()) {
      this._setState(STATES.OFFLINE);
      return;
    }
    this._setState(STATES.CONNECTING);
    let ws;
    try {
      ws = this._createSocket(this.url);
    } catch (err) {
      this._afterDisconnect({ code: 1006, reason: String(err), opened: false });
      return;
    }
    this._ws = ws;
    this._openedAt = null;
    this._helloAt = null;
    ws.onopen = () => {
      if (ws !== this._ws) return;
      this._openedAt = this._now();
    };
    ws.onmessage = (ev) => {
      if (ws !== this._ws) return;
      this._onFrame(ev.data);
    };
    ws.onerror = () => {}; // onclose follows and carries the information we act on
    ws.onclose = (ev) => {
      if (ws !== this._ws) return;
      this._detach();
      this._afterDisconnect({ code: ev.code, reason: ev.reason, opened: this._openedAt !== null });
    };
    this._connectTimer = this._setTimeout(() => {
      if (ws === this._ws && this._helloAt === null) this._drop("connect_timeout");
    }, this.opts.connectTimeoutMs);
  }

  /** Skip the wait and try now (e.g. a "retry now" button). */
  reconnectNow() {
    if (this.state === STATES.RECONNECTING || this.state === STATES.OFFLINE) {
      this._clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this.connect();
    }
  }

  /** Stop for good: no more reconnects. */
  close() {
    const ws = this._ws;
    this._detach();
    this._clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    if (ws) safeClose(ws, 1000, "client closed");
    this._failRequests(new ParleyError("closed", "the client was closed"));
    this._setState(STATES.CLOSED);
  }

  _isOnline() {
    return !this.network || !this.network.isOnline || this.network.isOnline() !== false;
  }

  /** Forget the current socket without waiting for its close handshake, then reconnect. */
  _drop(reason) {
    const ws = this._ws;
    if (!ws) return;
    const opened = this._openedAt !== null;
    this._detach();
    safeClose(ws, 4000, reason);
    this._afterDisconnect({ code: 4000, reason, opened });
  }

  _detach() {
    const ws = this._ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => {};
    }
    this._ws = null;
    this._clearTimeout(this._connectTimer);
    this._clearTimeout(this._pingTimer);
    this._clearTimeout(this._deadTimer);
    this._connectTimer = this._pingTimer = this._deadTimer = null;
    for (const room of this.rooms.values()) room.live = false;
  }

  _afterDisconnect({ code, reason, opened }) {
    const livedFor = this._helloAt !== null ? this._now() - this._helloAt : 0;
    this._helloAt = null;
    this._openedAt = null;
    this._failRequests(new ParleyError("disconnected", "the connection was lost"));
    for (const entry of this.outbox) if (entry.status === "sending") entry.status = "pending";
    if (code === CLOSE_CREDENTIALS_REVOKED) {
      this._setState(STATES.REVOKED, { code, reason });
      this._emit("revoked", { code, reason });
      return;
    }
    if (this.state === STATES.CLOSED) return;
    if (livedFor >= this.opts.stableAfterMs) this.attempt = 0;
    this._scheduleReconnect({ code, reason, opened });
  }

  _scheduleReconnect(info = {}) {
    this._clearTimeout(this._reconnectTimer);
    if (!this._isOnline()) {
      this._reconnectTimer = null;
      this._setState(STATES.OFFLINE, info);
      return;
    }
    const delay = fullJitterDelay(this.attempt, this.opts.baseDelayMs, this.opts.maxDelayMs, this._random);
    this.attempt += 1;
    const nextAttemptAt = this._now() + delay;
    this._reconnectTimer = this._setTimeout(() => {
      this._reconnectTimer = null;
      this.connect();
    }, delay);
    this._setState(STATES.RECONNECTING, { ...info, nextAttemptAt, delay });
  }

  _onOnline() {
    if (this.state === STATES.OFFLINE || this.state === STATES.RECONNECTING) {
      this._clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this.connect();
    }
  }

  _onOffline() {
    if (this.state === STATES.CLOSED || this.state === STATES.REVOKED) return;
    if (this._ws) {
      // The socket may linger half-dead for minutes; give up on it now and wait for "online".
      this._drop("offline");
    } else {
      this._clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this._setState(STATES.OFFLINE);
    }
  }

  // --- heartbeat ------------------------------------------------------------------------------

  _schedulePing() {
    this._clearTimeout(this._pingTimer);
    this._pingTimer = this._setTimeout(() => this._ping(), this.heartbeatSecs * 1000);
  }

  _ping() {
    if (!this._ws) return;
    const sentAt = this._now();
    this._transmit({ type: "ping", ref: this._nextRef() });
    this._clearTimeout(this._deadTimer);
    this._deadTimer = this._setTimeout(() => {
      if (this._lastReceivedAt < sentAt) this._drop("heartbeat_timeout");
    }, this.heartbeatSecs * 1000);
    this._schedulePing();
  }

  // --- frames in ------------------------------------------------------------------------------

  _onFrame(raw) {
    this._lastReceivedAt = this._now();
    this._clearTimeout(this._deadTimer);
    this._deadTimer = null;
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    if (frame.ref != null && this._requests.has(frame.ref)) {
      const req = this._requests.get(frame.ref);
      this._requests.delete(frame.ref);
      if (frame.type === "error") req.reject(new ParleyError(frame.code, frame.message, frame));
      else req.resolve(frame);
      return;
    }
    switch (frame.type) {
      case "hello":
        return this._onHello(frame);
      case "message":
      case "edit":
      case "delete":
      case "reaction":
        return this._onEntry(frame);
      case "presence":
        return this._onPresence(frame);
      case "typing":
        return this._onTyping(frame);
      case "rooms":
        return this._onRooms(frame);
      case "read":
        return this._onRead(frame);
      case "room_state":
        return this._onRoomState(frame);
      case "error":
        return this._emit("error", new ParleyError(frame.code, frame.message, frame));
      case "left": // unasked: removed from the room (§3)
        return this._onRoomLost(frame.room, "removed");
      case "room_removed": // version 2 (§12): removed, left elsewhere, or deleted
        this._onRoomLost(frame.room, frame.reason || "removed");
        if (this.roomStates.delete(frame.room)) this._emit("attention", { kind: "room_state", slug: frame.room });
        return this._emit("rooms", frame);
      case "room_added":
      case "room_updated":
        if (frame.type === "room_updated" && frame.room && this.rooms.get(frame.room.slug)) {
          const known = this.rooms.get(frame.room.slug);
          known.info = { ...(known.info || {}), ...frame.room };
          known.archived = !!frame.room.archived;
          this._roomChanged(frame.room.slug, "updated");
        }
        if (frame.type === "room_added" && frame.state?.room) {
          const back = this.rooms.get(frame.state.room.slug);
          if (back && back.removed) back.removed = null; // added again
          this._onRoomState(frame); // in the room list from now on, with its counts (§11)
        }
        if (frame.type === "room_updated" && frame.room && this.roomStates.has(frame.room.slug)) {
          const state = this.roomStates.get(frame.room.slug);
          state.room = { ...state.room, ...frame.room };
          this._emit("attention", { kind: "room_state", slug: frame.room.slug });
        }
        return this._emit("rooms", frame);
      default:
        return undefined; // pong without a known ref, or a future frame type
    }
  }

  _onHello(frame) {
    this._clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this._helloAt = this._now();
    this.user = frame.user;
    this.protocol = frame.protocol ?? 1;
    if (frame.limits) this.limits = { ...this.limits, ...frame.limits };
    if (frame.heartbeat_secs > 0) this.heartbeatSecs = frame.heartbeat_secs;
    this._setState(STATES.CONNECTED);
    this._emit("hello", frame);
    this._schedulePing();
    for (const room of this.rooms.values()) if (room.wanted) this._sendJoin(room);
  }

  _onEntry(frame) {
    const room = this.rooms.get(frame.room);
    if (!room || !ENTRY_TYPES.has(frame.type)) return;
    if (frame.type === "message") {
      if (!frame.message) return;
      if (this.protocol !== 2) return this._onMessageV1(room, frame.message);
    }
    if (typeof entrySeq(frame) !== "number") return;
    // Entries that come while a resume join is in flight wait in room.early, as after a gap.
    const outcome = room.resyncing ? "gap" : room.applyFrame(frame, this.user?.id);
    if (outcome === "gap") {
      if (room.resyncing) room.early.set(entrySeq(frame), frame);
      else this._resync(room);
      return;
    }
    if (outcome === "old") return;
    this._afterEntries(room, [frame]);
  }

  /** After entries were applied: typing, the outbox, unread counts and one `room` event. */
  _afterEntries(room, frames, reason = null) {
    this._countUnread(room.slug, frames);
    for (const f of frames) {
      if (f.type !== "message") continue;
      // Whoever just sent a message has stopped typing it.
      if (f.message.author) room.typing.delete(f.message.author.id);
      this._settleOutbox(room.slug, f.message.client_id, room.bySeq.get(f.message.seq) || f.message);
    }
    if (reason) return;
    const last = frames[frames.length - 1];
    this._roomChanged(room.slug, last.type, last.type === "message" ? last.message.seq : last.target);
  }

  /**
   * A gap in the log (an entry past highSeq + 1): a resume join from highSeq fills it. Pages
   * (history) hold messages only and cannot bring the edits, deletes and reactions missed.
   */
  _resync(room) {
    if (room.resyncing || !room.live) return;
    room.resyncing = true;
    this._sendJoin(room);
  }

  // --- attention (protocol §11): the room list, read markers ---------------------------------

  _onRooms(frame) {
    // Each room's counts are the server's up to its last_seq; messages after it are counted here.
    this.roomStates = new Map((frame.rooms || []).map((s) => [s.room.slug, { ...s, countedSeq: s.room.last_seq }]));
    this._emit("attention", { kind: "rooms" });
  }

  _onRead(frame) {
    const state = this.roomStates.get(frame.room);
    if (!state) return;
    Object.assign(state, { last_read_seq: frame.seq, unread: frame.unread, mentions: frame.mentions });
    state.countedSeq = Math.max(state.countedSeq ?? 0, frame.seq, this.rooms.get(frame.room)?.highSeq ?? 0);
    this._emit("attention", { kind: "read", slug: frame.room });
  }

  _onRoomState(frame) {
    const next = frame.state;
    if (!next?.room) return;
    const old = this.roomStates.get(next.room.slug);
    this.roomStates.set(next.room.slug, { ...next, countedSeq: Math.max(old?.countedSeq ?? 0, next.room.last_seq) });
    this._emit("attention", { kind: "room_state", slug: next.room.slug });
  }

  /** Live and resumed messages of a listed room that are someone else's raise its counts. */
  _countUnread(slug, frames) {
    const state = this.roomStates.get(slug);
    const meId = this.user?.id;
    if (!state) return;
    const cap = this.limits.unread_count_max || 1000;
    let changed = false;
    for (const f of frames) {
      if ((f.type === "edit" || f.type === "delete") && f.target > state.last_read_seq && f.by?.id !== meId) {
        // Counts are of the room's current state (protocol §11): an unread message edited to
        // mention the user, or deleted, changes them, and only the server knows what it said
        // before. One `rooms` request for a burst of them.
        this._recountSoon();
        continue;
      }
      if (f.type !== "message" || !f.message) continue;
      const m = f.message;
      if (m.seq <= Math.max(state.countedSeq ?? 0, state.last_read_seq)) continue;
      state.countedSeq = m.seq;
      if (m.deleted || m.author?.id === meId) continue;
      state.unread = Math.min(cap, state.unread + 1);
      if (m.mention_room || (m.mentions || []).some((u) => u.id === meId)) state.mentions = Math.min(cap, state.mentions + 1);
      changed = true;
    }
    if (changed) this._emit("attention", { kind: "count", slug });
  }

  /** The user's state of a room (protocol §11), or null if it is not in their list. */
  roomState(slug) {
    return this.roomStates.get(slug) || null;
  }

  /** Move the room's read marker to `seq` (it never moves back); resolves with the `read` reply. */
  markRead(slug, seq) {
    return this._request({ type: "read", room: slug, seq }).then((reply) => {
      if (!this.roomStates.has(slug)) {
        // A room read for the first time (e.g. just opened): it is in the list from now on.
        const info = this.rooms.get(slug)?.info;
        if (info) this.roomStates.set(slug, { room: info, last_read_seq: 0, unread: 0, mentions: 0, notify: "mentions", muted: false, countedSeq: 0 });
      }
      this._onRead(reply);
      return reply;
    });
  }

  _recountSoon() {
    if (this._recountTimer) return;
    this._recountTimer = this._setTimeout(() => {
      this._recountTimer = null;
      if (this.protocol >= 2) this.refreshRooms().catch(() => {}); // the next hello's list has them anyway
    }, this.opts.recountDelayMs);
  }

  /** Ask for the room list again; resolves with roomStates. */
  refreshRooms() {
    return this._request({ type: "rooms" }).then((reply) => {
      this._onRooms(reply);
      return this.roomStates;
    });
  }

  _onMessageV1(room, msg) {
    const wasTyping = msg.author ? room.typing.delete(msg.author.id) : false;
    const changed = room.add(msg) || wasTyping;
    const settled = this._settleOutbox(room.slug, msg.client_id, msg);
    if (changed || settled) this._roomChanged(room.slug, "message", msg.seq);
  }

  _onPresence(frame) {
    const room = this.rooms.get(frame.room);
    if (!room || !frame.user) return;
    if (frame.event === "join") room.members.set(frame.user.id, frame.user);
    else if (frame.event === "leave") {
      room.members.delete(frame.user.id);
      room.typing.delete(frame.user.id);
    }
    this._roomChanged(room.slug, "members");
  }

  _onTyping(frame) {
    const room = this.rooms.get(frame.room);
    if (!room || !frame.user || (this.user && frame.user.id === this.user.id)) return;
    const until = this._now() + this.opts.typingShowMs;
    room.typing.set(frame.user.id, { user: frame.user, until });
    const key = `${room.slug}\u0000${frame.user.id}`;
    this._clearTimeout(this._typingTimers.get(key));
    this._typingTimers.set(key, this._setTimeout(() => {
      this._typingTimers.delete(key);
      const t = room.typing.get(frame.user.id);
      if (t && t.until <= this._now()) {
        room.typing.delete(frame.user.id);
        this._roomChanged(room.slug, "typing");
      }
    }, this.opts.typingShowMs));
    this._roomChanged(room.slug, "typing");
  }

  // --- frames out -----------------------------------------------------------------------------

  _nextRef() {
    this._refSeq += 1;
    return `r${this._refSeq}`;
  }

  _transmit(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Send a frame with a fresh ref; `resolve(reply)` or `reject(ParleyError)` runs synchronously
   * when the reply (or the error with that ref, or a disconnect) arrives, so that the client's
   * state is updated in the same turn as the frame.
   */
  _call(frame, resolve, reject) {
    const ref = this._nextRef();
    if (!this._transmit({ ...frame, ref })) {
      reject(new ParleyError("disconnected", "not connected"));
      return;
    }
    this._requests.set(ref, { resolve, reject, type: frame.type });
  }

  /** _call as a promise, for the public API. */
  _request(frame) {
    return new Promise((resolve, reject) => this._call(frame, resolve, reject));
  }

  _failRequests(err) {
    const pending = [...this._requests.values()];
    this._requests.clear();
    for (const req of pending) req.reject(err);
  }

  // --- rooms ----------------------------------------------------------------------------------

  /**
   * Join a room now and after every reconnect. Resolves with the room snapshot on the first
   * `joined` (waiting for a connection if needed); rejects on an `error` (e.g. room_not_found).
   * `resume: {seq, epoch}` (a room not joined yet): start from that seq, as a reconnect would.
   */
  join(slug, { resume = null } = {}) {
    let room = this.rooms.get(slug);
    if (!room) {
      room = new RoomState(slug);
      this.rooms.set(slug, room);
      if (resume && resume.epoch) {
        // Joined from the room list (protocol §11): resume at its last_seq, so that nothing
        // before it is sent; older messages are paged with history() when the room is opened.
        room.epoch = resume.epoch;
        room.highSeq = resume.seq;
        room.everJoined = true;
        room.hasMore = resume.seq > 0;
      }
    }
    room.wanted = true;
    const promise = new Promise((resolve, reject) => room.joinWaiters.push({ resolve, reject }));
    if (room.everJoined && room.live) {
      const waiters = room.joinWaiters.splice(0);
      for (const w of waiters) w.resolve(this.room(slug));
    } else if (this.state === STATES.CONNECTED && !room.joining) {
      this._sendJoin(room);
    }
    return promise;
  }

  /** Leave a room: no more rejoins, and drop its state. */
  async leave(slug) {
    const room = this.rooms.get(slug);
    if (!room) return;
    room.wanted = false;
    this.rooms.delete(slug);
    // What was still unsent for the room is failed, not dropped: the user decides.
    this._failRoom(slug, new ParleyError("left", `you left ${slug}`));
    if (room.live) {
      try {
        await this._request({ type: "leave", room: slug });
      } catch {
        // Leaving a room we are not in any more is fine.
      }
    }
  }

  _sendJoin(room) {
    const frame = { type: "join", room: room.slug, limit: this.opts.joinLimit };
    if (room.epoch && room.everJoined) {
      frame.after_seq = room.highSeq;
      frame.epoch = room.epoch;
    }
    room.joining = true;
    const ws = this._ws;
    this._call(
      frame,
      (reply) => {
        room.joining = false;
        if (ws === this._ws && this.rooms.get(room.slug) === room) this._onJoined(room, reply);
      },
      (err) => {
        room.joining = false;
        room.resyncing = false;
        if (err.code === "disconnected") return; // the next connection tries again
        if (err.code === "rate_limited") {
          this._setTimeout(() => {
            if (this._ws === ws && this.state === STATES.CONNECTED && room.wanted && !room.joining && (!room.live || room.early.size)) {
              if (room.live) room.resyncing = true;
              this._sendJoin(room);
            }
          }, err.frame?.retry_after_ms ?? 1000);
          return;
        }
        if (err.code === "room_not_found") {
          room.wanted = false;
          // Kept while it holds sends, so they show as failed (with their text) where they were.
          if (this.outbox.some((e) => e.room === room.slug)) room.removed = { reason: "not_found" };
          else this.rooms.delete(room.slug);
          this._failRoom(room.slug, err);
        }
        const waiters = room.joinWaiters.splice(0);
        for (const w of waiters) w.reject(err);
        this._emit("error", err);
        this._roomChanged(room.slug, "join_failed");
      },
    );
  }

  _onJoined(room, reply) {
    room.removed = null; // (joined again: added back)
    room.info = reply.room;
    room.epoch = reply.room.epoch;
    room.live = true;
    room.members = new Map((reply.members || []).map((u) => [u.id, u]));
    room.resyncing = false;
    const messages = reply.messages || [];
    const meId = this.user?.id;
    if (reply.recovered === true && this.protocol !== 2) {
      for (const m of messages) room.add(m); // version 1: seqs may skip the entries it is not sent
      for (const m of messages) this._settleOutbox(room.slug, m.client_id, m);
    } else if (reply.recovered === true) {
      // `events` are the entries after after_seq (a server may also list messages: both count).
      const early = [...room.early.values()];
      room.early = new Map();
      const frames = [...(reply.events || []), ...messages.map((m) => ({ type: "message", room: room.slug, message: m })), ...early];
      frames.sort((a, b) => entrySeq(a) - entrySeq(b));
      for (const f of frames) if (typeof entrySeq(f) === "number") room.applyFrame(f, meId);
      this._afterEntries(room, frames.filter((f) => f.type === "message" && f.message), "joined");
    } else {
      // A fresh join, or a resume the server could not serve (recovered: false): the page we
      // got replaces what we had, and older messages are paged with history(). The page folds
      // in every entry up to room.last_seq; live delivery continues after it.
      room.reset();
      for (const m of messages) room.add(m);
      room.highSeq = Math.max(room.highSeq, reply.room?.last_seq ?? 0);
      room.hasMore = !!reply.has_more;
      for (const m of messages) this._settleOutbox(room.slug, m.client_id, m);
    }
    room.everJoined = true;
    const waiters = room.joinWaiters.splice(0);
    for (const w of waiters) w.resolve(this.room(room.slug));
    this._roomChanged(room.slug, reply.recovered === false ? "reset" : "joined");
    this._flushOutbox(room.slug);
  }

  /** Page older messages: resolves with the history reply after merging it into the room. */
  history(slug, { before, limit = 50 } = {}) {
    const room = this.rooms.get(slug);
    if (!room) return Promise.reject(new ParleyError("not_joined", `join ${slug} first`));
    const frame = { type: "history", room: slug, limit };
    const first = room.messages.find((m) => !m._fromAck);
    const beforeSeq = before ?? (first ? first.seq : undefined);
    if (beforeSeq !== undefined) frame.before = beforeSeq;
    room.loadingOlder = true;
    this._roomChanged(slug, "loading");
    return new Promise((resolve, reject) => {
      this._call(
        frame,
        (reply) => {
          room.loadingOlder = false;
          for (const m of reply.messages || []) room.add(m, { fromPage: true });
          room.hasMore = !!reply.has_more;
          this._roomChanged(slug, "history");
          resolve(reply);
        },
        (err) => {
          room.loadingOlder = false;
          this._roomChanged(slug, "history");
          reject(err);
        },
      );
    });
  }

  /** Tell the room we are typing, at most every typingIntervalMs; returns true if sent. */
  typing(slug) {
    const room = this.rooms.get(slug);
    if (!room || !room.live) return false;
    const now = this._now();
    if (now - room.lastTypingSentAt < this.opts.typingIntervalMs) return false;
    room.lastTypingSentAt = now;
    return this._transmit({ type: "typing", room: slug });
  }

  // --- edit, delete, reactions (version 2) ------------------------------------------------------

  /**
   * Each resolves with the server's reply (`edited`, `deleted`, `reacted`; `seq: null` when it
   * changed nothing) once the entry is committed; the entry itself arrives as an event and is
   * applied to the room then. Rejects with a ParleyError (message_not_found, forbidden, …).
   */
  edit(slug, seq, text) {
    return this._roomRequest(slug, { type: "edit", room: slug, seq, text });
  }

  delete(slug, seq) {
    return this._roomRequest(slug, { type: "delete", room: slug, seq });
  }

  react(slug, seq, emoji) {
    return this._roomRequest(slug, { type: "react", room: slug, seq, emoji });
  }

  unreact(slug, seq, emoji) {
    return this._roomRequest(slug, { type: "unreact", room: slug, seq, emoji });
  }

  _roomRequest(slug, frame) {
    const room = this.rooms.get(slug);
    if (!room || !room.live) return Promise.reject(new ParleyError("not_joined", `not in ${slug} right now`));
    return this._request(frame);
  }

  // --- outbox ---------------------------------------------------------------------------------

  /**
   * Send a message. It is shown as pending at once (room(slug).pending), sent when the room is
   * joined, and re-sent with the same client_id after reconnects until acked. Resolves with the
   * ack; rejects on a permanent error (text_too_long, room_not_found, …).
   */
  send(slug, text, { replyTo = null, attachments = [] } = {}) {
    const room = this.rooms.get(slug);
    if (!room) return Promise.reject(new ParleyError("not_joined", `join ${slug} first`));
    if (room.removed) return Promise.reject(new ParleyError("room_removed", `${slug} is no longer yours to write in`));
    const entry = {
      client_id: this._clientId(),
      room: slug,
      text,
      replyTo: replyTo ?? null,
      attachments, // upload objects (docs/protocol.md §14); their ids go in the frame
      status: "pending",
      createdAt: this._now(),
      attempts: 0,
      notBefore: -Infinity, // retry no earlier than this (after rate_limited / commit_failed)
      error: null,
    };
    entry.promise = new Promise((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    entry.promise.catch(() => {}); // callers may ignore it; failure is also shown on the entry
    this.outbox.push(entry);
    // The next keystroke may announce typing sooner than the 2 s throttle, but not sooner than
    // the server relays them (one per socket and room per typingRelayMs), or it would be dropped.
    room.lastTypingSentAt -= this.opts.typingIntervalMs - this.opts.typingRelayMs;
    this._roomChanged(slug, "pending");
    this._flushOutbox(slug);
    return entry.promise;
  }

  /** Give up on a failed (or still pending) message. */
  discard(clientId) {
    const entry = this.outbox.find((e) => e.client_id === clientId);
    if (!entry) return;
    this.outbox = this.outbox.filter((e) => e !== entry);
    entry.reject(new ParleyError("discarded", "discarded by the user"));
    this._roomChanged(entry.room, "pending");
  }

  /** Whether retrying this failed message can succeed (its room is still there for us). */
  canRetry(clientId) {
    const entry = this.outbox.find((e) => e.client_id === clientId);
    const room = entry && this.rooms.get(entry.room);
    return !!(entry && entry.status === "failed" && room && !room.removed);
  }

  /** Every failed send, all rooms (for a UI that shows the ones of rooms it no longer has). */
  failedSends() {
    return this.outbox.filter((e) => e.status === "failed").map((e) => this._pendingView(e));
  }

  /** Try a failed message again (same client_id). */
  retry(clientId) {
    const entry = this.outbox.find((e) => e.client_id === clientId);
    if (!entry || entry.status !== "failed" || !this.canRetry(clientId)) return;
    entry.status = "pending";
    entry.error = null;
    entry.attempts = 0;
    entry.notBefore = -Infinity;
    this._roomChanged(entry.room, "pending");
    this._flushOutbox(entry.room);
  }

  /**
   * Send the room's next message if nothing of that room is in flight. One send in flight per
   * room keeps the user's order even when the server refuses one (rate_limited, commit_failed)
   * and accepts the next; the pace follows hello.limits.messages_per_sec.
   */
  _flushOutbox(slug) {
    const room = this.rooms.get(slug);
    if (!room || !room.live || this.state !== STATES.CONNECTED) return;
    const head = this.outbox.find((e) => e.room === slug && (e.status === "pending" || e.status === "sending"));
    if (!head || head.status === "sending") return;
    const wait = Math.max(head.notBefore - this._now(), this._sendBucketWait());
    if (wait > 0) {
      this._scheduleFlush(slug, wait);
      return;
    }
    if (this.limits.messages_per_sec > 0) this._bucket.tokens -= 1;
    this._transmitEntry(head, room);
  }

  _scheduleFlush(slug, wait) {
    this._clearTimeout(this._flushTimers.get(slug));
    this._flushTimers.set(slug, this._setTimeout(() => {
      this._flushTimers.delete(slug);
      this._flushOutbox(slug);
    }, wait));
  }

  /** ms until the client-side message bucket (rate = burst = messages_per_sec) has a token. */
  _sendBucketWait() {
    const rate = this.limits.messages_per_sec;
    if (!(rate > 0)) return 0;
    const burst = Math.max(1, Math.floor(rate));
    const now = this._now();
    const b = this._bucket;
    b.tokens = b.tokens === null ? burst : Math.min(burst, b.tokens + ((now - b.stamp) / 1000) * rate);
    b.stamp = now;
    return b.tokens >= 1 ? 0 : Math.ceil(((1 - b.tokens) / rate) * 1000);
  }

  _transmitEntry(entry, room) {
    entry.status = "sending";
    entry.attempts += 1;
    const frame = { type: "send", room: entry.room, text: entry.text, client_id: entry.client_id };
    if (entry.replyTo != null) frame.reply_to = entry.replyTo;
    if (entry.attachments?.length) frame.attachments = entry.attachments.map((a) => a.id);
    this._call(
      frame,
      (ack) => {
        const msg = {
          room: entry.room,
          seq: ack.seq,
          id: ack.id,
          client_id: entry.client_id,
          author: this.user,
          text: entry.text.trim(),
          ts: ack.ts,
        };
        const target = entry.replyTo != null ? room.bySeq.get(entry.replyTo) : null;
        if (target) msg.reply_to = { seq: target.seq, author: target.author, excerpt: excerptOf(target.text), deleted: !!target.deleted };
        if (entry.attachments?.length) msg.attachments = entry.attachments;
        // Show our own message at its seq right away; the `message` event (same seq) replaces it.
        // A duplicate ack for a message older than what is loaded stays out of the list.
        const first = room.messages[0];
        if (this.rooms.get(entry.room) === room && (!room.hasMore || !first || ack.seq >= first.seq)) {
          room.add(msg, { fromAck: true });
        }
        this._settleOutbox(entry.room, entry.client_id, msg, ack);
        this._roomChanged(entry.room, "ack");
        this._flushOutbox(entry.room);
      },
      (err) => {
        if (!this.outbox.includes(entry)) return;
        if (err.code === "disconnected") {
          entry.status = "pending"; // re-sent after the rejoin
          return;
        }
        // Being told to slow down is not a failure of the message: it does not use up attempts.
        if (err.code === "rate_limited") entry.attempts -= 1;
        if (RETRIABLE_SEND_ERRORS.has(err.code) && entry.attempts < this.opts.maxSendAttempts) {
          entry.status = "pending";
          const wait = err.frame?.retry_after_ms ?? Math.min(8000, 250 * 2 ** entry.attempts);
          entry.notBefore = this._now() + wait;
          this._flushOutbox(entry.room);
          return;
        }
        entry.status = "failed";
        entry.error = { code: err.code, message: err.message };
        entry.reject(err);
        this._roomChanged(entry.room, "failed");
        this._flushOutbox(entry.room); // the next message does not wait for a failed one
      },
    );
  }

  /** Remove the outbox entry with this client_id (ours) once the server has the message. */
  _settleOutbox(slug, clientId, message, ack = null) {
    if (!clientId) return false;
    const i = this.outbox.findIndex((e) => e.client_id === clientId && e.room === slug);
    if (i < 0) return false;
    if (message.author && this.user && message.author.id !== this.user.id) return false;
    const [entry] = this.outbox.splice(i, 1);
    entry.status = "acked";
    entry.resolve(ack || { type: "ack", room: slug, client_id: clientId, seq: message.seq, id: message.id, ts: message.ts, duplicate: true });
    return true;
  }

  /** The room was lost (removed, left elsewhere, deleted): no rejoin, and its unsent messages fail. */
  _onRoomLost(slug, reason) {
    const room = this.rooms.get(slug);
    if (room) {
      room.wanted = false;
      room.live = false;
      room.removed = { reason };
    }
    this._failRoom(slug, new ParleyError(reason === "deleted" ? "room_not_found" : "room_removed",
      reason === "left" ? `you left ${slug}` : reason === "deleted" ? `${slug} was deleted` : `you were removed from ${slug}`));
    if (room) this._roomChanged(slug, "removed");
  }

  /** Every unsent message of the room becomes failed, its text kept (never dropped). */
  _failRoom(slug, err) {
    let changed = false;
    for (const entry of this.outbox) {
      if (entry.room !== slug || entry.status === "failed") continue;
      entry.status = "failed";
      entry.error = { code: err.code, message: err.message };
      entry.reject(err);
      changed = true;
    }
    if (changed) this._roomChanged(slug, "failed");
    this._saveOutbox();
  }

  _pendingView(e) {
    return { client_id: e.client_id, room: e.room, text: e.text, status: e.status, createdAt: e.createdAt, error: e.error, replyTo: e.replyTo, attachments: e.attachments };
  }

  /** Keep the outbox in options.storage (pending and failed sends, with their texts). */
  _saveOutbox() {
    if (!this._storage) return;
    try {
      const kept = this.outbox.map((e) => ({ client_id: e.client_id, room: e.room, text: e.text, replyTo: e.replyTo,
        status: e.status === "failed" ? "failed" : "pending", createdAt: e.createdAt,
        error: e.error ? { code: e.error.code, message: e.error.message } : null }));
      if (kept.length) this._storage.setItem(this._storageKey, JSON.stringify(kept));
      else this._storage.removeItem(this._storageKey);
    } catch {
      // Storage full or refused (private mode): the outbox still lives in memory.
    }
  }

  /** The outbox a previous client (page) saved: pending sends go out again with their client_id
   * once their room is joined (it is joined on connect); failed ones wait for the user. */
  _restoreOutbox() {
    if (!this._storage) return;
    let saved = [];
    try {
      saved = JSON.parse(this._storage.getItem(this._storageKey) || "[]");
    } catch {
      saved = [];
    }
    if (!Array.isArray(saved)) return;
    for (const s of saved) {
      if (!s || typeof s.client_id !== "string" || typeof s.room !== "string" || typeof s.text !== "string") continue;
      const entry = { client_id: s.client_id, room: s.room, text: s.text, replyTo: s.replyTo ?? null,
        status: s.status === "failed" ? "failed" : "pending", createdAt: s.createdAt ?? this._now(), attempts: 0,
        notBefore: -Infinity, error: s.error || null };
      entry.promise = new Promise((resolve, reject) => {
        entry.resolve = resolve;
        entry.reject = reject;
      });
      entry.promise.catch(() => {});
      this.outbox.push(entry);
      if (!this.rooms.has(s.room)) this.rooms.set(s.room, new RoomState(s.room));
    }
  }

  // --- snapshots for the UI -------------------------------------------------------------------

  /** A read-only view of one room: messages, pending sends, members, typists. */
  room(slug) {
    const room = this.rooms.get(slug);
    if (!room) return null;
    const now = this._now();
    return {
      slug,
      info: room.info,
      live: room.live,
      joined: room.everJoined,
      messages: room.messages,
      hasMore: room.hasMore,
      loadingOlder: room.loadingOlder,
      highSeq: room.highSeq,
      epoch: room.epoch,
      pending: this.outbox.filter((e) => e.room === slug).map((e) => this._pendingView(e)),
      removed: room.removed || null, // {reason}: the room was lost ("removed", "left", "deleted", "not_found")
      archived: !!(room.archived || room.info?.archived),
      members: [...room.members.values()].sort((a, b) => a.username.localeCompare(b.username)),
      typing: [...room.typing.values()].filter((t) => t.until > now).map((t) => t.user),
    };
  }
}

function safeClose(ws, code, reason) {
  try {
    if (ws.readyState === 0 || ws.readyState === 1) ws.close(code, reason);
  } catch {
    // Some implementations refuse application codes before open; the socket is forgotten anyway.
    try {
      ws.close();
    } catch {
      /* ignore */
    }
  }
}

function browserNetwork() {
  const win = globalThis.window;
  const nav = globalThis.navigator;
  if (!win || !win.addEventListener) return null;
  return {
    isOnline: () => (nav && typeof nav.onLine === "boolean" ? nav.onLine : true),
    addEventListener: (type, fn) => win.addEventListener(type, fn),
  };
}
