"""One room: a pycrdt Doc, its awareness states, and the peers in it.

Every method here is synchronous. Nothing awaits between reading the document
and registering a peer, so no update can slip between a joiner's snapshot and
its first broadcast.

Durability gate: an update is applied to the in-memory doc at once (so that it
can be checked), handed to the :class:`~ysyncd.commits.Committer`, and echoed
to every peer, its sender included, only when the committer reports it durable.
Anything else that carries document content (a sync step 2 reply) waits the
same way behind the updates applied before it, so no peer ever sees content
that is not on disk. Awareness carries no document content and goes out at once.

A rejected update leaves the doc untouched in almost every case (pycrdt decodes
before it integrates). The exception is an update that fails half-way through
integration; then the room is *tainted*: the registry rebuilds its doc from the
store plus the updates still waiting for their commit, and peers wait for
:attr:`Room.rebuilt` before their next message is handled.

The room knows nothing about sockets: a peer is anything with ``send``,
``refuse_write`` and ``read_only`` (see :class:`PeerLike`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pycrdt import Doc

from ysyncd.awareness import AwarenessStates, encode_entries
from ysyncd.commits import Committer
from ysyncd.errors import InvalidUpdate, PolicyViolation
from ysyncd.protocol import (
    Awareness,
    Message,
    PermissionDenied,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    Update,
    encode,
    encode_update,
)

__all__ = ["AwarenessPolicy", "PeerLike", "Room", "RoomDocument"]

log = logging.getLogger("ysyncd.room")

_EMPTY_UPDATE = b"\x00\x00"


class RoomDocument(Protocol):
    """A room's companion that keeps it in step with a file (Jupyter rooms)."""

    #: True once the file is gone; new connections are turned away.
    gone: bool

    async def save(self) -> str:
        """Save now; "success", "skipped" or "failed" (Jupyter's statuses)."""
        ...

    async def save_if_changed(self) -> None:
        """Save the document if it differs from the file (before eviction)."""
        ...

    def stop(self) -> None:
        """Stop watching the file; the room has been evicted."""
        ...

    def rebind(self, doc: Doc[Any]) -> None:
        """Follow the room to a rebuilt doc."""
        ...


class PeerLike(Protocol):
    """What a room needs from a connection."""

    @property
    def read_only(self) -> bool: ...

    def send(self, frame: bytes) -> None:
        """Queue a frame without blocking (a slow peer is closed, not waited on)."""
        ...

    def refuse_write(self, reason: str) -> None:
        """Tell the peer, in its dialect, that its write was not applied."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Start closing the connection; further sends are dropped."""
        ...


@dataclass(frozen=True, slots=True)
class AwarenessPolicy:
    """Limits on what one peer may do with awareness (see Settings)."""

    timeout: float = 30.0
    max_state_bytes: int = 64 * 1024
    rate: float = 30.0
    max_clients: int = 16


@dataclass(slots=True)
class _Presence:
    """Per-peer awareness bookkeeping."""

    #: Client IDs whose live state came through this peer.
    ids: set[int] = field(default_factory=set)
    #: How many client IDs this peer has introduced over its life.
    introduced: int = 0
    tokens: float = 0.0
    refilled: float = 0.0
    window_start: float = 0.0
    window_count: int = 0


Tainted = Callable[["Room"], None]
#: Sends one message to many peers; transports can serialise it once.
#: Sends messages, in order, to many peers; transports can serialise them once
#: and write them together.
FanOut = Callable[[Iterable[Any], Sequence[bytes]], None]


def send_each(peers: Iterable[PeerLike], messages: Sequence[bytes]) -> None:
    """The plain fan-out: one ``send`` per peer and message."""
    for peer in peers:
        for message in messages:
            peer.send(message)


_Held = tuple[int, PeerLike | None, bytes, bytes | None]


