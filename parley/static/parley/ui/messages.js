// The timeline: messages grouped by author, with day separators and pending sends at the end.
import { avatar, h, icon } from "./dom.js";
import { messageEl } from "./message.js";

const GROUP_GAP_MS = 5 * 60 * 1000;
// Refusals that the same text will get again: offer to edit it instead of retrying.
const EDIT_NOT_RETRY = new Set(["text_too_long", "text_empty", "bad_field"]);

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });

function dayLabel(date) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (date.toDateString() === today.toDateString()) return "Today";
  if (date.toDateString() === yesterday.toDateString()) return "Yesterday";
  return dayFmt.format(date);
}

function timeEl(date) {
  return h("time", { datetime: date.toISOString(), title: fullFmt.format(date), class: "msg-time" }, timeFmt.format(date));
}

function groupHeader(user, name, date, pending, handlers) {
  // The display name, a button that opens the person's card; @username on hover.
  const author = handlers.profile
    ? h("button", { type: "button", class: "msg-author", testid: "message-author", title: `@${user.username}`,
      dataset: { username: user.username }, onclick: (ev) => handlers.profile(user, ev.currentTarget) }, name)
    : h("span", { class: "msg-author", testid: "message-author" }, name);
  return h("div", { class: "msg-head" }, author,
    pending ? h("span", { class: "msg-time" }, "sending…") : timeEl(date));
}

/**
 * Render the room snapshot (client.room(slug)) into the list element, replacing its content.
 * Keeps the view pinned to the bottom if it was there, and keeps the reading position when
 * older messages are prepended.
 */
export function renderTimeline(listEl, scroller, snap, me, handlers, ui = { me }) {
  const fromBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
  const wasAtBottom = fromBottom < 48;

  const frag = document.createDocumentFragment();
  // Unchanged messages keep their elements: a live event re-rendering the list must not swap
  // the button under a pressed mouse (the click would be lost) or drop a hover.
  const cache = listEl._items || new Map();
  const nextCache = new Map();
  let prev = null; // {authorId, date}
  let group = null;
  const people = ui.people;
  const startGroup = (user, date, pending) => {
    const name = people ? people.name(user) : user.username;
    const li = h("li", { class: `msg-group${user.id === me.id ? " msg-group--mine" : ""}`, testid: "message-group" },
      people ? people.avatar(user, "msg-avatar") : avatar(user.username, "msg-avatar"),
      h("div", { class: "msg-body" }, groupHeader(user, name, date, pending, handlers)));
    frag.append(li);
    return li.lastChild;
  };

  for (const m of snap.messages) {
    const date = new Date(m.ts);
    if (!prev || date.toDateString() !== prev.date.toDateString()) {
      frag.append(h("li", { class: "day-sep", role: "separator" }, h("span", {}, dayLabel(date))));
      prev = null;
    }
    const authorId = m.author?.id ?? null;
    if (!prev || prev.authorId !== authorId || date - prev.date > GROUP_GAP_MS) {
      group = startGroup(m.author ?? { id: null, username: "?" }, date, false);
    }
    const continued = !!prev && prev.authorId === authorId;
    const key = itemKey(m, ui, continued);
    let item = cache.get(m.seq);
    if (!item || item.message !== m || item.key !== key) {
      const el = messageEl(m, ui, handlers);
      if (continued) el.append(timeEl(date));
      item = { message: m, key, el };
    }
    nextCache.set(m.seq, item);
    group.append(item.el);
    prev = { authorId, date };
  }

  if (snap.pending.length) {
    const last = snap.messages[snap.messages.length - 1];
    if (!last || last.author?.id !== me.id) group = startGroup(me, new Date(), true);
    for (const p of snap.pending) {
      const failed = p.status === "failed";
      group.append(h("div", {
        class: `msg msg--pending${failed ? " msg--failed" : ""}`,
        testid: "message", dataset: { pending: "true", status: p.status, clientId: p.client_id },
        title: failed ? `Not sent: ${p.error?.message || p.error?.code || "error"}` : "Sending…",
      },
      p.replyTo != null ? pendingQuote(snap, p.replyTo) : null,
      h("div", { class: "msg-main" }, h("div", { class: "msg-text", testid: "message-text" }, p.text)),
      failed
        ? h("div", { class: "msg-actions", testid: "message-failed" },
          h("span", { class: "msg-fail" }, p.error?.message || "Not sent"),
          // Copy keeps the text whatever happens; Retry only where it can work (not in a lost room).
          h("button", { type: "button", class: "link-btn", testid: "failed-copy", onclick: () => copyText(p.text) }, "Copy"),
          handlers.canRetry && !handlers.canRetry(p.client_id)
            ? null
            : EDIT_NOT_RETRY.has(p.error?.code)
              ? h("button", { type: "button", class: "link-btn", onclick: () => handlers.edit(p.client_id, p.text) }, "Edit")
              : h("button", { type: "button", class: "link-btn", testid: "failed-retry", onclick: () => handlers.retry(p.client_id) }, "Retry"),
          h("button", { type: "button", class: "link-btn", testid: "failed-discard", onclick: () => handlers.discard(p.client_id) }, "Discard"))
        : h("span", { class: "msg-status", title: "Sending…" }, icon("clock"), h("span", { class: "sr-only" }, "sending"))));
    }
  }

  if (!snap.messages.length && !snap.pending.length && snap.joined) {
    frag.append(h("li", { class: "empty", testid: "empty" }, "No messages yet. Say hello!"));
  }

  const oldHeight = scroller.scrollHeight;
  listEl.replaceChildren(frag);
  listEl._items = nextCache;
  if (wasAtBottom) {
    scroller.scrollTop = scroller.scrollHeight;
  } else {
    // Content grew above (history) or below (new messages): keep the same distance from bottom
    // only when older messages were added; otherwise leave scrollTop alone.
    const grewAbove = handlers.lastReason === "history";
    if (grewAbove) scroller.scrollTop += scroller.scrollHeight - oldHeight;
  }
}

/** A pending reply quotes its target as loaded (the server's quote comes with the message). */
function pendingQuote(snap, seq) {
  const target = snap.messages.find((m) => m.seq === seq);
  if (!target) return null;
  return h("div", { class: "reply-quote", testid: "reply-quote", dataset: { target: String(seq) } },
    h("span", { class: "reply-author" }, target.author ? `@${target.author.username}` : "someone"),
    h("span", { class: "reply-excerpt" }, target.deleted ? "message deleted" : Array.from(target.text).slice(0, 100).join("")));
}

/** What, besides the message object itself, changes how a message renders. */
function itemKey(m, ui, continued) {
  const on = (seq) => (seq === m.seq ? 1 : 0);
  return `${continued ? 1 : 0}${on(ui.editingSeq)}${on(ui.actionsSeq)}${on(ui.confirmDeleteSeq)}${on(ui.flashSeq)}${ui.canModerate ? 1 : 0}`;
}

export function typingText(users) {
  const names = users.map((u) => u.username);
  if (!names.length) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return "Several people are typing…";
}

/** Put a failed message's text on the clipboard (or select it, where the clipboard is refused). */
function copyText(text) {
  const done = navigator.clipboard?.writeText(text);
  if (done) done.catch(() => window.prompt("Copy the message:", text));
  else window.prompt("Copy the message:", text);
}
