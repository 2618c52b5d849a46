// Rooms: the list from GET /api/rooms, unread counts, and the "new room" form (POST /api/rooms).
import { h, icon, readCookie } from "./dom.js";

/** A JSON API call; `body` is sent as JSON, `raw` (a Blob, e.g. a File) as itself. */
export async function api(path, { method = "GET", body, raw } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (raw !== undefined) headers["Content-Type"] = raw.type || "application/octet-stream";
  if (method !== "GET") headers["X-CSRFToken"] = readCookie("csrftoken");
  const res = await fetch(path, {
    method, headers, credentials: "same-origin", body: raw !== undefined ? raw : body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = new Error(data?.error?.message || `${res.status} ${res.statusText}`);
    err.status = res.status;
    err.code = data?.error?.code;
    err.fields = data?.error?.fields;
    throw err;
  }
  return data;
}

export class Sidebar {
  constructor({ roomsUrl, listEl, formEl, errorEl, detailsEl, onSelect, decorate = null }) {
    this.decorate = decorate; // (link, room) => void: adds what the room list knows of the room
    this.roomsUrl = roomsUrl; // GET/POST rooms, under the prefix the host mounted Parley at
    this.listEl = listEl;
    this.formEl = formEl;
    this.errorEl = errorEl;
    this.detailsEl = detailsEl;
    this.onSelect = onSelect;
    this.rooms = [];
    this.next = null; // GET /api/rooms' next page (after this slug), if any
    this.unread = new Map();
    this.current = null;
    formEl.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.create();
    });
    const slug = formEl.elements.slug;
    const title = formEl.elements.title;
    // Suggest a slug from the title until the user edits the slug.
    title.addEventListener("input", () => {
      if (slug.dataset.touched) return;
      slug.value = title.value.toLowerCase().trim().replace(/[^a-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 50);
    });
    slug.addEventListener("input", () => {
      slug.dataset.touched = "1";
    });
  }

  /** The first page of the rooms the user may see (GET /api/rooms: 500 by slug, then `next`). */
  async load() {
    const data = await api(this.roomsUrl);
    this.rooms = data.rooms;
    this.next = data.next || null;
    this.render();
    return this.rooms;
  }

  /** The following page, after "More rooms". */
  async loadMore() {
    if (!this.next) return;
    const data = await api(`${this.roomsUrl}?after=${encodeURIComponent(this.next)}`);
    const known = new Set(this.rooms.map((r) => r.slug));
    this.rooms = this.rooms.concat(data.rooms.filter((r) => !known.has(r.slug)));
    this.next = data.next || null;
    this.render();
  }

  find(slug) {
    return this.rooms.find((r) => r.slug === slug) || null;
  }

  setCurrent(slug) {
    this.current = slug;
    this.unread.delete(slug);
    this.render();
  }

  bumpUnread(slug) {
    if (slug === this.current) return;
    this.unread.set(slug, (this.unread.get(slug) || 0) + 1);
    this.render();
  }

  render() {
    // Direct messages have their own list (ui/rooms.js).
    const items = this.rooms.filter((room) => room.kind !== "dm").map((room) => {
      const unread = this.unread.get(room.slug) || 0;
      const active = room.slug === this.current;
      const link = h("a", {
          href: `#/${encodeURIComponent(room.slug)}`,
          class: `room-link${active ? " room-link--active" : ""}${unread ? " room-link--unread" : ""}`,
          testid: "room-link",
          dataset: { slug: room.slug },
          "aria-current": active ? "page" : null,
          onclick: () => this.onSelect(room.slug),
        },
        h("span", { class: "room-hash", title: room.private ? "Private" : null }, icon(room.private ? "lock" : "hash")),
        h("span", { class: "room-name" }, room.title || room.slug),
        unread ? h("span", { class: "badge", testid: "unread", "aria-label": `${unread} unread` }, unread > 99 ? "99+" : String(unread)) : null);
      if (this.decorate) this.decorate(link, room); // badges from the room list (ui/attention.js)
      return h("li", {}, link);
    });
    if (this.next) {
      items.push(h("li", {}, h("button", { type: "button", class: "btn btn--small rooms-more", testid: "rooms-more",
        onclick: () => this.loadMore().catch(() => {}) }, "More rooms…")));
    }
    this.listEl.replaceChildren(...items);
  }

  async create() {
    const f = this.formEl.elements;
    const body = { slug: f.slug.value.trim().toLowerCase(), title: f.title.value.trim(), private: f.private.checked };
    this.showError("");
    if (!/^[a-z0-9_-]{1,50}$/.test(body.slug)) return this.showError("Slug: 1–50 of a–z, 0–9, - and _.");
    if (!body.title || body.title.length > 100) return this.showError("Title: 1–100 characters.");
    f.slug.disabled = f.title.disabled = true;
    try {
      const { room } = await api(this.roomsUrl, { method: "POST", body });
      this.rooms = [...this.rooms.filter((r) => r.slug !== room.slug), room];
      this.formEl.reset();
      delete f.slug.dataset.touched;
      this.detailsEl.open = false;
      this.render();
      this.onSelect(room.slug);
      location.hash = `#/${encodeURIComponent(room.slug)}`;
    } catch (err) {
      this.showError(err.code === "room_exists" ? `A room “${body.slug}” already exists.` : err.message);
    } finally {
      f.slug.disabled = f.title.disabled = false;
    }
    return undefined;
  }

  showError(text) {
    this.errorEl.textContent = text;
    this.errorEl.hidden = !text;
  }
}
