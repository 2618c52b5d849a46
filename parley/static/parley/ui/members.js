// The members panel of a private room (docs/protocol.md §12): who is in it and their roles
// (GET /api/rooms/<slug>/members); for its owner or an admin, add (with autocomplete), remove,
// make moderator, archive; for everyone, leave. The server decides; this only offers.
import { h } from "./dom.js";
import { api } from "./sidebar.js";
import { UserPicker } from "./rooms.js";

export class MembersPanel {
  constructor({ me, admin, roomsUrl, usersUrl, el, flash, onChanged }) {
    this.me = me;
    this.admin = admin;
    this.roomsUrl = roomsUrl;
    this.el = el;
    this.flash = flash;
    this.onChanged = onChanged;
    this.slug = null;
    this.info = null;
    this.members = [];
    this.listEl = el.querySelector("[data-testid=roster]");
    this.addForm = el.querySelector("[data-testid=member-add]");
    this.actionsEl = el.querySelector("[data-testid=room-actions]");
    this.picker = new UserPicker({
      usersUrl, input: this.addForm.querySelector("input"), list: this.addForm.querySelector("[data-testid=member-options]"),
      exclude: () => this.members.map((m) => m.username),
      onPick: (u) => this.add(u.username),
    });
    this.addForm.addEventListener("submit", (ev) => ev.preventDefault());
  }

  url(path = "") {
    return `${this.roomsUrl}/${encodeURIComponent(this.slug)}${path}`;
  }

  get canManage() {
    return !!this.info && this.info.kind !== "dm" && (this.admin || this.members.some((m) => m.id === this.me.id && m.role === "owner"));
  }

  /** Show the room `slug` (room object `info`, null while unknown); reloads its memberships. */
  async show(slug, info) {
    const changed = slug !== this.slug;
    this.slug = slug;
    this.info = info;
    if (changed) this.members = [];
    this.render();
    if (!info || info.removed) return;
    try {
      const { members } = await api(this.url("/members"));
      if (slug !== this.slug) return;
      this.members = members;
    } catch {
      this.members = [];
    }
    this.render();
  }

  render() {
    const info = this.info;
    const lost = !info || info.removed;
    this.el.hidden = lost;
    if (lost) return;
    const privateRoom = info.private && info.kind !== "dm";
    this.listEl.replaceChildren(...(info.private ? this.members : []).map((m) => h("li", { class: "roster-item", testid: "roster-member", dataset: { username: m.username, role: m.role } },
      h("span", { class: "member-name" }, m.username),
      m.role !== "member" ? h("span", { class: "role-tag", testid: "role" }, m.role) : null,
      this.canManage && privateRoom && m.role !== "owner" ? [
        h("button", { type: "button", class: "link-btn", testid: "member-role",
          onclick: () => this.setRole(m.username, m.role === "moderator" ? "member" : "moderator") },
        m.role === "moderator" ? "Make member" : "Make moderator"),
        h("button", { type: "button", class: "link-btn", testid: "member-remove", onclick: () => this.remove(m.username) }, "Remove"),
      ] : null)));
    this.addForm.hidden = !(this.canManage && privateRoom);
    const mine = this.members.find((m) => m.id === this.me.id);
    this.actionsEl.replaceChildren(
      this.canManage ? h("button", { type: "button", class: "btn btn--ghost btn--small", testid: "room-archive",
        onclick: () => this.archive(!info.archived) }, info.archived ? "Unarchive room" : "Archive room") : null,
      mine?.role !== "owner" ? h("button", { type: "button", class: "btn btn--ghost btn--small", testid: "room-leave",
        onclick: () => this.leave() }, info.kind === "dm" ? "Hide conversation" : "Leave room") : null,
    );
  }

  async call(path, method, body, done) {
    try {
      const answer = await api(this.url(path), { method, body });
      if (done) done(answer);
      await this.show(this.slug, this.info);
      this.onChanged?.();
    } catch (err) {
      this.flash(err.message);
    }
  }

  add(username) {
    return this.call("/members", "POST", { username });
  }

  remove(username) {
    return this.call(`/members/${encodeURIComponent(username)}`, "DELETE");
  }

  setRole(username, role) {
    return this.call(`/members/${encodeURIComponent(username)}`, "PATCH", { role });
  }

  archive(archived) {
    return this.call("", "PATCH", { archived }, ({ room }) => {
      this.info = { ...this.info, ...room };
    });
  }

  leave() {
    return this.call("/leave", "POST");
  }
}
