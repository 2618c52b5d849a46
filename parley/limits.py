"""Every limit Parley enforces, with its name, key and default — docs/security.md has the table.

Each limit is a key of the PARLEY settings dict (parley.conf); the standalone server fills it from
the environment variable `PARLEY_<key>`. Limits are read through parley.conf.parley_settings on
use (not copied at import), so a deployment's settings and a test's override both take effect.
The counters per user or per address that a balancer would otherwise multiply (open sockets per
user, the per-user message rate, the handshake rates per address and per user) are cluster-wide
with REDIS_URL (parley.shared_limits: every process counts in the same Redis keys) and per
process without it, or while Redis does not answer. The rest (frames per socket, rooms per
socket, history bytes, connections per address ...) are per socket or per process by design;
docs/security.md says which is which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from parley.conf import ENV_PREFIX, parley_settings


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    key: str  # in the PARLEY settings dict
    default: float
    unit: str
    description: str

    @property
    def env(self) -> str:
        """The environment variable that fills the key for the standalone server."""
        return ENV_PREFIX + self.key

    @property
    def value(self) -> float:
        return getattr(parley_settings, self.key)


MAX_FRAME_BYTES = Limit("frame size", "MAX_FRAME_BYTES", 65536, "bytes",
                        "largest client frame; the ASGI server closes with 1009 above it")
MAX_TEXT_CHARS = Limit("message length", "MAX_TEXT_CHARS", 4000, "characters",
                       "message text after trimming")
FRAMES_PER_SEC = Limit("frame rate", "FRAMES_PER_SEC", 20, "frames/s per socket",
                       "sustained client frames per socket (token bucket)")
FRAMES_BURST = Limit("frame burst", "FRAMES_BURST", 40, "frames",
                     "frames a socket may send at once before the rate applies")
MESSAGES_PER_SEC = Limit("message rate", "MESSAGES_PER_SEC", 5, "messages/s per user",
                         "sustained sends per user, all their sockets together (in a cluster "
                         "with REDIS_URL, else in a process)")
MESSAGES_BURST = Limit("message burst", "MESSAGES_BURST", 10, "messages",
                       "sends a user may make at once before the rate applies")
RATE_STRIKES = Limit("rate-limit strikes", "RATE_LIMIT_STRIKES", 30, "refusals / 10 s",
                     "rate-limited frames within 10 s after which the socket is closed (4429)")
MAX_ROOMS_PER_SOCKET = Limit("rooms per socket", "MAX_ROOMS_PER_SOCKET", 100, "rooms",
                             "rooms one socket may have joined at once")
MAX_SOCKETS_PER_USER = Limit("sockets per user", "MAX_SOCKETS_PER_USER", 20, "sockets",
                             "open sockets per user (in a cluster with REDIS_URL, else per "
                             "process)")
HANDSHAKES_PER_IP_PER_MIN = Limit("handshake rate", "HANDSHAKES_PER_IP_PER_MIN", 120,
                                  "refused handshakes/min per IP",
                                  "WebSocket handshakes per client address that end refused")
OUTBOUND_MAX_MESSAGES = Limit("outbound queue (messages)", "OUTBOUND_MAX_MESSAGES", 1000,
                              "frames", "frames waiting to be written to one socket")
OUTBOUND_MAX_BYTES = Limit("outbound queue (bytes)", "OUTBOUND_MAX_BYTES", 4 * 1024 * 1024,
                           "bytes", "bytes waiting to be written to one socket, with what its "
                           "transport buffer and kernel send queue hold once it falls behind")
HEARTBEAT_INTERVAL_SECS = Limit("heartbeat interval", "HEARTBEAT_INTERVAL_SECS", 25, "s",
                                "client ping period; silent for 2x + 5 s closes with 4408")
HISTORY_PAGE_MAX = Limit("history page", "HISTORY_PAGE_MAX", 100, "messages",
                         "largest join/history page")
RESUME_MAX_GAP = Limit("resume window", "RESUME_MAX_GAP", 1000, "log entries",
                       "largest gap a join replays, counted in log entries (messages, edits, deletes, "
                       "reactions); beyond it recovered=false")
# Read by the engine (parley.realtime.hub) through parley.conf, as every limit can be.
REDIS_OUTBOX_MAX_EVENTS = Limit("Redis publish queue", "REDIS_OUTBOX_MAX_EVENTS", 10_000, "events",
                                "room events one process holds for Redis while it does not answer; past "
                                "it the oldest are dropped (the other processes read them from the database)")
# A reply must fit one frame a client accepts: this plus protocol.REPLY_ENVELOPE_MAX_BYTES
# (256 KiB) is 1 MiB, websockets' default max_size. 768 KiB holds a full resume window of
# ordinary messages (1,000 of 400 characters encode to about 0.6 MB).
REPLY_MAX_BYTES = Limit("reply size", "REPLY_MAX_BYTES", 768 * 1024, "bytes",
                        "encoded messages (JSON, as sent) of one joined/history reply or HTTP page; "
                        "a resume beyond it is recovered=false, a page beyond it is cut short")
TYPING_MIN_INTERVAL_MS = Limit("typing interval", "TYPING_MIN_INTERVAL_MS", 1000, "ms",
                               "typing events relayed per socket and room at most this often")

# --- Revocation (issue 12, item 6): how soon a revocation nobody announced closes sockets ------
# Each process asks the database this often which of its sockets' users and tokens are no
# longer valid (parley.revocation), in one query; 0 turns the check off.
REVOCATION_CHECK_SECS = Limit("revocation check", "REVOCATION_CHECK_SECS", 5, "s",
                              "a deactivated user's or revoked token's open sockets close (4401) "
                              "within this, whoever revoked it and however")

# --- Posting from server code (parley.api, parley.roomwatch) ---------------------------------
# Without Redis, a message stored by another process (a management command, a worker, the shell)
# reaches this process's sockets within two reads of its rooms' logs: that often, in one query
# while any socket is in a room; 0 turns it off (such messages then arrive with the room's next
# live message, or on resume).
ROOM_LOG_POLL_MS = Limit("room log poll", "ROOM_LOG_POLL_MS", 100, "ms",
                         "without Redis, a message posted from another process reaches live "
                         "sockets within twice this")
CUSTOM_PAYLOAD_MAX_BYTES = Limit("custom event size", "CUSTOM_PAYLOAD_MAX_BYTES", 16 * 1024, "bytes",
                                 "the JSON of one parley.publish_event payload")

# --- The connection edge (parley/edge.py: uvicorn's HTTP and WebSocket protocols, config/serve.py).
# Enforced before a byte reaches the ASGI app, so they cost an attacker's connection, not the app.
# `0` turns the two connection caps off (e.g. behind a proxy that enforces its own).
HEADER_TIMEOUT_SECS = Limit("header timeout", "HEADER_TIMEOUT_SECS", 10, "s",
                            "time a connection has to send a request's line and headers (a "
                            "WebSocket handshake too); then 408, or a silent close if nothing came")
MAX_HEADER_BYTES = Limit("request header size", "MAX_HEADER_BYTES", 16 * 1024, "bytes",
                         "request line + headers of one HTTP request or WebSocket handshake; "
                         "above it 431 and close")
MAX_CONNECTIONS_PER_IP = Limit("connections per address", "MAX_CONNECTIONS_PER_IP", 256,
                               "connections", "open connections from one client address (IPv6: "
                               "one /64) per process; more are closed at once")
MAX_CONNECTIONS = Limit("connections", "MAX_CONNECTIONS", 10_000, "connections",
                        "open connections per process, keeping file descriptors for the database "
                        "and Redis; more are closed at once")
SHUTDOWN_GRACE_SECS = Limit("shutdown grace", "SHUTDOWN_GRACE_SECS", 10, "s",
                            "on SIGTERM: time to answer the frames already received and close "
                            "every socket with 1001")

# --- HTTP, accounts and handshakes (issue 12: origin, login/signup, API errors, rooms) ---
HANDSHAKES_PER_USER_PER_MIN = Limit("handshake rate per user", "HANDSHAKES_PER_USER_PER_MIN",
                                    120, "handshakes/min per user",
                                    "authenticated WebSocket handshakes per user (token bucket)")
# Failed sign-ins per (username, address) are django-axes's in the standalone server
# (config/settings.py AXES_*), stored in the database; this one catches one address trying one
# password on many usernames, which axes's per-pair count does not.
LOGIN_FAILURES_PER_IP_PER_HOUR = Limit("login failures per address",
                                       "LOGIN_FAILURES_PER_IP_PER_HOUR", 30,
                                       "failures/hour per address",
                                       "failed sign-ins from one address, any usernames, before "
                                       "it must wait")
SIGNUPS_PER_IP_PER_HOUR = Limit("signups per address", "SIGNUPS_PER_IP_PER_HOUR", 10,
                                "accounts/hour per address", "accounts created from one address, each "
                                "'username already exists' answer counted as one")
PASSWORD_RESETS_PER_IP_PER_HOUR = Limit("password resets per address",
                                        "PASSWORD_RESETS_PER_IP_PER_HOUR", 10,
                                        "requests/hour per address",
                                        "password-reset requests from one address, known e-mail "
                                        "addresses or not")
PASSWORD_RESETS_PER_EMAIL_PER_HOUR = Limit("password resets per e-mail address",
                                           "PASSWORD_RESETS_PER_EMAIL_PER_HOUR", 3,
                                           "requests/hour per e-mail address",
                                           "password-reset requests naming one e-mail address "
                                           "(case-insensitive), from every client address")
ROOMS_CREATED_PER_USER_PER_HOUR = Limit("room creation rate",
                                        "ROOMS_CREATED_PER_USER_PER_HOUR", 20,
                                        "requests/hour per user",
                                        "POST /api/rooms requests per user, refused ones included")
MAX_ROOMS_OWNED_PER_USER = Limit("rooms owned per user", "MAX_ROOMS_OWNED_PER_USER", 50,
                                 "rooms", "rooms one user may own")

# --- database reads and slow readers (issue 12, items 4 and 5) ---
# A history page is charged in bytes of its reply frame: a page of 100 4,000-character messages
# costs the database thread and the event loop ~2,000 times what a page of one short message does.
HISTORY_BYTES_PER_SEC = Limit("history read rate", "HISTORY_BYTES_PER_SEC", 1024 * 1024,
                              "bytes/s per user", "bytes of history replies per user, all their "
                              "sockets in a process together (token bucket)")
HISTORY_BURST_BYTES = Limit("history read burst", "HISTORY_BURST_BYTES", 4 * 1024 * 1024,
                            "bytes", "history reply bytes a user may read at once before the rate applies")
# The process's own ceiling (signup is free, so per-user budgets multiply): a history flood at
# full tilt produced ~45 MB/s of replies and starved everyone; 8 MiB/s is well under that.
HISTORY_PROCESS_BYTES_PER_SEC = Limit("history read rate (process)", "HISTORY_PROCESS_BYTES_PER_SEC",
                                      8 * 1024 * 1024, "bytes/s per process",
                                      "bytes of history replies per server process, all users together")
HISTORY_PROCESS_BURST_BYTES = Limit("history read burst (process)", "HISTORY_PROCESS_BURST_BYTES",
                                    8 * 1024 * 1024, "bytes",
                                    "history reply bytes a process may serve at once before its rate applies")
# A socket the server closes (4413, 4429, 4408 ...) is reset this long after its close frame if
# the connection is still open: a client that does not read must not hold it, its kernel send
# queue and its user's socket slot.
CLOSE_GRACE_SECS = Limit("close grace", "CLOSE_GRACE_SECS", 2, "s",
                         "after the server's close frame, the TCP connection is reset if it is still open")

# --- Conversations (protocol version 2: edit, delete, reactions, mentions; docs/protocol.md §10) ---
EDITS_PER_SEC = Limit("edit rate", "EDITS_PER_SEC", 2, "changes/s per user",
                      "edits, deletes, reactions added and removed per user, all their sockets and "
                      "HTTP requests together (in a cluster with REDIS_URL, else in a process)")
EDITS_BURST = Limit("edit burst", "EDITS_BURST", 20, "changes",
                    "edits, deletes and reactions a user may make at once before the rate applies")
MAX_REACTIONS_PER_MESSAGE = Limit("reactions per message", "MAX_REACTIONS_PER_MESSAGE", 20, "emoji",
                                  "different emoji on one message")
MAX_REACTIONS_PER_USER = Limit("reactions per user and message", "MAX_REACTIONS_PER_USER", 10, "emoji",
                               "emoji one user may put on one message")
MAX_MENTIONS_PER_MESSAGE = Limit("mentions per message", "MAX_MENTIONS_PER_MESSAGE", 20, "users",
                                 "users one message mentions; further @names stay plain text")
ROOM_MENTIONS_PER_HOUR = Limit("@room rate", "ROOM_MENTIONS_PER_HOUR", 10, "messages/hour per user",
                               "messages (and edits) with @room by a room owner or admin that mention "
                               "the room, per process; beyond it @room stays plain text")

# --- People: display names and avatars (docs/protocol.md §15) ---------------------------------
DISPLAY_NAME_MAX_CHARS = Limit("display name length", "DISPLAY_NAME_MAX_CHARS", 64, "characters",
                               "a display name after trimming")
AVATAR_MAX_BYTES = Limit("avatar size", "AVATAR_MAX_BYTES", 2 * 1024 * 1024, "bytes",
                         "an uploaded avatar image, before Parley re-encodes it")
AVATAR_MAX_PIXELS = Limit("avatar pixels", "AVATAR_MAX_PIXELS", 25_000_000, "pixels",
                          "width x height of an uploaded avatar: larger ones are refused before "
                          "they are decoded (decompression bombs)")
PROFILE_UPDATES_PER_HOUR = Limit("profile update rate", "PROFILE_UPDATES_PER_HOUR", 30,
                                 "changes/hour per user", "display name and avatar changes per user "
                                 "(token bucket, per process)")
MAX_PROFILE_IDS = Limit("profiles per lookup", "MAX_PROFILE_IDS", 100, "users",
                        "user ids one GET /api/profiles may name")
# --- Search (GET /api/search, docs/protocol.md §13) ---
# A search reads an index over every visible room: far more work than a page of one room, so
# it has its own budget (cluster-wide with REDIS_URL) rather than the history bytes'.
SEARCHES_PER_MIN = Limit("search rate", "SEARCHES_PER_MIN", 30, "searches/min per user",
                         "GET /api/search requests per user, refused ones included (token bucket; in "
                         "a cluster with REDIS_URL, else in a process)")
SEARCH_BURST = Limit("search burst", "SEARCH_BURST", 10, "searches",
                     "searches a user may make at once before the rate applies")
SEARCH_QUERY_MAX_CHARS = Limit("search length", "SEARCH_QUERY_MAX_CHARS", 256, "characters",
                               "the q of one search, filters included")
SEARCH_PAGE_MAX = Limit("search page", "SEARCH_PAGE_MAX", 50, "results",
                        "results in one search page; a larger limit is clamped to it")
# A word in most messages makes the database score every one of them (docs/benchmarks.md: a
# word in 1% of a million messages is ~0.3 s): the time a search may hold the database is capped.
SEARCH_TIMEOUT_MS = Limit("search time", "SEARCH_TIMEOUT_MS", 3000, "ms",
                          "how long one search's statements may run before the database stops them")
# --- Uploads (docs/protocol.md §14; parley/uploads.py) ---
UPLOAD_MAX_BYTES = Limit("upload size", "UPLOAD_MAX_BYTES", 10 * 1024 * 1024, "bytes",
                         "one uploaded file; a request announcing more is refused before its body "
                         "is read (413 file_too_large)")
UPLOADS_PER_USER_PER_HOUR = Limit("upload rate", "UPLOADS_PER_USER_PER_HOUR", 60, "uploads/hour per user",
                                  "POST /api/rooms/<slug>/uploads requests per user, refused ones "
                                  "included, per process (token bucket)")
MAX_ATTACHMENTS_PER_MESSAGE = Limit("attachments per message", "MAX_ATTACHMENTS_PER_MESSAGE", 10, "files",
                                    "uploads one message may carry (too_many_attachments)")
UPLOAD_MAX_IMAGE_PIXELS = Limit("image size", "UPLOAD_MAX_IMAGE_PIXELS", 25_000_000, "pixels",
                                "width x height x frames of an uploaded image, checked before it is "
                                "decoded (decompression bombs; 413 image_too_large)")
UPLOAD_UNATTACHED_TTL_SECS = Limit("unattached upload lifetime", "UPLOAD_UNATTACHED_TTL_SECS", 24 * 3600, "s",
                                   "an upload no message took is deleted after this (manage.py "
                                   "parley_expire_uploads, and lazily on each upload)")
# --- Attention (docs/protocol.md §11): the room list, read markers, room settings ---
# Every `read` and `rooms` command, PUT …/read, PATCH …/state and GET /api/rooms/state takes one
# token: each is a write or a list read with counts, and a client marks a room read as it is
# looked at (the browser at most once per room and second or so).
READS_PER_SEC = Limit("read-mark rate", "READS_PER_SEC", 5, "requests/s per user",
                      "read marks, room-list reads and room-setting changes per user, sockets and "
                      "HTTP together (in a cluster with REDIS_URL, else in a process)")
READS_BURST = Limit("read-mark burst", "READS_BURST", 30, "requests",
                    "read marks and room-list reads a user may make at once before the rate applies")
ROOMS_PAGE_MAX = Limit("rooms page", "ROOMS_PAGE_MAX", 500, "rooms",
                       "rooms in one GET /api/rooms page (by slug; `next` gives the following page)")
MAX_ROOMS_LISTED = Limit("rooms listed", "MAX_ROOMS_LISTED", 500, "rooms",
                         "rooms in one user's `rooms` snapshot (by slug); the rest are left out")
UNREAD_COUNT_MAX = Limit("unread count cap", "UNREAD_COUNT_MAX", 1000, "messages",
                         "unread and mention counts stop at this (a client shows \"1000+\"): "
                         "counting is a bounded scan per room")
# --- Rooms, members and direct conversations (docs/protocol.md §12) ---
DMS_CREATED_PER_USER_PER_HOUR = Limit("DM creation rate", "DMS_CREATED_PER_USER_PER_HOUR", 30,
                                      "requests/hour per user",
                                      "POST /api/dms requests per user (token bucket, per process), "
                                      "refused ones and reopened DMs included")
MAX_DM_MEMBERS = Limit("DM size", "MAX_DM_MEMBERS", 8, "users",
                       "people in one direct conversation, its creator included")
USER_SEARCHES_PER_MIN = Limit("user search rate", "USER_SEARCHES_PER_MIN", 60,
                              "requests/min per user",
                              "GET /api/users?q= requests per user (token bucket, per process)")

# type(), not isinstance(): isinstance() asks a lazy object (as Django's settings) for its class,
# which loads it (config/serve.py imports this module in processes with no settings).
ALL = [v for v in list(globals().values()) if type(v) is Limit]

STRIKE_WINDOW_SECS = 10.0


class TokenBucket:
    """Classic token bucket: `rate` tokens per second refill up to `burst`."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, cost: float = 1.0) -> float:
        """Take `cost` tokens; 0.0 if allowed, else the seconds until it would be."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate if self.rate > 0 else float("inf")

    def give(self, amount: float) -> None:
        """Put `amount` tokens back (a refund), or take them if negative, even below zero (a
        debt that later takes wait out)."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate + amount)
        self.stamp = now

    @property
    def full(self) -> bool:
        return self.tokens + (time.monotonic() - self.stamp) * self.rate >= self.burst


