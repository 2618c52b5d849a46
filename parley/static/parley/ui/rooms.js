// Direct messages and the room's state on screen (docs/protocol.md §12): the "Direct messages"
// list apart from the rooms, the new-DM people picker (GET /api/users, POST /api/dms), and
// what a lost or archived room shows ("You were removed from #team", the composer disabled).
import { h, icon } from "./dom.js";
import { api } from "./sidebar.js";

/** The name a DM goes by for me: the other members (or its title). */
export function dmName(room, me) {
  const others = (room.members || []).filter((u) => u.id !== me.id).map((u) => u.username);
  return others.length ? others.join(", ") : room.title || room.slug;
}

/** Why the composer is off in this room, or null: lost (removed, left, deleted, gone) or archived. */
export function roomNotice(snap, slug, info) {
  if (snap?.removed) {
    const why = snap.removed.reason;
    if (why === "left") return { kind: "removed", text: `You left #${slug}.` };
    if (why === "deleted") return { kind: "removed", text: `#${slug} was deleted.` };
    if (why === "not_found") return { kind: "removed", text: `#${slug} is gone, or no longer open to you.` };
    return { kind: "removed", text: `You were removed from #${slug}.` };
  }
  if (snap?.archived || info?.archived) return { kind: "archived", text: "This room is archived: it is read-only." };
  return null;
}

/** A text box that suggests users as you type (GET /api/users?q=), debounced. */
export class UserPicker {
  constructor({ usersUrl, input, list, onPick, exclude = () => [] }) {
    this.usersUrl = usersUrl;
    this.input = input;
    this.list = list;
    this.onPick = onPick;
    this.exclude = exclude;
    this.timer = null;
    this.asked = "";
    input.setAttribute("autocomplete", "off");
    input.addEventListener("input", () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.lookup(), 200);
    });
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") {
        ev.preventDefault();
        const first = this.list.querySelector("button");
        if (first) first.click();
        else if (this.input.value.trim()) this.pick({ username: this.input.value.trim() });
      }
      if (ev.key === "Escape") this.clear();
    });
  }

  async lookup() {
    const q = this.input.value.trim();
    this.asked = q;
    if (!q) return this.clear();
    try {
      const { users } = await api(`${this.usersUrl}?q=${encodeURIComponent(q)}`);
      if (this.asked !== q) return undefined; // typed on meanwhile
      const skip = new Set(this.exclude());
      this.show(users.filter((u) => !skip.has(u.username)));
    } catch {
      this.clear(); // rate limited or off: typing the exact username still works (Enter)
    }
    return undefined;
  }

  show(users) {
    this.list.replaceChildren(...users.map((u) => h("li", {},
      h("button", { type: "button", class: "picker-option", testid: "user-option", dataset: { username: u.username },
        onclick: () => this.pick(u) }, u.username))));
    this.list.hidden = !users.length;
  }

  pick(user) {
    this.clear();
    this.input.value = "";
    this.onPick(user);
  }

  clear() {
    this.list.replaceChildren();
    this.list.hidden = true;
  }
}

/** The "Direct messages" list and the new-DM form, beside the rooms. */
export class DirectMessages {
  constructor({ me, dmsUrl, usersUrl, listEl, formEl, onOpen, flash }) {
    this.me = me;
    this.dmsUrl = dmsUrl;
    this.listEl = listEl;
    this.formEl = formEl;
    this.onOpen = onOpen;
    this.flash = flash;
    this.rooms = [];
    this.current = null;
    this.chosen = [];
    const input = formEl.querySelector("[data-testid=dm-input]");
    this.chipsEl = formEl.querySelector("[data-testid=dm-chosen]");
    this.picker = new UserPicker({
      usersUrl, input, list: formEl.querySelector("[data-testid=dm-options]"),
      exclude: () => [me.username, ...this.chosen],
      onPick: (u) => {
        if (!this.chosen.includes(u.username)) this.chosen.push(u.username);
        this.renderChosen();
      },
    });
    formEl.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.start();
    });
  }

  /** The DMs of GET /api/rooms (their room objects). */
  setRooms(rooms) {
    this.rooms = rooms.filter((r) => r.kind === "dm");
    this.render();
  }

  setCurrent(slug) {
    this.current = slug;
    this.render();
  }

  render() {
    this.listEl.replaceChildren(...this.rooms.map((room) => {
      const active = room.slug === this.current;
      return h("li", {}, h("a", {
        href: `#/${encodeURIComponent(room.slug)}`,
        class: `room-link${active ? " room-link--active" : ""}`,
        testid: "dm-link", dataset: { slug: room.slug },
        "aria-current": active ? "page" : null,
        onclick: () => this.onOpen(room.slug),
      }, h("span", { class: "room-hash" }, icon("people")), h("span", { class: "room-name" }, dmName(room, this.me))));
    }));
  }

  renderChosen() {
    this.chipsEl.replaceChildren(...this.chosen.map((name) => h("span", { class: "chip", testid: "dm-chip" }, name,
      h("button", { type: "button", class: "icon-btn chip-x", "aria-label": `Remove ${name}`,
        onclick: () => {
          this.chosen = this.chosen.filter((n) => n !== name);
          this.renderChosen();
        } }, icon("close")))));
  }

  async start() {
    if (!this.chosen.length) return this.flash("Pick at least one person.");
    try {
      const { room } = await api(this.dmsUrl, { method: "POST", body: { usernames: this.chosen } });
      this.chosen = [];
      this.renderChosen();
      this.formEl.closest("details")?.removeAttribute("open");
      if (!this.rooms.find((r) => r.slug === room.slug)) this.rooms = [...this.rooms, room];
      this.render();
      this.onOpen(room.slug);
      location.hash = `#/${encodeURIComponent(room.slug)}`;
    } catch (err) {
      this.flash(err.code === "user_not_found" ? "No such user." : err.message);
    }
    return undefined;
  }
}
