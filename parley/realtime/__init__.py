"""Parley's realtime engine: from one committed message to every socket, fast.

No models and no settings but parley.conf (tests/test_layering.py holds it to that): the hub
(hub.py), each socket's ordering (ordering.py) and outbound queue (outbound.py), the frame
writers (writer.py, uvicorn_writer.py), the routers without a frame per socket (frameless.py),
the database thread (dbthread.py). docs/architecture.md draws how they fit.
"""
