// People: display names and avatars (docs/protocol.md §15). The wire's user object is only
// {id, username}; names and pictures are looked up by id in batches and cached, and whoever
// renders asks synchronously (name(), avatar()) and is re-rendered when an answer arrives.
import { colourFor, h } from "./dom.js";
import { api } from "./sidebar.js";

const BATCH_DELAY_MS = 30; // gather the ids one render asks for into one request
// Profiles are not pushed: one shown is re-read when it is older than this and rendered again
// (a new message by that person, say), so a changed name shows within a minute of activity.
const PROFILE_TTL_MS = 60_000;
const MAX_IDS = 100; // the server's PARLEY_MAX_PROFILE_IDS default
const AVATAR_MAX_BYTES = 2 * 1024 * 1024; // PARLEY_AVATAR_MAX_BYTES: refused before upload

export class Profiles {
  constructor({ url, profileUrl, avatarUrl, onChange }) {
    this.url = url; // GET ?ids=
    this.profileUrl = profileUrl; // GET/PATCH yours
    this.avatarUrl = avatarUrl; // PUT/DELETE yours
    this.onChange = onChange;
    this.ttlMs = PROFILE_TTL_MS;
    this.byId = new Map();
    this.askedAt = new Map(); // id → when it was last requested (answered or in flight)
    this.wanted = new Set();
    this.timer = null;
  }

  /** The name to show for a wire user object. */
  name(user) {
    if (!user) return "?";
    return this.get(user)?.name || user.username || "?";
  }

  get(user) {
    if (!user || typeof user.id !== "number") return null;
    this.want(user.id);
    return this.byId.get(user.id) || null;
  }

  /** An avatar element: the user's picture, or initials on their colour. */
  avatar(user, cls = "") {
    const p = this.get(user);
    const label = p?.name || user?.username || "?";
    if (p?.avatar) {
      // width/height fixed by CSS; the attributes keep the layout still while it loads.
      return h("img", { class: `avatar avatar--img ${cls}`.trim(), src: p.avatar, alt: "", width: "32", height: "32",
        "aria-hidden": "true", loading: "lazy", decoding: "async" });
    }
    const el = h("span", { class: `avatar ${cls}`.trim(), "aria-hidden": "true" });
    el.textContent = (Array.from(String(label))[0] || "?").toUpperCase();
    el.style.background = colourFor(user?.username ?? label);
    return el;
  }

  want(id) {
    const at = this.askedAt.get(id);
    if (at !== undefined && Date.now() - at < this.ttlMs) return;
    this.askedAt.set(id, Date.now());
    this.wanted.add(id);
    if (!this.timer) this.timer = setTimeout(() => this.flush(), BATCH_DELAY_MS);
  }

  async flush() {
    this.timer = null;
    const ids = [...this.wanted];
    this.wanted.clear();
    for (let i = 0; i < ids.length; i += MAX_IDS) {
      const chunk = ids.slice(i, i + MAX_IDS);
      try {
        const { profiles } = await api(`${this.url}?ids=${chunk.join(",")}`);
        for (const p of profiles) this.byId.set(p.id, p);
        this.onChange();
      } catch {
        for (const id of chunk) this.askedAt.delete(id); // asked again on the next render
      }
    }
  }

  /** After a reconnect: names and pictures may have changed meanwhile. */
  refresh() {
    this.askedAt.clear();
    for (const id of this.byId.keys()) this.want(id);
  }

  _store(profile) {
    this.byId.set(profile.id, profile);
    this.askedAt.set(profile.id, Date.now());
    this.onChange();
    return profile;
  }

  async setDisplayName(name) {
    const { profile } = await api(this.profileUrl, { method: "PATCH", body: { display_name: name } });
    return this._store(profile);
  }

  async setAvatar(file) {
    if (file.size > AVATAR_MAX_BYTES) {
      const err = new Error("That picture is larger than 2 MB.");
      err.code = "avatar_too_large";
      throw err;
    }
    const { profile } = await api(this.avatarUrl, { method: "PUT", raw: file });
    return this._store(profile);
  }

