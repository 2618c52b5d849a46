"""The theme switch (ui/theme.js): System / Light / Dark, remembered across reloads and pages,
applied before the first paint (no flash of the other theme), and the system's preference
followed when nothing was chosen.

Run: .venv/bin/python -m pytest -p no:cacheprovider -q tests/browser/test_theme.py
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import signup, unique, wait_connected

pytestmark = [pytest.mark.browser]

APP_CSS = Path(__file__).resolve().parents[2] / "parley" / "static" / "parley" / "app.css"
DARK_BG = "rgb(21, 23, 31)"
LIGHT_BG = "rgb(255, 255, 255)"

# Runs in every document before its own scripts: what the page looked like when <body> was
# created (before any of it could paint) and at the first animation frame (just before the
# first paint).
FIRST_PAINT_PROBE = """
(() => {
  window.__theme = {};
  const seen = () => ({
    attr: document.documentElement.getAttribute("data-theme"),
    bg: document.body ? getComputedStyle(document.body).backgroundColor : null,
  });
  new MutationObserver((_, obs) => {
    if (document.body) {
      window.__theme.atBody = seen();
      obs.disconnect();
    }
  }).observe(document, { childList: true, subtree: true });
  requestAnimationFrame(() => { window.__theme.firstFrame = seen(); });
})();
"""


def _bg(page: Any) -> str:
    return str(page.evaluate("() => getComputedStyle(document.body).backgroundColor"))


def _probe(page: Any) -> dict[str, Any]:
    page.wait_for_function("() => window.__theme && window.__theme.firstFrame")
    return dict(page.evaluate("() => window.__theme"))


def test_the_choice_persists_across_reloads_and_pages_without_a_flash(parley: Any, new_page: Any) -> None:
    page = new_page()
    page.context.add_init_script(FIRST_PAINT_PROBE)
    page.emulate_media(color_scheme="light")
    page.goto(f"{parley.url}/accounts/login/")
    expect(page.get_by_test_id("theme-system")).to_be_checked()
    assert _bg(page) != DARK_BG

    page.get_by_test_id("theme-dark").check()
    assert page.evaluate("() => document.documentElement.dataset.theme") == "dark"
    assert page.evaluate("() => localStorage.getItem('parley:theme')") == "dark"
    assert _bg(page) == DARK_BG

    # Reload: dark from the start. The attribute is there before <body> exists, and the first
    # frame is already dark (a module script would run after parsing: too late).
    page.reload()
    probe = _probe(page)
    assert probe["atBody"]["attr"] == "dark", probe
    assert probe["firstFrame"] == {"attr": "dark", "bg": DARK_BG}, probe
    expect(page.get_by_test_id("theme-dark")).to_be_checked()

    # Into the app: the same choice, from the first frame, and its switch shows it.
    signup(page, parley.url, unique("ada"))
    probe = _probe(page)
    assert probe["firstFrame"] == {"attr": "dark", "bg": DARK_BG}, probe
    expect(page.get_by_test_id("theme-dark")).to_be_checked()
    assert page.evaluate("() => getComputedStyle(document.querySelector('.timeline')).color") == "rgb(230, 232, 240)"

    # Light in the app, then reload: light, though the system now says dark.
    page.emulate_media(color_scheme="dark")
    page.get_by_test_id("theme-light").check()
    assert _bg(page) == LIGHT_BG
    page.reload()
    wait_connected(page)
    probe = _probe(page)
    assert probe["firstFrame"] == {"attr": "light", "bg": LIGHT_BG}, probe

    # System: the stored choice is forgotten and the system's preference rules, live.
    page.get_by_test_id("theme-system").check()
    assert page.evaluate("() => localStorage.getItem('parley:theme')") is None
    assert page.evaluate("() => document.documentElement.hasAttribute('data-theme')") is False
    assert _bg(page) == DARK_BG
    page.emulate_media(color_scheme="light")
    assert _bg(page) == LIGHT_BG
    page.reload()
    wait_connected(page)
    assert _probe(page)["firstFrame"] == {"attr": None, "bg": LIGHT_BG}
    assert page.errors == []


def test_another_tab_s_choice_is_followed(parley: Any, browser: Any) -> None:
    ctx = browser.new_context()
    try:
        one, two = ctx.new_page(), ctx.new_page()
        for p in (one, two):
            p.emulate_media(color_scheme="light")
            p.goto(f"{parley.url}/accounts/login/")
        one.get_by_test_id("theme-dark").check()
        two.wait_for_function("() => document.documentElement.dataset.theme === 'dark'")
        expect(two.get_by_test_id("theme-dark")).to_be_checked()
    finally:
        ctx.close()


def test_the_chosen_dark_theme_and_the_system_s_are_the_same_palette(parley: Any, new_page: Any) -> None:
    """app.css states the dark palette twice (for data-theme=dark, and for the system's
    preference when nothing is chosen): the two must not drift apart."""
    names = sorted(set(re.findall(r"^\s*(--[a-z0-9-]+):", APP_CSS.read_text(), re.M)))
    assert len(names) > 40
    page = new_page()
    page.goto(f"{parley.url}/accounts/login/")
    read = "names => names.map((n) => getComputedStyle(document.documentElement).getPropertyValue(n).trim())"
    page.emulate_media(color_scheme="dark")
    page.evaluate("() => window.parleyTheme.set('system')")
    system_dark = page.evaluate(read, names)
    page.emulate_media(color_scheme="light")
    light = page.evaluate(read, names)
    page.evaluate("() => window.parleyTheme.set('dark')")
    chosen_dark = page.evaluate(read, names)
    assert dict(zip(names, system_dark, strict=True)) == dict(zip(names, chosen_dark, strict=True))
    assert system_dark != light
    assert page.evaluate("() => getComputedStyle(document.documentElement).colorScheme") == "dark"
