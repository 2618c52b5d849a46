// Files in the composer and in messages (docs/protocol.md §14): an attach button, paste and
// drag-and-drop upload each file at once (POST …/rooms/<slug>/uploads, with progress); the
// composer's chips show them until the next send takes their ids. In the timeline an image
// the server verified shows inline with its width and height set before it loads (nothing
// below it jumps); every other file is a chip with its name and size that downloads it.
import { h, icon, readCookie } from "./dom.js";

// Shown inline at most this wide (CSS px; narrower on a phone: max-width 100%).
const IMAGE_MAX_WIDTH = 360;
const IMAGE_MAX_HEIGHT = 320;

export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(bytes < 10 * 1024 ? 1 : 0)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

/** The box an image takes in the timeline: its own size, scaled down to fit, ratio kept. */
export function displaySize(width, height) {
  const scale = Math.min(1, IMAGE_MAX_WIDTH / width, IMAGE_MAX_HEIGHT / height);
  return [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))];
}

/** A message's files, as the timeline shows them. */
export function attachmentsEl(files) {
  return h("div", { class: "attachments", testid: "attachments" }, ...files.map((f) => {
    if (f.width && f.height) {
      const [w, hgt] = displaySize(f.width, f.height);
      return h("a", { class: "attachment-image", href: f.url, target: "_blank", rel: "noopener", testid: "attachment-image", title: f.name },
        h("img", { src: f.url, width: w, height: hgt, alt: f.name, loading: "lazy", decoding: "async" }));
    }
    return h("a", { class: "file-chip", href: f.url, download: f.name, testid: "attachment-file", title: `Download ${f.name}` },
      icon("clip"), h("span", { class: "file-chip-name" }, f.name), h("span", { class: "file-chip-size" }, formatSize(f.size)));
  }));
}

/**
 * The composer's uploads. opts: {composer (form), input (textarea), dropZone, uploadsUrl(slug), limits() → hello.limits,
 * room() → the slug on screen, changed() → re-check the send button, flash(text)}.
 */
export class Uploads {
  constructor(opts) {
    this.opts = opts;
    this.byRoom = new Map(); // slug → [{key, file, name, size, progress, upload, error, xhr}]
    this.nextKey = 1;
    this.picker = h("input", { type: "file", multiple: true, hidden: true, testid: "attach-input" });
    this.button = h("button", { type: "button", class: "icon-btn attach", testid: "attach", "aria-label": "Attach files", title: "Attach files" }, icon("clip"));
    this.chips = h("ul", { class: "upload-chips", testid: "upload-chips", "aria-live": "polite", hidden: true });
    this.button.addEventListener("click", () => this.picker.click());
    this.picker.addEventListener("change", () => {
      this.add([...this.picker.files]);
      this.picker.value = "";
    });
    opts.composer.prepend(this.button, this.picker);
    opts.composer.before(this.chips);
    opts.input.addEventListener("paste", (ev) => {
      const files = [...(ev.clipboardData?.files || [])];
      if (files.length) {
        ev.preventDefault();
        this.add(files);
      }
    });
    const zone = opts.dropZone;
    const dragging = (on) => zone.classList.toggle("drop-target", on);
    zone.addEventListener("dragover", (ev) => {
      if (![...(ev.dataTransfer?.types || [])].includes("Files")) return;
      ev.preventDefault();
      dragging(true);
    });
    zone.addEventListener("dragleave", (ev) => {
      if (!zone.contains(ev.relatedTarget)) dragging(false);
    });
    zone.addEventListener("drop", (ev) => {
      dragging(false);
      const files = [...(ev.dataTransfer?.files || [])];
      if (!files.length) return;
      ev.preventDefault();
      this.add(files);
    });
  }

  list(slug = this.opts.room()) {
    if (!this.byRoom.has(slug)) this.byRoom.set(slug, []);
    return this.byRoom.get(slug);
  }

  /** Some upload is still on its way: sending now would leave it behind. */
  busy() {
    return this.list().some((u) => !u.upload && !u.error);
  }

  /** Uploaded files ready to go with the next send. */
  ready() {
    return this.list().filter((u) => u.upload).length;
  }

  /** The uploaded files for a send from room `slug`, taken off the composer. */
  take(slug) {
    const done = this.list(slug).filter((u) => u.upload).map((u) => u.upload);
    this.byRoom.set(slug, this.list(slug).filter((u) => !u.upload));
    this.render();
    return done;
  }

  add(files) {
    const slug = this.opts.room();
    if (!slug) return;
    // The server's limits (hello.limits, protocol §1 and §14): a file it would refuse is shown
    // refused at once, not after its bytes went up.
    const limits = this.opts.limits?.() || {};
    for (const file of files) {
      const item = { key: this.nextKey++, file, name: file.name || "pasted", size: file.size, progress: 0, upload: null, error: null, xhr: null };
      const kept = this.list(slug).filter((u) => !u.error).length;
      if (limits.upload_max_bytes && file.size > limits.upload_max_bytes) {
        item.error = `larger than ${formatSize(limits.upload_max_bytes)}, the largest file allowed`;
      } else if (limits.max_attachments_per_message && kept >= limits.max_attachments_per_message) {
        item.error = `at most ${limits.max_attachments_per_message} files per message`;
      }
      this.list(slug).push(item);
      if (!item.error) this.start(slug, item);
    }
    this.render();
  }

  start(slug, item) {
    const form = new FormData();
    form.append("file", item.file, item.name);
    const xhr = new XMLHttpRequest();
    item.xhr = xhr;
    xhr.open("POST", this.opts.uploadsUrl(slug));
    xhr.setRequestHeader("X-CSRFToken", readCookie("csrftoken"));
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (ev) => {
      if (ev.lengthComputable) {
        item.progress = ev.loaded / ev.total;
        this.renderItem(item);
      }
    });
    xhr.addEventListener("load", () => {
      item.xhr = null;
      if (xhr.status === 201) item.upload = xhr.response.upload;
      else item.error = xhr.response?.error?.message || `upload failed (${xhr.status})`;
      this.render();
    });
    xhr.addEventListener("error", () => {
      item.xhr = null;
      item.error = "upload failed: no connection";
      this.render();
    });
    xhr.send(form);
  }

  remove(item) {
    item.xhr?.abort();
    for (const [slug, items] of this.byRoom) this.byRoom.set(slug, items.filter((u) => u !== item));
    this.render();
  }

  renderItem(item) {
    const bar = this.chips.querySelector(`[data-key="${item.key}"] progress`);
    if (bar) bar.value = item.progress;
  }

  render() {
    const items = this.opts.room() ? this.list() : [];
    this.chips.replaceChildren(...items.map((u) => h("li", {
      class: `upload-chip${u.error ? " upload-chip--failed" : ""}${u.upload ? " upload-chip--done" : ""}`,
      testid: "upload-chip", dataset: { key: String(u.key), state: u.error ? "failed" : u.upload ? "done" : "uploading" },
    },
    h("span", { class: "file-chip-name" }, u.name),
    h("span", { class: "file-chip-size" }, u.error ? u.error : formatSize(u.size)),
    !u.upload && !u.error ? h("progress", { max: "1", value: String(u.progress), "aria-label": `Uploading ${u.name}` }) : null,
    h("button", { type: "button", class: "icon-btn upload-remove", testid: "upload-remove", "aria-label": `Remove ${u.name}`, onclick: () => this.remove(u) }, "×"))));
    this.chips.hidden = items.length === 0;
    this.opts.changed();
  }
}
