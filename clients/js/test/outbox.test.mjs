import test from "node:test";
import assert from "node:assert/strict";
import { makeClient, connectAndJoin, msg, room } from "../support/fakes.mjs";

const mine = (seq, clientId, text) => msg(seq, { client_id: clientId, text, author: { id: 1, username: "ada" } });

test("a send shows as pending at once and is replaced by the real message on ack", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, [msg(1)]);
  const p = env.client.send("lobby", "  hello  ");
  let r = env.client.room("lobby");
  assert.deepEqual(r.pending.map((e) => [e.client_id, e.text]), [["cid-1", "  hello  "]]);
  const frame = ws.lastOfType("send");
  assert.deepEqual([frame.room, frame.text, frame.client_id], ["lobby", "  hello  ", "cid-1"]);
  ws.receive({ type: "ack", ref: frame.ref, room: "lobby", client_id: "cid-1", seq: 2, id: 102, ts: "t", duplicate: false });
  const ack = await p;
  assert.equal(ack.seq, 2);
  r = env.client.room("lobby");
  assert.equal(r.pending.length, 0);
  assert.deepEqual(r.messages.map((m) => [m.seq, m.text]), [[1, "m1"], [2, "hello"]]);
  ws.receive({ type: "message", room: "lobby", message: mine(2, "cid-1", "hello") });
  assert.equal(env.client.room("lobby").messages.length, 2, "the event for our own message is not shown twice");
});

test("sends made while disconnected wait, then go out once the room is rejoined", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, []);
  ws.serverClose(1006);
  env.client.send("lobby", "one");
  env.client.send("lobby", "two");
  assert.deepEqual(env.client.room("lobby").pending.map((e) => e.status), ["pending", "pending"]);
  env.clock.advance(env.states.at(-1).delay);
  const ws2 = env.sock();
  ws2.open();
  ws2.hello();
  assert.equal(ws2.framesOfType("send").length, 0, "not before joined");
  const join = ws2.lastOfType("join");
  ws2.receive({ type: "joined", ref: join.ref, room: room(), messages: [], has_more: false, members: [], recovered: true });
  assert.deepEqual(ws2.framesOfType("send").map((f) => [f.text, f.client_id]), [["one", "cid-1"]], "one in flight per room");
  const first = ws2.lastOfType("send");
  ws2.receive({ type: "ack", ref: first.ref, room: "lobby", client_id: "cid-1", seq: 1, id: 1, ts: "t", duplicate: false });
  assert.deepEqual(ws2.framesOfType("send").map((f) => [f.text, f.client_id]), [["one", "cid-1"], ["two", "cid-2"]]);
});

const ackLast = (ws, seq) => {
  const f = ws.lastOfType("send");
  ws.receive({ type: "ack", ref: f.ref, room: "lobby", client_id: f.client_id, seq, id: seq, ts: "t", duplicate: false });
  return f;
};

test("sends are paced to hello.limits.messages_per_sec", async () => {
  const env = makeClient();
  env.client.connect();
  const ws = env.sock();
  ws.open();
  ws.hello({ limits: { max_text_chars: 4000, messages_per_sec: 2 } });
  const p = env.client.join("lobby");
  ws.receive({ type: "joined", ref: ws.lastOfType("join").ref, room: room(), messages: [], has_more: false, members: [], recovered: null });
  await p;
  for (let i = 1; i <= 5; i++) env.client.send("lobby", `m${i}`);
  ackLast(ws, 1);
  ackLast(ws, 2);
  assert.equal(ws.framesOfType("send").length, 2, "a burst of messages_per_sec, then the rate");
  env.clock.advance(499);
  assert.equal(ws.framesOfType("send").length, 2);
  env.clock.advance(1);
  assert.equal(ws.framesOfType("send").length, 3);
  ackLast(ws, 3);
  env.clock.advance(500);
  ackLast(ws, 4);
  env.clock.advance(500);
  ackLast(ws, 5);
  assert.deepEqual(ws.framesOfType("send").map((f) => f.text), ["m1", "m2", "m3", "m4", "m5"]);
  assert.deepEqual(env.client.room("lobby").messages.map((m) => m.text), ["m1", "m2", "m3", "m4", "m5"]);
});

