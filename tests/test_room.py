"""Rooms and the registry in process: fake peers, a gated in-memory store."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence

import anyio
import pytest
from pycrdt import Array, Doc, Map, Text, write_var_uint

from tests.timing import wait_until
from ysyncd import protocol
from ysyncd.awareness import decode_update
from ysyncd.commits import Committer
from ysyncd.errors import InvalidUpdate, PolicyViolation, TooLarge
from ysyncd.presence import AwarenessPolicy
from ysyncd.room import Room
from ysyncd.rooms import RoomRegistry
from ysyncd.store import Compaction, MemoryStore
from ysyncd.updates import Limits, shape_of


class GatedStore(MemoryStore):
    """A MemoryStore whose commits wait until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.blocked = asyncio.Event()

    async def append(
        self,
        batch: Sequence[tuple[str, bytes]],
        authors: Sequence[str | None] | None = None,
    ) -> None:
        if not self.gate.is_set():
            self.blocked.set()
            await self.gate.wait()
        await super().append(batch, authors)

    def append_inline(
        self,
        batch: Sequence[tuple[str, bytes]],
        authors: Sequence[str | None],
    ) -> bool:
        return self.gate.is_set() and super().append_inline(batch, authors)

    async def wait_blocked(self) -> None:
        """Return once a commit is held at the closed gate."""
        with anyio.fail_after(5):
            await self.blocked.wait()


