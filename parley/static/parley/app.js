// Parley browser app: wires the protocol client (parley-client.js) to the page (app.html).
import { ParleyClient, STATES } from "./parley-client.js";
import { byTestId, colourFor, h, hydrateIcons, icon } from "./ui/dom.js";
import { renderTimeline, typingText } from "./ui/messages.js";
import { Sidebar, api } from "./ui/sidebar.js";
import { Actions } from "./ui/actions.js";
import { MentionAutocomplete, roomPeople } from "./ui/mentions.js";
import { Profiles, openProfileCard, openProfileDialog } from "./ui/profiles.js";
import { Shortcuts } from "./ui/shortcuts.js";
import { Search } from "./ui/search.js";
import { Uploads } from "./ui/uploads.js";
import { Attention } from "./ui/attention.js";
import { DirectMessages, dmName, roomNotice } from "./ui/rooms.js";
import { MembersPanel } from "./ui/members.js";

hydrateIcons();
const me = JSON.parse(document.getElementById("parley-me").textContent);
const el = {
  shell: byTestId("app"),
  sidebar: byTestId("sidebar"),
  backdrop: byTestId("backdrop"),
  sidebarToggle: byTestId("sidebar-toggle"),
  sidebarClose: byTestId("sidebar-close"),
  membersToggle: byTestId("members-toggle"),
  memberCount: byTestId("member-count"),
  memberList: byTestId("member-list"),
  title: byTestId("room-title"),
  sub: byTestId("room-sub"),
  conn: byTestId("conn-state"),
  connText: document.querySelector(".conn-text"),
  connRetry: byTestId("conn-retry"),
  timeline: byTestId("timeline"),
  list: byTestId("messages"),
  loadOlder: byTestId("load-older"),
  start: byTestId("timeline-start"),
  typing: byTestId("typing"),
  composer: byTestId("composer"),
  input: byTestId("composer-input"),
  counter: byTestId("char-count"),
  send: byTestId("send"),
  mentionList: byTestId("mention-list"),
  replyBar: byTestId("reply-bar"),
};

for (const a of document.querySelectorAll("[data-avatar]")) {
  a.textContent = (Array.from(a.dataset.avatar)[0] || "?").toUpperCase();
  a.style.background = colourFor(a.dataset.avatar);
}

// The page says where everything is (app.html's data-* attributes): a host may mount Parley's
// pages under any prefix and has its own sign-in page.
const urls = el.shell.dataset;
const socketUrl = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${urls.socketPath}`;
const loginUrl = (next) => `${urls.loginUrl}?next=${encodeURIComponent(next)}`;

// The outbox is kept in localStorage: a send never vanishes with a reload (docs/protocol.md §12).
const client = new ParleyClient({ url: socketUrl, storage: window.localStorage, storageKey: `parley:outbox:${me.id}` });
// Display names and pictures, by user id (docs/protocol.md §15): a render asks, an answer re-renders.
const people = new Profiles({
  url: urls.apiProfiles, profileUrl: urls.apiProfile, avatarUrl: urls.apiProfileAvatar,
  onChange: () => {
    renderMe();
    render("profiles");
  },
});
window.parleyPeople = people;
window.parley = client; // handy in the console and for tests

let current = null; // slug of the room on screen
let pendingJump = null; // {slug, seq}: a message link (#/room/seq) to scroll to once joined

const actions = new Actions({
  client,
  me,
  moderator: urls.moderator === "1",
  room: () => current,
  render: (reason) => render(reason),
  flash: (text) => flash(text),
  composer: el.input,
  replyBar: {
    el: el.replyBar,
    author: byTestId("reply-bar-author"),
    excerpt: byTestId("reply-bar-excerpt"),
    cancel: byTestId("reply-cancel"),
  },
  linkFor: (slug, seq) => `${location.origin}${urls.appUrl}#/${slug}/${seq}`,
});
const mentions = new MentionAutocomplete(el.input, el.mentionList, () => {
  const snap = current && client.room(current);
  if (!snap) return [];
  // @room reaches everyone only from the room's owner or an admin (the server decides).
  const everyone = actions.ui(snap).canModerate ? [{ id: "@room", username: "room" }] : [];
  return [...roomPeople(snap, me), ...everyone];
}, people);

