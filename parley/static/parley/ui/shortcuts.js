// Keyboard: the room switcher (Ctrl/Cmd+K), Alt+Up/Down between rooms, Escape, the `?` list,
// the skip links, and a roving tabindex over the timeline (Up/Down between messages, Enter to
// reach a message's actions, Left/Right along them, Escape back to the message).
//
// Escape closes the topmost thing: the switcher or the shortcut list if open, else everything
// else at once — app.js's `closeAll` hook (the drawers, action menus, the emoji picker) and any
// other module's panel: they listen for the `parley:escape` event on document
// (`document.addEventListener("parley:escape", () => myPanel.close())`). A control that uses
// Escape itself (the message editor, the @-list) stops the event's propagation first.
import { h } from "./dom.js";

export const SHORTCUTS = [
  ["Ctrl K / ⌘ K", "Switch to a room: type to filter, Enter to open"],
  ["Alt ↑ / Alt ↓", "Previous / next room"],
  ["↑ / ↓ on a message", "Previous / next message (Home / End: first / last)"],
  ["Enter on a message", "Its actions (← → between them, Escape back)"],
  ["↑ in an empty message box", "Edit your last message"],
  ["Escape", "Close the open panel, menu or picker"],
  ["?", "This list"],
];

const MAX_SHOWN = 50;
const MESSAGE = '[data-testid="message"]';

/** Is the key typed into a text field (where `?` is a character, not a command)? */
function typing(target) {
  const t = target?.closest?.("input, textarea, select, [contenteditable=''], [contenteditable=true]");
  return !!t && !(t.tagName === "INPUT" && ["checkbox", "radio", "button", "submit"].includes(t.type));
}

export class Shortcuts {
  /**
   * rooms(): [{slug, title, private, kind?}] in the sidebar's order; current(): the slug on
   * screen; open(slug): show that room; closeAll(): close the app's panels and menus;
   * timeline: the scrolling element; list: the message list; composer: the message box.
   */
  constructor({ rooms, current, open, closeAll, timeline, list, composer }) {
    Object.assign(this, { rooms, current, open, closeAll, timeline, list, composer });
    this.rovingSeq = null; // the message that holds tabindex 0 (null: the newest)
    this.lastFocus = null; // {key, tool}: where focus was in the timeline, to restore after a re-render
    this.returnFocus = null;
    this.buildSwitcher();
    this.buildHelp();
    document.addEventListener("keydown", (ev) => this.keydown(ev));
    for (const link of document.querySelectorAll("[data-skip-to]")) {
      link.addEventListener("click", (ev) => {
        ev.preventDefault(); // not a hash change: the hash is the app's route
        if (link.dataset.skipTo === "messages") this.focusMessage(this.items().at(-1));
        else this.composer.focus();
      });
    }
    for (const btn of document.querySelectorAll('[data-testid="shortcuts-open"]')) btn.addEventListener("click", () => this.openHelp());
    this.list.addEventListener("keydown", (ev) => this.timelineKey(ev));
    this.list.addEventListener("focusin", (ev) => {
      const msg = ev.target.closest(MESSAGE);
      if (!msg) return;
      this.rovingSeq = keyOf(msg);
      this.lastFocus = { key: keyOf(msg), tool: ev.target === msg ? null : ev.target.dataset.testid || null };
      this.updateRoving();
    });
    this.list.addEventListener("focusout", (ev) => {
      if (!ev.relatedTarget || !this.list.contains(ev.relatedTarget)) {
        // Leaving the timeline for elsewhere (not a re-render swapping the element): forget it.
        queueMicrotask(() => {
          if (document.activeElement && document.activeElement !== document.body) this.lastFocus = null;
        });
      }
    });
    // The timeline is re-rendered on every event: keep one tab stop, and the focus, across it.
    this.observer = new MutationObserver(() => this.afterRender());
    this.observer.observe(this.list, { childList: true, subtree: true });
  }

  // --- global keys -------------------------------------------------------------------------