class FakePeer:
    def __init__(self, read_only: bool = False) -> None:
        self.read_only = read_only
        self.user: str | None = None
        self.frames: list[bytes] = []
        #: The serialised frames written to it, as the objects given.
        self.wires: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def write(self, wire: bytes) -> None:
        """A serialised, unmasked WebSocket frame: keep its payload."""
        length, start = wire[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(wire[2:4]), 4
        elif length == 127:
            length, start = int.from_bytes(wire[2:10]), 10
        assert len(wire) == start + length
        self.wires.append(wire)
        self.frames.append(wire[start:])

    def refuse_write(self, reason: str) -> None:
        self.send(protocol.encode(protocol.PermissionDenied(reason)))

    def messages(self) -> list[protocol.Message]:
        return [m for f in self.frames for m in protocol.decode(f)]


def text_update(text: str, client_id: int = 1) -> bytes:
    doc: Doc = Doc(client_id=client_id)
    doc.get("text", type=Text).insert(0, text)
    return doc.get_update()


@pytest.fixture
async def committer() -> AsyncIterator[Committer]:
    c = Committer(GatedStore())
    task = asyncio.create_task(c.run())
    yield c
    c.stop()
    with anyio.fail_after(5):
        await task


async def settle(c: Committer) -> None:
    with anyio.fail_after(5):
        await c.flush()


async def test_updates_are_echoed_only_after_they_are_durable(
    committer: Committer,
) -> None:
    """Nobody, the sender included, hears of an update before its commit."""
    store = committer.store
    assert isinstance(store, GatedStore)
    room = Room("r", Doc(), committer)
    sender, other = FakePeer(), FakePeer()
    room.join(sender)
    room.join(other)
    sender.frames.clear()
    other.frames.clear()
    store.gate.clear()
    update = text_update("hi")
    room.receive(sender, protocol.Update(update))
    await store.wait_blocked()
    assert sender.frames == [] and other.frames == []
    assert (await store.load("r")).updates == []
    store.gate.set()
    await settle(committer)
    assert sender.messages() == [protocol.Update(update)]
    assert other.messages() == [protocol.Update(update)]
    assert (await store.load("r")).updates == [update]


async def test_sync_step2_waits_behind_pending_updates(committer: Committer) -> None:
    """A joiner's sync reply never holds content that is not on disk yet."""
    store = committer.store
    assert isinstance(store, GatedStore)
    room = Room("r", Doc(), committer)
    writer, joiner = FakePeer(), FakePeer()
    room.join(writer)
    store.gate.clear()
    room.receive(writer, protocol.Update(text_update("pending")))
    room.join(joiner)
    room.receive(joiner, protocol.SyncStep1(Doc().get_state()))
    assert [type(m) for m in joiner.messages()] == [protocol.SyncStep1]
    store.gate.set()
    await settle(committer)
    step2 = [m for m in joiner.messages() if isinstance(m, protocol.SyncStep2)]
    assert len(step2) == 1
    doc: Doc = Doc()
    doc.apply_update(step2[0].update)
    assert str(doc.get("text", type=Text)) == "pending"


async def test_joiners_asking_alike_share_one_serialised_answer(
    committer: Committer,
) -> None:
    """A class joining a big room: every joiner asking with the same state
    vector gets the same bytes object, so the transports hold one copy of
    the document between them, not one each."""
    doc: Doc = Doc()
    doc.get("text", type=Text).insert(0, "lecture " * 20_000)
    room = Room("r", doc, committer)
    joiners = [FakePeer() for _ in range(5)]
    for joiner in joiners:
        room.join(joiner)
        room.receive(joiner, protocol.SyncStep1(Doc().get_state()))
    answers = [j.wires[-1] for j in joiners]
    assert all(answer is answers[0] for answer in answers)
    step2 = [m for m in joiners[-1].messages() if isinstance(m, protocol.SyncStep2)]
    fresh: Doc = Doc()
    fresh.apply_update(step2[-1].update)
    assert str(fresh.get("text", type=Text)) == "lecture " * 20_000
    # Once the doc changes, the next joiner gets a new answer.
    room.receive(joiners[0], protocol.Update(text_update("!")))
    await settle(committer)
    late = FakePeer()
    room.join(late)
    room.receive(late, protocol.SyncStep1(Doc().get_state()))
    await settle(committer)
    assert late.wires[-1] is not answers[0]


async def test_read_only_peer_is_refused_and_nothing_is_applied(
    committer: Committer,
) -> None:
    """A read-only peer's write is answered with permission-denied and dropped."""
    room = Room("r", Doc(), committer)
    viewer, editor = FakePeer(read_only=True), FakePeer()
    room.join(viewer)
    room.join(editor)
    room.receive(viewer, protocol.Update(text_update("nope")))
    room.receive(viewer, protocol.SyncStep2(text_update("nope either")))
    await settle(committer)
    assert protocol.PermissionDenied("read-only") in viewer.messages()
    assert str(room.doc.get("text", type=Text)) == ""
    assert (await committer.store.load("r")).updates == []
    assert not any(isinstance(m, protocol.Update) for m in editor.messages())


async def test_invalid_update_is_neither_stored_nor_relayed(
    committer: Committer,
) -> None:
    """pycrdt's refusal surfaces as InvalidUpdate; no one hears of it."""
    room = Room("r", Doc(), committer)
    a, b = FakePeer(), FakePeer()
    room.join(a)
    room.join(b)
    b.frames.clear()
    with pytest.raises(InvalidUpdate):
        room.receive(a, protocol.Update(b"\x01\x02garbage"))
    await settle(committer)
    assert b.frames == []
    assert (await committer.store.load("r")).updates == []


async def test_leaving_peer_awareness_is_removed_for_everyone(
    committer: Committer,
) -> None:
    """When a peer leaves, the states it controlled are broadcast as removed."""
    room = Room("r", Doc(), committer, clock=lambda: 0.0)
    a, b = FakePeer(), FakePeer()
    room.join(a)
    room.join(b)
    body = b'{"user":{"name":"Zo\xc3\xab"}}'
    update = b"\x01" + b"\x2a" + b"\x01" + bytes([len(body)]) + body
    room.receive(a, protocol.Awareness(update))
    assert protocol.Awareness(update) in a.messages()  # echoed to the sender too
    joiner = FakePeer()
    room.join(joiner)
    assert protocol.Awareness(update) in joiner.messages()
    room.leave(a)
    removal = b"\x01\x2a\x01\x04null"  # same clock, as y-protocols does
    assert protocol.Awareness(removal) in b.messages()
    assert room.awareness.encode() is None


async def test_racing_first_joins_share_one_load(committer: Committer) -> None:
    """Concurrent first joins of a new room all get the same, fully loaded room."""
    await committer.store.append([("race", text_update("stored"))])
    async with anyio.create_task_group() as tg:
        registry = RoomRegistry(committer, tg, idle_seconds=60)
        rooms = await asyncio.gather(*(registry.acquire("race") for _ in range(8)))
        assert all(r is rooms[0] for r in rooms)
        assert str(rooms[0].doc.get("text", type=Text)) == "stored"
        tg.cancel_scope.cancel()


async def test_idle_room_is_evicted_only_after_its_updates_are_durable(
    committer: Committer,
) -> None:
    """Eviction waits for the flush; a join during the wait keeps the room."""
    store = committer.store
    assert isinstance(store, GatedStore)
    async with anyio.create_task_group() as tg:
        registry = RoomRegistry(committer, tg, idle_seconds=0.01)
        room = await registry.acquire("idle")
        peer = FakePeer()
        room.join(peer)
        store.gate.clear()
        room.receive(peer, protocol.Update(text_update("keep me")))
        room.leave(peer)
        registry.release(room)
        await store.wait_blocked()
        await asyncio.sleep(0.2)  # 20 idle periods: a premature eviction would show
        assert registry.rooms.get("idle") is room  # still waiting for the commit
        store.gate.set()
        await wait_until(lambda: "idle" not in registry.rooms, "eviction")
        assert (await store.load("idle")).updates == [text_update("keep me")]
        again = await registry.acquire("idle")
        assert again is not room
        assert str(again.doc.get("text", type=Text)) == "keep me"
        tg.cancel_scope.cancel()


def aw_update(client_id: int, clock: int, state: str) -> bytes:
    body = state.encode()
    return (
        b"\x01"
        + write_var_uint(client_id)
        + write_var_uint(clock)
        + write_var_uint(len(body))
        + body
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_awareness_over_the_rate_is_coalesced_then_relayed(
    committer: Committer,
) -> None:
    """Past the burst, updates still change the state but are relayed on the tick."""
    clock = Clock()
    room = Room("r", Doc(), committer, clock=clock, policy=AwarenessPolicy(rate=5))
    a, b = FakePeer(), FakePeer()
    room.join(a)
    room.join(b)
    for clock_value in range(1, 8):  # burst of 5 passes, 2 are held back
        room.receive(
            a, protocol.Awareness(aw_update(1, clock_value, f'{{"n":{clock_value}}}'))
        )
    relayed = [m for m in b.messages() if isinstance(m, protocol.Awareness)]
    assert len(relayed) == 5
    assert room.awareness.states() == {1: '{"n":7}'}
    room.tick(clock.now + 1)
    last = [m for m in b.messages() if isinstance(m, protocol.Awareness)][-1]
    assert decode_update(last.update) == [(1, 7, '{"n":7}')]


async def test_awareness_flood_and_oversize_and_too_many_clients(
    committer: Committer,
) -> None:
    """Each awareness limit raises the error that maps to its close code."""
    room = Room(
        "r",
        Doc(),
        committer,
        clock=Clock(),
        policy=AwarenessPolicy(rate=2, max_state_bytes=64, max_clients=2),
    )
    peer = FakePeer()
    room.join(peer)
    with pytest.raises(TooLarge):
        room.receive(peer, protocol.Awareness(aw_update(1, 1, '"' + "é" * 40 + '"')))
    room.receive(peer, protocol.Awareness(aw_update(1, 1, "{}")))
    room.receive(peer, protocol.Awareness(aw_update(2, 1, "{}")))
    with pytest.raises(PolicyViolation):
        room.receive(peer, protocol.Awareness(aw_update(3, 1, "{}")))
    flooder = FakePeer()
    room.join(flooder)
    with pytest.raises(PolicyViolation, match="flood"):
        for clock_value in range(1, 100):
            room.receive(flooder, protocol.Awareness(aw_update(9, clock_value, "{}")))


async def test_stale_awareness_expires_on_tick(committer: Committer) -> None:
    """A state not renewed within the timeout is removed and the removal relayed."""
    clock = Clock()
    room = Room("r", Doc(), committer, clock=clock, policy=AwarenessPolicy(timeout=30))
    a, b = FakePeer(), FakePeer()
    room.join(a)
    room.join(b)
    room.receive(a, protocol.Awareness(aw_update(5, 1, "{}")))
    clock.now = 29
    room.tick(clock.now)
    assert room.awareness.states() == {5: "{}"}
    clock.now = 31
    room.tick(clock.now)
    assert room.awareness.states() == {}
    assert protocol.Awareness(aw_update(5, 1, "null")) in b.messages()


async def test_half_applied_update_taints_and_rebuild_restores(
    committer: Committer,
) -> None:
    """An update that fails mid-integration triggers a rebuild from the store."""
    room_doc: Doc = Doc(client_id=9)
    room_doc.get("text", type=Text).insert(0, "zz")
    good = room_doc.get_update()
    bad = find_half_applying(good)
    async with anyio.create_task_group() as tg:
        registry = RoomRegistry(committer, tg)
        room = await registry.acquire("t")
        binding = RecordingBinding()
        room.document = binding
        peer = FakePeer()
        room.join(peer)
        room.receive(peer, protocol.Update(good))
        with pytest.raises(InvalidUpdate):
            room.receive(peer, protocol.Update(bad))
        assert room.busy
        with anyio.fail_after(5):
            await room.settle()
        assert room.doc.get_update() == good_doc_update(good)
        # A file binding (Jupyter rooms) follows the room to its new doc.
        assert binding.rebound == [room.doc]
        tg.cancel_scope.cancel()


class RecordingBinding:
    """A RoomDocument that records what the room tells it."""

    gone = False

    def __init__(self) -> None:
        self.rebound: list[Doc] = []

    async def save(self) -> str:
        return "skipped"

    async def save_if_changed(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def rebind(self, doc: Doc) -> None:
        self.rebound.append(doc)


def good_doc_update(update: bytes) -> bytes:
    doc: Doc = Doc()
    doc.apply_update(update)
    return doc.get_update()


def find_half_applying(good: bytes) -> bytes:
    """A seeded mutation that pycrdt half-applies onto ``good``, then refuses,
    and that is well-formed enough to pass ysyncd's walk first."""
    source: Doc = Doc(client_id=5)
    source.get("text", type=Text).insert(0, "héllo")
    source.get("map", type=Map)["k"] = {"x": [1, 2]}
    array = source.get("array", type=Array)
    array.append(Text("in"))
    array.append(3)
    del source.get("text", type=Text)[1:2]
    base = source.get_update()
    rng = random.Random(2)
    for _ in range(20000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        doc: Doc = Doc()
        doc.apply_update(good)
        before = doc.get_update()
        try:
            shape_of(bytes(data), Limits())
            doc.apply_update(bytes(data))
        except RuntimeError:
            if doc.get_update() != before:
                return bytes(data)
        except (ValueError, InvalidUpdate):
            continue
    raise AssertionError("no half-applying mutation found")


async def test_stale_awareness_bounced_by_clients_is_not_relayed(
    committer: Committer,
) -> None:
    """Clients echo what they receive; same-clock copies must not be relayed."""
    room = Room("r", Doc(), committer, clock=Clock())
    a, b = FakePeer(), FakePeer()
    room.join(a)
    room.join(b)
    room.receive(a, protocol.Awareness(aw_update(1, 1, "{}")))
    before = len(a.messages())
    room.receive(b, protocol.Awareness(aw_update(1, 1, "{}")))  # b bounces it
    assert len(a.messages()) == before
    assert not room.peers[b].ids


async def test_coalesced_removal_still_reaches_peers(committer: Committer) -> None:
    """A removal merged away by the rate limit is relayed on the next tick."""
    clock = Clock()
    room = Room("r", Doc(), committer, clock=clock, policy=AwarenessPolicy(rate=1))
    a, b = FakePeer(), FakePeer()
    room.join(a)
    room.join(b)
    room.receive(a, protocol.Awareness(aw_update(7, 1, "{}")))
    room.receive(a, protocol.Awareness(aw_update(7, 2, "{}")))
    room.receive(a, protocol.Awareness(aw_update(7, 2, "null")))
    assert protocol.Awareness(aw_update(7, 2, "null")) not in b.messages()
    room.tick(clock.now)
    assert protocol.Awareness(aw_update(7, 2, "null")) in b.messages()


async def test_churning_client_ids_is_a_policy_violation(committer: Committer) -> None:
    """Adding and removing fresh client IDs without end closes the peer."""
    room = Room("r", Doc(), committer, clock=Clock(), policy=AwarenessPolicy(rate=1000))
    peer = FakePeer()
    room.join(peer)
    with pytest.raises(PolicyViolation):
        for i in range(1, 200):
            room.receive(peer, protocol.Awareness(aw_update(i, 1, "{}")))
            room.receive(peer, protocol.Awareness(aw_update(i, 1, "null")))


async def test_logs_that_keep_rows_do_not_compact_on_every_batch() -> None:
    """Rows a compaction must keep do not make each later batch compact again."""
    store = MemoryStore()
    committer = Committer(store, batch_max=1, compact_after=10)
    compactions = 0
    original = store.compact

    async def counting(room: str) -> Compaction:
        nonlocal compactions
        compactions += 1
        return await original(room)

    store.compact = counting  # type: ignore[method-assign]
    task = asyncio.create_task(committer.run())
    committer.track("r", 0)
    source: Doc = Doc(client_id=3)
    text = source.get("text", type=Text)
    later: list[bytes] = []
    source.observe(lambda event: later.append(event.update))
    text.insert(0, "x")  # never submitted: every later row depends on it
    for i in range(30):
        text.insert(len(text), str(i % 10))
    owner = FakeOwner()
    for seq, update in enumerate(later[1:], 1):
        committer.submit("r", update, owner, seq)
    await settle(committer)
    committer.stop()
    with anyio.fail_after(5):
        await task
    assert compactions <= 3
    assert len((await store.load("r")).updates) >= 29


class FakeOwner:
    def durable(self, seq: int) -> None:
        self.seq = seq


async def test_a_log_of_few_big_rows_is_compacted() -> None:
    """Three pastes of 1 MiB are three rows, far below --compact-after, but
    replaying their bytes costs more than a snapshot's: the log is folded
    into one, which holds the same document."""
    store = MemoryStore()
    committer = Committer(store, compact_after=1000)
    task = asyncio.create_task(committer.run())
    committer.track("r", 0)
    source: Doc = Doc(client_id=5)
    text = source.get("text", type=Text)
    owner = FakeOwner()
    for seq in range(1, 4):
        before = source.get_state()
        text.insert(len(text), chr(ord("a") + seq) * 2**20)
        committer.submit("r", source.get_update(before), owner, seq)
    await settle(committer)
    committer.stop()  # compacts what is due and quiet
    with anyio.fail_after(10):
        await task
    stored = await store.load("r")
    assert stored.log_rows == 0 and stored.snapshot_bytes > 3 * 2**20
    rebuilt: Doc = Doc()
    for update in stored.updates:
        rebuilt.apply_update(update)
    assert str(rebuilt.get("text", type=Text)) == str(text)