// Your own name and picture (sidebar foot), a button that opens the profile dialog.
const meButton = byTestId("profile-open");
function renderMe() {
  meButton.replaceChildren(people.avatar(me), h("span", { class: "me-name", testid: "me" }, people.name(me)));
}
meButton.addEventListener("click", () => openProfileDialog(people, me));
renderMe();

// Files: attach, paste, drop (ui/uploads.js); the next send takes the uploaded ones.
const uploads = new Uploads({
  composer: el.composer,
  input: el.input,
  dropZone: document.querySelector(".chat"),
  uploadsUrl: (slug) => `${urls.apiRooms}/${encodeURIComponent(slug)}/uploads`,
  room: () => current,
  changed: () => updateComposer(),
  limits: () => client.limits,
});

// --- rooms ---------------------------------------------------------------------------------

const sidebar = new Sidebar({
  roomsUrl: urls.apiRooms,
  listEl: byTestId("room-list"),
  formEl: byTestId("new-room-form"),
  errorEl: byTestId("new-room-error"),
  detailsEl: byTestId("new-room"),
  onSelect: (slug) => {
    closePanels();
    if (slug !== current) openRoom(slug);
  },
  decorate: (link, room) => attention.decorate(link, room),
});

const attention = new Attention({
  client, me, roomsUrl: urls.apiRooms, current: () => current, timeline: el.timeline, list: el.list,
  head: document.querySelector(".chat-head"), sidebar: el.sidebar, flash: (text) => flash(text),
  changed: () => {
    sidebar.render();
    renderTitle();
  },
});

// --- direct messages and members (§12) -------------------------------------------------------

const dms = new DirectMessages({
  me, dmsUrl: urls.apiDms, usersUrl: urls.apiUsers, listEl: byTestId("dm-list"), formEl: byTestId("new-dm-form"),
  flash: (text) => flash(text),
  onOpen: (slug) => {
    closePanels();
    if (slug !== current) openRoom(slug);
  },
});
const membersPanel = new MembersPanel({
  me, admin: urls.moderator === "1", roomsUrl: urls.apiRooms, usersUrl: urls.apiUsers, el: byTestId("members-panel"),
  flash: (text) => flash(text), onChanged: () => reloadRooms(),
});
function reloadRooms() {
  return sidebar.load().then((rooms) => {
    dms.setRooms(rooms);
    if (current) membersPanel.show(current, client.room(current)?.removed ? null : sidebar.find(current));
    render("rooms");
  }).catch(() => {});
}
// Rooms added, removed or changed for this user, live (version 2 frames).
client.on("rooms", (frame) => {
  reloadRooms();
  if (frame.type === "room_removed" && frame.room === current) membersPanel.show(current, null);
  if (frame.type === "room_added" && frame.state?.room?.slug === current) client.join(current).catch(() => {});
});

// #/room, or #/room/seq: a link to one message (the "copy link" action).
function routeFromHash() {
  const m = /^#\/([a-z0-9_-]{1,50})(?:\/(\d{1,16}))?$/.exec(location.hash);
  return m ? { slug: m[1], seq: m[2] ? Number(m[2]) : null } : null;
}
function slugFromHash() {
  return routeFromHash()?.slug ?? null;
}

function openRoom(slug, jumpTo = null) {
  pendingJump = jumpTo ? { slug, seq: jumpTo } : null;
  if (current !== slug) actions.reset();
  current = slug;
  sidebar.setCurrent(slug);
  dms.setCurrent(slug);
  el.list.replaceChildren();
  el.list._items = null; // the message elements of the room left (seqs are per room)
  el.input.value = localStorage.getItem(draftKey(slug)) || "";
  uploads.render(); // this room's uploads (and updateComposer)
  updateComposer();
  if (location.hash !== `#/${slug}` && !jumpTo) history.replaceState(null, "", `#/${slug}`);
  attention.opened(slug);
  render("open");
  if (!sidebar.find(slug)) reloadRooms();
  loadOwner(slug);
  membersPanel.show(slug, sidebar.find(slug));
  client.join(slug).then(() => {
    if (slug === current) attention.joined(slug);
    if (pendingJump && pendingJump.slug === current) {
      const { seq } = pendingJump;
      pendingJump = null;
      actions.scrollTo(seq);
    }
  }).catch((err) => {
    if (err.code === "room_not_found" && slug === current) {
      // A room that held our unsent messages stays on screen: they are failed, to copy or discard.
      if (client.room(slug)?.pending.length) return render("removed");
      flash(`No room “${slug}” that you may see.`);
      if (slug !== "lobby") openRoom("lobby");
    }
  });
}

