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

The room knows nothing about sockets: a peer is anything with ``send``,
``close``, ``read_only`` and ``dialect`` (see :class:`PeerLike`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from pycrdt import Doc

from ysyncd.awareness import AwarenessStates
from ysyncd.commits import Committer
from ysyncd.errors import InvalidUpdate
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

__all__ = ["PeerLike", "Room"]

log = logging.getLogger("ysyncd.room")

_EMPTY_UPDATE = b"\x00\x00"


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


class Room:
    """The in-memory state of one room and its fan-out."""

    def __init__(
        self,
        key: str,
        doc: Doc[Any],
        committer: Committer,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.doc = doc
        self.awareness = AwarenessStates()
        #: Each peer, with the awareness client IDs it controls.
        self.peers: dict[PeerLike, set[int]] = {}
        self._committer = committer
        self._clock = clock
        self._applied = 0
        self._durable = 0
        # (seq, target or None for everyone, frame): sent once seq is durable.
        self._held: deque[tuple[int, PeerLike | None, bytes]] = deque()

    @property
    def settled(self) -> bool:
        """True when every applied update is durable and echoed."""
        return self._durable == self._applied

    def join(self, peer: PeerLike) -> None:
        """Greet ``peer`` with our state vector and all awareness, then add it."""
        peer.send(encode(SyncStep1(self.doc.get_state())))
        states = self.awareness.encode()
        if states is not None:
            peer.send(encode(Awareness(states)))
        self.peers[peer] = set()

    def leave(self, peer: PeerLike) -> None:
        """Remove ``peer`` and announce that its awareness states are gone."""
        controlled = self.peers.pop(peer, None)
        if controlled:
            removal = self.awareness.remove(controlled, self._clock())
            if removal is not None:
                self._broadcast(encode(Awareness(removal)))

    def receive(self, peer: PeerLike, message: Message) -> None:
        """Act on one decoded message from ``peer``.

        Raises:
            InvalidUpdate: pycrdt refused an update; nothing was stored or sent.
            DecodeError: a malformed state vector or awareness update.
        """
        match message:
            case SyncStep1(state_vector):
                self._answer_step1(peer, state_vector)
            case SyncStep2(update) | Update(update):
                if peer.read_only:
                    peer.refuse_write("read-only")
                else:
                    self.apply(update)
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
        except (ValueError, RuntimeError) as exc:
            raise InvalidUpdate(f"update rejected by pycrdt: {exc}") from exc
        self._applied += 1
        self._held.append((self._applied, None, encode_update(update)))
        self._committer.submit(self.key, update, self, self._applied)

    def durable(self, seq: int) -> None:
        """Called by the committer: updates up to ``seq`` are on disk."""
        self._durable = seq
        held = self._held
        while held and held[0][0] <= seq:
            _, target, frame = held.popleft()
            if target is None:
                self._broadcast(frame)
            elif target in self.peers:
                target.send(frame)

    def _answer_step1(self, peer: PeerLike, state_vector: bytes) -> None:
        try:
            diff = self.doc.get_update(state_vector)
        except (ValueError, RuntimeError) as exc:
            raise InvalidUpdate(f"bad state vector: {exc}") from exc
        frame = encode(SyncStep2(diff))
        if self.settled:
            peer.send(frame)
        else:
            self._held.append((self._applied, peer, frame))

    def _on_awareness(self, peer: PeerLike, update: bytes) -> None:
        change = self.awareness.apply(update, self._clock())
        controlled = self.peers.get(peer)
        if controlled is not None:
            controlled.update(change.added)
            controlled.difference_update(change.removed)
        # Relay to everyone, the sender too: clients count their own echoed
        # awareness as proof that the connection is alive.
        self._broadcast(encode(Awareness(update)))

    def _broadcast(self, frame: bytes) -> None:
        for peer in self.peers:
            peer.send(frame)
