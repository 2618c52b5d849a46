"""Counters of one client, shared by its parts (`ParleyClient.stats`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClientStats:
    connections: int = 0          # successful handshakes (hello received)
    connect_failures: int = 0
    dead_connections: int = 0     # closed by the heartbeat watchdog
    resumes_recovered: int = 0    # joined with recovered: true
    resumes_refused: int = 0      # joined with recovered: false
    catchups: int = 0             # refused resumes repaired from history (same epoch)
    delivered: int = 0            # message events handed to the application
    send_retries: int = 0         # retransmissions of a send (reconnect or retryable error)
    request_retries: int = 0      # history/edit/delete/react/unreact sent again after a refusal
    paced_waits: int = 0          # times a frame waited for a token of hello.limits' buckets