// The room's owner may delete anyone's message: the memberships say who that is (§8). Asked
// again on every connect until known (a failed request is not an answer).
function loadOwner(slug, retries = 2) {
  if (actions.owners.has(slug)) return;
  api(`${urls.apiRooms}/${encodeURIComponent(slug)}/members`).then(({ members }) => {
    // Owners and moderators may delete anyone's message (§12): the button is shown to them.
    const mine = members.find((m) => m.id === me.id && (m.role === "owner" || m.role === "moderator"));
    actions.owners.set(slug, mine ? me.id : members.find((m) => m.role === "owner")?.id ?? null);
    if (slug === current) render("actions");
  }).catch(() => {
    if (retries > 0) setTimeout(() => loadOwner(slug, retries - 1), 1500);
  });
}

// Search (ui/search.js): a result opens its room at the message, highlighted, as a link does.
new Search({
  url: urls.apiSearch,
  toggle: byTestId("search-toggle"),
  panel: byTestId("search-panel"),
  onOpen: (slug, seq) => {
    closePanels();
    history.replaceState(null, "", `#/${slug}/${seq}`);
    if (slug !== current) openRoom(slug, seq);
    else actions.scrollTo(seq);
  },
});

window.addEventListener("hashchange", () => {
  const route = routeFromHash();
  if (!route) return;
  if (route.slug !== current) openRoom(route.slug, route.seq);
  else if (route.seq) actions.scrollTo(route.seq);
});

// --- rendering -----------------------------------------------------------------------------

function render(reason) {
  const snap = current ? client.room(current) : null;
  const info = sidebar.find(current) || snap?.info;
  const name = info?.kind === "dm" ? dmName(info, me) : info ? info.title || info.slug : current || "";
  el.title.replaceChildren(icon(info?.kind === "dm" ? "people" : info?.private ? "lock" : "hash", "icon title-icon"), name);
  renderNotice(snap, info);
  el.sub.textContent = info && info.title && info.title !== info.slug ? info.slug : "";
  renderTitle(info);
  if (!snap) return;
  if (!QUIET_REASONS.has(reason)) {
    if (selectingInTimeline()) timelineDirty = true; // don't pull the text out from under a selection
    else {
      timelineDirty = false;
      // Re-rendering moves the edit box: keep its focus and caret.
      const editing = document.activeElement === actions.editInput;
      const caret = editing ? [actions.editInput.selectionStart, actions.editInput.selectionEnd] : null;
      renderTimeline(el.list, el.timeline, snap, me, {
        ...actions.handlers(),
        profile: (user, anchor) => openProfileCard(people, user, anchor),
        lastReason: reason,
        retry: (id) => client.retry(id),
        canRetry: (id) => client.canRetry(id),
        discard: (id) => client.discard(id),
        edit: (id, text) => {
          client.discard(id);
          el.input.value = text;
          updateComposer();
          el.input.focus();
        },
      }, { ...actions.ui(snap), people });
      attention.afterRender();
      if (editing && actions.editInput.isConnected) {
        actions.editInput.focus({ preventScroll: true });
        actions.editInput.setSelectionRange(...caret);
      }
      // The message being edited or replied to was deleted meanwhile.
      if (actions.editingSeq !== null && !actions.editInput.isConnected) actions.editingSeq = null;
      if (actions.replyTo && snap.messages.find((m) => m.seq === actions.replyTo.seq)?.deleted) actions.setReply(null);
    }
  }
  el.loadOlder.hidden = !snap.hasMore;
  el.loadOlder.disabled = snap.loadingOlder;
  el.loadOlder.textContent = snap.loadingOlder ? "Loading…" : "Load older messages";
  el.start.hidden = !snap.joined || snap.hasMore || !snap.messages.length;
  renderMembers(snap.members);
  el.typing.textContent = typingText(snap.typing);
}

function renderTitle(info = sidebar.find(current) || (current && client.room(current)?.info)) {
  document.title = attention.title(info ? `${info.title || info.slug} · Parley` : "Parley");
}

// A lost room ("You were removed from #team") or an archived one: said, and the composer is off.
function renderNotice(snap, info) {
  const notice = roomNotice(snap, current, info);
  const box = byTestId("room-notice");
  box.textContent = notice ? notice.text : "";
  box.hidden = !notice;
  box.dataset.kind = notice?.kind || "";
  el.input.disabled = !!notice;
  el.input.placeholder = notice ? notice.text : "Message";
  if (notice) el.send.disabled = true;
  else if (el.send.disabled && el.input.value.trim()) updateComposer();
}