class BucketMap:
    """Buckets by key (user id, IP), forgetting full ones so memory tracks active keys only.

    Rate and burst are read from settings on every take, not fixed when a key's bucket is made:
    a long-lived bucket must follow the settings in force (and a test's override must not leak
    into a later key that happens to reuse an id).

    take()/wait() count in this process. A map made with `shared` (a name for its Redis keys)
    also has shared_take()/shared_wait()/shared_take_blocking(), which count cluster-wide in
    Redis when REDIS_URL is set (parley.shared_limits, one round trip) and fall back to
    take()/wait() without REDIS_URL or while Redis does not answer.
    """

    def __init__(self, rate: Limit, burst: Limit | None = None, per: float = 1.0,
                 shared: str | None = None) -> None:
        self._rate, self._burst, self._per = rate, burst, per
        self._shared = shared
        self._buckets: dict[object, TokenBucket] = {}

    def _rate_burst(self) -> tuple[float, float]:
        return self._rate.value / self._per, self._burst.value if self._burst else self._rate.value

    async def shared_take(self, key: object) -> float:
        """take(), cluster-wide with REDIS_URL."""
        if self._shared and parley_settings.REDIS_URL:
            from parley import shared_limits

            wait = await shared_limits.take(self._shared, key, *self._rate_burst())
            if wait is not None:
                return wait
        return self.take(key)

    async def shared_wait(self, key: object) -> float:
        """wait(), cluster-wide with REDIS_URL."""
        if self._shared and parley_settings.REDIS_URL:
            from parley import shared_limits

            wait = await shared_limits.take(self._shared, key, *self._rate_burst(), cost=0.0)
            if wait is not None:
                return wait
        return self.wait(key)

    def shared_take_blocking(self, key: object) -> float:
        """shared_take() for synchronous code in a worker thread, never on the event loop."""
        if self._shared and parley_settings.REDIS_URL:
            from parley import shared_limits

            wait = shared_limits.take_blocking(self._shared, key, *self._rate_burst())
            if wait is not None:
                return wait
        return self.take(key)

    def take(self, key: object) -> float:
        rate, burst = self._rate_burst()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 10_000:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full}
            bucket = self._buckets[key] = TokenBucket(rate, burst)
        else:
            bucket.rate, bucket.burst = rate, burst
        return bucket.take()

    def wait(self, key: object) -> float:
        """Seconds until a take() for `key` would succeed (0.0: now), without taking."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        rate = self._rate.value / self._per
        tokens = min(bucket.burst, bucket.tokens + (time.monotonic() - bucket.stamp) * rate)
        if tokens >= 1.0:
            return 0.0
        return (1.0 - tokens) / rate if rate > 0 else float("inf")

    def forget(self, key: object) -> None:
        """Drop `key`'s bucket: its next take() starts from a full burst."""
        self._buckets.pop(key, None)


