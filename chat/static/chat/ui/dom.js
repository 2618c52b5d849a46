// Tiny DOM helpers. Text always goes in through text nodes / textContent — never innerHTML —
// so message text, usernames and room titles cannot inject markup.

/** h("li", {class: "x", testid: "message", onclick: fn}, child, "text", ...) */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "testid") el.dataset.testid = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const byTestId = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);

/** A stable, pleasant colour per username. */
export function colourFor(name) {
  let hash = 0;
  for (const ch of String(name)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 55% 45%)`;
}

export function avatar(name, extraClass = "") {
  const el = h("span", { class: `avatar ${extraClass}`.trim(), "aria-hidden": "true" });
  el.textContent = (Array.from(String(name))[0] || "?").toUpperCase();
  el.style.background = colourFor(name);
  return el;
}

export function readCookie(name) {
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return "";
}
