// WCAG 2.x contrast of what the page shows, from Chromium's computed styles (used by
// tests/browser/test_accessibility.py through page.evaluate). Returns a list of failures.
//
// For every visible element with its own text (and every text field, its value or placeholder):
// the text colour, faded by the opacity of the element and of its ancestors up to the layer that
// paints the background, against the effective background: each ancestor's background-color
// composited from the root down (a gradient counts as each of its colour stops; the worst one
// is taken). 4.5:1, or 3:1 for large text (24 px, or 18.66 px bold). Icons (svg.icon) and the
// boundary of each text field need 3:1 (WCAG 1.4.11). Disabled controls are exempt (WCAG 1.4.3).
(() => {
  const NUM = /-?[\d.]+(?:e-?\d+)?/g;
  function parse(c) {
    if (!c || c === "transparent" || c === "none") return null;
    const m = /^rgba?\(([^)]*)\)$/.exec(c.trim());
    if (!m) return null;
    const p = m[1].match(NUM).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  }
  const over = (fg, bg, alpha = fg.a) => ({
    r: fg.r * alpha + bg.r * (1 - alpha), g: fg.g * alpha + bg.g * (1 - alpha), b: fg.b * alpha + bg.b * (1 - alpha), a: 1,
  });
  const lin = (v) => {
    const c = v / 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  };
  const lum = (c) => 0.2126 * lin(c.r) + 0.7152 * lin(c.g) + 0.0722 * lin(c.b);
  const ratio = (a, b) => {
    const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
  const hex = (c) => `#${[c.r, c.g, c.b].map((v) => Math.round(v).toString(16).padStart(2, "0")).join("")}`;
  const gradientStops = (img) => (img && img.includes("gradient") ? (img.match(/rgba?\([^)]*\)/g) || []).map(parse).filter(Boolean) : []);

  /** Effective backgrounds behind el (several when a gradient is involved), and the element that
   * painted the last opaque layer. */
  function backgrounds(el) {
    const chain = [];
    for (let n = el; n && n.nodeType === 1; n = n.parentElement) chain.unshift(n);
    const dark = getComputedStyle(document.documentElement).colorScheme.includes("dark");
    let bases = [dark ? { r: 18, g: 18, b: 18, a: 1 } : { r: 255, g: 255, b: 255, a: 1 }]; // the canvas
    let painter = null;
    for (const n of chain) {
      const cs = getComputedStyle(n);
      const stops = gradientStops(cs.backgroundImage);
      const bg = parse(cs.backgroundColor);
      if (bg && bg.a > 0) {
        bases = bases.map((b) => over(bg, b));
        if (bg.a >= 0.99) painter = n;
      }
      if (stops.length) {
        bases = stops.flatMap((s) => bases.map((b) => over(s, b)));
        painter = n;
      }
    }
    return { bases, painter };
  }

  function fadeBetween(el, painter) {
    let alpha = 1;
    for (let n = el; n && n !== painter; n = n.parentElement) alpha *= Number(getComputedStyle(n).opacity);
    return alpha;
  }

  const visible = (el) => {
    if (!el.checkVisibility({ checkOpacity: true, checkVisibilityCSS: true })) return false;
    const r = el.getBoundingClientRect();
    return r.width > 1 && r.height > 1 && r.bottom > 0 && r.right > 0 && r.top < innerHeight && r.left < innerWidth;
  };
  const exempt = (el) => !!el.closest(":disabled, [aria-disabled=true], .sr-only");
  // Emoji are colour glyphs: their "text colour" is not what the reader sees.
  const PICTO = /^[\p{Extended_Pictographic}\p{Emoji_Component}\u200d\ufe0f\s]*$/u;
  const describe = (el) => {
    const id = el.dataset?.testid ? `[data-testid=${el.dataset.testid}]` : "";
    const cls = typeof el.className === "string" && el.className ? `.${el.className.trim().split(/\s+/).join(".")}` : "";
    return `${el.tagName.toLowerCase()}${id}${cls}`;
  };

  const failures = [];
  let checked = 0;
  function check(el, kind, fg, need, text, extraFade = 1) {
    const { bases, painter } = backgrounds(el);
    const alpha = fg.a * fadeBetween(el, painter) * extraFade;
    let worst = Infinity;
    let worstBg = null;
    for (const b of bases) {
      const r = ratio(over(fg, b, alpha), b);
      if (r < worst) {
        worst = r;
        worstBg = b;
      }
    }
    checked += 1;
    if (worst + 1e-6 < need) {
      failures.push({ kind, element: describe(el), text: String(text).slice(0, 40), fg: hex(fg), alpha: Number(alpha.toFixed(2)), bg: hex(worstBg), ratio: Number(worst.toFixed(2)), need });
    }
  }

  function needFor(cs) {
    const size = parseFloat(cs.fontSize);
    const bold = Number(cs.fontWeight) >= 700;
    return size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
  }

  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest("svg") && el.tagName.toLowerCase() !== "svg") continue;
    if (!visible(el) || exempt(el)) continue;
    const cs = getComputedStyle(el);
    const tag = el.tagName.toLowerCase();
    if (tag === "input" || tag === "textarea") {
      if (["hidden", "checkbox", "radio", "submit", "button"].includes(el.type)) continue;
      if (el.value) check(el, "text", parse(cs.color), needFor(cs), el.value);
      else if (el.placeholder) check(el, "placeholder", parse(getComputedStyle(el, "::placeholder").color), needFor(cs), el.placeholder);
      // The field's boundary: its own border, or the nearest framed ancestor's (the composer).
      let frame = el;
      for (let i = 0; i < 3 && frame && !(parseFloat(getComputedStyle(frame).borderTopWidth) > 0); i++) frame = frame.parentElement;
      if (frame) {
        const fcs = getComputedStyle(frame);
        const border = parse(fcs.borderTopColor);
        const fill = parse(fcs.backgroundColor);
        const outside = backgrounds(frame.parentElement).bases;
        const fillOk = fill && fill.a > 0.99 && outside.every((b) => ratio(fill, b) >= 3);
        if (!fillOk && border) check(frame.parentElement, "field boundary", border, 3, el.name || el.getAttribute("aria-label") || tag);
      }
      continue;
    }
    if (tag === "svg") {
      if (el.classList.contains("icon")) check(el, "icon", parse(cs.fill) || parse(cs.color), 3, describe(el.parentElement));
      continue;
    }
    const own = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join("").trim();
    if (!own || PICTO.test(own)) continue;
    const fg = parse(cs.color);
    if (fg) check(el, "text", fg, needFor(cs), own);
  }

  // The focus ring of the focused element (or of the framed ancestor that shows it: the composer).
  let ring = null;
  const active = document.activeElement;
  if (active && active !== document.body) {
    for (let n = active, i = 0; n && i < 3; n = n.parentElement, i++) {
      const cs = getComputedStyle(n);
      if (cs.outlineStyle !== "none" && parseFloat(cs.outlineWidth) >= 2) {
        ring = { element: describe(n), color: cs.outlineColor };
        check(n.parentElement || n, "focus ring", parse(cs.outlineColor), 3, describe(active));
        break;
      }
    }
  }
  return { failures, checked, ring, focused: active ? describe(active) : null };
})()
