"""Change webhooks: a signed POST for each room that changed.

The committer tells :class:`Webhooks` of each commit, after the rooms; that
costs a dict update per room, so a slow or dead receiver never slows a room.
Changes are debounced per room: a room's POST goes out once it has been
quiet for ``debounce`` seconds, or five times that after its first change in
a busy stretch, and carries the whole burst::

    {"event": "room.changed", "room": "notes/plan", "updates": 12,
     "first_change": 1765000000.12, "last_change": 1765000001.9,
     "delivery": "6f1c...", "attempt": 1}

Every POST is signed: ``Ysyncd-Timestamp`` (Unix seconds) and
``Ysyncd-Signature: sha256=HEX``, the HMAC-SHA256, keyed with the secret, of
``TIMESTAMP.BODY``; a receiver recomputes it, and refuses old timestamps.

A delivery that fails (a connection error, a timeout, a status outside 2xx)
is retried with exponential backoff, up to ``attempts`` times; changes that
come meanwhile join it. Rooms waiting are bounded (``max_pending``); past
that, the oldest burst is dropped. Outcomes are counted in ``/metrics``
(``ysyncd_webhook_deliveries_total{outcome=...}``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
from anyio.abc import TaskGroup

from ysyncd.commits import Committer
from ysyncd.config import Settings
from ysyncd.stats import Stats

__all__ = ["Webhooks", "read_webhook_secret", "signature", "start_webhooks"]

log = logging.getLogger("ysyncd.webhooks")

#: How many POSTs are in flight at once.
_SENDERS = 4
_MAX_BACKOFF = 60.0


def read_webhook_secret(url: str, path: Path | None) -> bytes | None:
    """The signing secret in ``path`` (whitespace around it dropped), or None
    when no ``url`` is set.

    Raises:
        ValueError: a URL without a secret, or a secret under 32 bytes.
        OSError: the file cannot be read.
    """
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--webhook-url {url!r}: an http:// or https:// URL")
    if path is None:
        raise ValueError("--webhook-url needs --webhook-secret-file to sign with")
    secret = path.read_bytes().strip()
    if len(secret) < 32:
        raise ValueError(f"--webhook-secret-file {path}: 32 bytes or more")
    return secret


def start_webhooks(
    settings: Settings, committer: Committer, stats: Stats, tg: TaskGroup
) -> Webhooks | None:
    """Deliver ``committer``'s changes as ``settings`` ask, if they do."""
    secret = read_webhook_secret(settings.webhook_url, settings.webhook_secret_file)
    if secret is None:
        return None
    webhooks = Webhooks(
        settings.webhook_url, secret, stats, debounce=settings.webhook_debounce
    )
    committer.listeners.append(webhooks.committed)
    stats.gauges["webhooks_pending"] = lambda: webhooks.pending
    tg.start_soon(webhooks.run)
    return webhooks


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``Ysyncd-Signature`` header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass
class _Burst:
    """One room's changes not delivered yet."""

    first: float
    last: float
    updates: int
    due: float  # monotonic: when to send (or retry)
    deadline: float  # monotonic: send by then however busy the room is
    attempt: int = 0
    delivery: str = field(default_factory=lambda: secrets.token_hex(8))


class Webhooks:
    """Debounces room changes and delivers them (see the module docs)."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        stats: Stats,
        *,
        debounce: float = 2.0,
        timeout: float = 10.0,
        attempts: int = 8,
        max_pending: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._secret = secret
        self._stats = stats
        self._debounce = debounce
        self._timeout = timeout
        self._attempts = attempts
        self._max_pending = max_pending
        self._clock = clock
        # Rooms waiting, oldest first (dicts keep insertion order).
        self._pending: dict[str, _Burst] = {}
        # Rooms being sent now: a change meanwhile waits in _pending.
        self._sending: set[str] = set()
        # How often due bursts are looked for: committed() stays a dict
        # update, with no wake-up per commit.
        self._tick = max(0.05, min(0.5, debounce / 4))
        for outcome in ("delivered", "retried", "failed", "dropped"):
            stats.webhooks[outcome] += 0

    def committed(self, rows: list[tuple[str, bytes]]) -> None:
        """The committer's listener: ``rows`` are durable."""
        now, wall = self._clock(), time.time()
        for room, _ in rows:
            burst = self._pending.get(room)
            if burst is None:
                if len(self._pending) >= self._max_pending:
                    oldest = next(iter(self._pending))
                    del self._pending[oldest]
                    self._stats.webhooks["dropped"] += 1
                self._pending[room] = _Burst(
                    first=wall,
                    last=wall,
                    updates=1,
                    due=now + self._debounce,
                    deadline=now + 5 * self._debounce,
                )
                continue
            burst.last = wall
            burst.updates += 1
            if burst.attempt == 0:  # a retry keeps its backoff
                burst.due = min(now + self._debounce, burst.deadline)

    @property
    def pending(self) -> int:
        """Rooms with changes not delivered yet."""
        return len(self._pending) + len(self._sending)

    async def run(self) -> None:
        """Deliver until cancelled."""
        async with (
            httpx.AsyncClient(timeout=self._timeout, trust_env=False) as http,
            anyio.create_task_group() as tg,
        ):
            limiter = anyio.CapacityLimiter(_SENDERS)
            while True:
                now = self._clock()
                due = [
                    room
                    for room, burst in self._pending.items()
                    if burst.due <= now and room not in self._sending
                ]
                for room in due:
                    burst = self._pending.pop(room)
                    self._sending.add(room)
                    tg.start_soon(self._deliver, http, limiter, room, burst)
                await anyio.sleep(self._tick)

    async def _deliver(
        self,
        http: httpx.AsyncClient,
        limiter: anyio.CapacityLimiter,
        room: str,
        burst: _Burst,
    ) -> None:
        burst.attempt += 1
        body = json.dumps(
            {
                "event": "room.changed",
                "room": room,
                "updates": burst.updates,
                "first_change": burst.first,
                "last_change": burst.last,
                "delivery": burst.delivery,
                "attempt": burst.attempt,
            }
        ).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Ysyncd-Timestamp": stamp,
            "Ysyncd-Signature": signature(self._secret, stamp, body),
            "Ysyncd-Delivery": burst.delivery,
        }
        error = None
        try:
            async with limiter:
                resp = await http.post(self.url, content=body, headers=headers)
            if not 200 <= resp.status_code < 300:
                error = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self._sending.discard(room)
        if error is None:
            self._stats.webhooks["delivered"] += 1
            return
        if burst.attempt >= self._attempts:
            self._stats.webhooks["failed"] += 1
            log.warning(
                "webhook for room %r failed %d times (%s); giving up on it",
                room,
                burst.attempt,
                error,
            )
            return
        self._stats.webhooks["retried"] += 1
        log.debug("webhook for room %r: %s; retrying", room, error)
        backoff = min(_MAX_BACKOFF, self._debounce * 2 ** (burst.attempt - 1))
        newer = self._pending.pop(room, None)
        if newer is not None:  # changes meanwhile join the retry
            burst.last, burst.updates = newer.last, burst.updates + newer.updates
        burst.due = burst.deadline = self._clock() + backoff
        self._pending[room] = burst