class Room:
    """The in-memory state of one room and its fan-out."""

    __slots__ = (
        "_applied",
        "_clock",
        "_coalesced",
        "_committer",
        "_durable",
        "_fan_out",
        "_held",
        "_on_taint",
        "_policy",
        "awareness",
        "doc",
        "document",
        "failed",
        "key",
        "peers",
        "rebuilt",
        "refs",
    )

    def __init__(
        self,
        key: str,
        doc: Doc[Any],
        committer: Committer,
        *,
        policy: AwarenessPolicy = AwarenessPolicy(),
        clock: Callable[[], float] = time.monotonic,
        on_taint: Tainted | None = None,
        fan_out: FanOut = send_each,
    ) -> None:
        self.key = key
        self.doc = doc
        self.awareness = AwarenessStates()
        self.peers: dict[PeerLike, _Presence] = {}
        #: Connections holding this room (joined or about to); see RoomRegistry.
        self.refs = 0
        #: Set while a rebuild is under way; peers wait on it.
        self.rebuilt: asyncio.Event | None = None
        #: True once the room gave up (a rebuild failed); its peers must leave.
        self.failed = False
        #: What keeps the room in step with a file (Jupyter rooms), or None.
        self.document: RoomDocument | None = None
        self._committer = committer
        self._policy = policy
        self._clock = clock
        self._on_taint = on_taint
        self._fan_out = fan_out
        self._applied = 0
        self._durable = 0
        # Frames waiting for durability, in order: (seq, target or None for
        # everyone, frame, update). Broadcasts carry their update, so this is
        # also the list of updates not yet durable (for a rebuild). A list, not
        # a deque: it is short, and an idle room should cost little memory.
        self._held: list[_Held] = []
        # Awareness client IDs changed but not relayed yet (over-rate peers).
        self._coalesced: set[int] | None = None

    @property
    def settled(self) -> bool:
        """True when every applied update is durable and echoed."""
        return self._durable == self._applied

    @property
    def uncommitted(self) -> list[bytes]:
        """Updates applied to the doc and not yet durable, in order."""
        return [held[3] for held in self._held if held[3] is not None]

    def join(self, peer: PeerLike) -> None:
        """Greet ``peer`` with our state vector and all awareness, then add it."""
        peer.send(encode(SyncStep1(self.doc.get_state())))
        states = self.awareness.encode()
        if states is not None:
            peer.send(encode(Awareness(states)))
        now = self._clock()
        self.peers[peer] = _Presence(tokens=self._policy.rate, refilled=now)

    def leave(self, peer: PeerLike) -> None:
        """Remove ``peer`` and announce that its awareness states are gone."""
        presence = self.peers.pop(peer, None)
        if presence and presence.ids:
            self._remove_awareness(presence.ids)

    def receive(self, peer: PeerLike, message: Message) -> None:
        """Act on one decoded message from ``peer``.

        Raises:
            InvalidUpdate: pycrdt refused an update; nothing was stored or sent.
            DecodeError: a malformed state vector or awareness update.
            TooLarge, PolicyViolation: an awareness limit was passed.
        """
        match message:
            case SyncStep1(state_vector):
                self._answer_step1(peer, state_vector)
            case SyncStep2(update) | Update(update):
                if not peer.read_only:
                    self.apply(update)
                elif update != _EMPTY_UPDATE:  # every client's first step 2 is empty
                    peer.refuse_write("read-only")
            case Awareness(update):
                self._on_awareness(peer, update)
            case QueryAwareness():
                states = self.awareness.encode()
                if states is not None:
                    peer.send(encode(Awareness(states)))
            case PermissionDenied():
                log.debug("ignoring a permission-denied message sent by a client")

    def apply(self, update: bytes) -> None:
        """Apply an update now; store it, then echo it to everyone once durable."""
        if update == _EMPTY_UPDATE:
            return
        try:
            self.doc.apply_update(update)
        except ValueError as exc:  # refused while decoding: the doc is untouched
            raise InvalidUpdate(f"update rejected by pycrdt: {exc}") from exc
        except RuntimeError as exc:  # refused while integrating: maybe half-applied
            self._taint()
            raise InvalidUpdate(f"update rejected by pycrdt: {exc}") from exc
        self.record(update)

    def record(self, update: bytes) -> None:
        """Store and echo an update already applied to :attr:`doc`.

        Server-side edits (a file loaded or changed on disk, a save's state)
        are made on the doc directly and recorded here, like a peer's update.
        """
        self._applied += 1
        seq = self._applied
        self._held.append((seq, None, encode_update(update), update))
        self._committer.submit(self.key, update, self, seq)

    def durable(self, seq: int) -> None:
        """Called by the committer: updates up to ``seq`` are on disk."""
        self._durable = seq
        held = self._held
        released = 0
        # Consecutive broadcasts go out together: one write per peer, however
        # many updates the commit released.
        batch: list[bytes] = []
        for held_seq, target, frame, _ in held:
            if held_seq > seq:
                break
            released += 1
            if target is None:
                batch.append(frame)
                continue
            if batch:
                self._broadcast(*batch)
                batch = []
            if target in self.peers:
                target.send(frame)
        if batch:
            self._broadcast(*batch)
        del held[:released]

    def fail(self, code: int, reason: str) -> None:
        """Give up on this room: close every peer and release those waiting."""
        self.failed = True
        for peer in list(self.peers):
            peer.close(code, reason)
        if self.rebuilt is not None:
            self.rebuilt.set()

    def replace_doc(self, doc: Doc[Any]) -> None:
        """Swap in a rebuilt doc and let waiting peers go on."""
        self.doc = doc
        if self.document is not None:
            self.document.rebind(doc)
        if self.rebuilt is not None:
            self.rebuilt.set()
            self.rebuilt = None

    @property
    def needs_tick(self) -> bool:
        """Whether :meth:`tick` has anything to do (most idle rooms: no)."""
        return bool(self.awareness) or bool(self._coalesced)

    def tick(self, now: float) -> None:
        """Periodic work: expire stale awareness, relay coalesced changes."""
        awareness = self.awareness
        expired = awareness.expired(now, self._policy.timeout)
        if expired:
            self._remove_awareness(expired)
        awareness.prune(now, self._policy.timeout)
        if self._coalesced:
            update = awareness.encode(self._coalesced, removed=True)
            self._coalesced = None
            if update is not None:
                self._broadcast(encode(Awareness(update)))

    def _taint(self) -> None:
        log.warning("room %r: an update failed half-way; rebuilding its doc", self.key)
        if self.rebuilt is None:
            self.rebuilt = asyncio.Event()
            if self._on_taint is not None:
                self._on_taint(self)

    def _answer_step1(self, peer: PeerLike, state_vector: bytes) -> None:
        try:
            diff = self.doc.get_update(state_vector)
        except (ValueError, RuntimeError) as exc:
            raise InvalidUpdate(f"bad state vector: {exc}") from exc
        frame = encode(SyncStep2(diff))
        if self.settled:
            peer.send(frame)
        else:
            self._held.append((self._applied, peer, frame, None))

    def _on_awareness(self, peer: PeerLike, update: bytes) -> None:
        presence = self.peers.get(peer)
        if presence is None:
            return
        policy = self._policy
        now = self._clock()
        change = self.awareness.apply(
            update, now, max_state_bytes=policy.max_state_bytes
        )
        if not change.accepted:
            return  # stale, e.g. a client bouncing back what it was sent
        for client_id in change.added:
            if client_id not in presence.ids:
                presence.introduced += 1
        presence.ids.update(change.added)
        presence.ids.difference_update(change.removed)
        if len(presence.ids) > policy.max_clients:
            raise PolicyViolation(f"more than {policy.max_clients} awareness clients")
        if presence.introduced > 4 * policy.max_clients:
            raise PolicyViolation("too many awareness clients over time")
        if not self._within_rate(presence, now):
            if self._coalesced is None:
                self._coalesced = set()
            self._coalesced.update(client_id for client_id, _, _ in change.accepted)
            return
        # Relay to everyone, the sender too: clients count their own echoed
        # awareness as proof that the connection is alive. Entries that lost to
        # newer clocks are left out (clients echo back whatever they receive).
        if len(change.accepted) < change.entries:
            update = encode_entries(change.accepted)
        self._broadcast(encode(Awareness(update)))

    def _within_rate(self, presence: _Presence, now: float) -> bool:
        rate = self._policy.rate
        if now - presence.window_start >= 1.0:
            presence.window_start, presence.window_count = now, 0
        presence.window_count += 1
        if presence.window_count > 10 * rate:
            raise PolicyViolation("awareness flood")
        presence.tokens = min(
            2 * rate, presence.tokens + (now - presence.refilled) * rate
        )
        presence.refilled = now
        if presence.tokens >= 1:
            presence.tokens -= 1
            return True
        return False

    def _remove_awareness(self, client_ids: set[int] | list[int]) -> None:
        removal = self.awareness.remove(client_ids, self._clock())
        if removal is not None:
            if self._coalesced:
                self._coalesced.difference_update(client_ids)
            self._broadcast(encode(Awareness(removal)))

    def _broadcast(self, *frames: bytes) -> None:
        if self.peers:
            self._fan_out(self.peers, frames)
