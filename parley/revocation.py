"""Revocation: a socket's credentials — its user, its API token — stay checked while it is open.

A socket whose credentials stop holding (the user deactivated or deleted, the token revoked or
deleted) is closed with 4401, however that happened. Three paths, each covering what the one
before cannot:

1. The process that revokes says so at once (services.token_revoke, parley.receivers): its hub
   closes its own sockets, and with Redis every process's (parley.realtime.hub's control channel).
2. Every command that does work reads the credentials again in the query it makes anyway (the
   ingest batch's access check, join, history, typing: parley.selectors.message_send_checks) and
   is refused with CredentialsRevoked: a deactivated user's next send is never stored.
3. Each process asks the database every PARLEY_REVOCATION_CHECK_SECS which of its sockets'
   credentials were lost (RevocationCheck), in one query for all of them: a revocation nobody
   announced — a shell or another process without Redis, `QuerySet.update(is_active=False)`,
   a row deleted in SQL — closes idle sockets too, within that bound.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from parley import selectors
from parley.conf import parley_settings
from parley.realtime import hub as hub_module
from parley.realtime.dbthread import DatabaseThread
from parley.realtime.tasks import Periodic
from parley.selectors import Credential

if TYPE_CHECKING:
    from parley.realtime.hub import LocalHub

log = logging.getLogger(__name__)

# The periodic check has a thread (and a database connection) of its own: it reads one row per
# credential the process holds, and must neither wait behind the sockets' commands and the
# group commit on parley.realtime.dbthread.database_thread nor hold them up. On SQLite the query runs in
# one step without the GIL, beside the event loop: 40,000 credentials (20,000 sockets with a
# token each) took 15-19 ms, and its rows are only the lost ones.
revocation_thread = DatabaseThread("parley-revocation")


class CredentialsRevoked(Exception):
    """The command's user or API token no longer holds; nothing was done. `credentials` are the
    lost ones, ("user", id) and/or ("token", id): the consumer closes their sockets (4401)."""

    def __init__(self, credentials: Iterable[Credential]) -> None:
        self.credentials = frozenset(credentials)
        super().__init__(f"credentials no longer valid: {sorted(self.credentials)}")


def check_interval_secs() -> float:
    return float(parley_settings.REVOCATION_CHECK_SECS)


class RevocationCheck(Periodic):
    """One process's (one event loop's) periodic check over its hub's watched credentials.

    It runs while the hub watches any credential and stops by itself when none is left
    (LocalHub.watch_local starts it again), so an idle process makes no queries.
    """

    what = "revocation check"

    def __init__(self, hub: LocalHub) -> None:
        super().__init__()
        self.hub = hub

    def interval_secs(self) -> float:
        return check_interval_secs()

    def active(self) -> bool:
        return bool(self.hub.credentials)

    async def round(self) -> object:
        return await self.check_once()

    async def check_once(self) -> set[Credential]:
        """Close the sockets of every watched credential that no longer holds; the lost ones."""
        watched = list(self.hub.credentials)
        if not watched:
            return set()
        try:
            lost = await revocation_thread.submit(selectors.credentials_lost, credentials=watched)
        except Exception:  # the database is away: the next round tries again
            log.warning("revocation check failed; retrying in %.0f s", check_interval_secs(), exc_info=True)
            return set()
        for credential in lost:
            log.info("closing the sockets of %s %s: no longer valid", *credential)
            self.hub.close_local(credential)
        return lost


# Every hub starts this check once a socket is recorded under a credential (the engine knows
# only the CredentialCheck protocol; this module is the product side that reads the database).
hub_module.set_credential_check(RevocationCheck)
