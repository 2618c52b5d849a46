// Live check of parley-client.js against a real server, across a server restart.
// Driven by tests/browser/test_js_client_live.py, which starts/stops the server when this
// script prints "STEP stop" / "STEP start" and answers with a line on stdin.
//
//   PARLEY_URL=http://127.0.0.1:8000 PARLEY_TOKEN_A=… PARLEY_TOKEN_B=… node --experimental-websocket restart.live.mjs
import { createInterface } from "node:readline";
import { ParleyClient, STATES } from "../../../parley/static/parley/parley-client.js";

const base = process.env.PARLEY_URL;
const wsUrl = base.replace(/^http/, "ws") + "/ws/chat/";
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function fail(message) {
  console.log(`FAIL ${message}`);
  process.exit(1);
}
setTimeout(() => fail("timed out"), 60_000).unref();

async function step(name) {
  console.log(`STEP ${name}`);
  const { value } = await lines.next();
  if (value !== "ok") fail(`driver answered ${value} to ${name}`);
}

async function until(what, predicate, ms = 30_000) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) fail(`waited ${ms} ms for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function makeClient(token) {
  const client = new ParleyClient({
    url: wsUrl,
    createSocket: (url) => new WebSocket(url, { headers: { Authorization: `Bearer ${token}` } }),
    network: null,
    baseDelayMs: 200,
    maxDelayMs: 2000,
  });
  client.states = [];
  client.on("state", (s) => client.states.push(s.state));
  client.connect();
  return client;
}

const slug = `live-${Date.now().toString(36)}`;
const res = await fetch(`${base}/api/rooms`, {
  method: "POST",
  headers: { Authorization: `Bearer ${process.env.PARLEY_TOKEN_A}`, "Content-Type": "application/json" },
  body: JSON.stringify({ slug, title: "Live", private: false }),
});
if (res.status !== 201) fail(`POST /api/rooms: ${res.status} ${await res.text()}`);

const a = makeClient(process.env.PARLEY_TOKEN_A);
const b = makeClient(process.env.PARLEY_TOKEN_B);
await Promise.all([a.join(slug), b.join(slug)]);
const texts = (c) => c.room(slug).messages.map((m) => m.text);

await a.send(slug, "before");
await until("b sees 'before'", () => texts(b).includes("before"));

await step("stop");
await until("both notice", () => a.state !== STATES.CONNECTED && b.state !== STATES.CONNECTED);
const during = ["a during 1", "a during 2", "a during 3"];
const sent = during.map((t) => a.send(slug, t));
const bSent = b.send(slug, "b during");
if (a.room(slug).pending.length !== 3) fail(`a should show 3 pending, shows ${a.room(slug).pending.length}`);
await new Promise((r) => setTimeout(r, 500));

await step("start");
const acks = await Promise.all([...sent, bSent]);
await until("every message everywhere", () =>
  [a, b].every((c) => ["before", ...during, "b during"].every((t) => texts(c).includes(t))));
await new Promise((r) => setTimeout(r, 500)); // room for a duplicate to show up

for (const [name, c] of [["a", a], ["b", b]]) {
  const r = c.room(slug);
  const seqs = r.messages.map((m) => m.seq);
  const expected = Array.from({ length: 5 }, (_, i) => i + 1);
  if (JSON.stringify(seqs) !== JSON.stringify(expected)) fail(`${name} seqs ${JSON.stringify(seqs)}`);
  if (r.pending.length) fail(`${name} still has pending`);
  const ours = texts(c).filter((t) => during.includes(t));
  if (JSON.stringify(ours) !== JSON.stringify(during)) fail(`${name} order ${JSON.stringify(ours)}`);
  if (!c.states.includes(STATES.RECONNECTING)) fail(`${name} never reported reconnecting`);
}
if (JSON.stringify(texts(a)) !== JSON.stringify(texts(b))) fail("a and b disagree");

// Protocol version 2: edits, reactions, deletes and a reply, part of them while b is away; b's
// resume brings the entries it missed, and its copy of every message ends equal to a's.
if (a.protocol !== 2 || b.protocol !== 2) fail(`protocol ${a.protocol}/${b.protocol}, not 2`);
const seqOf = (text) => a.room(slug).messages.find((m) => m.text === text).seq;
const view = (c) => JSON.stringify(c.room(slug).messages.filter((m) => !m._fromAck).map((m) => [m.seq, m.text, !!m.deleted,
  !!m.edited_at, (m.reactions || []).map((r) => [r.emoji, r.count]), m.reply_to ? [m.reply_to.seq, m.reply_to.deleted] : null]));
const [s1, s2, s3, s4] = ["before", ...during].map(seqOf);
await a.edit(slug, s1, "before, edited");
await a.react(slug, s2, "👍");
await b.react(slug, s2, "👍");
await until("b sees the first changes", () => view(b) === view(a));
b._drop("live check"); // b is away for what follows, then resumes
await a.delete(slug, s3);
await a.react(slug, s4, "🎉");
await a.unreact(slug, s2, "👍");
const again = await a.react(slug, s4, "🎉");
if (again.seq !== null || again.count !== 1) fail(`a second react should change nothing: ${JSON.stringify(again)}`);
await a.send(slug, "a reply", { replyTo: s4 });
await until("b converges after its resume", () => b.state === STATES.CONNECTED && view(b) === view(a));
const final = JSON.parse(view(a));
const row = (seq) => final.find((m) => m[0] === seq);
if (row(s1)[1] !== "before, edited" || !row(s1)[3]) fail(`edit: ${JSON.stringify(row(s1))}`);
if (JSON.stringify(row(s2)[4]) !== JSON.stringify([["👍", 1]])) fail(`reactions: ${JSON.stringify(row(s2))}`);
if (!row(s3)[2] || row(s3)[1] !== "") fail(`delete: ${JSON.stringify(row(s3))}`);
if (JSON.stringify(final.at(-1)[5]) !== JSON.stringify([s4, false])) fail(`reply: ${JSON.stringify(final.at(-1))}`);
if (a.room(slug).highSeq !== b.room(slug).highSeq) fail(`highSeq ${a.room(slug).highSeq} vs ${b.room(slug).highSeq}`);
console.log(`OK ${JSON.stringify({ texts: texts(a), duplicates: acks.filter((x) => x.duplicate).length })}`);
a.close();
b.close();
process.exit(0);
