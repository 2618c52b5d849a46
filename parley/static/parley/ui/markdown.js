// The Markdown subset of docs/protocol.md §10 ("Formatting"), built with DOM calls only: user
// text only ever reaches the page as text nodes, so no input can make an element, an attribute
// or a live link the subset does not allow.
//
// Blocks: fenced code (```), "> " quotes, "- "/"* " and "1. " lists, paragraphs (line breaks kept).
// Inline: **bold**, *italic*/_italic_, ~~strike~~, `code`, [text](url), bare http(s) URLs,
// @mentions the server listed (and @room when mention_room). Anything else is text.

const LINK_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
const MAX_DEPTH = 16; // deeper nesting (quotes in quotes, emphasis in emphasis) renders as text
const FENCE = /^\s{0,3}```/;
const QUOTE = /^\s{0,3}>(?: |$)/; // "> text" (or a bare ">" line inside a quote), not ">text"
const BULLET = /^\s{0,3}[-*]\s+/;
const ORDERED = /^\s{0,3}(\d{1,9})\.\s+/;
const BARE_URL = /https?:\/\/[^\s<>"'`]+/iy; // sticky: matched at lastIndex
const MENTION = /@([\p{L}\p{N}_.@+-]+)/uy;
const TRAILING_PUNCT = /[.,:;!?'")\]}*_~]+$/;

/** The URL of a link if it may be live (http, https, mailto), normalised; else null. */
export function safeHref(raw) {
  let url;
  try {
    url = new URL(raw.trim()); // relative URLs throw: they are not links here
  } catch {
    return null;
  }
  return LINK_PROTOCOLS.has(url.protocol) ? url.href : null;
}

function link(href, children) {
  const a = document.createElement("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  a.append(...children);
  return a;
}

function el(tag, children, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children);
  return node;
}

/**
 * ctx: {mentions: Set of lower-cased usernames the server listed, me: your username (lower case),
 * mentionRoom: bool}. Returns an array of nodes.
 */
function inline(text, ctx, depth = 0, inLink = false) {
  const out = [];
  let buf = "";
  const flush = () => {
    if (buf) out.push(document.createTextNode(buf));
    buf = "";
  };
  const wordBefore = (i) => i > 0 && /[\p{L}\p{N}_]/u.test(text[i - 1]);
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length && /[\\`*_~[\]()>#@!-]/.test(text[i + 1])) {
      buf += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "`") {
      const end = text.indexOf("`", i + 1);
      if (end > i + 1) {
        flush();
        out.push(el("code", [text.slice(i + 1, end)]));
        i = end + 1;
        continue;
      }
    }
    if (depth < MAX_DEPTH) {
      const span = emphasis(text, i, wordBefore(i));
      if (span) {
        flush();
        out.push(el(span.tag, inline(span.inner, ctx, depth + 1, inLink)));
        i = span.end;
        continue;
      }
    }
    if (c === "[" && !inLink) {
      const lk = bracketLink(text, i);
      if (lk) {
        const href = safeHref(lk.url);
        flush();
        // A link to anything but http/https/mailto shows as the text it was written as.
        if (href && lk.label) out.push(link(href, inline(lk.label, ctx, depth + 1, true)));
        else out.push(document.createTextNode(text.slice(i, lk.end)));
        i = lk.end;
        continue;
      }
    }
    if ((c === "h" || c === "H") && !inLink && !wordBefore(i)) {
      BARE_URL.lastIndex = i;
      const m = BARE_URL.exec(text);
      if (m) {
        const url = m[0].replace(TRAILING_PUNCT, "");
        const href = safeHref(url);
        if (href) {
          flush();
          out.push(link(href, [url]));
          i += url.length;
          continue;
        }
      }
    }
    if (c === "@" && !wordBefore(i)) {
      MENTION.lastIndex = i;
      const m = MENTION.exec(text);
      if (m) {
        const name = longestListed(m[1], ctx);
        if (name) {
          flush();
          const lower = name.toLowerCase();
          const cls = lower === "room" ? "mention mention--room" : lower === ctx.me ? "mention mention--me" : "mention";
          const span = el("span", [`@${name}`], cls);
          span.dataset.testid = "mention";
          span.dataset.username = name;
          out.push(span);
          i += 1 + name.length;
          continue;
        }
      }
    }
    buf += c;
    i += 1;
  }
  flush();
  return out;
}