// Events that change neither messages nor pending sends leave the timeline's DOM alone.
const QUIET_REASONS = new Set(["typing", "members", "loading"]);
let timelineDirty = false;

function selectingInTimeline() {
  const sel = document.getSelection();
  return !!sel && !sel.isCollapsed && el.timeline.contains(sel.anchorNode);
}
document.addEventListener("selectionchange", () => {
  if (timelineDirty && !selectingInTimeline()) render("deferred");
});

function renderMembers(members) {
  el.memberCount.textContent = String(members.length);
  // The honest bound (docs/protocol.md §3, "How long a user who left stays listed"): a closed
  // tab leaves at once, a dropped network or a killed server process within 4/3 heartbeat.
  byTestId("members-note").textContent = `Updated live. Someone whose connection dropped without closing may stay listed up to ${Math.ceil(client.heartbeatSecs * 4 / 3)} s.`;
  el.memberList.replaceChildren(...members.map((u) => h("li", { class: "member", testid: "member", dataset: { username: u.username } },
    people.avatar(u, "avatar--small"),
    h("span", { class: "member-name", title: `@${u.username}` }, people.name(u)),
    u.id === me.id ? h("span", { class: "member-you" }, "you") : null)));
}

client.on("room", ({ slug, reason }) => {
  if (slug === current) render(reason);
});

// Unread counts: ui/attention.js, from the room list (docs/protocol.md §11).

function loadOlder() {
  const snap = current && client.room(current);
  if (!snap || !snap.hasMore || snap.loadingOlder || !snap.live) return;
  client.history(current, { limit: 50 }).catch((err) => flash(err.message));
}
el.loadOlder.addEventListener("click", loadOlder);
// Scrolling (by the reader) near the top pages in older messages too.
el.timeline.addEventListener("scroll", () => {
  if (el.timeline.scrollTop < 120) loadOlder();
}, { passive: true });

// --- connection badge ----------------------------------------------------------------------

let countdown = null;
function renderConn(s) {
  clearInterval(countdown);
  countdown = null;
  el.conn.dataset.state = s.state;
  el.connRetry.hidden = s.state !== STATES.RECONNECTING;
  const set = (text) => {
    el.connText.textContent = text;
  };
  switch (s.state) {
    case STATES.CONNECTED:
      set("Connected");
      break;
    case STATES.CONNECTING:
    case STATES.IDLE:
      set("Connecting…");
      break;
    case STATES.RECONNECTING: {
      const tick = () => {
        const secs = Math.max(0, Math.ceil((client.nextAttemptAt - Date.now()) / 1000));
        set(secs > 0 ? `Reconnecting in ${secs}s` : "Reconnecting…");
      };
      tick();
      countdown = setInterval(tick, 250);
      break;
    }
    case STATES.OFFLINE:
      set("Offline");
      break;
    case STATES.REVOKED:
      set("Signed out");
      break;
    default:
      set(s.state);
  }
}

let connects = 0;
client.on("state", (s) => {
  renderConn(s);
  if (s.state === STATES.CONNECTED) {
    reloadRooms();
    connects += 1;
    if (connects > 1) people.refresh(); // names and pictures may have changed while away
    if (current) loadOwner(current);
  }
  // Repeated refusals may mean the session ended: ask the HTTP side, which can tell us.
  if (s.state === STATES.RECONNECTING && s.attempt >= 3 && !s.opened) checkSession();
});
client.on("revoked", () => {
  flash("Your session is no longer valid. Please sign in again.");
  setTimeout(() => location.assign(loginUrl(urls.appUrl)), 2500);
});
el.connRetry.addEventListener("click", () => client.reconnectNow());
// A tab coming back to the foreground retries at once instead of waiting out the backoff.
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") client.reconnectNow();
});
// Rooms made by others appear when the tab regains focus (the protocol has no room events).
window.addEventListener("focus", () => reloadRooms());

async function checkSession() {
  try {
    await api(urls.apiMe);
  } catch (err) {
    if (err.status === 401 || err.status === 403) location.assign(loginUrl(urls.appUrl + location.hash));
  }
}

// --- composer ------------------------------------------------------------------------------

const draftKey = (slug) => `parley:draft:${me.id}:${slug}`;

