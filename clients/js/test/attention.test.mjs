import test from "node:test";
import assert from "node:assert/strict";
import { del, edit, makeClient, msgEvent, room, tick } from "../support/fakes.mjs";

const state = (slug, extra = {}) => ({ room: room(slug, { last_seq: 5 }), last_read_seq: 3, unread: 2, mentions: 0,
  notify: "mentions", muted: false, ...extra });

function connected() {
  const env = makeClient();
  env.client.connect();
  const ws = env.sock();
  ws.open();
  ws.hello({ protocol: 2 });
  const events = [];
  env.client.on("attention", (e) => events.push(e));
  ws.receive({ type: "rooms", rooms: [state("lobby")] });
  return { env, ws, events };
}

test("the rooms list after hello, read and room_state frames keep roomStates", () => {
  const { env, ws, events } = connected();
  assert.equal(env.client.roomState("lobby").unread, 2);
  ws.receive({ type: "read", room: "lobby", seq: 5, unread: 0, mentions: 0 });
  assert.deepEqual([env.client.roomState("lobby").last_read_seq, env.client.roomState("lobby").unread], [5, 0]);
  ws.receive({ type: "room_state", state: state("lobby", { muted: true, notify: "all" }) });
  assert.equal(env.client.roomState("lobby").muted, true);
  ws.receive({ type: "read", room: "elsewhere", seq: 1, unread: 0, mentions: 0 }); // not listed: ignored
  assert.equal(env.client.roomState("elsewhere"), null);
  assert.deepEqual(events.map((e) => e.kind), ["rooms", "read", "room_state"]);
});

test("a listed room joined at its last_seq resumes there and counts only later messages", () => {
  const { env, ws } = connected();
  env.client.join("lobby", { resume: { seq: 5, epoch: "E1" } });
  const join = ws.lastOfType("join");
  assert.deepEqual([join.after_seq, join.epoch], [5, "E1"]); // nothing before it is sent again
  ws.receive({ type: "joined", ref: join.ref, room: room("lobby", { last_seq: 6 }), messages: [], has_more: true,
    members: [], recovered: true, events: [msgEvent(6, { mentions: [{ id: 1, username: "ada" }] })] });
  ws.receive(msgEvent(7));
  ws.receive(msgEvent(8, { author: { id: 1, username: "ada" } })); // mine: never unread
  ws.receive(msgEvent(7)); // a duplicate is not counted twice
  const s = env.client.roomState("lobby");
  assert.deepEqual([s.unread, s.mentions], [4, 1]);
  assert.equal(env.client.room("lobby").hasMore, true);
});

test("markRead sends read and takes the reply's counts", async () => {
  const { env, ws } = connected();
  const p = env.client.markRead("lobby", 5);
  const frame = ws.lastOfType("read");
  assert.deepEqual([frame.room, frame.seq], ["lobby", 5]);
  ws.receive({ type: "read", ref: frame.ref, room: "lobby", seq: 5, unread: 0, mentions: 0 });
  const reply = await p;
  assert.equal(reply.seq, 5);
  assert.equal(env.client.roomState("lobby").unread, 0);
});

test("an unread message edited to mention me, or deleted, has the counts asked for again; a burst is one request", async () => {
  const { env, ws } = connected();
  env.client.join("lobby", { resume: { seq: 5, epoch: "E1" } });
  const join = ws.lastOfType("join");
  ws.receive({ type: "joined", ref: join.ref, room: room("lobby", { last_seq: 6 }), messages: [], has_more: true,
    members: [], recovered: true, events: [msgEvent(6)] });
  const before = ws.sent.filter((f) => f.type === "rooms").length;
  ws.receive(edit(7, 4, "now @ada", { mentions: [{ id: 1, username: "ada" }] })); // 4 > last_read_seq 3: unread
  ws.receive(del(8, 6));
  ws.receive(edit(9, 2, "read long ago")); // at or below the marker: counts unchanged
  assert.equal(ws.sent.filter((f) => f.type === "rooms").length, before); // not at once
  env.clock.advance(1000);
  const asked = ws.sent.filter((f) => f.type === "rooms");
  assert.equal(asked.length, before + 1);
  ws.receive({ type: "rooms", ref: asked.at(-1).ref, rooms: [state("lobby", { room: room("lobby", { last_seq: 9 }), unread: 2, mentions: 1 })] });
  await tick();
  const s = env.client.roomState("lobby");
  assert.deepEqual([s.unread, s.mentions], [2, 1]);
  ws.receive(edit(10, 2, "again, read"));
  env.clock.advance(1000);
  assert.equal(ws.sent.filter((f) => f.type === "rooms").length, before + 1); // only unread targets ask
});
