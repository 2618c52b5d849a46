import test from "node:test";
import assert from "node:assert/strict";
import { STATES } from "../../../parley/static/parley/parley-client.js";
import { makeClient, connectAndJoin } from "../support/fakes.mjs";

test("states: connecting, connected, reconnecting with the time of the next attempt", async () => {
  const env = makeClient();
  await connectAndJoin(env, []);
  assert.deepEqual(env.states.map((s) => s.state), [STATES.CONNECTING, STATES.CONNECTED]);
  env.sock().serverClose(1001);
  const s = env.states.at(-1);
  assert.equal(s.state, STATES.RECONNECTING);
  assert.equal(s.nextAttemptAt, env.clock.now() + 250);
  assert.equal(env.client.nextAttemptAt, s.nextAttemptAt);
});

test("heartbeat: ping every heartbeat_secs; silence after a ping kills the socket", async () => {
  const env = makeClient();
  env.client.connect();
  const ws = env.sock();
  ws.open();
  ws.hello({ heartbeat_secs: 10 });
  env.clock.advance(9999);
  assert.equal(ws.framesOfType("ping").length, 0);
  env.clock.advance(1);
  const ping = ws.lastOfType("ping");
  assert.ok(ping.ref);
  ws.receive({ type: "pong", ref: ping.ref });
  env.clock.advance(10000); // answered: still connected, second ping out
  assert.equal(env.client.state, STATES.CONNECTED);
  assert.equal(ws.framesOfType("ping").length, 2);
  env.clock.advance(9999);
  assert.equal(env.client.state, STATES.CONNECTED);
  assert.equal(ws.closedByClient, null);
  env.clock.advance(1); // nothing at all for heartbeat_secs after the ping
  assert.equal(ws.closedByClient?.reason, "heartbeat_timeout");
  assert.equal(env.client.state, STATES.RECONNECTING);
  env.clock.advance(env.states.at(-1).delay);
  assert.equal(env.sockets.length, 2, "a fresh socket");
});

test("heartbeat: any frame after the ping counts as alive", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, []);
  env.clock.advance(25000);
  assert.equal(ws.framesOfType("ping").length, 1);
  env.clock.advance(1000);
  ws.receive({ type: "typing", room: "lobby", user: { id: 2, username: "bob" } });
  env.clock.advance(24000);
  assert.equal(env.client.state, STATES.CONNECTED);
  assert.equal(ws.closedByClient, null);
});

test("a socket that opens but never says hello is given up after connectTimeoutMs", () => {
  const env = makeClient({ connectTimeoutMs: 3000 });
  env.client.connect();
  env.sock().open();
  env.clock.advance(3000);
  assert.equal(env.sock().closedByClient?.reason, "connect_timeout");
  assert.equal(env.client.state, STATES.RECONNECTING);
});

test("offline: no attempts while the browser is offline; the online event retries at once", () => {
  const env = makeClient({ random: () => 0.999 });
  env.client.connect();
  for (let i = 0; i < 5; i++) {
    env.sock().serverClose(1006);
    env.clock.advance(env.states.at(-1).delay);
  }
  env.sock().serverClose(1006);
  assert.equal(env.states.at(-1).state, STATES.RECONNECTING);
  assert.ok(env.states.at(-1).delay > 10000, "a long wait is ahead");
  const count = env.sockets.length;
  env.network.goOffline();
  assert.equal(env.client.state, STATES.OFFLINE);
  env.clock.advance(60000);
  assert.equal(env.sockets.length, count, "no attempt while offline");
  env.network.goOnline();
  assert.equal(env.sockets.length, count + 1, "immediate attempt on online");
  assert.equal(env.client.state, STATES.CONNECTING);
});

test("online during a backoff wait skips the wait", () => {
  const env = makeClient({ random: () => 0.999 });
  env.client.connect();
  env.sock().serverClose(1006);
  env.clock.advance(400);
  assert.equal(env.sockets.length, 1);
  env.network.goOnline();
  assert.equal(env.sockets.length, 2);
});

test("going offline while connected drops the socket and waits for online", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, []);
  env.network.goOffline();
  assert.equal(ws.closedByClient?.reason, "offline");
  assert.equal(env.client.state, STATES.OFFLINE);
  assert.deepEqual(env.clock.pending(), [], "no timers while offline");
  env.network.goOnline();
  assert.equal(env.sockets.length, 2);
});

test("close code 4401 stops reconnecting and is reported", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, []);
  const revoked = [];
  env.client.on("revoked", (e) => revoked.push(e.code));
  const p = env.client.send("lobby", "lost");
  ws.serverClose(4401, "token revoked");
  assert.equal(env.client.state, STATES.REVOKED);
  assert.deepEqual(revoked, [4401]);
  env.clock.advance(600000);
  env.network.goOnline();
  env.client.connect();
  assert.equal(env.sockets.length, 1, "never again");
  assert.deepEqual(env.client.room("lobby").pending.map((e) => e.text), ["lost"]);
  p.catch(() => {});
});

test("close() stops for good", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, []);
  env.client.close();
  assert.equal(ws.closedByClient?.code, 1000);
  assert.equal(env.client.state, STATES.CLOSED);
  env.clock.advance(60000);
  assert.equal(env.sockets.length, 1);
});