function maxChars() {
  return client.limits.max_text_chars || 4000;
}

// The server counts code points (Python len), not UTF-16 units: an emoji is one character.
const charCount = (text) => {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
};

function updateComposer() {
  const len = charCount(el.input.value.trim());
  const max = maxChars();
  el.counter.textContent = `${charCount(el.input.value)} / ${max}`;
  el.counter.classList.toggle("counter--over", len > max);
  el.counter.classList.toggle("counter--near", len > max * 0.9 && len <= max);
  // A message may be files alone; not while one is still uploading (it would be left behind).
  el.send.disabled = (len === 0 && !uploads.ready()) || len > max || uploads.busy();
  el.input.style.height = "auto";
  el.input.style.height = `${Math.min(el.input.scrollHeight, 200)}px`;
}

function submit() {
  const text = el.input.value;
  const trimmed = text.trim();
  if (!current || (!trimmed && !uploads.ready()) || charCount(trimmed) > maxChars() || uploads.busy()) return;
  const replyTo = actions.replyTo?.seq ?? null;
  const attachments = uploads.take(current);
  client.send(current, trimmed, { replyTo, attachments }).catch(() => {}); // failures show on the pending message
  if (replyTo !== null) actions.setReply(null);
  el.input.value = "";
  localStorage.removeItem(draftKey(current));
  updateComposer();
  el.timeline.scrollTop = el.timeline.scrollHeight;
}

el.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  submit();
});
el.input.addEventListener("keydown", (ev) => {
  if (mentions.keydown(ev)) {
    ev.preventDefault();
    return;
  }
  if (ev.key === "ArrowUp" && !el.input.value && current) {
    const snap = client.room(current);
    if (snap && actions.editLast(snap)) ev.preventDefault();
    return;
  }
  if (ev.key === "Escape" && actions.replyTo) {
    actions.setReply(null);
    return;
  }
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    submit();
  }
});
el.input.addEventListener("input", () => {
  updateComposer();
  if (current) {
    if (el.input.value) localStorage.setItem(draftKey(current), el.input.value);
    else localStorage.removeItem(draftKey(current));
    if (el.input.value.trim()) client.typing(current); // throttled to one frame per 2 s
  }
});

// --- panels (phone width) ------------------------------------------------------------------

function setSidebar(open) {
  el.shell.classList.toggle("shell--sidebar-open", open);
  el.backdrop.hidden = !open;
  el.sidebarToggle.setAttribute("aria-expanded", String(open));
}
function setMembers(open) {
  el.shell.classList.toggle("shell--members-open", open);
  el.membersToggle.setAttribute("aria-expanded", String(open));
}
function closePanels() {
  setSidebar(false);
  setMembers(false);
}
el.sidebarToggle.addEventListener("click", () => setSidebar(!el.shell.classList.contains("shell--sidebar-open")));
el.sidebarClose.addEventListener("click", () => setSidebar(false));
el.backdrop.addEventListener("click", closePanels);
el.membersToggle.addEventListener("click", () => setMembers(!el.shell.classList.contains("shell--members-open")));
// Keyboard shortcuts (ui/shortcuts.js); Escape closes every panel and menu at once.
const shortcuts = new Shortcuts({
  rooms: () => sidebar.rooms,
  current: () => current,
  open: (slug) => {
    closePanels();
    openRoom(slug);
  },
  closeAll: () => {
    closePanels();
    actions.closeMenus();
    byTestId("new-room").open = false;
  },
  timeline: el.timeline,
  list: el.list,
  composer: el.input,
});
window.parleyShortcuts = shortcuts; // for tests

// --- notices -------------------------------------------------------------------------------

let flashTimer = null;
function flash(text) {
  let box = byTestId("flash");
  if (!box) {
    box = h("div", { class: "flash", testid: "flash", role: "alert" });
    document.body.append(box);
  }
  box.textContent = text;
  box.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => {
    box.hidden = true;
  }, 6000);
}
client.on("error", (err) => {
  if (err.code && err.code !== "disconnected") flash(err.message || err.code);
});

// --- start ---------------------------------------------------------------------------------

sidebar.load().then((rooms) => dms.setRooms(rooms)).catch((err) => flash(`Could not load rooms: ${err.message}`));
client.connect();
openRoom(slugFromHash() || "lobby", routeFromHash()?.seq ?? null);
updateComposer();
el.input.focus({ preventScroll: true });
