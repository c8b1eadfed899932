"""The Redis backplane: rooms' committed updates and awareness between nodes.

Redis pub/sub delivers in order while a connection lasts and promises nothing
across a reconnect, so nothing here trusts it to be complete:

* Every message is numbered (see :mod:`ysyncd.backplane.messages`), and a
  receiver that sees a number skipped repairs the room from the store.
* A publish that fails stays in the outbox, in order, and is sent again once
  Redis is back; the outbox is bounded, and what it drops shows up as a gap.
* When the subscriber's connection comes back, every room is repaired, once
  the subscriptions are active again (a PING answered after them says so).
  The same happens when a subscription cannot be confirmed, and when this
  node's own heartbeat stops coming back (a connection that died silently).
* A message the outbox had to drop is named in the next heartbeat, and the
  other nodes repair its room.

Two connections: one subscribed (the reader), one for publishing (the
publisher task, which also sends the heartbeat). Each room has a channel
``ysyncd:<epoch>:room:<name>``; heartbeats go on ``ysyncd:<epoch>:nodes``, so
that servers on different stores never mix.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from ysyncd.backplane.messages import (
    HEARTBEAT_SECONDS,
    LEASE_MARGIN,
    LEASE_SECONDS,
    Awareness,
    Deleted,
    Heartbeat,
    Message,
    Updates,
    decode,
    encode,
)
from ysyncd.errors import BackplaneError, DecodeError
from ysyncd.store import redact_url

__all__ = ["RedisBackplane", "RedisLease"]

log = logging.getLogger("ysyncd.backplane")


#: Rooms a heartbeat names: those published to within this many seconds.
_RECENT_SECONDS = 5.0
_OUTBOX_MAX = 100_000
_PIPELINE_MAX = 512
_RETRY_FIRST = 0.1
_RETRY_MAX = 2.0
_SUBSCRIBE_TIMEOUT = 5.0
#: No own heartbeat back for this long: the subscription is dead.
_SILENT_SECONDS = 3.5
_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

#: Called with a room's name (None for the nodes' channel) and a message.
OnMessage = Callable[[str | None, Message], None]


class _PubSub(PubSub):
    """Tells its owner of every reconnect (the first connect calls no
    callback): messages published meanwhile were lost."""

    def __init__(self, *args: Any, on_connect: Callable[[], None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._told = on_connect

    async def on_connect(self, connection: Any) -> None:
        await super().on_connect(connection)  # re-subscribes every channel
        self._told()


class RedisBackplane:
    """One node's link to the others, through one Redis server."""

    def __init__(
        self,
        url: str,
        epoch: str,
        *,
        on_message: OnMessage,
        on_reconnect: Callable[[], None],
    ) -> None:
        self.url = url
        self.node = uuid.uuid4().bytes
        self._prefix = f"ysyncd:{epoch}:"
        self._nodes_channel = (self._prefix + "nodes").encode()
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        self._client = aioredis.from_url(url)
        self._pubsub = _PubSub(self._client.connection_pool, on_connect=self._connected)
        self._opened = False
        # Set when messages may have been missed: fix the subscriptions, PING,
        # and at the answer repair every room.
        self._resync = False
        self._own_beat_at = time.monotonic()
        # The PING sent after (re)subscribing; its answer says that every
        # subscription is active.
        self._pending_pong: bytes | None = None
        self._rooms: set[str] = set()
        self._waiting: dict[bytes, list[asyncio.Future[None]]] = {}
        # (room or None, channel, data, rooms a heartbeat names as lossy)
        self._outbox: deque[tuple[str | None, bytes, bytes, frozenset[str]]] = deque()
        self._lossy: set[str] = set()
        self._drained = asyncio.Event()  # set whenever the outbox empties
        self._wakeup = asyncio.Event()
        self._seqs: dict[str, int] = {}
        self._recent: dict[str, float] = {}
        self.subscriber_up = False
        self.publisher_up = True
        self.published = 0
        self.received = 0
        self.dropped = 0

    @property
    def healthy(self) -> bool:
        """Both connections work now."""
        return self.subscriber_up and self.publisher_up

    def channel(self, room: str) -> bytes:
        return (self._prefix + "room:").encode() + room.encode()

    async def open(self, timeout: float = 10.0) -> None:
        """Check that Redis answers, and subscribe to the nodes' channel.

        Raises:
            BackplaneError: Redis cannot be reached or refuses us.
        """
        shown = redact_url(self.url)
        try:
            with anyio.fail_after(timeout):
                await self._client.ping()
                await self._pubsub.subscribe(self._nodes_channel)
                self._own_beat_at = time.monotonic() + timeout
                while not self.subscriber_up:
                    message = await self._pubsub.get_message(timeout=timeout)
                    if message is not None:
                        self._handle(message)
        except TimeoutError as exc:
            raise BackplaneError(shown, "no answer (timed out)") from exc
        except _ERRORS as exc:
            raise BackplaneError(shown, str(exc)) from exc
        log.info("backplane: Redis at %s, node %s", shown, self.node.hex()[:8])

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read and publish until cancelled (after :meth:`open`)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._publish_loop)
            tg.start_soon(self._read_loop)
            task_status.started()

    async def join(self, room: str) -> None:
        """Subscribe to ``room``; return once its messages flow to this node.

        While Redis is away it returns at once: the repair after the
        reconnect covers whatever the room misses meanwhile.
        """
        self._rooms.add(room)
        channel = self.channel(room)
        if not self.subscriber_up:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(channel, []).append(waiter)
        confirmed = False
        try:
            await self._pubsub.subscribe(channel)
            with anyio.move_on_after(_SUBSCRIBE_TIMEOUT):
                await waiter
                confirmed = True
        except _ERRORS as exc:
            log.warning("backplane: subscribing to room %r failed: %s", room, exc)
        finally:
            waiters = self._waiting.get(channel, [])
            if waiter in waiters:
                waiters.remove(waiter)
        if not confirmed:
            self._lost_messages()

    async def leave(self, room: str) -> None:
        """Stop receiving ``room``'s messages (it left this node's memory)."""
        self._rooms.discard(room)
        if not self.subscriber_up:
            return
        try:
            await self._pubsub.unsubscribe(self.channel(room))
        except _ERRORS as exc:
            log.debug("backplane: unsubscribing from room %r failed: %s", room, exc)

    def publish_updates(self, room: str, updates: list[bytes]) -> None:
        """Queue ``room``'s committed updates for the other nodes, in order."""
        seq = self._seqs.get(room, 0) + 1
        self._seqs[room] = seq
        self._recent[room] = time.monotonic()
        message = Updates(self.node, seq, int(time.time() * 1000), updates)
        self._queue(room, encode(message))

    def publish_awareness(self, room: str, update: bytes) -> None:
        """Queue an awareness update this node relayed in ``room``."""
        self._queue(room, encode(Awareness(self.node, update)))

    def publish_deleted(self, room: str) -> None:
        """Queue word that this node deleted ``room``."""
        self._queue(room, encode(Deleted(self.node)))

    def _queue(self, room: str, data: bytes) -> None:
        if len(self._outbox) >= _OUTBOX_MAX:
            dropped = self._outbox.popleft()[0]
            if dropped is not None:
                # The next heartbeat names the room: the others repair it.
                self._lossy.add(dropped)
            self.dropped += 1
        self._outbox.append((room, self.channel(room), data, frozenset()))
        self._drained.clear()
        self._wakeup.set()

    def _heartbeat(self) -> tuple[str | None, bytes, bytes, frozenset[str]]:
        now = time.monotonic()
        for room in [r for r, t in self._recent.items() if now - t > _RECENT_SECONDS]:
            del self._recent[room]
        latest = {room: self._seqs[room] for room in self._recent}
        lossy = frozenset(self._lossy)
        data = encode(Heartbeat(self.node, latest, sorted(lossy)))
        return (None, self._nodes_channel, data, lossy)

    async def flush(self, timeout: float) -> None:
        """Wait until the outbox is sent, for at most ``timeout`` seconds."""
        if self._outbox and self.publisher_up:
            with anyio.move_on_after(timeout):
                await self._drained.wait()

    async def _publish_loop(self) -> None:
        delay = _RETRY_FIRST
        next_beat = 0.0
        while True:
            now = time.monotonic()
            if now >= next_beat:
                # Behind the updates already queued: it names their numbers.
                self._outbox.append(self._heartbeat())
                next_beat = now + HEARTBEAT_SECONDS
            if not self._outbox:
                self._wakeup.clear()
                # A timer, not a cancel scope: this wait comes once per commit
                # on a quiet node, and a scope cost more than the publish.
                beat = asyncio.get_running_loop().call_later(
                    next_beat - now, self._wakeup.set
                )
                try:
                    await self._wakeup.wait()
                finally:
                    beat.cancel()
                continue
            batch = [
                self._outbox[i] for i in range(min(len(self._outbox), _PIPELINE_MAX))
            ]
            try:
                if len(batch) == 1:  # most often, between light edits
                    await self._client.publish(batch[0][1], batch[0][2])
                else:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for _, channel, data, _ in batch:
                            pipe.publish(channel, data)
                        await pipe.execute()
            except Exception as exc:  # noqa: BLE001 - any failure: retried
                if self.publisher_up:
                    log.error("backplane: publishing failed, retrying: %s", exc)
                self.publisher_up = False
                await anyio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            for _ in batch:
                _, _, _, told = self._outbox.popleft()
                self._lossy -= told
            if not self._outbox:
                self._drained.set()
            self.published += len(batch)
            if not self.publisher_up:
                log.warning("backplane: publishing works again")
            self.publisher_up = True
            delay = _RETRY_FIRST

    def _connected(self) -> None:
        # Whatever was published while we were away is lost to us.
        self._lost_messages()

    def _lost_messages(self) -> None:
        """Messages may have been missed: resubscribe, then repair every room."""
        self.subscriber_up = False
        self._resync = True

    async def _read_loop(self) -> None:
        delay = _RETRY_FIRST
        while True:
            try:
                if self._resync:
                    await self._resubscribe()
                message = await self._pubsub.get_message(timeout=HEARTBEAT_SECONDS)
                if message is not None:
                    self._handle(message)
                await self._check_silence()
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect
                if self.subscriber_up or not self._resync:
                    log.error("backplane: lost the subscription, reconnecting: %s", exc)
                self._lost_messages()
                await anyio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            delay = _RETRY_FIRST

    async def _resubscribe(self) -> None:
        """Subscribe to exactly the rooms held, then PING: once the answer
        comes, every subscription is active (see :meth:`_handle`)."""
        wanted = {self._nodes_channel} | {self.channel(r) for r in self._rooms}
        held = {bytes(c) for c in self._pubsub.channels}
        if wanted - held:
            await self._pubsub.subscribe(*(wanted - held))
        if held - wanted:
            await self._pubsub.unsubscribe(*(held - wanted))
        token = uuid.uuid4().hex.encode()
        await self._pubsub.ping(token)
        self._pending_pong = token
        self._resync = False

    async def _check_silence(self) -> None:
        """Our own heartbeat comes back every second while the subscription
        works; when it stops (and publishing works), the connection died
        without telling: drop it, so that the next read reconnects."""
        silent = time.monotonic() - self._own_beat_at
        if self.subscriber_up and self.publisher_up and silent > _SILENT_SECONDS:
            log.error("backplane: no message for %.1f s; reconnecting", silent)
            self._lost_messages()
            connection = self._pubsub.connection
            if connection is not None:
                await connection.disconnect()

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "pong":
            if message["data"] == self._pending_pong:
                self._pending_pong = None
                log.warning("backplane: subscribed again; repairing every room")
                self.subscriber_up = True
                self._own_beat_at = time.monotonic()
                self._on_reconnect()
            return
        if kind == "subscribe":
            channel = message["channel"]
            if channel == self._nodes_channel and not self._opened:
                self._opened = self.subscriber_up = True
            for waiter in self._waiting.pop(channel, []):
                if not waiter.done():
                    waiter.set_result(None)
            return
        if kind != "message":
            return
        channel = message["channel"]
        self.received += 1
        try:
            decoded = decode(message["data"])
        except DecodeError as exc:
            log.warning("backplane: dropping a malformed message: %s", exc)
            return
        if decoded.origin == self.node:
            self._own_beat_at = time.monotonic()  # the subscription works
            return
        if channel == self._nodes_channel:
            self._on_message(None, decoded)
            return
        room = channel[len(self.channel("")) :].decode(errors="replace")
        if room in self._rooms:
            self._on_message(room, decoded)

    def lease(self, name: str) -> RedisLease:
        """A lease named ``name`` that at most one node holds at a time."""
        key = f"{self._prefix}lease:{name}"
        return RedisLease(self._client, key, self.node.hex())

    async def aclose(self) -> None:
        try:
            await self._pubsub.aclose()
        finally:
            await self._client.aclose()