test("rate_limited: retried after retry_after_ms with the same client_id, order kept, attempts not used up", async () => {
  const env = makeClient({ maxSendAttempts: 2 });
  const ws = await connectAndJoin(env, []);
  const p1 = env.client.send("lobby", "first");
  env.client.send("lobby", "second");
  for (let i = 0; i < 4; i++) {
    const f = ws.lastOfType("send");
    assert.equal(f.text, "first", "the second message never overtakes the first");
    ws.receive({ type: "error", ref: f.ref, code: "rate_limited", message: "slow down", retry_after_ms: 700 });
    env.clock.advance(699);
    assert.equal(ws.framesOfType("send").length, i + 1);
    env.clock.advance(1);
  }
  const sends = ws.framesOfType("send");
  assert.equal(sends.length, 5);
  assert.ok(sends.every((f) => f.client_id === "cid-1"));
  ackLast(ws, 1);
  assert.equal((await p1).seq, 1);
  assert.equal(ws.lastOfType("send").text, "second");
});

test("an unacked send is re-sent with the same client_id after a drop; duplicate ack settles it", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, [msg(1)]);
  const p = env.client.send("lobby", "important");
  assert.equal(ws.lastOfType("send").client_id, "cid-1");
  ws.serverClose(1006); // the ack never came
  assert.deepEqual(env.client.room("lobby").pending.map((e) => e.status), ["pending"]);
  env.clock.advance(env.states.at(-1).delay);
  const ws2 = env.sock();
  ws2.open();
  ws2.hello();
  const join = ws2.lastOfType("join");
  assert.equal(join.after_seq, 1);
  // The first attempt was committed after all: resume delivers it...
  ws2.receive({ type: "joined", ref: join.ref, room: room(), messages: [], has_more: false, members: [], recovered: true });
  const resend = ws2.lastOfType("send");
  assert.equal(resend.client_id, "cid-1", "same idempotency id");
  assert.equal(env.client.room("lobby").pending.length, 1, "still pending until acked");
  ws2.receive({ type: "ack", ref: resend.ref, room: "lobby", client_id: "cid-1", seq: 2, id: 102, ts: "t", duplicate: true });
  const ack = await p;
  assert.equal(ack.duplicate, true);
  ws2.receive({ type: "message", room: "lobby", message: mine(2, "cid-1", "important") });
  const r = env.client.room("lobby");
  assert.equal(r.pending.length, 0);
  assert.deepEqual(r.messages.map((m) => m.seq), [1, 2]);
});

test("a pending send whose message arrives in the resume is settled without a resend", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, [msg(1)]);
  env.client.send("lobby", "hi");
  ws.serverClose(1006);
  env.clock.advance(env.states.at(-1).delay);
  const ws2 = env.sock();
  ws2.open();
  ws2.hello();
  const join = ws2.lastOfType("join");
  ws2.receive({ type: "joined", ref: join.ref, room: room(), messages: [mine(2, "cid-1", "hi")], has_more: false,
    members: [], recovered: true });
  assert.equal(ws2.framesOfType("send").length, 0);
  assert.equal(env.client.room("lobby").pending.length, 0);
  assert.deepEqual(env.client.room("lobby").messages.map((m) => m.text), ["m1", "hi"]);
});

test("a permanent error marks the send failed and rejects; a retriable one is retried", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, []);
  const tooLong = env.client.send("lobby", "x".repeat(4001));
  let f = ws.lastOfType("send");
  ws.receive({ type: "error", ref: f.ref, code: "text_too_long", message: "too long", field: "text" });
  await assert.rejects(tooLong, (e) => e.code === "text_too_long");
  assert.deepEqual(env.client.room("lobby").pending.map((e) => e.status), ["failed"]);
  const flaky = env.client.send("lobby", "ok");
  f = ws.lastOfType("send");
  ws.receive({ type: "error", ref: f.ref, code: "commit_failed", message: "retry" });
  await new Promise((r) => setImmediate(r));
  const before = ws.framesOfType("send").length;
  env.clock.advance(10000);
  const again = ws.lastOfType("send");
  assert.equal(ws.framesOfType("send").length, before + 1);
  assert.equal(again.client_id, f.client_id);
  ws.receive({ type: "ack", ref: again.ref, room: "lobby", client_id: f.client_id, seq: 1, id: 1, ts: "t", duplicate: false });
  assert.equal((await flaky).seq, 1);
});