/** "@bob." mentions bob: try the whole name, then without trailing punctuation. */
function longestListed(raw, ctx) {
  for (let name = raw; name; name = name.slice(0, -1)) {
    const lower = name.toLowerCase();
    if (lower === "room" ? ctx.mentionRoom : ctx.mentions.has(lower)) return name;
    if (!/[.@+-]$/.test(name)) break;
  }
  return null;
}

const DELIMS = [["**", "strong"], ["~~", "del"], ["*", "em"], ["_", "em"]];

/** An emphasis span opening at i: {tag, inner, end}, or null. */
function emphasis(text, i, wordBefore) {
  for (const [d, tag] of DELIMS) {
    if (!text.startsWith(d, i)) continue;
    if (d.length === 1 && text[i + 1] === d) continue; // "**" is bold, "__" nothing
    if (d === "_" && wordBefore) return null; // snake_case_names stay text
    const start = i + d.length;
    if (start >= text.length || /\s/.test(text[start])) return null;
    let end = text.indexOf(d, start + 1);
    while (end > 0 && d.length === 1 && text[end + 1] === d) end = text.indexOf(d, end + 2);
    if (end < 0) return null;
    if (/\s/.test(text[end - 1])) return null;
    if (d === "_" && /[\p{L}\p{N}]/u.test(text[end + 1] || "")) return null;
    return { tag, inner: text.slice(start, end), end: end + d.length };
  }
  return null;
}

/** [label](url) at i: {label, url, end}, or null. */
function bracketLink(text, i) {
  let depth = 0;
  let close = -1;
  for (let j = i; j < text.length; j++) {
    if (text[j] === "\\") j += 1;
    else if (text[j] === "[") depth += 1;
    else if (text[j] === "]" && --depth === 0) {
      close = j;
      break;
    }
  }
  if (close < 0 || text[close + 1] !== "(") return null;
  const end = text.indexOf(")", close + 2);
  if (end < 0) return null;
  const url = text.slice(close + 2, end);
  if (/\s/.test(url.trim())) return null;
  return { label: text.slice(i + 1, close), url, end: end + 1 };
}

function blocks(lines, ctx, depth) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    if (FENCE.test(line)) {
      const body = [];
      i += 1;
      while (i < lines.length && !/^\s{0,3}```\s*$/.test(lines[i])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end of the text)
      out.push(el("pre", [el("code", [body.join("\n")])]));
      continue;
    }
    if (QUOTE.test(line) && depth < MAX_DEPTH) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) inner.push(lines[i++].replace(QUOTE, ""));
      out.push(el("blockquote", blocks(inner, ctx, depth + 1)));
      continue;
    }
    const ordered = ORDERED.exec(line);
    if (ordered || BULLET.test(line)) {
      const re = ordered ? ORDERED : BULLET;
      const items = [];
      while (i < lines.length && re.test(lines[i])) {
        let item = lines[i++].replace(re, "");
        // Indented lines continue the item.
        while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !BULLET.test(lines[i]) && !ORDERED.test(lines[i])) item += "\n" + lines[i++].trim();
        items.push(el("li", inline(item, ctx, depth)));
      }
      const list = el(ordered ? "ol" : "ul", items);
      if (ordered && ordered[1] !== "1") list.start = Number(ordered[1]);
      out.push(list);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !QUOTE.test(lines[i])
      && !BULLET.test(lines[i]) && !ORDERED.test(lines[i])) para.push(lines[i++]);
    // Line breaks stay "\n" text nodes (white-space: pre-wrap), so the text reads as written.
    out.push(el("p", inline(para.join("\n"), ctx, depth)));
  }
  return out;
}

/**
 * Render a message's text. opts: {mentions: [user], mentionRoom: bool, me: username}.
 * Returns a DocumentFragment of p, pre, code, blockquote, ul, ol, li, strong, em, del, a, span.
 */
export function renderMarkdown(text, { mentions = [], mentionRoom = false, me = "" } = {}) {
  const ctx = {
    mentions: new Set(mentions.map((u) => String(u.username).toLowerCase())),
    mentionRoom: !!mentionRoom,
    me: String(me).toLowerCase(),
  };
  const frag = document.createDocumentFragment();
  frag.append(...blocks(String(text).replace(/\r\n?/g, "\n").split("\n"), ctx, 0));
  return frag;
}

/** True when the text mentions this username (or @room) in the server's lists. */
export function mentionsMe(message, me) {
  if (message.mention_room) return true;
  return (message.mentions || []).some((u) => u.id === me.id);
}
