// Protocol version 2 (docs/protocol.md §10): edits, deletes and reactions are entries of the
// room's log, applied in seq order, each once; gaps are filled by a resume join, never history.
import test from "node:test";
import assert from "node:assert/strict";
import {
  makeClient, connectAndJoinV2, connectAndJoin, msg, msgEvent, edit, del, reaction, room, tick,
} from "../support/fakes.mjs";
import { withProtocol } from "../../../parley/static/parley/parley-client.js";

const view = (env) => env.client.room("lobby").messages;
const bySeq = (env, seq) => view(env).find((m) => m.seq === seq);

test("the socket asks for protocol 2", () => {
  const env = makeClient();
  env.client.connect();
  assert.equal(env.sock().url, "ws://test/ws/chat/?protocol=2");
  assert.equal(withProtocol("wss://h/p/ws/?token=a&protocol=1"), "wss://h/p/ws/?token=a&protocol=2");
});

test("edit, delete and reaction entries change their message, in order, each once", async () => {
  const env = makeClient();
  const ws = await connectAndJoinV2(env, [msg(1), msg(2, { author: { id: 1, username: "ada" } })]);
  const reasons = [];
  env.client.on("room", (e) => reasons.push([e.reason, e.seq]));
  ws.receive(edit(3, 1, "m1 **edited**", { mentions: [{ id: 1, username: "ada" }] }));
  assert.equal(bySeq(env, 1).text, "m1 **edited**");
  assert.equal(bySeq(env, 1).edited_at, "2026-12-02T10:00:00.000Z");
  assert.deepEqual(bySeq(env, 1).mentions, [{ id: 1, username: "ada" }]);
  // A second edit without mentions clears them (absent means none).
  ws.receive(edit(4, 1, "plain"));
  assert.equal(bySeq(env, 1).mentions, undefined);
  ws.receive(reaction(5, 2, "👍", "add", 1));
  ws.receive(reaction(6, 2, "👍", "add", 2, { id: 1, username: "ada" }));
  ws.receive(reaction(7, 2, "🎉", "add", 1, { id: 1, username: "ada" }));
  assert.deepEqual(bySeq(env, 2).reactions, [{ emoji: "👍", count: 2, me: true }, { emoji: "🎉", count: 1, me: true }]);
  // Applying an entry twice is harmless: a seen seq is dropped.
  ws.receive(reaction(6, 2, "👍", "add", 2, { id: 1, username: "ada" }));
  ws.receive(reaction(8, 2, "👍", "remove", 1, { id: 1, username: "ada" }));
  ws.receive(reaction(9, 2, "🎉", "remove", 0, { id: 1, username: "ada" }));
  assert.deepEqual(bySeq(env, 2).reactions, [{ emoji: "👍", count: 1, me: false }]);
  ws.receive(del(10, 2, { by: { id: 1, username: "ada" } }));
  const tomb = bySeq(env, 2);
  assert.equal(tomb.deleted, true);
  assert.equal(tomb.text, "");
  assert.equal(tomb.reactions, undefined);
  assert.equal(env.client.room("lobby").highSeq, 10);
  assert.deepEqual(reasons, [["edit", 1], ["edit", 1], ["reaction", 2], ["reaction", 2], ["reaction", 2],
    ["reaction", 2], ["reaction", 2], ["delete", 2]]);
  // Messages stay messages: entries are not added to the list.
  assert.deepEqual(view(env).map((m) => m.seq), [1, 2]);
});

test("a fresh join's high-water mark is room.last_seq: entries folded into the page count", async () => {
  const env = makeClient();
  const ws = await connectAndJoinV2(env, [msg(1, { reactions: [{ emoji: "👍", count: 1, me: false }] })], { lastSeq: 4 });
  assert.equal(env.client.room("lobby").highSeq, 4);
  ws.receive(reaction(3, 1, "👍", "add", 7)); // older than the page: already folded in
  assert.equal(bySeq(env, 1).reactions[0].count, 1);
  ws.receive(msgEvent(5));
  assert.deepEqual(view(env).map((m) => m.seq), [1, 5]);
  assert.equal(ws.framesOfType("join").length, 1, "no gap, no resync");
});

