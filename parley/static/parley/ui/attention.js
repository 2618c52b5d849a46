// Attention (docs/protocol.md §11): unread and mention badges for every listed room, the tab
// title's count, the "new messages" divider and jump-to-unread, marking a room read while it is
// on screen in a focused window, the per-room notify/mute menu, and desktop notifications.
//
// The counts are the server's (the `rooms` list after every hello, `read` frames from the
// user's other tabs and devices) plus what parley-client.js counts of the live messages of the
// rooms joined: every room of the list is joined in the background, resumed at the list's
// last_seq (nothing is replayed), as many as the socket's max_rooms allows.
import { h } from "./dom.js";
import { api } from "./sidebar.js";

const NOTIFY_LABELS = { "": "Default", all: "All messages", mentions: "Mentions only", nothing: "Nothing" };
const MARK_READ_DELAY_MS = 300;
const BACKFILL_MIN_MESSAGES = 30;
const DESKTOP_TEXT_CHARS = 140;

export class Attention {
  /**
   * @param {object} o
   * @param {import("../parley-client.js").ParleyClient} o.client
   * @param {{id: number, username: string}} o.me
   * @param {string} o.roomsUrl  GET/POST /api/rooms under the host's prefix
   * @param {() => string|null} o.current  the slug of the room on screen
   * @param {HTMLElement} o.timeline  the scrolling timeline
   * @param {HTMLElement} o.list  the message list in it
   * @param {HTMLElement} o.head  the chat header (the notify menu goes there)
   * @param {HTMLElement} o.sidebar  the sidebar (the desktop notifications control goes there)
   * @param {() => void} o.changed  counts changed: re-render the room list and the title
   * @param {(text: string) => void} o.flash
   */
  constructor(o) {
    Object.assign(this, o);
    this.divider = null; // {slug, seq}: the "new messages" line goes after this seq
    this._markTimer = null;
    this._marking = new Set();
    this.jump = h("button", { type: "button", class: "btn btn--primary btn--small jump-unread", testid: "jump-unread", hidden: true,
      onclick: () => this.jumpToUnread() }, "↑ Jump to new messages");
    this.timeline.after(this.jump);
    this._buildMenu();
    this._buildDesktopControl();
    const { client } = this;
    client.on("attention", (e) => {
      // A new list, or a room added to it (room_added, §12): join what is not joined yet.
      if (e.kind === "rooms" || e.kind === "room_state") this._joinListed();
      this.changed();
      this.maybeMarkRead();
    });
    client.on("room", ({ slug, reason, seq }) => {
      if (reason === "message") this._desktopNotify(slug, seq);
      if (slug === this.current()) this.maybeMarkRead();
    });
    window.addEventListener("focus", () => this.maybeMarkRead());
    document.addEventListener("visibilitychange", () => this.maybeMarkRead());
    this.timeline.addEventListener("scroll", () => {
      this.maybeMarkRead();
      this._renderJump();
    }, { passive: true });
  }

  // --- counts -------------------------------------------------------------------------------

  /** The room's counts, or null if it is not in the user's list. */
  counts(slug) {
    const s = this.client.roomState(slug);
    return s ? { unread: s.unread, mentions: s.mentions, muted: s.muted } : null;
  }

  _label(n) {
    const cap = this.client.limits.unread_count_max || 1000;
    return n >= cap ? `${cap}+` : String(n);
  }

  /** Sidebar hook: bold + count badge, and a distinct mention badge, on a room's link. */
  decorate(link, room) {
    const c = this.counts(room.slug);
    if (!c) return;
    const quiet = c.muted;
    link.classList.toggle("room-link--unread", c.unread > 0 && !quiet);
    link.classList.toggle("room-link--muted", quiet);
    if (c.mentions > 0) {
      link.append(h("span", { class: "badge badge--mention", testid: "mention-badge", "aria-label": `${c.mentions} mentions` },
        `@${this._label(c.mentions)}`));
    }
    if (c.unread > 0) {
      link.append(h("span", { class: `badge${quiet ? " badge--quiet" : ""}`, testid: "unread", "aria-label": `${c.unread} unread` },
        this._label(c.unread)));
    }
  }

  /** The tab title: "(3) Lobby · Parley" while unmuted rooms have unread messages. */
  title(base) {
    let total = 0;
    for (const s of this.client.roomStates.values()) if (!s.muted) total += s.unread;
    return total > 0 ? `(${this._label(total)}) ${base}` : base;
  }

  // --- joining the list ---------------------------------------------------------------------

