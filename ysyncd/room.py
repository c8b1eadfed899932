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

Updates are applied by :mod:`ysyncd.integrate`: checked first, small ones at
once, big ones a slice at a time while the room is *busy* (its peers' next
messages wait for :meth:`Room.settle`; other rooms go on). One that adds
nothing is neither stored nor relayed. An update that fails half-way through,
or goes over its CPU budget, *taints* the room: the registry rebuilds its doc
from the store plus the updates still waiting for their commit, and the room
stays busy until then.

Requests that cost an encode of the whole document (sync step 1, query
awareness) are answered from a cache while the document (or the awareness)
is unchanged, and each peer gets a few at once, then one every two seconds:
further requests are merged into one, answered at the next tick.

The room knows nothing about sockets: a peer is anything with ``send``,
``refuse_write`` and ``read_only`` (see ``PeerLike`` in roomtypes.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pycrdt import Doc, Subscription, TransactionEvent

from ysyncd.awareness import AwarenessStates, encode_entries
from ysyncd.commits import Committer
from ysyncd.errors import InvalidUpdate, PolicyViolation, YsyncdError
from ysyncd.integrate import (
    HalfApplied,
    UpdatePolicy,
    UpdateTooCostly,
    apply_in_slices,
    apply_update,
    integrating,
    is_panic,
)
from ysyncd.peer import wire_frame
from ysyncd.presence import AwarenessPolicy, Presence
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
from ysyncd.roomtypes import FanOut, PeerLike, RoomDocument, RoomFailed, send_each
from ysyncd.updates import Shape, shape_of

__all__ = ["Room"]

log = logging.getLogger("ysyncd.room")

_EMPTY_UPDATE = b"\x00\x00"
#: Distinct state vectors whose sync step 2 answers are kept.
_ANSWERS_KEPT = 2


Tainted = Callable[["Room"], None]


_Held = tuple[int, PeerLike | None, bytes, bytes | None]


class Room:
    """The in-memory state of one room and its fan-out."""

    __slots__ = (
        "_answers",
        "_applied",
        "_busy",
        "_clock",
        "_coalesced",
        "_committer",
        "_deferred",
        "_durable",
        "_edits",
        "_fan_out",
        "_held",
        "_on_taint",
        "_policy",
        "_remote",
        "_tainted",
        "_updates",
        "awareness",
        "doc",
        "document",
        "failed",
        "key",
        "peers",
        "publish_awareness",
        "refs",
    )

    def __init__(
        self,
        key: str,
        doc: Doc[Any],
        committer: Committer,
        *,
        policy: AwarenessPolicy = AwarenessPolicy(),  # noqa: B008 - frozen
        clock: Callable[[], float] = time.monotonic,
        on_taint: Tainted | None = None,
        fan_out: FanOut = send_each,
        updates: UpdatePolicy = UpdatePolicy(),  # noqa: B008 - frozen
    ) -> None:
        self.key = key
        self.doc = doc
        self.awareness = AwarenessStates()
        self.peers: dict[PeerLike, Presence] = {}
        #: Connections holding this room (joined or about to); see RoomRegistry.
        self.refs = 0
        #: True once the room gave up (a rebuild failed); its peers must leave.
        self.failed = False
        #: What keeps the room in step with a file (Jupyter rooms), or None.
        self.document: RoomDocument | None = None
        self._committer = committer
        self._policy = policy
        self._clock = clock
        self._on_taint = on_taint
        self._fan_out = fan_out
        self._updates = updates
        # Set when the work under way (a sliced update, a rebuild) is done.
        self._busy: asyncio.Event | None = None
        self._tainted = False
        # Sync step 2 frames by state vector, valid while the doc is as it
        # was (``_applied`` unchanged): (applied, {state vector: frame}).
        self._answers: tuple[int, dict[bytes, bytes]] | None = None
        # Peers with a request deferred to the next tick.
        self._deferred: set[PeerLike] | None = None
        self._applied = 0
        self._durable = 0
        # Frames waiting for durability, in order: (seq, target or None for
        # everyone, frame, update). Broadcasts carry their update, so this is
        # also the list of updates not yet durable (for a rebuild). A list, not
        # a deque: it is short, and an idle room should cost little memory.
        self._held: list[_Held] = []
        # Awareness client IDs changed but not relayed yet (over-rate peers).
        self._coalesced: set[int] | None = None
        #: Sends awareness this room relays to the other nodes (a cluster).
        self.publish_awareness: Callable[[bytes], None] | None = None
        # Awareness client IDs that came through each other node.
        self._remote: dict[bytes, set[int]] | None = None
        # The doc observer recording edits made on the doc (record_edits).
        self._edits: Subscription | None = None

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
        states = self.awareness.encode_all()
        if states is not None:
            peer.send(encode(Awareness(states)))
        now = self._clock()
        self.peers[peer] = Presence(tokens=self._policy.rate, refilled=now)

    def leave(self, peer: PeerLike) -> None:
        """Remove ``peer`` and announce that its awareness states are gone."""
        presence = self.peers.pop(peer, None)
        if self._deferred:
            self._deferred.discard(peer)
        if presence and presence.ids:
            self._remove_awareness(presence.ids, publish=True)

    @property
    def busy(self) -> bool:
        """Whether a sliced update or a rebuild is under way."""
        return self._busy is not None

    @property
    def ready(self) -> bool:
        """True when a peer's next frame can be handled without :meth:`settle`."""
        return self._busy is None and not self.failed

    async def settle(self) -> None:
        """Wait until the room is not busy; peers call it before each frame.

        Raises:
            RoomFailed: the room gave up meanwhile.
        """
        while self._busy is not None:
            await self._busy.wait()
        if self.failed:
            raise RoomFailed("room reset; reconnect")

    def receive(self, peer: PeerLike, message: Message) -> Awaitable[None] | None:
        """Act on one decoded message from ``peer``.

        Returns an awaitable when the message is a big update being applied
        a slice at a time: the caller awaits it before its next message.

        Raises:
            InvalidUpdate: an update that cannot be applied; nothing was
                stored or sent.
            TooNested, UpdateTooCostly: an update over a shape or cost limit.
            DecodeError: a malformed state vector or awareness update.
            TooLarge, PolicyViolation: an awareness limit was passed.
        """
        match message:
            case SyncStep1(state_vector):
                self._request(peer, step1=state_vector)
            case SyncStep2(update) | Update(update):
                if not peer.read_only:
                    return self.apply(update, author=peer.user)
                if update != _EMPTY_UPDATE:  # every client's first step 2 is empty
                    peer.refuse_write("read-only")
            case Awareness(update):
                self._on_awareness(peer, update)
            case QueryAwareness():
                self._request(peer, query=True)
            case PermissionDenied():
                log.debug("ignoring a permission-denied message sent by a client")
        return None

    def apply(
        self, update: bytes, *, remote: bool = False, author: str | None = None
    ) -> Awaitable[None] | None:
        """Apply a peer's update; store it, then echo it to everyone once durable.

        Small updates are applied at once; big ones return an awaitable that
        applies them a slice at a time (see :mod:`ysyncd.integrate`). An
        update that changes nothing is dropped. A ``remote`` one, another
        node's, is durable already: it is relayed at once, not stored.
        """
        if update == _EMPTY_UPDATE:
            return None
        policy = self._updates
        if len(update) >= policy.slice_bytes:
            return self._apply_sliced(update, remote=remote, author=author)
        # Too short to nest past the limit or to hold many structs: no need
        # to walk it first.
        shape = None
        if len(update) > policy.limits.max_depth:
            shape = shape_of(update, policy.limits)
            if (
                shape.structs > policy.piece_structs
                or shape.delete_ranges > policy.piece_ranges
            ):
                # yrs integrates long runs of small items in one update in
                # quadratic time and memory (10,000 items: 1.6 s, 2.3 GB);
                # in pieces they cost what separate updates do.
                return self._apply_sliced(update, shape, remote=remote, author=author)
        if not self._apply_now(update, shape):
            return None
        if remote:
            self._relay_remote(update)
        else:
            self.record(update, author)
        return None

    def apply_trusted(self, update: bytes) -> None:
        """Apply and record a server-side update (a file's content)."""
        if self._apply_now(update):
            self.record(update)

    def _apply_now(self, update: bytes, shape: Shape | None = None) -> bool:
        try:
            return apply_update(self.doc, update, shape)
        except HalfApplied:
            self._taint()
            raise

    async def _apply_sliced(
        self,
        update: bytes,
        shape: Shape | None = None,
        *,
        remote: bool = False,
        author: str | None = None,
    ) -> None:
        busy = self._busy = asyncio.Event()
        try:
            changed = await apply_in_slices(self.doc, update, self._updates, shape)
        except (HalfApplied, UpdateTooCostly) as exc:
            log.warning("room %r: undoing an update: %s", self.key, exc)
            self._taint()
            if remote:
                return  # committed already: the rebuild reads it from the store
            raise
        finally:
            if not self._tainted:
                self._busy = None
                busy.set()
        if changed and remote:
            self._relay_remote(update)
        elif changed:
            self.record(update, author)

    def record(self, update: bytes, author: str | None = None) -> None:
        """Store and echo an update already applied to :attr:`doc`.

        Edits made on the doc itself (a file loaded or changed on disk, a
        save's state, a model's observers) come here through
        :meth:`record_edits`, like a peer's update.
        """
        self._applied += 1
        seq = self._applied
        self._held.append((seq, None, encode_update(update), update))
        self._committer.submit(self.key, update, self, seq, author)

    def record_edits(self) -> None:
        """From now on, record every change made on the doc itself.

        A document model (jupyter_ydoc's) edits the doc from its observers,
        after the update that woke them (YChat stamps each new message's
        time): such an edit must be stored and sent like a peer's, or the
        server's copy drifts from the log and every later server edit waits
        in the clients for one they never get. Updates integrated from
        outside (:mod:`ysyncd.integrate`) are recorded by their callers.
        """
        if self._edits is None:
            self._edits = self.doc.observe(self._on_transaction)

    def _on_transaction(self, event: TransactionEvent) -> None:
        if not integrating(self.doc):
            self.record(event.update)

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
                target.write(frame)  # a targeted frame is held serialised
        if batch:
            self._broadcast(*batch)
        del held[:released]

    def fail(self, code: int, reason: str) -> None:
        """Give up on this room: close every peer and release those waiting."""
        self.failed = True
        for peer in list(self.peers):
            peer.close(code, reason)
        self._finish_busy()

    def replace_doc(self, doc: Doc[Any]) -> None:
        """Swap in a rebuilt doc and let waiting peers go on."""
        self.doc = doc
        self._answers = None
        if self._edits is not None:  # the old doc goes with its observer
            self._edits = doc.observe(self._on_transaction)
        if self.document is not None:
            self.document.rebind(doc)
        self._finish_busy()

    def _finish_busy(self) -> None:
        busy, self._busy, self._tainted = self._busy, None, False
        if busy is not None:
            busy.set()

    @property
    def needs_tick(self) -> bool:
        """Whether :meth:`tick` has anything to do (most idle rooms: no)."""
        return bool(self.awareness) or bool(self._coalesced) or bool(self._deferred)

    def tick(self, now: float) -> None:
        """Periodic work: expire stale awareness, relay coalesced changes,
        answer deferred requests."""
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
                self._publish(update)
        if self._deferred and self._busy is None:
            for peer in list(self._deferred):
                presence = self.peers.get(peer)
                if presence is None or not presence.take_request(now):
                    continue
                self._deferred.discard(peer)
                step1, query = presence.deferred_step1, presence.deferred_query
                presence.deferred_step1, presence.deferred_query = None, False
                self._answer(peer, step1, query)

    def _taint(self) -> None:
        log.warning("room %r: an update failed half-way; rebuilding its doc", self.key)
        if not self._tainted:
            self._tainted = True
            if self._busy is None:
                self._busy = asyncio.Event()
            if self._on_taint is not None:
                self._on_taint(self)

    def _request(
        self, peer: PeerLike, *, step1: bytes | None = None, query: bool = False
    ) -> None:
        """A request for the whole document (step 1) or every awareness state."""
        presence = self.peers.get(peer)
        if presence is None:
            return  # gone: a closed peer costs nothing more
        if presence.take_request(self._clock()):
            self._answer(peer, step1, query)
            return
        # Over the rate: merged into one answer at a later tick.
        if step1 is not None:
            presence.deferred_step1 = step1
        presence.deferred_query |= query
        if self._deferred is None:
            self._deferred = set()
        self._deferred.add(peer)

    def _answer(self, peer: PeerLike, step1: bytes | None, query: bool) -> None:
        if step1 is not None:
            self._answer_step1(peer, step1)
        if query:
            states = self.awareness.encode_all()
            if states is not None:
                peer.send(encode(Awareness(states)))

    def _answer_step1(self, peer: PeerLike, state_vector: bytes) -> None:
        wire = self._step2_wire(state_vector)
        if self.settled:
            peer.write(wire)
        else:
            self._held.append((self._applied, peer, wire, None))

    def _step2_wire(self, state_vector: bytes) -> bytes:
        """The sync step 2 answering ``state_vector``, as one serialised
        WebSocket frame, cached while the doc is unchanged: the joiners of a
        big room share one encode, and one buffer (a transport keeps the
        bytes it was given, so 150 joiners of a 20 MiB room hold 20 MiB, not
        3 GiB)."""
        answers = self._answers
        if answers is None or answers[0] != self._applied:
            answers = self._answers = (self._applied, {})
        frame = answers[1].get(state_vector)
        if frame is None:
            try:
                diff = self.doc.get_update(state_vector)
            except (ValueError, RuntimeError) as exc:
                raise InvalidUpdate(f"bad state vector: {exc}") from exc
            except BaseException as exc:
                if not is_panic(exc):
                    raise
                # Reading the doc panicked: nothing changed, only the answer
                # is lost, and the peer with it.
                raise InvalidUpdate(f"bad state vector: {exc}") from None
            frame = wire_frame(encode(SyncStep2(diff)))
            if len(answers[1]) >= _ANSWERS_KEPT:
                answers[1].pop(next(iter(answers[1])))
            answers[1][state_vector] = frame
        return frame

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
        if not presence.within_rate(now, policy.rate):
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
        self._publish(update)

    def _remove_awareness(
        self, client_ids: set[int] | list[int], *, publish: bool = False
    ) -> None:
        removal = self.awareness.remove(client_ids, self._clock())
        if removal is not None:
            if self._coalesced:
                self._coalesced.difference_update(client_ids)
            self._broadcast(encode(Awareness(removal)))
            if publish:
                self._publish(removal)

    def _publish(self, update: bytes) -> None:
        if self.publish_awareness is not None:
            self.publish_awareness(update)

    # What other nodes send (see ysyncd.cluster): already durable, or awareness.

    def _relay_remote(self, update: bytes) -> None:
        self._answers = None  # the doc changed under the cached answers
        self._broadcast(encode_update(update))

    def apply_remote_awareness(self, origin: bytes, update: bytes) -> None:
        """Apply awareness relayed by another node; relay it to the peers here."""
        try:
            change = self.awareness.apply(update, self._clock())
        except YsyncdError as exc:
            log.warning("room %r: bad awareness from another node: %s", self.key, exc)
            return
        if not change.accepted:
            return
        if self._remote is None:
            self._remote = {}
        ids = self._remote.setdefault(origin, set())
        ids.update(change.added)
        ids.difference_update(change.removed)
        if len(change.accepted) < change.entries:
            update = encode_entries(change.accepted)
        self._broadcast(encode(Awareness(update)))

    def drop_origin(self, origin: bytes) -> None:
        """Another node died: its clients' awareness states go."""
        if self._remote is not None:
            ids = self._remote.pop(origin, None)
            if ids:
                self._remove_awareness(ids)

    def taint(self) -> None:
        """The doc may be wrong: rebuild it from the store."""
        self._taint()

    def _broadcast(self, *frames: bytes) -> None:
        if self.peers:
            self._fan_out(self.peers, frames)