test("replies: send carries reply_to; a delete turns quotes of the target into 'deleted'", async () => {
  const env = makeClient();
  const ws = await connectAndJoinV2(env, [msg(1, { text: "x".repeat(150) })]);
  const sent = env.client.send("lobby", "answer", { replyTo: 1 });
  const frame = ws.lastOfType("send");
  assert.equal(frame.reply_to, 1);
  ws.receive({ type: "ack", ref: frame.ref, room: "lobby", client_id: frame.client_id, seq: 2, id: 102, ts: "2026-12-02T10:00:00.000Z", duplicate: false });
  await sent;
  // Until the event comes, the ack's copy quotes the target from what we have.
  assert.deepEqual(bySeq(env, 2).reply_to, { seq: 1, author: { id: 2, username: "bob" }, excerpt: "x".repeat(100), deleted: false });
  ws.receive(msgEvent(2, { client_id: frame.client_id, author: { id: 1, username: "ada" }, text: "answer",
    reply_to: { seq: 1, author: { id: 2, username: "bob" }, excerpt: "x".repeat(100), deleted: false } }));
  ws.receive(edit(3, 1, "short"));
  assert.equal(bySeq(env, 2).reply_to.excerpt, "short");
  ws.receive(del(4, 1));
  assert.deepEqual(bySeq(env, 2).reply_to, { seq: 1, author: { id: 2, username: "bob" }, excerpt: "", deleted: true });
  assert.equal(bySeq(env, 2).text, "answer");
});

test("edit/delete/react/unreact send their frames and resolve with the reply", async () => {
  const env = makeClient();
  const ws = await connectAndJoinV2(env, [msg(1, { author: { id: 1, username: "ada" } })]);
  const e = env.client.edit("lobby", 1, "new");
  const r = env.client.react("lobby", 1, "🎉");
  const u = env.client.unreact("lobby", 1, "🎉");
  const d = env.client.delete("lobby", 1);
  const [fe, fr, fu, fd] = ["edit", "react", "unreact", "delete"].map((t) => ws.lastOfType(t));
  assert.deepEqual([fe.room, fe.seq, fe.text], ["lobby", 1, "new"]);
  assert.deepEqual([fr.seq, fr.emoji, fu.emoji, fd.seq], [1, "🎉", "🎉", 1]);
  ws.receive({ type: "edited", ref: fe.ref, room: "lobby", target: 1, seq: 2, edited_at: "2026-12-02T10:00:00.000Z" });
  ws.receive({ type: "reacted", ref: fr.ref, room: "lobby", target: 1, emoji: "🎉", op: "add", seq: null, count: 1 });
  ws.receive({ type: "error", ref: fu.ref, code: "rate_limited", message: "slow down", room: "lobby", retry_after_ms: 300 });
  ws.receive({ type: "error", ref: fd.ref, code: "forbidden", message: "not yours", room: "lobby" });
  assert.equal((await e).seq, 2);
  assert.equal((await r).seq, null);
  await assert.rejects(u, (err) => err.code === "rate_limited" && err.frame.retry_after_ms === 300);
  await assert.rejects(d, (err) => err.code === "forbidden");
  // The reply does not change the message: the entry's event does.
  assert.equal(bySeq(env, 1).text, "m1");
  await assert.rejects(env.client.react("nowhere", 1, "👍"), (err) => err.code === "not_joined");
});

test("a live gap is filled by a resume join from the high-water mark, not by history", async () => {
  const env = makeClient();
  const ws = await connectAndJoinV2(env, [msg(1), msg(2)]);
  ws.receive(reaction(5, 1, "👍", "add", 1)); // 3 and 4 missing
  ws.receive(edit(6, 2, "later"));
  assert.equal(ws.framesOfType("history").length, 0);
  const joins = ws.framesOfType("join");
  assert.equal(joins.length, 2, "one resync join for the gap, however many entries wait");
  assert.deepEqual([joins[1].after_seq, joins[1].epoch], [2, "E1"]);
  assert.equal(bySeq(env, 2).text, "m2", "nothing past the gap is applied yet");
  ws.receive(msgEvent(7)); // live delivery continues while the join is in flight
  ws.receive({ type: "joined", ref: joins[1].ref, room: room("lobby", { last_seq: 6 }), messages: [], has_more: true,
    members: [], recovered: true,
    events: [edit(3, 1, "fixed"), msgEvent(4), reaction(5, 1, "👍", "add", 1), edit(6, 2, "later")] });
  assert.deepEqual(view(env).map((m) => [m.seq, m.text]), [[1, "fixed"], [2, "later"], [4, "m4"], [7, "m7"]]);
  assert.deepEqual(bySeq(env, 1).reactions, [{ emoji: "👍", count: 1, me: false }]);
  assert.equal(env.client.room("lobby").highSeq, 7);
  ws.receive(msgEvent(8));
  assert.equal(ws.framesOfType("join").length, 2);
  assert.equal(env.client.room("lobby").highSeq, 8);
});

