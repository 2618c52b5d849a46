// The colour theme: light, dark, or the system's (prefers-color-scheme), remembered per browser.
//
// A classic script, not a module, loaded without `defer` in <head> (parley/base.html and the
// sign-in pages): it sets <html data-theme> before the body is parsed, so the first paint is
// already in the chosen theme (a module runs after parsing: a dark-mode reader would see a
// white flash on every load). The palette itself is in app.css: `data-theme="light"|"dark"`
// picks one; no attribute follows the system through the media query.
//
// Then, once the document is parsed, every `[data-theme-switch]` element becomes a three-way
// radio group (System / Light / Dark). window.parleyTheme = {get(), set(choice), resolved()}.
(function () {
  "use strict";
  var KEY = "parley:theme";
  var CHOICES = ["system", "light", "dark"];
  var LABELS = { system: "System", light: "Light", dark: "Dark" };
  var root = document.documentElement;
  var media = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

  function stored() {
    try {
      var v = window.localStorage.getItem(KEY);
      return v === "light" || v === "dark" ? v : "system";
    } catch (e) {
      return "system"; // storage refused (privacy mode, a sandboxed frame): follow the system
    }
  }

  function apply(choice) {
    if (choice === "light" || choice === "dark") root.setAttribute("data-theme", choice);
    else root.removeAttribute("data-theme");
  }

  function resolved() {
    var choice = stored();
    if (choice !== "system") return choice;
    return media && media.matches ? "dark" : "light";
  }

  function set(choice) {
    if (CHOICES.indexOf(choice) < 0) throw new Error("theme: " + choice);
    try {
      if (choice === "system") window.localStorage.removeItem(KEY);
      else window.localStorage.setItem(KEY, choice);
    } catch (e) {
      // not remembered, but applied for this page
    }
    apply(choice);
    syncSwitches(choice);
  }

  var switches = [];
  function syncSwitches(choice) {
    for (var i = 0; i < switches.length; i++) {
      var inputs = switches[i].querySelectorAll("input");
      for (var j = 0; j < inputs.length; j++) inputs[j].checked = inputs[j].value === choice;
    }
  }

  var counter = 0;
  function build(el) {
    counter += 1;
    var name = "parley-theme-" + counter;
    el.classList.add("theme-switch");
    el.setAttribute("role", "radiogroup");
    el.setAttribute("aria-label", "Theme");
    el.setAttribute("data-testid", el.getAttribute("data-testid") || "theme-switch");
    var current = stored();
    for (var i = 0; i < CHOICES.length; i++) {
      var choice = CHOICES[i];
      var label = document.createElement("label");
      label.className = "theme-option";
      var input = document.createElement("input");
      input.type = "radio";
      input.name = name;
      input.value = choice;
      input.checked = choice === current;
      input.setAttribute("data-testid", "theme-" + choice);
      input.addEventListener("change", function (ev) {
        if (ev.target.checked) set(ev.target.value);
      });
      var text = document.createElement("span");
      text.textContent = LABELS[choice];
      label.appendChild(input);
      label.appendChild(text);
      el.appendChild(label);
    }
    switches.push(el);
  }

  apply(stored());
  // Another tab changed it: follow.
  window.addEventListener("storage", function (ev) {
    if (ev.key === KEY || ev.key === null) {
      apply(stored());
      syncSwitches(stored());
    }
  });
  function wire() {
    var found = document.querySelectorAll("[data-theme-switch]");
    for (var i = 0; i < found.length; i++) if (switches.indexOf(found[i]) < 0) build(found[i]);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire);
  else wire();

  window.parleyTheme = { get: stored, set: set, resolved: resolved, wire: wire };
})();
