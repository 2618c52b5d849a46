import test from "node:test";
import assert from "node:assert/strict";
import { makeClient, connectAndJoin, msg, room, tick } from "../support/fakes.mjs";

const seqs = (env) => env.client.room("lobby").messages.map((m) => m.seq);

test("after a drop, rejoin with after_seq = highest seq seen and the epoch from joined", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, [msg(1), msg(2), msg(3)]);
  ws.receive({ type: "message", room: "lobby", message: msg(4) });
  ws.receive({ type: "message", room: "lobby", message: msg(5) });
  ws.serverClose(1006);
  env.clock.advance(env.states.at(-1).delay);
  const ws2 = env.sock();
  assert.notEqual(ws2, ws);
  ws2.open();
  assert.equal(ws2.framesOfType("join").length, 0, "joins wait for hello");
  ws2.hello();
  const join = ws2.lastOfType("join");
  assert.equal(join.room, "lobby");
  assert.equal(join.after_seq, 5);
  assert.equal(join.epoch, "E1");
  ws2.receive({ type: "joined", ref: join.ref, room: room("lobby", { last_seq: 7 }), messages: [msg(6), msg(7)],
    has_more: true, members: [], recovered: true });
  assert.deepEqual(seqs(env), [1, 2, 3, 4, 5, 6, 7]);
  assert.equal(env.client.room("lobby").highSeq, 7);
});

test("recovered:false replaces the room's messages with the fresh page", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, [msg(1), msg(2), msg(3)]);
  let resets = 0;
  env.client.on("room", (e) => { if (e.reason === "reset") resets++; });
  ws.serverClose(1006);
  env.clock.advance(env.states.at(-1).delay);
  const ws2 = env.sock();
  ws2.open();
  ws2.hello();
  const join = ws2.lastOfType("join");
  assert.equal(join.after_seq, 3);
  ws2.receive({ type: "joined", ref: join.ref, room: room("lobby", { epoch: "E2", last_seq: 2 }),
    messages: [msg(1, { text: "new1" }), msg(2, { text: "new2" })], has_more: false, members: [], recovered: false });
  const r = env.client.room("lobby");
  assert.deepEqual(r.messages.map((m) => m.text), ["new1", "new2"]);
  assert.equal(r.epoch, "E2");
  assert.equal(r.highSeq, 2);
  assert.equal(resets, 1);
  // The next resume uses the new log.
  ws2.serverClose(1006);
  env.clock.advance(env.states.at(-1).delay);
  env.sock().open();
  env.sock().hello();
  const join3 = env.sock().lastOfType("join");
  assert.deepEqual([join3.after_seq, join3.epoch], [2, "E2"]);
});

test("duplicates are dropped and messages stay in seq order", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, [msg(3), msg(4)]);
  let changes = 0;
  env.client.on("room", (e) => { if (e.reason !== "loading") changes++; });
  ws.receive({ type: "message", room: "lobby", message: msg(4) });
  assert.equal(changes, 0, "a seen seq changes nothing");
  ws.receive({ type: "message", room: "lobby", message: msg(5) });
  ws.receive({ type: "message", room: "lobby", message: msg(5) });
  const h = env.client.history("lobby", { limit: 50 });
  const req = ws.lastOfType("history");
  assert.equal(req.before, 3);
  ws.receive({ type: "history", ref: req.ref, room: "lobby", messages: [msg(1), msg(2), msg(3)], has_more: false });
  await h;
  assert.deepEqual(seqs(env), [1, 2, 3, 4, 5]);
  assert.equal(changes, 2);
});

test("request promises resolve on their reply and reject on the error with their ref", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, [msg(10)]);
  const ok = env.client.history("lobby", { before: 10, limit: 2 });
  const bad = env.client.history("lobby", { before: 10, limit: 2 });
  const [r1, r2] = ws.framesOfType("history");
  assert.notEqual(r1.ref, r2.ref);
  // Replies may come in any order; each is matched by ref.
  ws.receive({ type: "error", ref: r2.ref, code: "bad_field", message: "limit", field: "limit" });
  ws.receive({ type: "history", ref: r1.ref, room: "lobby", messages: [msg(8), msg(9)], has_more: true });
  assert.deepEqual((await ok).messages.map((m) => m.seq), [8, 9]);
  await assert.rejects(bad, (err) => err.code === "bad_field");
  const missing = env.client.join("nope");
  const j = ws.lastOfType("join");
  assert.equal(j.room, "nope");
  ws.receive({ type: "error", ref: j.ref, code: "room_not_found", message: "no room", room: "nope" });
  await assert.rejects(missing, (err) => err.code === "room_not_found");
  assert.equal(env.client.room("nope"), null);
  await tick();
});

test("presence and typing update the room", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, []);
  ws.receive({ type: "presence", room: "lobby", event: "join", user: { id: 2, username: "bob" }, members: 2 });
  assert.deepEqual(env.client.room("lobby").members.map((u) => u.username), ["ada", "bob"]);
  ws.receive({ type: "typing", room: "lobby", user: { id: 2, username: "bob" } });
  assert.deepEqual(env.client.room("lobby").typing.map((u) => u.username), ["bob"]);
  env.clock.advance(5001);
  assert.deepEqual(env.client.room("lobby").typing, []);
  ws.receive({ type: "presence", room: "lobby", event: "leave", user: { id: 2, username: "bob" }, members: 1 });
  assert.deepEqual(env.client.room("lobby").members.map((u) => u.username), ["ada"]);
  // typing() is throttled to one frame per 2 s
  assert.equal(env.client.typing("lobby"), true);
  assert.equal(env.client.typing("lobby"), false);
  env.clock.advance(2000);
  assert.equal(env.client.typing("lobby"), true);
  assert.equal(ws.framesOfType("typing").length, 2);
  // Sending shortens the throttle window to the server's relay interval (1 s after the last one).
  env.clock.advance(500);
  env.client.send("lobby", "done");
  assert.equal(env.client.typing("lobby"), false);
  env.clock.advance(499);
  assert.equal(env.client.typing("lobby"), false);
  env.clock.advance(1);
  assert.equal(env.client.typing("lobby"), true);
  // A peer's message ends their typing indicator.
  ws.receive({ type: "typing", room: "lobby", user: { id: 2, username: "bob" } });
  assert.equal(env.client.room("lobby").typing.length, 1);
  ws.receive({ type: "message", room: "lobby", message: msg(1) });
  assert.deepEqual(env.client.room("lobby").typing, []);
});
