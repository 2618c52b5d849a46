// The outbox never drops a send silently (docs/protocol.md §12): a pending send whose room is
// lost — removed, left, deleted, gone after a reload — or that met a permanent error becomes
// *failed* with its text kept, across reloads (options.storage), until the user discards it.
import test from "node:test";
import assert from "node:assert/strict";
import { makeClient, connectAndJoinV2, room } from "../support/fakes.mjs";

class MemoryStorage {
  constructor() {
    this.items = new Map();
  }
  getItem(k) {
    return this.items.has(k) ? this.items.get(k) : null;
  }
  setItem(k, v) {
    this.items.set(k, String(v));
  }
  removeItem(k) {
    this.items.delete(k);
  }
}

const saved = (storage) => JSON.parse(storage.getItem("parley:outbox") || "[]");

test("removed while a send is pending: the send fails with its text, the room says removed", async () => {
  const env = makeClient();
  const ws = await connectAndJoinV2(env, []);
  ws.serverClose(1006); // offline: the sends wait in the outbox
  env.client.send("lobby", "first");
  env.client.send("lobby", "second");
  env.clock.advance(env.states.at(-1).delay);
  const ws2 = env.sock();
  ws2.open();
  ws2.hello({ protocol: 2 });
  ws2.receive({ type: "left", room: "lobby", reason: "removed" });
  ws2.receive({ type: "room_removed", room: "lobby", reason: "removed" });
  const snap = env.client.room("lobby");
  assert.deepEqual(snap.pending.map((e) => [e.text, e.status, e.error.code]),
    [["first", "failed", "room_removed"], ["second", "failed", "room_removed"]]);
  assert.deepEqual(snap.removed, { reason: "removed" });
  assert.equal(env.client.canRetry(snap.pending[0].client_id), false, "no retry into a room we lost");
  await assert.rejects(env.client.send("lobby", "third"), (err) => err.code === "room_removed");
  assert.deepEqual(env.client.failedSends().map((e) => e.text), ["first", "second"]);
  env.client.discard(snap.pending[0].client_id);
  assert.deepEqual(env.client.failedSends().map((e) => e.text), ["second"], "only the user's discard removes one");
});

test("a permanent send error fails the message and keeps it; room_archived can be retried", async () => {
  const env = makeClient();
  const ws = await connectAndJoinV2(env, []);
  const p = env.client.send("lobby", "read-only now");
  const frame = ws.lastOfType("send");
  ws.receive({ type: "error", ref: frame.ref, code: "room_archived", message: "archived", room: "lobby" });
  await assert.rejects(p, (err) => err.code === "room_archived");
  const [entry] = env.client.room("lobby").pending;
  assert.deepEqual([entry.text, entry.status, entry.error.code], ["read-only now", "failed", "room_archived"]);
  assert.equal(env.client.canRetry(entry.client_id), true);
  env.client.retry(entry.client_id);
  const again = ws.lastOfType("send");
  assert.equal(again.client_id, frame.client_id, "the same client_id: stored once whatever happened");
  assert.notEqual(again.ref, frame.ref);
});

test("failed and pending sends survive a reload; a room gone after it fails them, not drops them", async () => {
  const storage = new MemoryStorage();
  const env = makeClient({ storage });
  const ws = await connectAndJoinV2(env, []);
  ws.serverClose(1006);
  env.client.send("lobby", "unsent when the page closed");
  assert.deepEqual(saved(storage).map((e) => [e.text, e.status]), [["unsent when the page closed", "pending"]]);

  // The next page: a new client over the same storage.
  const env2 = makeClient({ storage });
  assert.deepEqual(env2.client.room("lobby").pending.map((e) => [e.text, e.status]), [["unsent when the page closed", "pending"]]);
  env2.client.connect();
  const ws2 = env2.sock();
  ws2.open();
  ws2.hello({ protocol: 2 });
  const join = ws2.lastOfType("join");
  assert.equal(join.room, "lobby", "a room with a restored send is joined on connect");
  ws2.receive({ type: "error", ref: join.ref, code: "room_not_found", message: "gone", room: "lobby" });
  const snap = env2.client.room("lobby");
  assert.ok(snap, "the room is kept to show its failed send");
  assert.deepEqual(snap.removed, { reason: "not_found" });
  assert.deepEqual(snap.pending.map((e) => [e.text, e.status, e.error.code]),
    [["unsent when the page closed", "failed", "room_not_found"]]);
  assert.deepEqual(saved(storage).map((e) => [e.text, e.status]), [["unsent when the page closed", "failed"]]);

  // And a third page still has it, failed, until the user discards it.
  const env3 = makeClient({ storage });
  assert.deepEqual(env3.client.failedSends().map((e) => e.text), ["unsent when the page closed"]);
  env3.client.discard(env3.client.failedSends()[0].client_id);
  assert.equal(storage.getItem("parley:outbox"), null);
});

test("a restored pending send goes out again with its client_id once the room is joined", async () => {
  const storage = new MemoryStorage();
  storage.setItem("parley:outbox", JSON.stringify([{ client_id: "c-old", room: "lobby", text: "hi", status: "pending" }]));
  const env = makeClient({ storage });
  env.client.connect();
  const ws = env.sock();
  ws.open();
  ws.hello({ protocol: 2 });
  const join = ws.lastOfType("join");
  ws.receive({ type: "joined", ref: join.ref, room: room(), messages: [], has_more: false, members: [], recovered: null });
  const send = ws.lastOfType("send");
  assert.deepEqual([send.client_id, send.text], ["c-old", "hi"]);
  ws.receive({ type: "ack", ref: send.ref, room: "lobby", client_id: "c-old", seq: 1, id: 1, ts: "t", duplicate: true });
  assert.equal(env.client.room("lobby").pending.length, 0);
  assert.equal(storage.getItem("parley:outbox"), null);
});

test("leaving a room fails its unsent messages instead of dropping them", async () => {
  const env = makeClient();
  const ws = await connectAndJoinV2(env, []);
  ws.serverClose(1006);
  env.client.send("lobby", "keep");
  await env.client.leave("lobby");
  assert.deepEqual(env.client.failedSends().map((e) => [e.text, e.error.code]), [["keep", "left"]]);
});

test("room_added, room_updated and room_removed reach the app as `rooms` events", async () => {
  const env = makeClient();
  const ws = await connectAndJoinV2(env, []);
  const seen = [];
  env.client.on("rooms", (f) => seen.push(f.type));
  ws.receive({ type: "room_updated", room: room("lobby", { archived: true, kind: "room" }) });
  assert.equal(env.client.room("lobby").archived, true);
  ws.receive({ type: "room_added", state: { room: room("team"), last_read_seq: 0, unread: 0, mentions: 0, notify: "mentions", muted: false } });
  ws.receive({ type: "room_removed", room: "lobby", reason: "deleted" });
  assert.deepEqual(seen, ["room_updated", "room_added", "room_removed"]);
  assert.deepEqual(env.client.room("lobby").removed, { reason: "deleted" });
});
