// What the message actions do: reply, react (chips and picker), inline edit, delete, copy link,
// and scrolling to a quoted message. State that must survive re-rendering the timeline (which
// message is being edited, its textarea) lives here.
import { h } from "./dom.js";
import { EmojiPicker } from "./emoji.js";

export class Actions {
  /**
   * client: the ParleyClient; me: the user; moderator: an admin; room(): the slug on screen; render(): redraw;
   * flash(text); composer: the composer textarea; replyBar: {el, author, excerpt, cancel};
   * linkFor(slug, seq): a URL that opens the message.
   */
  constructor({ client, me, moderator = false, room, render, flash, composer, replyBar, linkFor }) {
    Object.assign(this, { client, me, moderator, room, render, flash, composer, replyBar, linkFor });
    this.picker = new EmojiPicker();
    this.editingSeq = null;
    this.actionsSeq = null;
    this.confirmDeleteSeq = null;
    this.flashSeq = null; // the message just jumped to (a quote's target, a link's)
    this.flashTimer = null;
    this.replyTo = null; // the message being replied to
    this.owners = new Map(); // room slug -> the owner's user id (GET …/members), once known
    this.editor = h("div", { class: "msg-editor", testid: "editor" });
    this.editInput = h("textarea", { class: "msg-edit-input", testid: "edit-input", rows: "2", "aria-label": "Edit message" });
    this.editor.append(this.editInput,
      h("div", { class: "msg-edit-hint" }, "Enter to save · Escape to cancel · ",
        h("button", { type: "button", class: "link-btn", testid: "edit-save", onclick: () => this.saveEdit() }, "save"),
        h("button", { type: "button", class: "link-btn", testid: "edit-cancel", onclick: () => this.cancelEdit() }, "cancel")));
    this.editInput.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        this.saveEdit();
      } else if (ev.key === "Escape") {
        ev.preventDefault();
        ev.stopPropagation();
        this.cancelEdit();
      }
    });
    replyBar.cancel.addEventListener("click", () => this.setReply(null));
    // A tap outside a message closes its touch actions and any pending delete confirmation.
    // (click, not pointerdown: re-rendering on pointerdown would swallow the click it starts)
    document.addEventListener("click", (ev) => {
      if ((this.actionsSeq !== null || this.confirmDeleteSeq !== null) && !ev.target.closest?.(".msg--actions-open, .msg-tools")) {
        this.actionsSeq = null;
        this.confirmDeleteSeq = null;
        this.render("actions");
      }
    });
  }

  /** The `ui` argument of renderTimeline. */
  ui(snap) {
    return {
      me: this.me,
      // Admins (the page says so) and the room's owner may delete anyone's message; the server
      // decides either way (forbidden).
      canModerate: this.moderator || (!!snap && this.owners.get(snap.slug) === this.me.id),
      editingSeq: this.editingSeq,
      editor: this.editor,
      actionsSeq: this.actionsSeq,
      confirmDeleteSeq: this.confirmDeleteSeq,
      flashSeq: this.flashSeq,
    };
  }

  /** The handlers renderTimeline passes to each message. */
  handlers() {
    return {
      reply: (m) => this.setReply(m),
      react: (m, emoji, mine) => this.react(m, emoji, mine),
      pick: (m, anchor) => {
        if (this.picker.isOpen) return this.picker.close();
        const mine = new Set((m.reactions || []).filter((r) => r.me).map((r) => r.emoji));
        return this.picker.open(anchor, (emoji) => this.react(m, emoji, mine.has(emoji)));
      },
      startEdit: (m) => this.startEdit(m), // not "edit": the timeline uses that for failed sends
      delete: (m) => this.delete(m),
      copyLink: (m) => this.copyLink(m),
      openActions: (seq) => {
        this.actionsSeq = seq;
        this.render("actions");
      },
      scrollTo: (seq) => this.scrollTo(seq),
    };
  }

  async react(m, emoji, mine) {
    const slug = this.room();
    try {
      if (mine) await this.client.unreact(slug, m.seq, emoji);
      else await this.client.react(slug, m.seq, emoji);
    } catch (err) {
      this.flash(err.code === "too_many_reactions" ? "That message has all the reactions it can take." : err.message || err.code);
    }
  }

  setReply(m) {
    this.replyTo = m ? { seq: m.seq, author: m.author } : null;
    this.actionsSeq = null;
    const bar = this.replyBar;
    bar.el.hidden = !m;
    if (m) {
      bar.author.textContent = m.author ? `@${m.author.username}` : "someone";
      bar.excerpt.textContent = Array.from(m.text).slice(0, 100).join("");
      this.composer.focus();
    }
    this.render("actions");
  }

  startEdit(m) {
    if (!m || m.deleted || m.author?.id !== this.me.id) return;
    this.editingSeq = m.seq;
    this.actionsSeq = null;
    this.editInput.value = m.text;
    this.render("actions");
    this.editInput.focus();
    const end = this.editInput.value.length;
    this.editInput.setSelectionRange(end, end);
    this.editInput.style.height = `${Math.min(this.editInput.scrollHeight + 2, 240)}px`;
  }

  cancelEdit() {
    this.editingSeq = null;
    this.render("actions");
    this.composer.focus();
  }

  async saveEdit() {
    const seq = this.editingSeq;
    const slug = this.room();
    const m = this.client.room(slug)?.messages.find((x) => x.seq === seq);
    const text = this.editInput.value.trim();
    if (!m || text === m.text) return this.cancelEdit();
    if (!text) {
      this.flash("A message cannot be empty: delete it instead.");
      return undefined;
    }
    try {
      await this.client.edit(slug, seq, text);
      if (this.editingSeq === seq) this.cancelEdit();
    } catch (err) {
      this.flash(err.message || err.code);
    }
    return undefined;
  }

  /** The first click asks, the second deletes (no blocking confirm() dialog). */
  async delete(m) {
    if (this.confirmDeleteSeq !== m.seq) {
      this.confirmDeleteSeq = m.seq;
      this.render("actions");
      return;
    }
    this.confirmDeleteSeq = null;
    this.actionsSeq = null;
    try {
      await this.client.delete(this.room(), m.seq);
    } catch (err) {
      this.flash(err.code === "forbidden" ? "Only its author or the room's owner can delete that." : err.message || err.code);
    }
    this.render("actions");
  }

  async copyLink(m) {
    const url = this.linkFor(this.room(), m.seq);
    this.actionsSeq = null;
    try {
      await navigator.clipboard.writeText(url);
      this.flash("Link copied.");
    } catch {
      this.flash(url); // no clipboard access (permissions, insecure origin): show it to copy by hand
    }
    this.render("actions");
  }

  /** Bring a message into view, paging older history until it is loaded (a few pages at most). */
  async scrollTo(seq) {
    const slug = this.room();
    for (let pages = 0; pages < 20; pages++) {
      const target = document.getElementById(`msg-${seq}`);
      if (target) {
        // Instant, not smooth: a re-render during a smooth scroll that began at the bottom would
        // see "at the bottom" and pin the view back there.
        target.scrollIntoView({ block: "center" });
        // The highlight is state, not a class on the element: a re-render may replace it.
        this.flashSeq = seq;
        this.render("actions");
        clearTimeout(this.flashTimer);
        this.flashTimer = setTimeout(() => {
          this.flashSeq = null;
          this.render("actions");
        }, 1600);
        return true;
      }
      const snap = this.client.room(slug);
      if (!snap || !snap.hasMore || !snap.live || (snap.messages[0] && snap.messages[0].seq < seq)) break;
      try {
        await this.client.history(slug, { limit: 50 });
      } catch {
        break;
      }
    }
    this.flash("That message is not here any more.");
    return false;
  }

  /** Up arrow in an empty composer: edit my newest message that is not deleted. */
  editLast(snap) {
    const mine = [...snap.messages].reverse().find((m) => m.author?.id === this.me.id && !m.deleted && !m._fromAck);
    if (mine) this.startEdit(mine);
    return !!mine;
  }

  /** Escape: close a message's action bar, a pending delete confirmation and the picker. */
  closeMenus() {
    this.picker.close();
    if (this.actionsSeq === null && this.confirmDeleteSeq === null) return;
    this.actionsSeq = this.confirmDeleteSeq = null;
    this.render("actions");
  }

  /** Leaving a room drops what was tied to its messages. */
  reset() {
    this.editingSeq = this.actionsSeq = this.confirmDeleteSeq = null;
    this.setReply(null);
    this.picker.close();
  }
}
