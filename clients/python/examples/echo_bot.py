"""Echo bot: joins rooms and answers every message that starts with "!echo ".

    .venv/bin/python manage.py create_token echobot --create-user   # last line is the token
    PARLEY_TOKEN=prl_… .venv/bin/python clients/python/examples/echo_bot.py \
        --url ws://127.0.0.1:8000/ws/chat/ lobby

It survives server restarts and network drops on its own (the client resumes every room), and it
never answers one message twice: the reply's client_id is derived from the message it answers,
so even a bot restarted mid-reply cannot double it (the server keeps one message per client_id).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from parley_client import AuthError, ParleyClient

PREFIX = "!echo "


async def run(url: str, token: str, rooms: list[str]) -> None:
    async with ParleyClient(url, token=token) as client:
        me = client.user["id"]
        for room in rooms:
            await client.join(room)
        logging.info("echo bot %s in %s", client.user["username"], ", ".join(rooms))
        replies: set[asyncio.Task[object]] = set()
        async for event in client.events():
            if event["type"] == "closed":
                break
            if event["type"] != "message":
                continue
            message = event["message"]
            if message["author"]["id"] == me or not message["text"].startswith(PREFIX):
                continue
            text = message["text"][len(PREFIX):].strip() or "(nothing)"
            # One reply per (room, seq), however often this message is seen.
            cid = f"echo-{event['room']}-{message['seq']}"
            task = asyncio.create_task(client.send(event["room"], f"{message['author']['username']} said: {text}",
                                                   client_id=cid))
            replies.add(task)
            task.add_done_callback(replies.discard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rooms", nargs="+")
    parser.add_argument("--url", default=os.environ.get("PARLEY_URL", "ws://127.0.0.1:8000/ws/chat/"))
    parser.add_argument("--token", default=os.environ.get("PARLEY_TOKEN"))
    args = parser.parse_args()
    if not args.token:
        parser.error("pass --token or set PARLEY_TOKEN (manage.py create_token NAME --create-user)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def guarded() -> None:
        task = asyncio.create_task(run(args.url, args.token, args.rooms))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        except AuthError as exc:
            raise SystemExit(f"echo bot: {exc}") from None

    asyncio.run(guarded())


if __name__ == "__main__":
    main()
