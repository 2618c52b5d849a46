"""Cross-origin WebSocket hijacking, in Chromium: a page served from another port of the same
host opens the chat socket with the signed-in user's cookie (cookies are not bound to a port, and
the two are same-site, so SameSite=Lax sends it). The server must refuse the handshake
(docs/protocol.md §1 "Origin")."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.browser.helpers import signup, unique

pytestmark = [pytest.mark.browser]

# Opens the socket, and reports what came of it in window.outcome: the first frame (a "hello"
# means the server accepted the handshake as the user) or the close code.
OPEN_SOCKET = """(target) => {
  const ws = new WebSocket(target);
  ws.onmessage = (e) => { window.outcome = window.outcome || ("frame " + e.data); };
  ws.onclose = (e) => { window.outcome = window.outcome || ("closed " + e.code); };
}"""
PAGE = """<!doctype html><meta charset="utf-8"><title>another program</title>
<script>(%s)(%r);</script>"""


def socket_url(parley: Any) -> str:
    return parley.url.replace("http://", "ws://") + "/ws/chat/"


@pytest.fixture
def other_port_page(parley: Any) -> Iterator[str]:
    """The URL of PAGE, served on another port of 127.0.0.1, aimed at the Parley server."""
    body = (PAGE % (OPEN_SOCKET, socket_url(parley))).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/page.html"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_page_on_another_port_cannot_open_the_socket_with_the_users_cookie(
        parley: Any, new_page: Any, other_port_page: str) -> None:
    page = new_page()
    signup(page, parley.url, unique("ada"))  # signed in; the app's own socket is connected
    page.goto(other_port_page)
    page.wait_for_function("() => window.outcome !== undefined", timeout=15_000)
    outcome = page.evaluate("() => window.outcome")
    assert outcome.startswith("closed "), f"the other port's page got in: {outcome}"
    other_origin = other_port_page.rsplit("/", 1)[0]
    assert f"foreign Origin '{other_origin}'" in parley.log_tail(200)
    # The same browser, cookie and socket URL from the server's own page still work.
    page.goto(parley.url + "/")
    page.evaluate(OPEN_SOCKET, socket_url(parley))
    page.wait_for_function("() => window.outcome !== undefined", timeout=15_000)
    assert '"type":"hello"' in page.evaluate("() => window.outcome").replace(" ", "")
