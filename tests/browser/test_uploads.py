"""Uploads in real Chromium (docs/protocol.md §14): the attach button, paste and drag-and-drop
upload with progress chips; a send carries them; an image shows inline in a box its width and
height attributes reserve (nothing jumps, 375 px too), a file as a chip with name and size; the
other user gets both live. An uploaded HTML page and SVG with script never run: embedded, opened
or navigated to, they are downloads in a sandbox.

Run: .venv/bin/python -m pytest -p no:cacheprovider -q tests/browser/test_uploads.py
"""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.browser.helpers import open_room, signup, unique

pytestmark = [pytest.mark.browser]

HTML = (b"<!doctype html><html><body><h1>hi</h1><script>"
        b"try { localStorage.setItem('pwned', '1') } catch (e) {}"
        b"try { parent.pwned = 1; top.pwned = 1 } catch (e) {}"
        b"</script></body></html>")
SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40" onload="try{top.pwned=1}catch(e){}">'
       b"<script>try { localStorage.setItem('pwned', '1'); top.pwned = 1 } catch (e) {}</script>"
       b'<rect width="40" height="40" fill="red"/></svg>')


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(out, "PNG")
    return out.getvalue()


def _room(page: Any, slug: str) -> None:
    if page.get_by_test_id("sidebar-toggle").is_visible():  # phone width: the sidebar is a drawer
        page.get_by_test_id("sidebar-toggle").click()
    page.get_by_test_id("new-room-toggle").click()
    page.get_by_test_id("new-room-title").fill(f"Room {slug}")
    page.get_by_test_id("new-room-slug").fill(slug)
    page.get_by_test_id("new-room-submit").click()
    page.wait_for_function("slug => window.parley.room(slug) && window.parley.room(slug).live", arg=slug)


def _attach(page: Any, *files: dict[str, Any]) -> None:
    page.get_by_test_id("attach-input").set_input_files(list(files))


def _all_done(page: Any, count: int) -> None:
    chips = page.get_by_test_id("upload-chip")
    expect(chips).to_have_count(count)
    for i in range(count):
        expect(chips.nth(i)).to_have_attribute("data-state", "done")


def _url_of(page: Any, slug: str, name: str) -> str:
    page.wait_for_function(
        "([slug, name]) => window.parley.room(slug).messages.some((m) => !m._fromAck && (m.attachments || []).some((a) => a.name === name))",
        arg=[slug, name])
    return page.evaluate(
        "([slug, name]) => window.parley.room(slug).messages.flatMap((m) => m.attachments || []).find((a) => a.name === name).url",
        [slug, name])


def test_attach_paste_drop_send_and_see_it_live(parley, new_page):
    slug = unique("files").replace("_", "-")
    ada, bob = new_page(), new_page()
    signup(ada, parley.url, unique("ada"))
    signup(bob, parley.url, unique("bob"))
    _room(ada, slug)
    open_room(bob, slug)

    # The attach button: an image and a text file, each a chip with its name until sent.
    _attach(ada, {"name": "wide.png", "mimeType": "image/png", "buffer": png(720, 360)},
            {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"meeting notes\n" * 100})
    _all_done(ada, 2)
    expect(ada.get_by_test_id("upload-chips")).to_contain_text("notes.txt")
    expect(ada.get_by_test_id("upload-chips")).to_contain_text("1.4 KB")
    # Files alone are a message: the send button is on with an empty text.
    expect(ada.get_by_test_id("send")).to_be_enabled()
    ada.get_by_test_id("composer-input").fill("the plan")
    ada.get_by_test_id("composer-input").press("Enter")
    expect(ada.get_by_test_id("upload-chips")).to_be_hidden()

    for page in (ada, bob):
        msg = page.locator('[data-testid="message"]:not([data-pending])').filter(has_text="the plan")
        img = msg.locator('[data-testid="attachment-image"] img')
        expect(img).to_have_attribute("width", "360")  # 720 x 360 shown at most 360 wide
        expect(img).to_have_attribute("height", "180")
        page.wait_for_function("img => img.complete && img.naturalWidth === 720", arg=img.element_handle())
        chip = msg.get_by_test_id("attachment-file")
        expect(chip).to_contain_text("notes.txt")
        expect(chip).to_contain_text("1.4 KB")
        expect(chip).to_have_attribute("download", "notes.txt")

    # Paste and drop reach the same uploads.
    ada.evaluate("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File(["pasted text"], "pasted.txt", {type: "text/plain"}));
        const ev = new ClipboardEvent("paste", {clipboardData: dt, bubbles: true, cancelable: true});
        document.querySelector('[data-testid="composer-input"]').dispatchEvent(ev);
    }""")
    ada.evaluate("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File(["dropped text"], "dropped.txt", {type: "text/plain"}));
        const zone = document.querySelector(".chat");
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""")
    _all_done(ada, 2)
    ada.get_by_test_id("send").click()
    for name in ("pasted.txt", "dropped.txt"):
        expect(bob.get_by_test_id("attachment-file").filter(has_text=name)).to_be_visible()
    # A refused file says why on its chip and is not sent.
    _attach(ada, {"name": "blob.bin", "mimeType": "application/octet-stream", "buffer": bytes(range(256)) * 8})
    chip = ada.get_by_test_id("upload-chip")
    expect(chip).to_have_attribute("data-state", "failed")
    expect(chip).to_contain_text("not accepted")
    chip.get_by_test_id("upload-remove").click()
    expect(ada.get_by_test_id("upload-chips")).to_be_hidden()
    assert ada.errors == [] and bob.errors == []


