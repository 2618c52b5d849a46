// A small built-in emoji picker (no CDN, no font download): one popover reused for every message.
import { h } from "./dom.js";

export const QUICK = ["👍", "❤️", "😂", "🎉", "👀", "🙏"];
export const EMOJI = [
  "👍", "👎", "❤️", "😂", "🎉", "👀", "🙏", "🔥", "✅", "❌", "😀", "😃", "😄", "😁", "😅", "🤣",
  "😊", "😍", "😘", "😎", "🤔", "🤨", "😐", "🙄", "😬", "😢", "😭", "😡", "🤯", "😱", "🥳", "😴",
  "🤝", "👏", "🙌", "💪", "👋", "✌️", "🤞", "👌", "💯", "⭐", "🚀", "💡", "⚠️", "❓", "☕", "🍕",
];

/**
 * picker.open(anchorEl, onPick) shows the grid next to the anchor; a click on an emoji calls
 * onPick(emoji) and closes it. Escape, a click outside, or opening it again closes it.
 */
export class EmojiPicker {
  constructor() {
    this.onPick = null;
    this.el = h("div", { class: "emoji-picker", testid: "emoji-picker", role: "dialog", "aria-label": "Pick a reaction", hidden: true },
      ...EMOJI.map((e) => h("button", {
        type: "button", class: "emoji-btn", testid: "emoji-option", dataset: { emoji: e }, "aria-label": e,
        onclick: (ev) => {
          ev.stopPropagation();
          const pick = this.onPick;
          this.close();
          if (pick) pick(e);
        },
      }, e)));
    document.body.append(this.el);
    document.addEventListener("pointerdown", (ev) => {
      if (!this.el.hidden && !this.el.contains(ev.target) && !ev.target.closest?.("[data-picker-anchor]")) this.close();
    });
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && !this.el.hidden) this.close();
    });
    // Arrow keys move through the grid (its column count depends on the screen width).
    this.el.addEventListener("keydown", (ev) => {
      const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -this.columns(), ArrowDown: this.columns() }[ev.key];
      if (!step) return;
      ev.preventDefault();
      const buttons = [...this.el.querySelectorAll("button")];
      const at = buttons.indexOf(document.activeElement);
      buttons[Math.max(0, Math.min(buttons.length - 1, at + step))]?.focus();
    });
  }

  columns() {
    return getComputedStyle(this.el).gridTemplateColumns.split(" ").length || 1;
  }

  get isOpen() {
    return !this.el.hidden;
  }

  open(anchor, onPick) {
    this.onPick = onPick;
    this.anchor = anchor;
    // Its message keeps the action bar shown while the focus is in the picker (the bar shows on
    // hover or focus), so the keyboard can come back to the button.
    anchor.closest(".msg")?.classList.add("msg--picking");
    this.el.hidden = false;
    const r = anchor.getBoundingClientRect();
    const w = this.el.offsetWidth;
    const hgt = this.el.offsetHeight;
    // Above the anchor when there is room, else below; always inside the viewport (phones).
    const top = r.top - hgt - 6 >= 4 ? r.top - hgt - 6 : Math.min(r.bottom + 6, window.innerHeight - hgt - 4);
    const left = Math.max(4, Math.min(r.right - w, window.innerWidth - w - 4));
    this.el.style.top = `${Math.max(4, top)}px`;
    this.el.style.left = `${left}px`;
    this.el.querySelector("button")?.focus({ preventScroll: true });
  }

  close() {
    // A keyboard user goes back to the button that opened it, not to the top of the page.
    const hadFocus = !this.el.hidden && this.el.contains(document.activeElement);
    this.el.hidden = true;
    this.onPick = null;
    if (hadFocus && this.anchor?.isConnected) this.anchor.focus({ preventScroll: true });
    this.anchor?.closest(".msg")?.classList.remove("msg--picking");
    this.anchor = null;
  }
}