# Each user's message bucket: one for every way a user sends (WebSocket `send`, the HTTP API).
# Cluster-wide with REDIS_URL (shared_take), so the two paths share it across processes too.
USER_MESSAGE_BUCKETS = BucketMap(MESSAGES_PER_SEC, MESSAGES_BURST, shared="messages")
# Each user's edit bucket: edit, delete, react and unreact, on sockets and over HTTP alike.
USER_EDIT_BUCKETS = BucketMap(EDITS_PER_SEC, EDITS_BURST, shared="edits")
# Each user's searches (parley.search_views), on every process together with REDIS_URL.
USER_SEARCH_BUCKETS = BucketMap(SEARCHES_PER_MIN, SEARCH_BURST, per=60.0, shared="searches")
# @room by owners and admins: 10 an hour, all at once if need be (burst = the hourly number).
# Taken on the database thread (parley.mentions) and in views' threads: a race between two
# threads for one user can let one extra through, which is all it costs.
ROOM_MENTION_BUCKETS = BucketMap(ROOM_MENTIONS_PER_HOUR, per=3600)
# Display name and avatar changes: 30 at once, then one every 2 minutes.
PROFILE_UPDATE_BUCKETS = BucketMap(PROFILE_UPDATES_PER_HOUR, per=3600)
# Uploads: UPLOADS_PER_USER_PER_HOUR at once, then one back every 3600/N seconds.
USER_UPLOAD_BUCKETS = BucketMap(UPLOADS_PER_USER_PER_HOUR, per=3600)
# Each user's attention requests (read marks, room lists, room settings): sockets and HTTP.
USER_READ_BUCKETS = BucketMap(READS_PER_SEC, READS_BURST, shared="reads")


