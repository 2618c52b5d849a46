"""`/healthz` (the process is alive), `/readyz` (it can serve: its database and Redis answer) and
`/metrics` (parley.metrics, for the addresses or the token docs/security.md describes).

A load balancer or orchestrator keeps sending traffic to a process whose /healthz answers and
takes it out of rotation while /readyz answers 503; /healthz never touches the database, so a
database outage does not make every process look dead and get restarted at once.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse

from parley.conf import parley_settings
from parley.http_auth import api_error, metrics_token_matches

# How long each check may take before it counts as failed: well under a probe's usual 1-5 s.
DB_TIMEOUT_SECS = 2.0
REDIS_TIMEOUT_SECS = 1.0

_redis_clients: dict[str, Any] = {}


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def readyz(request: HttpRequest) -> JsonResponse:
    """200 {"ok": true, "checks": {"database": "ok", "redis": "ok"}}, or 503 with the failing
    check's reason in place of its "ok". "redis" is there only when REDIS_URL is set."""
    checks = {"database": database_problem() or "ok"}
    if parley_settings.REDIS_URL:
        checks["redis"] = redis_problem() or "ok"
    ok = all(value == "ok" for value in checks.values())
    return JsonResponse({"ok": ok, "checks": checks}, status=200 if ok else 503)


def database_problem() -> str | None:
    """None if the default database answers a trivial query, else why not (one line)."""
    connection = connections["default"]
    try:
        # A connection that died while idle (the server restarted) is replaced, not reused.
        connection.close_if_unusable_or_obsolete()
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # Per statement, so a database that accepts the connection and then hangs
                # still answers this probe in time (the connect has its own timeout below).
                cursor.execute(f"SET statement_timeout = {int(DB_TIMEOUT_SECS * 1000)}")
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        connection.close()  # (also after a failed connect) so the next probe connects again
        return f"database unreachable: {_one_line(exc)}"
    return None


def redis_problem() -> str | None:
    """None if Redis (PARLEY["REDIS_URL"]) answers a PING within REDIS_TIMEOUT_SECS, else why not."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    url = parley_settings.REDIS_URL
    client = _redis_clients.get(url)
    if client is None:
        # No retries: a probe reports the outage, it does not ride it out.
        client = _redis_clients[url] = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_SECS, socket_connect_timeout=REDIS_TIMEOUT_SECS,
            retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except Exception as exc:
        return f"redis unreachable: {_one_line(exc)}"
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


# --- /metrics ---------------------------------------------------------------------------------


def metrics(request: HttpRequest) -> HttpResponse:
    """The Prometheus metrics (parley.metrics), for whoever metrics_allowed() lets in; 403
    {"error": ...} for everyone else (docs/security.md "Metrics")."""
    from parley import metrics as parley_metrics

    if not metrics_allowed(request):
        return api_error(403, "forbidden", "metrics need PARLEY_METRICS_TOKEN as a bearer token, "
                         "or a request from loopback or PARLEY_METRICS_ALLOWED_IPS")
    return HttpResponse(parley_metrics.exposition(), content_type=parley_metrics.CONTENT_TYPE)


def metrics_allowed(request: HttpRequest) -> bool:
    """With PARLEY["METRICS_TOKEN"] set: only `Authorization: Bearer <that token>`, from anywhere.
    Without it: only a peer on loopback or in PARLEY["METRICS_ALLOWED_IPS"] (addresses or
    networks). The peer is REMOTE_ADDR: behind a proxy, the client's address only if uvicorn
    runs with --proxy-headers (and then the proxy's own requests are not loopback ones)."""
    token = parley_settings.METRICS_TOKEN
    if token:
        return metrics_token_matches(request.headers.get("Authorization", ""))
    try:
        peer = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return peer.is_loopback or any(peer in network for network in _allowed_networks())


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(entry, strict=False) for entry in parley_settings.METRICS_ALLOWED_IPS]