# Take the lease if it is free, renew it if it is ours: one atomic step.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLease:
    """A lease in one Redis key with a TTL: who holds it, until when.

    The holder counts it as held until :data:`LEASE_SECONDS` less a margin
    after its last successful renewal, so that while Redis cannot be reached
    it stops before the key expires and another node may take it.
    """

    def __init__(self, client: aioredis.Redis, key: str, holder: str) -> None:
        self._client = client
        self._key = key
        self._holder = holder
        self._until = 0.0

    async def hold(self) -> bool:
        """Take or renew the lease; whether this node holds it now."""
        started = time.monotonic()
        try:
            with anyio.fail_after(LEASE_MARGIN):
                ours = await self._client.eval(
                    _HOLD, 1, self._key, self._holder, int(LEASE_SECONDS * 1000)
                )
        except _ERRORS as exc:
            log.debug("lease %s: cannot renew: %s", self._key, exc)
        else:
            self._until = started + LEASE_SECONDS - LEASE_MARGIN if ours else 0.0
        return time.monotonic() < self._until

    async def release(self) -> None:
        """Give the lease up, if it is ours, so another node takes it at once."""
        self._until = 0.0
        try:
            await self._client.eval(_RELEASE, 1, self._key, self._holder)
        except _ERRORS as exc:
            log.debug("lease %s: cannot release (it expires): %s", self._key, exc)
