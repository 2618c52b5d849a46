import test from "node:test";
import assert from "node:assert/strict";
import { fullJitterDelay, STATES } from "../../../parley/static/parley/parley-client.js";
import { makeClient } from "../support/fakes.mjs";

test("fullJitterDelay: uniform below min(cap, base * 2^attempt)", () => {
  const top = () => 0.999999;
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 40].map((a) => fullJitterDelay(a, 500, 15000, top)),
    [499, 999, 1999, 3999, 7999, 14999, 14999, 14999, 14999]);
  assert.equal(fullJitterDelay(3, 500, 15000, () => 0), 0);
  assert.equal(fullJitterDelay(3, 500, 15000, () => 0.25), 1000);
});

test("refused handshakes back off with growing, jittered, capped delays", () => {
  const rolls = [0.5, 0.9, 0.1, 0.5, 0.5, 0.5, 0.99, 0.5, 0.2];
  const env = makeClient({ random: () => rolls.shift() });
  env.client.connect();
  const delays = [];
  for (let i = 0; i < 9; i++) {
    env.sock().serverClose(1006); // closed before open: the server answered 403
    const s = env.states[env.states.length - 1];
    assert.equal(s.state, STATES.RECONNECTING);
    assert.equal(s.nextAttemptAt - env.clock.now(), s.delay);
    delays.push(s.delay);
    assert.equal(env.sockets.length, i + 1, "no new socket before the delay");
    env.clock.advance(s.delay);
    assert.equal(env.sockets.length, i + 2, "a new socket once the delay passed");
  }
  // ceilings 500, 1000, 2000, 4000, 8000, 15000 (capped), 15000, 15000, 15000
  assert.deepEqual(delays, [250, 900, 200, 2000, 4000, 7500, 14850, 7500, 3000]);
});

test("a stable connection resets the backoff; a short one does not", () => {
  const env = makeClient({ random: () => 0.999 });
  env.client.connect();
  env.sock().serverClose(1006);
  env.clock.advance(1000);
  env.sock().serverClose(1006);
  env.clock.advance(2000);
  assert.equal(env.client.attempt, 2);
  let ws = env.sock();
  ws.open();
  ws.hello();
  env.clock.advance(3000); // connected, but not for long
  ws.receive({ type: "pong" });
  ws.serverClose(1011);
  assert.equal(env.states.at(-1).delay, 1998, "third attempt: ceiling 2000");
  env.clock.advance(4000);
  ws = env.sock();
  ws.open();
  ws.hello();
  for (let i = 0; i < 4; i++) { env.clock.advance(5000); ws.receive({ type: "pong" }); } // 20 s, alive
  ws.serverClose(1001);
  assert.equal(env.states.at(-1).delay, 499, "back to the first ceiling");
});