  async clearAvatar() {
    const { profile } = await api(this.avatarUrl, { method: "DELETE" });
    return this._store(profile);
  }
}

/** The "your profile" dialog: display name and picture. */
export function openProfileDialog(people, me, { onClose } = {}) {
  const current = people.get(me) || { name: me.username, display_name: "", avatar: null };
  const error = h("p", { class: "form-error", testid: "profile-error", role: "alert", hidden: true });
  const nameInput = h("input", { name: "display_name", maxlength: "64", autocomplete: "name", testid: "profile-name",
    placeholder: me.username, value: current.display_name || "" });
  const fileInput = h("input", { type: "file", accept: "image/png,image/jpeg,image/gif,image/webp", testid: "profile-avatar-file" });
  const preview = h("span", { class: "profile-preview" }, people.avatar(me, "avatar--large"));
  const showError = (err) => {
    error.textContent = err.message || String(err);
    error.hidden = false;
  };
  const repaint = () => preview.replaceChildren(people.avatar(me, "avatar--large"));
  fileInput.addEventListener("change", async () => {
    const file = fileInput.files?.[0];
    if (!file) return;
    error.hidden = true;
    try {
      await people.setAvatar(file);
      repaint();
    } catch (err) {
      showError(err);
    }
    fileInput.value = "";
  });
  const remove = h("button", { type: "button", class: "btn btn--ghost btn--small", testid: "profile-avatar-remove",
    onclick: async () => {
      try {
        await people.clearAvatar();
        repaint();
      } catch (err) {
        showError(err);
      }
    } }, "Remove picture");
  const dialog = h("dialog", { class: "profile-dialog", testid: "profile-dialog", "aria-labelledby": "profile-dialog-title" },
    h("form", { method: "dialog", class: "profile-form", testid: "profile-form" },
      h("h2", { id: "profile-dialog-title" }, "Your profile"),
      h("div", { class: "profile-avatar-row" }, preview,
        h("label", { class: "btn btn--ghost btn--small profile-upload" }, "Upload picture", fileInput), remove),
      h("label", {}, "Display name", nameInput),
      h("p", { class: "profile-hint" }, `Others see this instead of @${me.username}. Leave empty to show your username.`),
      error,
      h("div", { class: "profile-buttons" },
        h("button", { type: "button", class: "btn btn--ghost", testid: "profile-cancel", onclick: () => dialog.close() }, "Cancel"),
        h("button", { type: "submit", class: "btn btn--primary", testid: "profile-save" }, "Save"))));
  dialog.querySelector("form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    try {
      await people.setDisplayName(nameInput.value);
      dialog.close();
    } catch (err) {
      showError(err);
    }
  });
  dialog.addEventListener("close", () => {
    dialog.remove();
    onClose?.();
  });
  document.body.append(dialog);
  dialog.showModal();
  nameInput.focus();
  return dialog;
}

/** A small card for someone (clicked from their name or picture). */
export function openProfileCard(people, user, anchor) {
  document.querySelector(".profile-card")?.remove();
  const card = h("div", { class: "profile-card", testid: "profile-card", role: "dialog", "aria-label": `Profile of ${people.name(user)}` },
    people.avatar(user, "avatar--large"),
    h("div", { class: "profile-card-text" },
      h("strong", { testid: "profile-card-name" }, people.name(user)),
      h("span", { class: "profile-card-username", testid: "profile-card-username" }, `@${user.username}`)));
  const close = (ev) => {
    if (ev && (card.contains(ev.target) || ev.target === anchor)) return;
    card.remove();
    document.removeEventListener("pointerdown", close, true);
    document.removeEventListener("keydown", onKey, true);
  };
  const onKey = (ev) => {
    if (ev.key === "Escape") close();
  };
  document.addEventListener("pointerdown", close, true);
  document.addEventListener("keydown", onKey, true);
  const rect = anchor.getBoundingClientRect();
  card.style.top = `${Math.min(window.innerHeight - 120, rect.bottom + 6)}px`;
  card.style.left = `${Math.max(8, Math.min(window.innerWidth - 260, rect.left))}px`;
  document.body.append(card);
  return card;
}