test("after a drop, the resume's events are applied in seq order, each once", async () => {
  const env = makeClient();
  const ws = await connectAndJoinV2(env, [msg(1), msg(2)]);
  ws.receive(edit(3, 1, "e1"));
  ws.serverClose(1006);
  env.clock.advance(env.states.at(-1).delay);
  const ws2 = env.sock();
  ws2.open();
  ws2.hello({ protocol: 2 });
  const join = ws2.lastOfType("join");
  assert.deepEqual([join.after_seq, join.epoch], [3, "E1"]);
  let reasons = [];
  env.client.on("room", (e) => reasons.push(e.reason));
  ws2.receive({ type: "joined", ref: join.ref, room: room("lobby", { last_seq: 7 }), messages: [], has_more: true,
    members: [], recovered: true,
    events: [del(4, 2), msgEvent(5, { text: "" , deleted: true }), reaction(6, 1, "😀", "add", 1), del(7, 5)] });
  assert.deepEqual(view(env).map((m) => [m.seq, m.text, !!m.deleted]), [[1, "e1", false], [2, "", true], [5, "", true]]);
  assert.deepEqual(bySeq(env, 1).reactions, [{ emoji: "😀", count: 1, me: false }]);
  assert.deepEqual(reasons, ["joined"]);
  reasons = [];
  // Live frames for seqs the resume brought are duplicates.
  ws2.receive(reaction(6, 1, "😀", "add", 1));
  assert.deepEqual(reasons, []);
  assert.equal(env.client.room("lobby").highSeq, 7);
});

test("a history page holds messages only and does not move the high-water mark", async () => {
  const env = makeClient();
  const ws = await connectAndJoinV2(env, [msg(10)], { lastSeq: 12, has_more: true });
  const h = env.client.history("lobby", { limit: 50 });
  const req = ws.lastOfType("history");
  ws.receive({ type: "history", ref: req.ref, room: "lobby", has_more: false,
    messages: [msg(3, { edited_at: "2026-12-02T09:00:00.000Z", text: "e" }), msg(7, { deleted: true, text: "" })] });
  await h;
  assert.deepEqual(view(env).map((m) => m.seq), [3, 7, 10]);
  assert.equal(env.client.room("lobby").highSeq, 12);
  ws.receive(edit(13, 3, "again"));
  assert.equal(bySeq(env, 3).text, "again");
  assert.equal(ws.framesOfType("join").length, 1);
});

test("a version 1 server (hello without protocol 2) is served as before", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, [msg(1)]);
  ws.receive({ type: "message", room: "lobby", message: msg(3) });
  assert.deepEqual(view(env).map((m) => m.seq), [1, 3]);
  assert.equal(ws.framesOfType("join").length, 1, "v1 seqs are message seqs: no resync");
  await tick();
});

test("a gap whose resume the server cannot serve resets the room; a refused resync is retried", async () => {
  const env = makeClient();
  const ws = await connectAndJoinV2(env, [msg(1), msg(2)]);
  let resets = 0;
  env.client.on("room", (e) => { if (e.reason === "reset") resets++; });
  ws.receive(msgEvent(9));
  let joins = ws.framesOfType("join");
  assert.equal(joins.length, 2);
  ws.receive({ type: "error", ref: joins[1].ref, code: "rate_limited", message: "slow down", retry_after_ms: 400 });
  env.clock.advance(399);
  assert.equal(ws.framesOfType("join").length, 2);
  env.clock.advance(1);
  joins = ws.framesOfType("join");
  assert.equal(joins.length, 3, "the resync is sent again after retry_after_ms");
  assert.deepEqual([joins[2].after_seq, joins[2].epoch], [2, "E1"]);
  ws.receive({ type: "joined", ref: joins[2].ref, room: room("lobby", { epoch: "E2", last_seq: 12 }),
    messages: [msg(10, { text: "fresh" }), msg(11)], has_more: true, members: [], recovered: false });
  const r = env.client.room("lobby");
  assert.deepEqual(r.messages.map((m) => m.seq), [10, 11]);
  assert.equal(r.highSeq, 12);
  assert.equal(r.epoch, "E2");
  assert.equal(resets, 1);
  ws.receive(msgEvent(13));
  assert.deepEqual(env.client.room("lobby").messages.map((m) => m.seq), [10, 11, 13]);
});

test("a reply queued while offline is sent with its reply_to after the reconnect", async () => {
  const env = makeClient();
  const ws = await connectAndJoinV2(env, [msg(1)]);
  ws.serverClose(1006);
  const p = env.client.send("lobby", "later", { replyTo: 1 });
  assert.equal(env.client.room("lobby").pending[0].replyTo, 1);
  env.clock.advance(env.states.at(-1).delay);
  const ws2 = env.sock();
  ws2.open();
  ws2.hello({ protocol: 2 });
  const join = ws2.lastOfType("join");
  ws2.receive({ type: "joined", ref: join.ref, room: room("lobby", { last_seq: 1 }), messages: [], has_more: true,
    members: [], recovered: true, events: [] });
  const send = ws2.lastOfType("send");
  assert.equal(send.reply_to, 1);
  ws2.receive({ type: "ack", ref: send.ref, room: "lobby", client_id: send.client_id, seq: 2, id: 102, ts: "2026-12-02T10:00:00.000Z", duplicate: false });
  assert.equal((await p).seq, 2);
  assert.equal(env.client.room("lobby").messages.find((m) => m.seq === 2).reply_to.seq, 1);
});
