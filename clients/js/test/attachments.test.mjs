// Files on a send (docs/protocol.md §14): the frame names the uploads by id, and the message
// shown on the ack carries them until the server's own `message` event replaces it.
import test from "node:test";
import assert from "node:assert/strict";
import { makeClient, connectAndJoin } from "../support/fakes.mjs";

const upload = { id: 31, name: "plan.png", size: 10, content_type: "image/png", width: 4, height: 2, url: "/api/rooms/lobby/uploads/31" };

test("a send with attachments sends their ids and shows them on the ack", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, []);
  const p = env.client.send("lobby", "", { attachments: [upload] });
  assert.deepEqual(env.client.room("lobby").pending.map((e) => e.attachments), [[upload]]);
  const frame = ws.lastOfType("send");
  assert.deepEqual(frame.attachments, [31]);
  ws.receive({ type: "ack", ref: frame.ref, room: "lobby", client_id: frame.client_id, seq: 1, id: 1, ts: "t", duplicate: false });
  await p;
  assert.deepEqual(env.client.room("lobby").messages.map((m) => m.attachments), [[upload]]);
});

test("a send without attachments has no attachments field", async () => {
  const env = makeClient();
  const ws = await connectAndJoin(env, []);
  env.client.send("lobby", "plain");
  assert.equal("attachments" in ws.lastOfType("send"), false);
});
