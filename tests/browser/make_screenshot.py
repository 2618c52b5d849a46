"""Regenerate docs/screenshot.png: a realistic conversation at desktop width.

    .venv/bin/python tests/browser/make_screenshot.py [--out docs/screenshot.png] [--phone /tmp/phone.png]

Starts its own server (temp data dir, free port), four users in four browser contexts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from playwright.sync_api import expect, sync_playwright

from tests.browser.helpers import delivered, open_room, say, signup, wait_joined
from tests.browser.server import CHROMIUM_ARGS, REPO, Server

CONVERSATION = [
    ("grace", "Morning all! Launch checklist is pinned in the doc. Anything still red?"),
    # No figures in here: the screenshot is not a place for numbers nobody measured.
    ("linus", "The onboarding copy is in review; two comments left, both small."),
    ("linus", "One thing: the staging certificate expires Friday. I'll renew it tomorrow morning."),
    ("ada", "Thanks. Put it on the checklist so it doesn't slip."),
    ("margaret", "Docs are merged. I rewrote the protocol page so a client can be built from it alone."),
    ("grace", "Great — then we're green on docs and infra. Release notes?"),
    ("ada", "Drafting them now, will post here by 11:00.\nShort version: resumable rooms, idempotent sends, typing indicators."),
    ("margaret", "Ship it!"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshot.png"))
    parser.add_argument("--phone", default="")
    args = parser.parse_args()
    srv = Server()
    srv.start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            pages = {}
            for name in ("ada", "grace", "linus", "margaret"):
                ctx = browser.new_context(viewport={"width": 1280, "height": 760}, device_scale_factor=1)
                page = ctx.new_page()
                signup(page, srv.url, name)
                pages[name] = page
            ada = pages["ada"]
            for slug, title, private in [("launch", "Product launch", False), ("design", "Design", False),
                                         ("random", "Random", False), ("incidents", "Incidents", True)]:
                res = ada.request.post(f"{srv.url}/api/rooms", data={"slug": slug, "title": title, "private": private},
                                       headers={"X-CSRFToken": next(c["value"] for c in ada.context.cookies() if c["name"] == "csrftoken")})
                assert res.status == 201, res.text()
            # ada has visited #random, so new messages there show as unread.
            for page in pages.values():
                page.goto(f"{srv.url}/#/random")
                wait_joined(page, "random")
                open_room(page, "launch")
            for who, text in CONVERSATION:
                say(pages[who], text)
                expect(delivered(ada, text)).to_have_count(1)
                time.sleep(0.05)
            open_room(pages["grace"], "random")
            say(pages["grace"], "Cake in the kitchen")
            say(pages["grace"], "Seriously, it's big.")
            pages["linus"].get_by_test_id("composer-input").press_sequentially("Sounds good, I'll")
            ada.get_by_test_id("composer-input").fill("Release notes draft: ")
            expect(ada.get_by_test_id("typing")).to_have_text("linus is typing…")
            expect(ada.get_by_test_id("unread")).to_have_text("2")
            ada.mouse.move(0, 0)
            time.sleep(0.3)
            ada.screenshot(path=args.out)
            print(f"wrote {args.out}")
            if args.phone:
                ada.set_viewport_size({"width": 375, "height": 740})
                time.sleep(0.3)
                ada.screenshot(path=args.phone)
                ada.get_by_test_id("sidebar-toggle").click()
                time.sleep(0.4)
                ada.screenshot(path=args.phone.replace(".png", "-sidebar.png"))
                ada.get_by_test_id("sidebar-close").click()
                ada.get_by_test_id("members-toggle").click()
                time.sleep(0.3)
                ada.screenshot(path=args.phone.replace(".png", "-members.png"))
                print(f"wrote {args.phone} (+ -sidebar, -members)")
            browser.close()
    finally:
        srv.close()


if __name__ == "__main__":
    main()
