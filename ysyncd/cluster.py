"""Keeps this node's rooms in step with the other nodes' through a backplane.

The store is the truth; the backplane is only the fast path:

* A room is subscribed to *before* it is read from the store (see
  :meth:`Cluster.attach`), so every update is either in what was read or in a
  message that follows. Messages that arrive while it loads wait for it.
* After each commit, this node publishes what it committed, per room
  (:meth:`Cluster.committed`). Nothing uncommitted ever leaves the node, so
  other nodes may relay what they receive at once, without storing it again.
* A missing number, a heartbeat naming a number not seen, or a reconnect of
  the backplane: the room is *repaired*, that is read from the store again,
  and what this node lacked is applied and relayed to its peers.
* Awareness is relayed both ways and never stored. Each remote client's
  state is kept against the node it came through; a node whose heartbeat
  stops for :data:`NODE_TIMEOUT` seconds is dead, and its clients' states are
  removed here.

Remote updates for one room are applied in order, one at a time, and only
while the room is not busy with a big update of its own (a task per room
with work waiting; none for a quiet room).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from pycrdt import Doc

from ysyncd.backplane.messages import (
    Awareness,
    Deleted,
    Heartbeat,
    Message,
    Sequences,
    Updates,
    Verdict,
)
from ysyncd.errors import BackplaneError, StoreError
from ysyncd.room import Room
from ysyncd.roomtypes import RoomFailed
from ysyncd.stats import Stats

__all__ = ["NODE_TIMEOUT", "Backplane", "Cluster", "Lease", "open_cluster"]

log = logging.getLogger("ysyncd.cluster")

#: Seconds without a heartbeat after which a node counts as dead.
NODE_TIMEOUT = 5.0
_CHECK_SECONDS = 1.0
_REPAIRS_AT_ONCE = 2
_REPAIR_RETRY = 1.0
_FLUSH_SECONDS = 2.0
#: The most update bytes one message carries.
MESSAGE_BYTES = 64 * 2**20
_REPAIR = object()


class Backplane(Protocol):
    """What the cluster needs from a backplane (see :mod:`ysyncd.backplane`)."""

    node: bytes

    @property
    def healthy(self) -> bool: ...

    @property
    def subscriber_up(self) -> bool: ...

    async def join(self, room: str) -> None: ...

    async def leave(self, room: str) -> None: ...

    def publish_updates(self, room: str, updates: list[bytes]) -> None: ...

    def publish_awareness(self, room: str, update: bytes) -> None: ...

    def publish_deleted(self, room: str) -> None: ...

    def lease(self, name: str) -> Lease: ...

    async def flush(self, timeout: float) -> None: ...

    @property
    def published(self) -> int: ...

    @property
    def received(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    async def aclose(self) -> None: ...


class Lease(Protocol):
    """Something at most one node holds at a time (a Jupyter file's saves)."""

    async def hold(self) -> bool:
        """Take or renew it; whether this node holds it now."""
        ...

    async def release(self) -> None: ...


#: Reads a room's document from the store (the registry's loader).
ReadDoc = Callable[[str], Awaitable[Doc[Any]]]


@dataclass(slots=True)
class _Link:
    """One room's side of the backplane."""

    room: Room | None = None
    seqs: Sequences = field(default_factory=Sequences)
    #: Messages that came while the room was loading.
    early: list[Message] = field(default_factory=list)
    #: Remote updates (lists, in order) and repairs, waiting for their turn.
    inbox: deque[list[bytes] | object] = field(default_factory=deque)
    draining: bool = False
    #: Messages may have been missed while it loaded: repair once bound.
    stale: bool = False


@dataclass(slots=True)
class ClusterStats:
    """What ``/metrics`` shows of the cluster."""

    repairs: int = 0
    gaps: int = 0
    applied: int = 0
    #: Cross-node delay of received updates, milliseconds: count and sum.
    delay_count: int = 0
    delay_sum_ms: float = 0.0
    dead_nodes: int = 0


class Cluster:
    """This node's rooms, kept in step with every other node's."""

    def __init__(self, task_group: TaskGroup) -> None:
        self._tg = task_group
        self.backplane: Backplane | None = None
        self.read_doc: ReadDoc | None = None
        #: Told when another node deleted a room (the registry drops it).
        self.on_deleted: Callable[[str], None] | None = None
        self._links: dict[str, _Link] = {}
        self._alive: dict[bytes, float] = {}
        self._repairs = anyio.Semaphore(_REPAIRS_AT_ONCE)
        self.stats = ClusterStats()
        # Clusters of other registries on the same backplane, by name prefix.
        self._spaces: dict[str, Cluster] = {}

    def space(self, prefix: str) -> Cluster:
        """A cluster for another registry's rooms (Jupyter's transient ones),
        on the same backplane, its room names kept apart by ``prefix``."""
        assert self.backplane is not None
        other = Cluster(self._tg)
        other.backplane = _Space(self.backplane, prefix)
        self._spaces[prefix] = other
        self._tg.start_soon(other.watch_nodes)
        return other

    # The registry's side: subscribe, bind, drop.

    async def attach(self, key: str) -> None:
        """Subscribe to ``key`` before it is read from the store."""
        assert self.backplane is not None
        self._links.setdefault(key, _Link())
        await self.backplane.join(key)

    def bind(self, room: Room) -> None:
        """``room`` is loaded: apply what came meanwhile, then relay live."""
        link = self._links.setdefault(room.key, _Link())
        link.room = room
        backplane = self.backplane
        assert backplane is not None

        def publish(update: bytes) -> None:
            backplane.publish_awareness(room.key, update)

        room.publish_awareness = publish
        early, link.early = link.early, []
        for message in early:
            self._deliver(room.key, link, message)
        if link.stale:
            link.stale = False
            self._enqueue(link, _REPAIR)

    def detach(self, key: str) -> None:
        """``key`` left memory (evicted, or its load failed)."""
        link = self._links.pop(key, None)
        if link is not None:
            if link.room is not None:
                link.room.publish_awareness = None
            # Its drain, if any, stops: the room is gone from this node.
            link.room = None
            link.inbox.clear()
        if self.backplane is not None:
            self._tg.start_soon(self.backplane.leave, key)

    def committed(self, batch: Sequence[tuple[str, bytes]]) -> None:
        """The committer's hook: publish what one commit made durable."""
        if self.backplane is None:
            return
        # One message per room and commit, cut where it would pass
        # MESSAGE_BYTES (Redis refuses a bulk string over 512 MB).
        by_room: dict[str, list[list[bytes]]] = {}
        sizes: dict[str, int] = {}
        for room, update in batch:
            parts = by_room.setdefault(room, [[]])
            if parts[-1] and sizes.get(room, 0) + len(update) > MESSAGE_BYTES:
                parts.append([])
                sizes[room] = 0
            parts[-1].append(update)
            sizes[room] = sizes.get(room, 0) + len(update)
        for room, parts in by_room.items():
            for updates in parts:
                self.backplane.publish_updates(room, updates)

    def deleted(self, key: str) -> None:
        """This node deleted ``key``: the others drop it too."""
        if self.backplane is not None:
            self.backplane.publish_deleted(key)

    def report(self, stats: Stats) -> None:
        """Show the backplane's state and traffic in ``/metrics``."""
        backplane = self.backplane
        assert backplane is not None
        s = self.stats
        stats.gauges.update(
            backplane_up=lambda: float(backplane.healthy),
            cluster_nodes_seen=lambda: len(self._alive),
        )
        stats.counter_reads.update(
            backplane_published=lambda: backplane.published,
            backplane_received=lambda: backplane.received,
            backplane_dropped=lambda: backplane.dropped,
            cluster_gaps=lambda: s.gaps,
            cluster_repairs=lambda: s.repairs,
            cluster_remote_updates=lambda: s.applied,
            cluster_dead_nodes=lambda: s.dead_nodes,
            cluster_delay_count=lambda: s.delay_count,
            cluster_delay_ms_sum=lambda: int(s.delay_sum_ms),
        )

    async def aclose(self) -> None:
        if self.backplane is not None:
            # The last commits reach the others now, not at the next repair.
            await self.backplane.flush(_FLUSH_SECONDS)
            await self.backplane.aclose()

    # The backplane's side.

    def on_message(self, room: str | None, message: Message) -> None:
        """A message from another node (``room`` None: the nodes' channel)."""
        for prefix, space in self._spaces.items():
            if room is None:
                space.on_message(None, message)
            elif room.startswith(prefix):
                space.on_message(room[len(prefix) :], message)
                return
        self._alive[message.origin] = time.monotonic()
        if room is None:
            if isinstance(message, Heartbeat):
                self._on_heartbeat(message)
            return
        if isinstance(message, Deleted):
            if self.on_deleted is not None and room in self._links:
                self.on_deleted(room)
            return
        link = self._links.get(room)
        if link is None:
            return
        if link.room is None:
            link.early.append(message)
            return
        self._deliver(room, link, message)

    def on_reconnect(self) -> None:
        """The backplane lost messages: repair every room from the store."""
        for space in self._spaces.values():
            space.on_reconnect()
        now = time.monotonic()
        # Nodes were not heard while we were away; give them time again.
        self._alive = dict.fromkeys(self._alive, now)
        for link in self._links.values():
            link.seqs.reset()
            if link.room is not None:
                self._enqueue(link, _REPAIR)
            else:
                link.stale = True  # still loading: repaired once bound

    async def watch_nodes(self) -> None:
        """Forget nodes whose heartbeat stopped, and their clients' awareness."""
        while True:
            await anyio.sleep(_CHECK_SECONDS)
            backplane = self.backplane
            if backplane is None or not backplane.subscriber_up:
                continue  # we cannot tell a dead node from our own outage
            now = time.monotonic()
            for origin, seen in list(self._alive.items()):
                if now - seen > NODE_TIMEOUT:
                    del self._alive[origin]
                    self._node_died(origin)

    def _node_died(self, origin: bytes) -> None:
        self.stats.dead_nodes += 1
        log.warning("node %s stopped beating; dropping its clients", origin.hex()[:8])
        for link in self._links.values():
            link.seqs.forget(origin)
            if link.room is not None:
                link.room.drop_origin(origin)
                # It may have died between a commit and its publish: what it
                # committed last is in the store, and nowhere else.
                self._enqueue(link, _REPAIR)

    def _on_heartbeat(self, beat: Heartbeat) -> None:
        for room, seq in beat.latest.items():
            link = self._links.get(room)
            if link is not None and link.room is not None:
                if link.seqs.behind(beat.origin, seq):
                    self.stats.gaps += 1
                    self._enqueue(link, _REPAIR)
        for room in beat.lossy:  # its outbox dropped messages of these
            link = self._links.get(room)
            if link is not None:
                self.stats.gaps += 1
                if link.room is None:
                    link.stale = True
                else:
                    self._enqueue(link, _REPAIR)

    def _deliver(self, room: str, link: _Link, message: Message) -> None:
        assert link.room is not None
        if isinstance(message, Awareness):
            link.room.apply_remote_awareness(message.origin, message.update)
            return
        if not isinstance(message, Updates):
            return
        verdict = link.seqs.receive(message.origin, message.seq)
        if verdict is Verdict.SEEN:
            return
        delay = time.time() * 1000 - message.sent_ms
        self.stats.delay_count += 1
        self.stats.delay_sum_ms += max(delay, 0.0)
        self._enqueue(link, message.updates)
        if verdict is Verdict.GAP:
            self.stats.gaps += 1
            log.info("room %r: a message from another node is missing", room)
            self._enqueue(link, _REPAIR)

    def _enqueue(self, link: _Link, work: list[bytes] | object) -> None:
        if work is _REPAIR and _REPAIR in link.inbox:
            return  # one repair covers both
        if isinstance(work, list) and self._apply_at_once(link, work):
            return
        link.inbox.append(work)
        if not link.draining:
            link.draining = True
            self._tg.start_soon(self._drain, link)

    def _apply_at_once(self, link: _Link, work: list[bytes]) -> bool:
        """One update for an idle room, nothing waiting before it (the usual
        case): applied here and now, with no task. False if it must queue."""
        room = link.room
        if room is None or room.busy or link.draining or link.inbox or len(work) != 1:
            return False
        try:
            pending = room.apply(work[0], remote=True)
        except Exception:  # as in _drain: this room's trouble only
            log.exception("room %r: applying a remote update failed", room.key)
            room.taint()
            return True
        self.stats.applied += 1
        if pending is not None:  # a big one: it finishes in a task, others wait
            link.draining = True
            self._tg.start_soon(self._drain, link, pending)
        return True

    async def _drain(self, link: _Link, first: Awaitable[None] | None = None) -> None:
        try:
            if first is not None:
                await first
            while link.inbox and (room := link.room) is not None:
                work = link.inbox.popleft()
                if work is _REPAIR:
                    await self._repair(link, room)
                    continue
                assert isinstance(work, list)
                for update in work:
                    # Each in turn: a big one keeps the room busy a while.
                    await room.settle()
                    pending = room.apply(update, remote=True)
                    if pending is not None:
                        await pending
                    self.stats.applied += 1
        except RoomFailed:
            link.inbox.clear()  # the next load reads it all from the store
        except Exception:  # one room's trouble must not reach the others
            if (failed := link.room) is not None:
                log.exception("room %r: applying remote updates failed", failed.key)
                failed.taint()
        finally:
            link.draining = False

    async def _repair(self, link: _Link, room: Room) -> None:
        assert self.read_doc is not None
        self.stats.repairs += 1
        try:
            # A few at a time: after a reconnect every room asks at once, and
            # the store also has commits to make.
            async with self._repairs:
                stored = await self.read_doc(room.key)
        except StoreError as exc:
            # The doc is as good as it was; the repair is only late.
            log.warning("room %r: repair failed, retrying: %s", room.key, exc)
            await anyio.sleep(_REPAIR_RETRY)
            self._enqueue(link, _REPAIR)
            return
        await room.settle()
        missing = stored.get_update(room.doc.get_state())
        pending = room.apply(missing, remote=True)
        if pending is not None:
            await pending
        log.info("room %r repaired from the store", room.key)


class _Space:
    """A backplane seen through a prefix on every room name."""

    def __init__(self, inner: Backplane, prefix: str) -> None:
        self._inner = inner
        self._prefix = prefix
        self.node = inner.node

    @property
    def healthy(self) -> bool:
        return self._inner.healthy

    @property
    def subscriber_up(self) -> bool:
        return self._inner.subscriber_up

    @property
    def published(self) -> int:
        return self._inner.published

    @property
    def received(self) -> int:
        return self._inner.received

    @property
    def dropped(self) -> int:
        return self._inner.dropped

    async def join(self, room: str) -> None:
        await self._inner.join(self._prefix + room)

    async def leave(self, room: str) -> None:
        await self._inner.leave(self._prefix + room)

    def publish_updates(self, room: str, updates: list[bytes]) -> None:
        self._inner.publish_updates(self._prefix + room, updates)

    def publish_awareness(self, room: str, update: bytes) -> None:
        self._inner.publish_awareness(self._prefix + room, update)

    def publish_deleted(self, room: str) -> None:
        self._inner.publish_deleted(self._prefix + room)

    def lease(self, name: str) -> Lease:
        return self._inner.lease(self._prefix + name)

    async def flush(self, timeout: float) -> None:
        await self._inner.flush(timeout)

    async def aclose(self) -> None:
        return None  # the inner backplane is closed by its own cluster


async def open_cluster(url: str, epoch: str, task_group: TaskGroup) -> Cluster:
    """Connect to the backplane at ``url`` and start keeping rooms in step.

    Raises:
        BackplaneError: it cannot be reached, or is not a ``redis://`` URL.
    """
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise BackplaneError(url, "not a redis:// URL")
    try:
        from ysyncd.backplane.redis import RedisBackplane
    except ImportError as exc:  # the cluster extra is not installed
        raise BackplaneError(
            url, f"needs pip install 'ysyncd[cluster]' ({exc})"
        ) from exc
    cluster = Cluster(task_group)
    backplane = RedisBackplane(
        url, epoch, on_message=cluster.on_message, on_reconnect=cluster.on_reconnect
    )
    await backplane.open()
    cluster.backplane = backplane
    await task_group.start(backplane.run)
    task_group.start_soon(cluster.watch_nodes)
    return cluster
