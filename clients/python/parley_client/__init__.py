"""parley-client: an asyncio client for the Parley chat server (docs/client-python.md)."""

from parley_client.backoff import Backoff
from parley_client.client import ParleyClient
from parley_client.errors import AuthError, ClientClosed, ParleyError, SendFailed
from parley_client.fold import apply
from parley_client.outbox import Outbox, OutboxEntry, new_client_id
from parley_client.rooms import RoomState
from parley_client.stats import ClientStats

__all__ = [
    "AuthError", "Backoff", "ClientClosed", "ClientStats", "Outbox", "OutboxEntry", "ParleyClient",
    "ParleyError", "RoomState", "SendFailed", "apply", "new_client_id",
]
__version__ = "0.2.0"
