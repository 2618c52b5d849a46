// Message search (docs/protocol.md §13): a box in the header, a panel of results, each a button
// that opens its room at the message. Results are built with DOM calls only: a snippet's
// segments become text nodes and <mark> elements through textContent, never markup.
import { h, icon } from "./dom.js";
import { api } from "./sidebar.js";

export function searchIcon() {
  return icon("search");
}

/** The snippet's segments as nodes: hits in <mark>, the rest as text. */
export function snippetNodes(segments) {
  return (segments || []).map((s) => (s.hit ? h("mark", { class: "search-mark" }, String(s.text)) : document.createTextNode(String(s.text))));
}

function when(ts) {
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return "";
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleDateString();
}

export class Search {
  constructor({ url, toggle, panel, onOpen }) {
    this.url = url; // GET /api/search under the prefix the host mounted Parley at
    this.toggle = toggle;
    this.panel = panel;
    this.onOpen = onOpen; // (slug, seq): open the room at that message
    this.query = "";
    this.next = null;
    this.busy = false;
    toggle.replaceChildren(searchIcon());
    this.input = h("input", {
      type: "search", class: "search-input", testid: "search-input", maxlength: "256", placeholder: "Search messages",
      "aria-label": "Search messages", autocomplete: "off", enterkeyhint: "search",
    });
    this.status = h("p", { class: "search-status", testid: "search-status", role: "status", "aria-live": "polite" });
    this.list = h("ol", { class: "search-results", testid: "search-results" });
    this.more = h("button", { type: "button", class: "btn btn--ghost btn--small", testid: "search-more", hidden: true,
      onclick: () => this.run(false) }, "More results");
    const form = h("form", { class: "search-form", testid: "search-form", role: "search",
      onsubmit: (ev) => { ev.preventDefault(); this.run(true); } },
      this.input,
      h("button", { type: "submit", class: "btn btn--primary btn--small", testid: "search-submit" }, "Search"),
      h("button", { type: "button", class: "icon-btn", testid: "search-close", "aria-label": "Close search",
        onclick: () => this.close() }, "×"));
    const help = h("p", { class: "search-help" }, "Words, \"exact phrases\", in:#room, from:@user, after:2026-12-01, before:2026-12-31");
    panel.replaceChildren(form, help, this.status, this.list, this.more);
    toggle.addEventListener("click", () => (panel.hidden ? this.show() : this.close()));
    panel.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") {
        ev.stopPropagation();
        this.close();
      }
    });
  }

  show() {
    this.panel.hidden = false;
    this.toggle.setAttribute("aria-expanded", "true");
    this.input.focus();
    this.input.select();
  }

  close() {
    this.panel.hidden = true;
    this.toggle.setAttribute("aria-expanded", "false");
  }

  async run(fresh) {
    if (this.busy) return;
    if (fresh) {
      this.query = this.input.value.trim();
      this.next = null;
      this.list.replaceChildren();
      if (!this.query) {
        this.status.textContent = "";
        this.more.hidden = true;
        return;
      }
    }
    this.busy = true;
    this.status.textContent = "Searching…";
    const params = new URLSearchParams({ q: this.query });
    if (this.next) params.set("before", this.next);
    try {
      const page = await api(`${this.url}?${params}`);
      this.list.append(...page.results.map((r) => this.item(r)));
      this.next = page.next;
      const count = this.list.children.length;
      this.status.textContent = count ? `${count}${page.next ? "+" : ""} result${count === 1 ? "" : "s"}` : "No messages match.";
    } catch (err) {
      this.next = null;
      this.status.textContent = err.code === "rate_limited"
        ? "Too many searches at once: wait a moment and try again."
        : err.message || "Search failed.";
    } finally {
      this.busy = false;
      this.more.hidden = !this.next;
    }
  }

  item(result) {
    const m = result.message;
    const open = () => {
      if (window.matchMedia("(max-width: 1000px)").matches) this.close();
      this.onOpen(result.room, m.seq);
    };
    return h("li", { class: "search-result" },
      h("button", { type: "button", class: "search-hit", testid: "search-result",
        dataset: { room: result.room, seq: String(m.seq) }, onclick: open },
        h("span", { class: "search-meta" },
          h("span", { class: "search-room" }, `#${result.room}`),
          h("span", { class: "search-author" }, m.author ? m.author.username : "someone"),
          h("time", { class: "search-time", datetime: m.ts }, when(m.ts))),
        h("span", { class: "search-snippet", testid: "search-snippet" }, snippetNodes(result.snippet))));
  }
}