  _joinListed() {
    const max = (this.client.limits.max_rooms || 100) - 1; // one place kept for a room opened
    for (const s of this.client.roomStates.values()) {
      if (this.client.rooms.size >= max) break;
      const slug = s.room.slug;
      if (this.client.rooms.has(slug) || s.room.archived) continue;
      this.client.join(slug, { resume: { seq: s.room.last_seq, epoch: s.room.epoch } }).catch(() => {});
    }
  }

  // --- opening a room: divider, backfill ---------------------------------------------------

  /** A room came on screen: remember where its reader left off, page in some history. */
  opened(slug) {
    const s = this.client.roomState(slug);
    this.divider = s && s.unread > 0 ? { slug, seq: s.last_read_seq } : null;
    this._renderMenu();
  }

  /** After the room's join answered: a room joined in the background has only the messages
   * that came since; page in older ones so the reader sees where they left off. */
  joined(slug) {
    const snap = this.client.room(slug);
    if (snap && snap.hasMore && snap.messages.length < BACKFILL_MIN_MESSAGES) {
      this.client.history(slug, { limit: 50 }).catch(() => {});
    }
    this._renderMenu();
  }

  /** After each render of the timeline: the "new messages" line and the jump button. */
  afterRender() {
    this.list.querySelector("[data-testid=new-messages]")?.remove();
    const d = this.divider;
    if (d && d.slug === this.current()) {
      const first = [...this.list.querySelectorAll(".msg[data-seq]")].find(
        (el) => Number(el.dataset.seq) > d.seq && el.dataset.author !== this.me.username);
      if (first) {
        first.before(h("div", { class: "new-divider", testid: "new-messages", role: "separator" }, h("span", {}, "New messages")));
      }
    }
    this._renderJump();
    this.maybeMarkRead(); // a room just opened, or new messages shown
  }

  _renderJump() {
    const d = this.divider;
    const line = this.list.querySelector("[data-testid=new-messages]");
    let show = false;
    if (d && d.slug === this.current()) {
      const snap = this.client.room(d.slug);
      const oldest = snap?.messages.find((m) => !m._fromAck);
      if (line) {
        const box = this.timeline.getBoundingClientRect();
        const at = line.getBoundingClientRect();
        show = at.bottom < box.top || at.top > box.bottom;
      } else {
        show = !!snap && snap.hasMore && !!oldest && oldest.seq > d.seq + 1; // not loaded yet
      }
    }
    this.jump.hidden = !show;
  }

  /** Jump-to-unread: scroll to the line, paging in history until it is there. */
  async jumpToUnread() {
    const d = this.divider;
    if (!d) return;
    for (let pages = 0; pages < 20; pages++) {
      const line = this.list.querySelector("[data-testid=new-messages]");
      if (line) {
        line.scrollIntoView({ block: "start" });
        this._renderJump();
        return;
      }
      const snap = this.client.room(d.slug);
      if (!snap || !snap.hasMore || d.slug !== this.current()) return;
      await this.client.history(d.slug, { limit: 100 });
    }
  }

  // --- marking read -------------------------------------------------------------------------

  /** The room on screen, in a visible and focused window, scrolled to its newest message:
   * mark it read up to what it shows (at most one request per room at a time). */
  maybeMarkRead() {
    clearTimeout(this._markTimer);
    this._markTimer = setTimeout(() => this._markRead(), MARK_READ_DELAY_MS);
  }

  _markRead() {
    const slug = this.current();
    const snap = slug && this.client.room(slug);
    if (!snap || !snap.live || this._marking.has(slug)) return;
    if (document.visibilityState !== "visible" || !document.hasFocus()) return;
    const fromBottom = this.timeline.scrollHeight - this.timeline.scrollTop - this.timeline.clientHeight;
    if (fromBottom > 48) return; // reading older messages: the newest are not seen yet
    const seq = snap.highSeq;
    const s = this.client.roomState(slug);
    if (!seq || (s && s.last_read_seq >= seq)) return;
    this._marking.add(slug);
    this.client.markRead(slug, seq).catch(() => {}).finally(() => {
      this._marking.delete(slug);
      this.changed();
    });
  }

  // --- the per-room notify/mute menu --------------------------------------------------------

