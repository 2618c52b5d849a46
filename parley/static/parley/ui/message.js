// One delivered message: reply quote, rendered text (or tombstone, or the inline editor),
// "(edited)", reaction chips and the action bar (hover on desktop, long-press on touch).
import { h, icon } from "./dom.js";
import { QUICK } from "./emoji.js";
import { mentionsMe, renderMarkdown } from "./markdown.js";
import { attachmentsEl } from "./uploads.js";

const LONG_PRESS_MS = 450;

/**
 * ui: {me, canModerate, editingSeq, editor (the persistent textarea wrapper), actionsSeq,
 * confirmDeleteSeq}; on: {reply, react(m, emoji, mine), pick(m, anchor), startEdit, delete, copyLink,
 * openActions(seq), scrollTo(seq)}.
 */
export function messageEl(m, ui, on) {
  const mine = m.author?.id === ui.me.id;
  const cls = ["msg"];
  if (m.deleted) cls.push("msg--deleted");
  if (!m.deleted && mentionsMe(m, ui.me)) cls.push("msg--mention");
  // A delete waiting for its confirming click keeps the bar open (the re-render drops :hover).
  if (ui.actionsSeq === m.seq || ui.confirmDeleteSeq === m.seq) cls.push("msg--actions-open");
  if (ui.editingSeq === m.seq) cls.push("msg--editing");
  if (ui.flashSeq === m.seq) cls.push("msg--flash");
  const main = h("div", { class: "msg-main" });
  if (m.reply_to) main.append(quoteEl(m.reply_to, on));
  if (m.deleted) {
    main.append(h("div", { class: "msg-text msg-tombstone", testid: "message-tombstone" }, "message deleted"));
  } else if (ui.editingSeq === m.seq && ui.editor) {
    main.append(ui.editor);
  } else {
    const text = h("div", { class: "msg-text", testid: "message-text" });
    text.append(renderMarkdown(m.text, { mentions: m.mentions, mentionRoom: m.mention_room, me: ui.me.username }));
    if (m.text) main.append(text);
  }
  if (!m.deleted && m.attachments?.length) main.append(attachmentsEl(m.attachments));
  if (m.edited_at && !m.deleted) {
    main.append(h("span", { class: "msg-edited", testid: "edited", title: `Edited ${new Date(m.edited_at).toLocaleString()}` }, "(edited)"));
  }
  if (!m.deleted && m.reactions?.length) main.append(reactionsEl(m, on));
  const el = h("div", {
    class: cls.join(" "), testid: "message", id: `msg-${m.seq}`,
    dataset: { seq: String(m.seq), author: m.author?.username ?? "" },
  }, main);
  if (!m.deleted && !m._fromAck) el.append(actionsEl(m, mine, ui, on));
  addLongPress(el, () => on.openActions(m.seq));
  return el;
}

function quoteEl(q, on) {
  return h("button", {
    type: "button", class: `reply-quote${q.deleted ? " reply-quote--deleted" : ""}`, testid: "reply-quote",
    dataset: { target: String(q.seq) }, title: "Show the message this replies to",
    onclick: () => on.scrollTo(q.seq),
  },
  h("span", { class: "reply-author" }, q.author ? `@${q.author.username}` : "someone"),
  h("span", { class: "reply-excerpt" }, q.deleted ? "message deleted" : q.excerpt));
}

function reactionsEl(m, on) {
  return h("div", { class: "reactions", testid: "reactions" },
    ...m.reactions.map((r) => h("button", {
      type: "button", class: `reaction${r.me ? " reaction--mine" : ""}`, testid: "reaction",
      dataset: { emoji: r.emoji, count: String(r.count), mine: r.me ? "true" : "false" },
      "aria-pressed": r.me ? "true" : "false",
      title: r.me ? "You reacted (click to remove)" : "React",
      onclick: () => on.react(m, r.emoji, r.me),
    }, h("span", { class: "reaction-emoji" }, r.emoji), h("span", { class: "reaction-count" }, String(r.count)))),
    h("button", {
      type: "button", class: "reaction reaction--add", testid: "reaction-add", "aria-label": "Add reaction",
      dataset: { pickerAnchor: "" }, onclick: (ev) => on.pick(m, ev.currentTarget),
    }, "+"));
}

function actionsEl(m, mine, ui, on) {
  const btn = (testid, label, text, onclick, extra = {}) => h("button", {
    type: "button", class: "msg-tool", testid, title: label, "aria-label": label, onclick, ...extra,
  }, text);
  const mineSet = new Set((m.reactions || []).filter((r) => r.me).map((r) => r.emoji));
  const confirming = ui.confirmDeleteSeq === m.seq;
  return h("div", { class: "msg-tools", testid: "message-actions", role: "toolbar", "aria-label": "Message actions" },
    ...QUICK.slice(0, 3).map((e) => btn("quick-react", `React ${e}`, e, () => on.react(m, e, mineSet.has(e)), { dataset: { emoji: e } })),
    btn("action-react", "Add reaction", icon("smile"), (ev) => on.pick(m, ev.currentTarget), { dataset: { pickerAnchor: "" } }),
    btn("action-reply", "Reply", icon("reply"), () => on.reply(m)),
    mine ? btn("action-edit", "Edit", icon("edit"), () => on.startEdit(m)) : null,
    mine || ui.canModerate ? btn("action-delete", confirming ? "Confirm delete" : "Delete", confirming ? "Delete?" : icon("trash"), () => on.delete(m),
      { class: `msg-tool${confirming ? " msg-tool--danger" : ""}` }) : null,
    btn("action-link", "Copy link", icon("link"), () => on.copyLink(m)));
}

/** Touch: a press held LONG_PRESS_MS opens the actions (a moving finger is a scroll). */
function addLongPress(el, open) {
  let timer = null;
  let start = null;
  const cancel = () => {
    clearTimeout(timer);
    timer = null;
  };
  el.addEventListener("pointerdown", (ev) => {
    if (ev.pointerType !== "touch" || ev.target.closest("button, a, textarea")) return;
    start = [ev.clientX, ev.clientY];
    timer = setTimeout(() => {
      timer = null;
      open();
    }, LONG_PRESS_MS);
  });
  el.addEventListener("pointermove", (ev) => {
    if (timer && start && Math.hypot(ev.clientX - start[0], ev.clientY - start[1]) > 10) cancel();
  });
  el.addEventListener("pointerup", cancel);
  el.addEventListener("pointercancel", cancel);
  // Long-press on Android and right-click both end in contextmenu: open the actions, unless the
  // reader is selecting text or pointing at a link (whose own menu they want).
  el.addEventListener("contextmenu", (ev) => {
    const sel = document.getSelection();
    if ((sel && !sel.isCollapsed) || ev.target.closest("a, textarea")) return;
    ev.preventDefault();
    cancel();
    open();
  });
}