def test_images_keep_their_box_at_phone_width(parley, new_page):
    slug = unique("phone").replace("_", "-")
    page = new_page(375, 740)
    signup(page, parley.url, unique("ada"))
    _room(page, slug)
    _attach(page, {"name": "tall.png", "mimeType": "image/png", "buffer": png(600, 900)})
    _all_done(page, 1)
    page.get_by_test_id("send").click()
    img = page.locator('[data-testid="message"]:not([data-pending]) [data-testid="attachment-image"] img')
    expect(img).to_have_attribute("width", "213")  # 600 x 900 into 360 x 320: 213 x 320
    expect(img).to_have_attribute("height", "320")
    # The box is the attributes' from the first frame on (before and after the image loads),
    # and fits the screen.
    box = img.bounding_box()
    assert box is not None and abs(box["height"] - 320) <= 1 and box["width"] <= 375
    page.wait_for_function("img => img.complete && img.naturalWidth === 600", arg=img.element_handle())
    after = img.bounding_box()
    assert after is not None and abs(after["height"] - box["height"]) <= 1
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.errors == []


@pytest.mark.parametrize("name,content,mime", [("page.html", HTML, "text/html"), ("drawing.svg", SVG, "image/svg+xml")])
def test_uploaded_html_and_svg_never_run(parley, new_page, name, content, mime):
    slug = unique("xss").replace("_", "-")
    page = new_page()
    signup(page, parley.url, unique("ada"))
    _room(page, slug)
    _attach(page, {"name": name, "mimeType": mime, "buffer": content})
    _all_done(page, 1)
    page.get_by_test_id("send").click()
    url = _url_of(page, slug, name)
    # Served as a text download in a sandbox, whatever the client claimed.
    headers = page.evaluate("""async (url) => {
        const r = await fetch(url);
        return Object.fromEntries(["content-type", "content-disposition", "content-security-policy",
                                   "x-content-type-options"].map((k) => [k, r.headers.get(k)]));
    }""", url)
    assert headers == {"content-type": "text/plain; charset=utf-8", "content-disposition": f'attachment; filename="{name}"',
                       "content-security-policy": "sandbox; default-src 'none'", "x-content-type-options": "nosniff"}
    # The chip is shown as a file, never as an image.
    expect(page.get_by_test_id("attachment-file").filter(has_text=name)).to_be_visible()
    expect(page.get_by_test_id("attachment-image")).to_have_count(0)
    # Embedded in the app's page every way a page could: nothing runs.
    page.evaluate("""(url) => {
        for (const tag of ["iframe", "embed", "img"]) {
            const el = document.createElement(tag);
            el.src = url;
            document.body.append(el);
        }
    }""", url)
    # Navigated to (a link opened, the URL typed): a download, not a page.
    other = page.context.new_page()
    with other.expect_download() as download:
        try:
            other.goto(parley.url + url)
        except PlaywrightError as exc:  # "Download is starting": the navigation became a download
            assert "download" in str(exc).lower()
    assert download.value.suggested_filename == name
    time.sleep(1.0)
    assert page.evaluate("() => [window.pwned, localStorage.getItem('pwned')]") == [None, None]


def test_a_file_over_the_servers_limits_is_refused_before_it_is_sent(parley, new_page):
    """hello.limits (protocol §1): a file larger than upload_max_bytes, or one more than
    max_attachments_per_message, is shown refused at once and never goes up."""
    page = new_page()
    signup(page, parley.url, unique("ada"))
    slug = unique("limits").replace("_", "-")
    _room(page, slug)
    limits = page.evaluate("() => window.parley.limits")
    assert limits["upload_max_bytes"] == 10 * 1024 * 1024 and limits["max_attachments_per_message"] == 10
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "/uploads" in r.url else None)
    page.evaluate("() => { window.parley.limits.upload_max_bytes = 1000; window.parley.limits.max_attachments_per_message = 2; }")
    _attach(page, {"name": "big.bin", "mimeType": "application/octet-stream", "buffer": b"x" * 1001})
    chip = page.get_by_test_id("upload-chip").filter(has_text="big.bin")
    expect(chip).to_have_attribute("data-state", "failed")
    expect(chip).to_contain_text("larger than")
    _attach(page, *({"name": f"f{i}.txt", "mimeType": "text/plain", "buffer": b"hello"} for i in range(3)))
    chips = page.get_by_test_id("upload-chip")
    expect(chips.filter(has_text="f2.txt")).to_contain_text("at most 2 files per message")
    expect(chips.filter(has_text="f0.txt")).to_have_attribute("data-state", "done")
    expect(chips.filter(has_text="f1.txt")).to_have_attribute("data-state", "done")
    assert len(posts) == 2 and page.errors == []
