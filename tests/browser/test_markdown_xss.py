"""The Markdown subset (docs/protocol.md §10, "Formatting") in real Chromium: what renders, and
that hostile Markdown renders inert — no script runs, no javascript:/data: href, no element or
attribute but the subset's.

Run: .venv/bin/python -m pytest -p no:cacheprovider -q tests/browser/test_markdown_xss.py
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import open_room, signup, unique, wait_joined

pytestmark = [pytest.mark.browser]

# What the renderer may build inside a message's text, and the attributes each may carry.
ALLOWED = {
    "DIV": {"class", "data-testid"},  # the .msg-text container itself
    "P": set(), "PRE": set(), "CODE": set(), "BLOCKQUOTE": set(), "UL": set(), "OL": {"start"},
    "LI": set(), "STRONG": set(), "EM": set(), "DEL": set(),
    "A": {"href", "target", "rel"},
    "SPAN": {"class", "data-testid", "data-username"},
}

PAYLOADS = [
    "[click me](javascript:window.__pwned=1)",
    "[mixed case](JaVaScRiPt:window.__pwned=1)",
    "[with a tab](java\tscript:window.__pwned=1)",
    "[entity](&#106;avascript:window.__pwned=1)",
    "[data](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX19wd25lZD0xPC9zY3JpcHQ+)",
    "[vb](vbscript:msgbox(1))",
    "![image](https://example.com/x.png)",
    "![bad image](javascript:window.__pwned=1)",
    "<img src=x onerror=window.__pwned=1>",
    "**<script>window.__pwned=1</script>**",
    "`<img src=x onerror=window.__pwned=1>`",
    "```\n</code></pre><img src=x onerror=window.__pwned=1>\n```",
    "[x](https://example.com/\"onmouseover=\"window.__pwned=1\")",
    "[x](https://example.com/ \"onmouseover=window.__pwned=1\")",
    "[*nested [link](javascript:window.__pwned=1)*](https://example.com/ok)",
    "https://example.com/<svg/onload=window.__pwned=1>",
    "javascript:window.__pwned=1",
    "<a href=\"javascript:window.__pwned=1\">html link</a>",
    "***_~~**deep** nesting~~_*** " + "*" * 60 + "x" + "*" * 60,
    "> <iframe src=javascript:window.__pwned=1></iframe>\n- <style>*{display:none}</style>\n1. <form action=javascript:1><button>go</button></form>",
    "@room <b onmouseover=window.__pwned=1>hover</b>",
]


def _two_in_a_room(parley: Any, new_page: Any) -> tuple[Any, Any, str]:
    """Two users in a new room of their own (the session's lobby is shared with other tests)."""
    p1, p2 = new_page(), new_page()
    signup(p1, parley.url, unique("ada"))
    signup(p2, parley.url, unique("bob"))
    slug = unique("md").lower()
    p1.get_by_test_id("new-room-toggle").click()
    p1.get_by_test_id("new-room-title").fill("Markdown")
    p1.get_by_test_id("new-room-slug").fill(slug)
    p1.get_by_test_id("new-room-submit").click()
    wait_joined(p1, slug)
    open_room(p2, slug)
    return p1, p2, slug


def _send(page: Any, slug: str, text: str) -> int:
    """Send through the app's client, byte for byte (the composer would turn a tab into focus)."""
    return page.evaluate("([slug, text]) => window.parley.send(slug, text)", [slug, text])["seq"]


def _message_text(page: Any, seq: int) -> Any:
    return page.locator(f'[data-testid="message"][data-seq="{seq}"] [data-testid="message-text"]')


def _audit(page: Any) -> list[str]:
    """Every element and attribute inside rendered message texts that the subset does not allow."""
    return page.evaluate(
        """allowed => {
          const bad = [];
          for (const root of document.querySelectorAll('[data-testid="message-text"]')) {
            for (const el of [root, ...root.querySelectorAll('*')]) {
              const ok = allowed[el.tagName];
              if (!ok) { bad.push('element ' + el.tagName); continue; }
              for (const a of el.attributes) if (!ok.includes(a.name)) bad.push(el.tagName + ' @' + a.name);
              if (el.tagName === 'A') {
                if (!/^(https?:|mailto:)/.test(el.getAttribute('href'))) bad.push('href ' + el.getAttribute('href'));
                if (el.rel !== 'noopener noreferrer' || el.target !== '_blank') bad.push('a without rel/target');
              }
            }
          }
          return bad;
        }""",
        {tag: sorted(attrs) for tag, attrs in ALLOWED.items()},
    )


def _poke_everything(page: Any) -> None:
    """Fire the events that inline handlers would run on (none should exist)."""
    page.evaluate("""() => {
      for (const el of document.querySelectorAll('[data-testid="messages"] *')) {
        for (const type of ['mouseover', 'mouseenter', 'focus', 'load', 'error', 'animationstart']) {
          el.dispatchEvent(new Event(type));
        }
      }
    }""")


def test_hostile_markdown_renders_inert(parley: Any, new_page: Any) -> None:
    p1, p2, slug = _two_in_a_room(parley, new_page)
    seqs = [_send(p1, slug, payload) for payload in PAYLOADS]
    for p in (p1, p2):
        for seq in seqs:
            expect(_message_text(p, seq)).to_have_count(1)
    for p in (p1, p2):
        _poke_everything(p)
        p.locator('[data-testid="message-text"]').last.hover()
        assert p.evaluate("typeof window.__pwned") == "undefined"
        assert _audit(p) == []
        # Nothing the subset does not have appears anywhere in the timeline (the app's own icons aside).
        assert p.locator('[data-testid="messages"] :is(img, script, iframe, style, form, b, input, object, embed), '
                         '[data-testid="messages"] svg:not(.icon)').count() == 0

    by_payload = dict(zip(PAYLOADS, seqs, strict=True))

    def text_of(payload: str) -> str:
        return _message_text(p2, by_payload[payload]).text_content() or ""

    # Links to anything but http/https/mailto show as the text they were written as.
    for payload in PAYLOADS[:6]:
        assert _message_text(p2, by_payload[payload]).locator("a").count() == 0, payload
        assert text_of(payload) == payload
    # Raw HTML is text, in code too.
    assert text_of("<img src=x onerror=window.__pwned=1>") == "<img src=x onerror=window.__pwned=1>"
    code = _message_text(p2, by_payload["`<img src=x onerror=window.__pwned=1>`"]).locator("code")
    expect(code).to_have_text("<img src=x onerror=window.__pwned=1>")
    fence = _message_text(p2, by_payload[PAYLOADS[11]]).locator("pre > code")
    expect(fence).to_have_text("</code></pre><img src=x onerror=window.__pwned=1>")
    strong = _message_text(p2, by_payload["**<script>window.__pwned=1</script>**"]).locator("strong")
    expect(strong).to_have_text("<script>window.__pwned=1</script>")
    # An image is not an image: "!" and a plain https link.
    img = _message_text(p2, by_payload["![image](https://example.com/x.png)"])
    expect(img.locator("a")).to_have_attribute("href", "https://example.com/x.png")
    # A quote in the URL cannot close the attribute: it is part of the (encoded) href.
    attr = _message_text(p2, by_payload[PAYLOADS[12]]).locator("a")
    expect(attr).to_have_count(1)
    assert attr.get_attribute("onmouseover") is None
    assert "%22" in (attr.get_attribute("href") or "")
    # A link inside a link's text stays text; the outer link is the https one.
    nested = _message_text(p2, by_payload[PAYLOADS[14]]).locator("a")
    expect(nested).to_have_count(1)
    expect(nested).to_have_attribute("href", "https://example.com/ok")
    # A bare URL stops before "<".
    bare = _message_text(p2, by_payload[PAYLOADS[15]]).locator("a")
    expect(bare).to_have_attribute("href", "https://example.com/")
    # ada owns the room: her @room is a room mention (the server says mention_room), the tag text.
    room_mention = _message_text(p2, by_payload[PAYLOADS[20]]).locator('[data-testid="mention"]')
    expect(room_mention).to_have_class("mention mention--room")
    assert text_of(PAYLOADS[20]) == PAYLOADS[20]
    # From bob, who is neither the owner nor an admin, @room is plain text.
    bobs = _send(p2, slug, "@room listen up")
    expect(_message_text(p1, bobs)).to_have_text("@room listen up")
    expect(_message_text(p1, bobs).locator('[data-testid="mention"]')).to_have_count(0)
    assert p1.errors == [] and p2.errors == []


FORMATTED = (
    "**bold** *italic* _also italic_ ~~strike~~ `code` snake_case_name 2 * 3 * 4\n"
    "[a link](https://example.com/page) and https://example.org/x. and [mail](mailto:ada@example.com)\n"
    "second line"
)
BLOCKS = ("> quoted *text*\n\n- one\n- **two**\n\n3. three\n4. four\n\n```\nline 1\n  **not bold**\n```\n\n"
          ">not a quote\n1) not a list\n-not a list")


def test_the_subset_renders(parley: Any, new_page: Any) -> None:
    p1, p2, slug = _two_in_a_room(parley, new_page)
    s1 = _send(p1, slug, FORMATTED)
    s2 = _send(p1, slug, BLOCKS)
    t1, t2 = _message_text(p2, s1), _message_text(p2, s2)
    expect(t1.locator("strong")).to_have_text("bold")
    expect(t1.locator("em")).to_have_text(["italic", "also italic"])
    expect(t1.locator("del")).to_have_text("strike")
    expect(t1.locator("code")).to_have_text("code")
    links = t1.locator("a")
    expect(links).to_have_count(3)
    assert [links.nth(i).get_attribute("href") for i in range(3)] == [
        "https://example.com/page", "https://example.org/x", "mailto:ada@example.com"]
    for i in range(3):
        assert links.nth(i).get_attribute("rel") == "noopener noreferrer"
        assert links.nth(i).get_attribute("target") == "_blank"
    text = t1.text_content() or ""
    assert "snake_case_name 2 * 3 * 4" in text
    assert "\nsecond line" in text  # line breaks kept
    expect(t2.locator("blockquote em")).to_have_text("text")
    expect(t2.locator("ul > li")).to_have_text(["one", "two"])
    expect(t2.locator("ul > li strong")).to_have_text("two")
    expect(t2.locator("ol > li")).to_have_text(["three", "four"])
    assert t2.locator("ol").get_attribute("start") == "3"
    expect(t2.locator("pre > code")).to_have_text("line 1\n  **not bold**")
    expect(t2.locator("pre strong")).to_have_count(0)
    # Outside the subset: stays a paragraph of text.
    expect(t2.locator("p").last).to_have_text(">not a quote\n1) not a list\n-not a list")
    expect(t2.locator("blockquote")).to_have_count(1)
    expect(t2.locator("ol, ul")).to_have_count(2)
    assert _audit(p2) == []
    assert p1.errors == [] and p2.errors == []