  keydown(ev) {
    if (ev.defaultPrevented || ev.isComposing) return;
    const mod = ev.ctrlKey || ev.metaKey;
    if (mod && !ev.altKey && !ev.shiftKey && ev.key.toLowerCase() === "k") {
      ev.preventDefault();
      if (this.switcherOpen) this.closeSwitcher();
      else this.openSwitcher();
      return;
    }
    if (ev.altKey && !mod && (ev.key === "ArrowUp" || ev.key === "ArrowDown")) {
      if (this.switcherOpen) return;
      ev.preventDefault();
      this.step(ev.key === "ArrowUp" ? -1 : 1);
      return;
    }
    if (ev.key === "Escape") {
      if (this.switcherOpen) this.closeSwitcher();
      else if (this.helpOpen) this.closeHelp();
      else this.escape();
      return;
    }
    if (ev.key === "?" && !mod && !ev.altKey && !typing(ev.target) && !this.switcherOpen) {
      ev.preventDefault();
      if (this.helpOpen) this.closeHelp();
      else this.openHelp();
    }
  }

  escape() {
    this.closeAll();
    document.dispatchEvent(new CustomEvent("parley:escape"));
  }

  /** Alt+Up/Down: the room before / after the current one, wrapping around. */
  step(delta) {
    const rooms = this.rooms();
    if (!rooms.length) return;
    const at = rooms.findIndex((r) => r.slug === this.current());
    const next = rooms[(at + delta + rooms.length) % rooms.length];
    if (next && next.slug !== this.current()) this.open(next.slug);
  }

  // --- the room switcher -------------------------------------------------------------------