  _buildMenu() {
    this.menuButton = h("button", { type: "button", class: "icon-btn notify-btn", testid: "room-notify",
      "aria-haspopup": "true", "aria-expanded": "false", "aria-label": "Notifications for this room",
      onclick: () => this._toggleMenu() }, h("span", { "aria-hidden": "true" }, "🔔"));
    this.menu = h("div", { class: "notify-menu", testid: "room-notify-menu", role: "group", "aria-label": "Notify me about", hidden: true });
    const wrap = h("div", { class: "notify-wrap" }, this.menuButton, this.menu);
    const members = this.head.querySelector("[data-testid=members-toggle]");
    this.head.insertBefore(wrap, members);
    document.addEventListener("click", (ev) => {
      if (!wrap.contains(ev.target)) this._toggleMenu(false);
    });
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") this._toggleMenu(false);
    });
  }

  _toggleMenu(open = this.menu.hidden) {
    this.menu.hidden = !open;
    this.menuButton.setAttribute("aria-expanded", String(open));
    if (open) this._renderMenu();
  }

  _renderMenu() {
    const slug = this.current();
    const s = slug ? this.client.roomState(slug) : null;
    this.menuButton.classList.toggle("notify-btn--muted", !!s?.muted);
    this.menuButton.title = s ? (s.muted ? "Muted" : `Notify: ${NOTIFY_LABELS[s.notify]}`) : "Notifications";
    if (this.menu.hidden) return;
    const choice = (value) => h("label", { class: "notify-choice" },
      h("input", { type: "radio", name: "notify", value, testid: `notify-${value || "default"}`,
        checked: s && value === s.notify ? true : null,
        onchange: () => this._setState(slug, { notify: value }) }),
      NOTIFY_LABELS[value]);
    this.menu.replaceChildren(
      h("p", { class: "notify-title" }, "Notify me about"),
      choice("all"), choice("mentions"), choice("nothing"), choice(""),
      h("label", { class: "notify-choice notify-mute" },
        h("input", { type: "checkbox", testid: "notify-mute", checked: s?.muted ? true : null,
          onchange: (ev) => this._setState(slug, { muted: ev.target.checked }) }),
        "Mute this room"));
  }

  async _setState(slug, body) {
    if (!slug) return;
    try {
      const { state } = await api(`${this.roomsUrl}/${encodeURIComponent(slug)}/state`, { method: "PATCH", body });
      // The room_state frame says so too; the answer is here first.
      this.client._onRoomState({ type: "room_state", state });
    } catch (err) {
      this.flash(`Could not change the room's notifications: ${err.message}`);
    }
    this._renderMenu();
  }

  // --- desktop notifications ----------------------------------------------------------------

  _buildDesktopControl() {
    this.desktop = h("div", { class: "desktop-notify", testid: "desktop-notify" });
    this.sidebar.querySelector(".me")?.before(this.desktop);
    this._renderDesktopControl();
  }

  _renderDesktopControl() {
    const N = window.Notification;
    if (!N) {
      this.desktop.hidden = true;
      return;
    }
    // Asked only from this button: never on load (browsers penalise sites that do).
    if (N.permission === "default") {
      this.desktop.replaceChildren(h("button", { type: "button", class: "btn btn--ghost btn--small btn--block", testid: "notifications-enable",
        onclick: () => Promise.resolve(N.requestPermission()).then(() => this._renderDesktopControl()) }, "Enable desktop notifications"));
    } else if (N.permission === "denied") {
      this.desktop.replaceChildren(h("p", { class: "desktop-notify-note", testid: "notifications-blocked" },
        "Desktop notifications are blocked for this site in your browser's settings."));
    } else {
      this.desktop.replaceChildren();
    }
    this.desktop.hidden = !this.desktop.childNodes.length;
  }

  _notifyFor(slug, m) {
    const s = this.client.roomState(slug);
    const info = this.client.room(slug)?.info;
    if (s?.muted) return false;
    const setting = s ? s.notify : info?.kind === "dm" ? "all" : "mentions";
    if (setting === "nothing") return false;
    if (setting === "all") return true;
    return !!m.mention_room || (m.mentions || []).some((u) => u.id === this.me.id);
  }

  _desktopNotify(slug, seq) {
    const N = window.Notification;
    if (!N || N.permission !== "granted") return;
    // None for the room the reader is looking at.
    if (slug === this.current() && document.visibilityState === "visible" && document.hasFocus()) return;
    const m = this.client.room(slug)?.messages.find((x) => x.seq === seq);
    if (!m || m.deleted || m.author?.id === this.me.id || !this._notifyFor(slug, m)) return;
    const text = m.text.length > DESKTOP_TEXT_CHARS ? `${m.text.slice(0, DESKTOP_TEXT_CHARS)}…` : m.text;
    try {
      const n = new N(`${m.author?.username ?? "Someone"} in #${slug}`, { body: text, tag: `parley-${slug}` });
      n.onclick = () => {
        window.focus();
        location.hash = `#/${slug}`;
      };
    } catch {
      // Some browsers allow notifications only from a service worker: nothing to show then.
    }
  }
}