class Strikes:
    """Counts refusals in a sliding window; `add()` says when the count crossed the limit."""

    __slots__ = ("times",)

    def __init__(self) -> None:
        self.times: list[float] = []

    def add(self) -> bool:
        now = time.monotonic()
        self.times = [t for t in self.times if now - t < STRIKE_WINDOW_SECS]
        self.times.append(now)
        return len(self.times) >= RATE_STRIKES.value


class ByteBudget:
    """A cost budget in bytes, per key (a user) and for the whole process, each a token bucket.

    Charged before the work: `reserve` takes the request's largest possible cost from both
    buckets, or takes nothing and says how long to wait. `settle` then gives back what the work
    did not use (or takes the excess: a bucket may go into debt, and refuses until it is repaid).
    Reserving the worst case also bounds the work in flight at once: requests that queue for
    the database hold their reservations until answered.
    """

    def __init__(self, rate: Limit, burst: Limit, total_rate: Limit, total_burst: Limit) -> None:
        self._rate, self._burst, self._total_rate, self._total_burst = rate, burst, total_rate, total_burst
        self._buckets: dict[object, TokenBucket] = {}
        self._total: TokenBucket | None = None

    def reserve(self, key: object, cost: float) -> tuple[float, float]:
        """(0.0, amount reserved) if allowed, else (seconds until it would be, 0.0)."""
        user, total = self._bucket(key), self._total_bucket()
        cost = min(cost, user.burst, total.burst)  # else a request could never pass
        wait = user.take(cost)
        if wait:
            return wait, 0.0
        wait = total.take(cost)
        if wait:
            user.give(cost)
            return wait, 0.0
        return 0.0, cost

    def debt_wait(self, key: object) -> float:
        """Seconds until `key`'s own bucket is out of debt; 0.0 when it is not in debt."""
        bucket = self._bucket(key)
        bucket.give(0.0)  # refill up to now
        return -bucket.tokens / bucket.rate if bucket.tokens < 0 and bucket.rate > 0 else 0.0

    def charge_after(self, key: object, used: float) -> None:
        """Take `used` from `key`'s own bucket after the work, into debt if need be; the process
        bucket is not charged (for work that must not be refused by other users' load)."""
        self._bucket(key).give(-used)

    def settle(self, key: object, reserved: float, used: float) -> None:
        """The reserved work is done and cost `used`: give back the rest (or take the excess)."""
        self._bucket(key).give(reserved - used)
        self._total_bucket().give(reserved - used)

    def _bucket(self, key: object) -> TokenBucket:
        rate, burst = self._rate.value, self._burst.value
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 10_000:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full}
            bucket = self._buckets[key] = TokenBucket(rate, burst)
        else:
            bucket.rate, bucket.burst = rate, burst
        return bucket

    def _total_bucket(self) -> TokenBucket:
        rate, burst = self._total_rate.value, self._total_burst.value
        if self._total is None:
            self._total = TokenBucket(rate, burst)
        else:
            self._total.rate, self._total.burst = rate, burst
        return self._total