  buildSwitcher() {
    this.switcherInput = h("input", {
      type: "text", class: "switcher-input", testid: "switcher-input", role: "combobox", "aria-expanded": "true",
      "aria-controls": "switcher-list", "aria-autocomplete": "list", "aria-label": "Room name", placeholder: "Go to a room…",
      autocomplete: "off", spellcheck: "false",
    });
    this.switcherList = h("ul", { class: "switcher-list", id: "switcher-list", testid: "switcher-list", role: "listbox", "aria-label": "Rooms" });
    this.switcher = h("div", { class: "dialog-scrim", testid: "switcher", hidden: true },
      h("div", { class: "dialog switcher", role: "dialog", "aria-modal": "true", "aria-label": "Switch room" },
        this.switcherInput, this.switcherList,
        h("p", { class: "dialog-hint" }, "↑ ↓ to choose · Enter to open · Escape to close")));
    this.switcher.addEventListener("pointerdown", (ev) => {
      if (ev.target === this.switcher) this.closeSwitcher();
    });
    this.switcherInput.addEventListener("input", () => {
      this.active = 0;
      this.renderSwitcher();
    });
    this.switcherInput.addEventListener("keydown", (ev) => {
      const n = this.matches.length;
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        ev.preventDefault();
        if (n) this.active = (this.active + (ev.key === "ArrowDown" ? 1 : n - 1)) % n;
        this.renderSwitcher();
      } else if (ev.key === "Enter") {
        ev.preventDefault();
        const pick = this.matches[this.active];
        if (pick) this.pick(pick.slug);
      } else if (ev.key === "Tab") {
        ev.preventDefault(); // a modal dialog keeps the focus
      }
    });
    document.body.append(this.switcher);
    this.matches = [];
    this.active = 0;
  }

  get switcherOpen() {
    return !this.switcher.hidden;
  }

  openSwitcher() {
    this.closeHelp();
    this.returnFocus = document.activeElement;
    this.switcher.hidden = false;
    this.switcherInput.value = "";
    this.active = 0;
    this.renderSwitcher();
    this.switcherInput.focus();
  }

  closeSwitcher(restore = true) {
    if (!this.switcherOpen) return;
    this.switcher.hidden = true;
    if (restore) (this.returnFocus?.isConnected ? this.returnFocus : this.composer).focus({ preventScroll: true });
  }

  pick(slug) {
    this.closeSwitcher(false);
    if (slug !== this.current()) this.open(slug);
    this.composer.focus();
  }

  renderSwitcher() {
    const q = this.switcherInput.value.trim().toLowerCase().replace(/^#/, "");
    const rank = (r) => {
      const title = (r.title || "").toLowerCase();
      if (!q) return 0;
      if (r.slug.startsWith(q) || title.startsWith(q)) return 1;
      if (r.slug.includes(q) || title.includes(q)) return 2;
      return -1;
    };
    this.matches = this.rooms().map((r) => [rank(r), r]).filter(([k]) => k >= 0)
      .sort((a, b) => a[0] - b[0]).map(([, r]) => r).slice(0, MAX_SHOWN);
    this.active = Math.min(this.active, Math.max(0, this.matches.length - 1));
    const options = this.matches.map((r, i) => h("li", {
      class: `switcher-option${i === this.active ? " switcher-option--active" : ""}`, role: "option", id: `switcher-opt-${i}`,
      testid: "switcher-option", dataset: { slug: r.slug }, "aria-selected": i === this.active ? "true" : "false",
      onpointerdown: (ev) => {
        ev.preventDefault();
        this.pick(r.slug);
      },
    },
    h("span", { class: "switcher-title" }, r.title || r.slug),
    r.title && r.title !== r.slug ? h("span", { class: "switcher-slug" }, `#${r.slug}`) : null,
    r.slug === this.current() ? h("span", { class: "switcher-here" }, "open") : null));
    this.switcherList.replaceChildren(...(options.length ? options : [h("li", { class: "switcher-empty", testid: "switcher-empty" }, "No room matches")]));
    if (this.matches.length) this.switcherInput.setAttribute("aria-activedescendant", `switcher-opt-${this.active}`);
    else this.switcherInput.removeAttribute("aria-activedescendant");
    this.switcherList.children[this.active]?.scrollIntoView({ block: "nearest" });
  }

  // --- the shortcut list -------------------------------------------------------------------

  buildHelp() {
    this.helpClose = h("button", { type: "button", class: "btn btn--small", testid: "shortcuts-close", onclick: () => this.closeHelp() }, "Close");
    this.help = h("div", { class: "dialog-scrim", testid: "shortcuts", hidden: true },
      h("div", { class: "dialog shortcuts", role: "dialog", "aria-modal": "true", "aria-labelledby": "shortcuts-title" },
        h("h2", { id: "shortcuts-title", class: "dialog-title" }, "Keyboard shortcuts"),
        h("dl", { class: "shortcut-list" }, ...SHORTCUTS.flatMap(([keys, what]) => [
          h("dt", {}, ...keys.split(" / ").flatMap((k, i) => [i ? " / " : null, h("kbd", {}, k)])),
          h("dd", {}, what)])),
        this.helpClose));
    this.help.addEventListener("pointerdown", (ev) => {
      if (ev.target === this.help) this.closeHelp();
    });
    this.help.addEventListener("keydown", (ev) => {
      if (ev.key === "Tab") {
        ev.preventDefault(); // one control: keep the focus in the dialog
        this.helpClose.focus();
      }
    });
    document.body.append(this.help);
  }

  get helpOpen() {
    return !this.help.hidden;
  }

  openHelp() {
    this.returnFocus = document.activeElement;
    this.help.hidden = false;
    this.helpClose.focus();
  }

  closeHelp() {
    if (!this.helpOpen) return;
    this.help.hidden = true;
    (this.returnFocus?.isConnected ? this.returnFocus : this.composer).focus({ preventScroll: true });
  }

  // --- the timeline: one tab stop, arrows between messages ---------------------------------

  items() {
    return [...this.list.querySelectorAll(MESSAGE)];
  }

  focusMessage(msg) {
    if (!msg) return;
    this.rovingSeq = keyOf(msg);
    this.updateRoving();
    msg.focus();
    msg.scrollIntoView({ block: "nearest" });
  }

  /** Exactly one message (and only its controls) in the tab order; the others by arrow keys. */
  updateRoving() {
    const items = this.items();
    const current = items.find((m) => keyOf(m) === this.rovingSeq) || items.at(-1);
    for (const m of items) {
      const want = m === current ? 0 : -1;
      // Every event re-renders the timeline, mostly into the same cached elements: only new
      // ones and the two whose turn changed are touched.
      if (m.hasAttribute("tabindex") && m.tabIndex === want) continue;
      m.tabIndex = want;
      if (!m.hasAttribute("aria-label")) {
        m.setAttribute("role", "article");
        m.setAttribute("aria-label", describe(m));
      }
      for (const c of m.querySelectorAll("button, a[href], textarea")) {
        // The edit box is focused on purpose; links in the text stay tab stops (they are the
        // content), and the rendered text keeps exactly the attributes markdown.js gives it.
        if (c.closest(".msg-editor, .msg-text")) continue;
        c.tabIndex = want;
      }
    }
  }

  afterRender() {
    this.updateRoving();
    // A re-render replaced the focused element (actions opened, a delete asked to confirm):
    // focus its replacement, same message, same control.
    const lost = !document.activeElement || document.activeElement === document.body;
    if (!lost || !this.lastFocus) return;
    const msg = this.items().find((m) => keyOf(m) === this.lastFocus.key);
    if (!msg) return;
    const tool = this.lastFocus.tool && msg.querySelector(`[data-testid="${this.lastFocus.tool}"]`);
    (tool || msg).focus({ preventScroll: true });
  }

  timelineKey(ev) {
    const msg = ev.target.closest?.(MESSAGE);
    if (!msg || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    if (ev.target === msg) {
      const items = this.items();
      const at = items.indexOf(msg);
      const to = { ArrowUp: at - 1, ArrowDown: at + 1, Home: 0, End: items.length - 1 }[ev.key];
      if (to !== undefined) {
        ev.preventDefault();
        this.focusMessage(items[Math.max(0, Math.min(items.length - 1, to))]);
      } else if (ev.key === "Enter" || ev.key === " ") {
        const first = msg.querySelector(".msg-tools button, .msg-actions button, button");
        if (first) {
          ev.preventDefault();
          first.focus();
        }
      }
      return;
    }
    // Inside a message: Left/Right along its toolbar, Escape back to the message.
    const bar = ev.target.closest('[role="toolbar"]');
    if (bar && (ev.key === "ArrowLeft" || ev.key === "ArrowRight")) {
      const buttons = [...bar.querySelectorAll("button")];
      const at = buttons.indexOf(ev.target);
      ev.preventDefault();
      buttons[(at + (ev.key === "ArrowRight" ? 1 : buttons.length - 1)) % buttons.length]?.focus();
    } else if (ev.key === "Escape" && ev.target.tagName !== "TEXTAREA") {
      ev.preventDefault();
      ev.stopPropagation(); // back one level only: the panels stay as they are
      this.lastFocus = { key: keyOf(msg), tool: null };
      msg.focus();
      this.closeAll();
      document.dispatchEvent(new CustomEvent("parley:escape"));
    }
  }
}

/** A message's identity across re-renders: its seq, or a pending send's client id. */
function keyOf(msg) {
  return msg.dataset.seq ? `s${msg.dataset.seq}` : `c${msg.dataset.clientId || ""}`;
}

/** What a screen reader says on reaching a message: who, and what (the text is read after). */
function describe(msg) {
  const group = msg.closest(".msg-group");
  const author = msg.dataset.author || group?.querySelector('[data-testid="message-author"]')?.textContent || "";
  const time = (msg.querySelector("time") || group?.querySelector("time"))?.getAttribute("title") || "";
  const text = msg.querySelector('[data-testid="message-text"], [data-testid="message-tombstone"]')?.textContent || "";
  return [author, Array.from(text).slice(0, 200).join(""), time].filter(Boolean).join(", ");
}
