"""Browser tests: a real server subprocess (server.Server) and Debian's Chromium via Playwright.

These tests never touch the test database: no django_db, no ORM. Chromium missing → skip, loudly;
under PARLEY_REQUIRE_SERVICES=1 (CI) → fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.server import CHROMIUM_ARGS, Server

REQUIRE_SERVICES = os.environ.get("PARLEY_REQUIRE_SERVICES") == "1"


@pytest.fixture(autouse=True)
def _flush_layer() -> Iterator[None]:
    """Overrides tests/conftest.py's: these tests have no channel layer in-process."""
    yield


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if not path:
        message = "Debian's chromium is not installed (apt-get install chromium); browser tests NOT run"
        if REQUIRE_SERVICES:
            pytest.fail(message + " but PARLEY_REQUIRE_SERVICES=1")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """One server for the session; a test may stop()/start() it (same port, same data)."""
    srv = Server()
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def parley(server: Server) -> Server:
    """The session server, started again if an earlier test left it stopped."""
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    return server


@pytest.fixture
def fast_server(chromium_path: str) -> Iterator[Server]:
    """A server of its own with the message/frame rate limits raised, for tests that seed volume."""
    srv = Server(extra_env={
        "PARLEY_MESSAGES_PER_SEC": "1000", "PARLEY_MESSAGES_BURST": "1000",
        "PARLEY_FRAMES_PER_SEC": "1000", "PARLEY_FRAMES_BURST": "1000",
    })
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Any]:
    """`new_page(width=1280, height=800)` → a page in a fresh context (its own cookies)."""
    contexts: list[Any] = []

    def make(width: int = 1280, height: int = 800) -> Any:
        ctx = browser.new_context(viewport={"width": width, "height": height})
        ctx.set_default_timeout(15_000)
        contexts.append(ctx)
        page = ctx.new_page()
        page.errors = []  # uncaught page errors, checked by tests
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        return page

    yield make
    for ctx in contexts:
        ctx.close()
