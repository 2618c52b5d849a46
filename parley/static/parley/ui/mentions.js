// The composer's "@" autocomplete: people in the room (online members and authors seen).
import { avatar, h } from "./dom.js";

const MAX_SHOWN = 8;
// "@" at the start or after a non-word character, then the part of a name typed so far.
const AT_WORD = /(?:^|[^\p{L}\p{N}_])@([\p{L}\p{N}_.+-]*)$/u;

/** Everyone the room shows: online members first, then authors of loaded messages; not me. */
export function roomPeople(snap, me) {
  const seen = new Map();
  for (const u of snap.members) seen.set(u.id, u);
  for (let i = snap.messages.length - 1; i >= 0; i--) {
    const a = snap.messages[i].author;
    if (a && !seen.has(a.id)) seen.set(a.id, a);
  }
  seen.delete(me.id);
  return [...seen.values()];
}

export class MentionAutocomplete {
  /** input: the textarea; listEl: the (hidden) listbox; people(): the candidates now;
   * profiles (optional, ui/profiles.js): display names and pictures to show and match. */
  constructor(input, listEl, people, profiles = null) {
    this.input = input;
    this.listEl = listEl;
    this.people = people;
    this.profiles = profiles;
    this.matches = [];
    this.active = 0;
    this.start = -1; // index of the "@" being completed
    // Closed a moment after the textarea loses focus (a click elsewhere), unless it has it
    // again by then: a list opened after a quick return must not be closed by the old blur.
    this.blurTimer = null;
    input.addEventListener("input", () => this.update());
    input.addEventListener("focus", () => clearTimeout(this.blurTimer));
    input.addEventListener("blur", () => {
      clearTimeout(this.blurTimer);
      this.blurTimer = setTimeout(() => this.close(), 150);
    });
  }

  get isOpen() {
    return !this.listEl.hidden;
  }

  update() {
    const caret = this.input.selectionStart;
    const before = this.input.value.slice(0, caret);
    const m = AT_WORD.exec(before);
    if (!m || this.input.selectionEnd !== caret) return this.close();
    const typed = m[1].toLowerCase();
    this.start = caret - m[1].length - 1;
    const named = (u) => (this.profiles && u.id !== "@room" ? this.profiles.name(u) : u.username).toLowerCase();
    this.matches = this.people()
      .filter((u) => u.username.toLowerCase().startsWith(typed) || named(u).split(/\s+/).some((w) => w.startsWith(typed)))
      .sort((a, b) => a.username.localeCompare(b.username))
      .slice(0, MAX_SHOWN);
    if (!this.matches.length) return this.close();
    this.active = Math.min(this.active, this.matches.length - 1);
    this.render();
    return undefined;
  }

  render() {
    this.listEl.hidden = false;
    this.listEl.replaceChildren(...this.matches.map((u, i) => h("li", {
      class: `mention-option${i === this.active ? " mention-option--active" : ""}`, role: "option",
      testid: "mention-option", dataset: { username: u.username }, "aria-selected": i === this.active ? "true" : "false",
      // pointerdown, not click: the textarea must not lose focus (and close the list) first.
      onpointerdown: (ev) => {
        ev.preventDefault();
        this.pick(u);
      },
    }, this.profiles && u.id !== "@room" ? this.profiles.avatar(u, "avatar--small") : avatar(u.username, "avatar--small"),
    h("span", { class: "mention-name" }, this.profiles && u.id !== "@room" ? this.profiles.name(u) : u.username),
    this.profiles && u.id !== "@room" && this.profiles.name(u) !== u.username
      ? h("span", { class: "mention-username" }, `@${u.username}`) : null)));
  }

  /** Keyboard while open: returns true when the key was used here. */
  keydown(ev) {
    if (!this.isOpen) return false;
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      const n = this.matches.length;
      this.active = (this.active + (ev.key === "ArrowDown" ? 1 : n - 1)) % n;
      this.render();
      return true;
    }
    if ((ev.key === "Enter" && !ev.shiftKey) || ev.key === "Tab") {
      this.pick(this.matches[this.active]);
      return true;
    }
    if (ev.key === "Escape") {
      this.close();
      return true;
    }
    return false;
  }

  pick(user) {
    const { value } = this.input;
    const caret = this.input.selectionStart;
    const insert = `@${user.username} `;
    this.input.value = value.slice(0, this.start) + insert + value.slice(caret);
    const at = this.start + insert.length;
    this.input.setSelectionRange(at, at);
    this.close();
    this.input.dispatchEvent(new Event("input", { bubbles: true }));
    this.input.focus();
  }

  close() {
    this.listEl.hidden = true;
    this.listEl.replaceChildren();
    this.matches = [];
    this.active = 0;
  }
}
