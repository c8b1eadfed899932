"""Hostile clients against the one shared ``ysyncd serve`` (tests/hostile.py).

Every bad input must get its documented close code or HTTP status, and only the
offending connection may suffer: afterwards the server still serves new clients,
and a room that a healthy client filled before the attack ("good") still holds
exactly its content, as the healthy client sees it and as a fresh client loads it.
All these tests attack the same server process, each in rooms of its own; the
``hostile`` fixture checks at the end of the session that it is still the same
process. Tests that need other server settings are in tests/test_limits.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, write_var_uint
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from tests.hostile import (
    BAD_INPUT_CODES,
    Content,
    Counts,
    Good,
    LoopThread,
    MiB,
    assert_survived,
    awareness_frame,
    awareness_states_seen,
    base_doc,
    churn,
    close_code_after,
    closes,
    good_room,
    limit_hits,
    peak,
    reset_peak,
    rss,
    send_fuzz,
    wait_closed_by_server,
    wait_for_metric,
)
from tests.rawclient import connect_non_reader
from tests.serverproc import ServerProcess
from tests.timing import scaled, wait_until
from tests.vectors import VECTORS
from tests.yclient import YClient, stored_content
from ysyncd import protocol

# --- malformed frames ---------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param("hello", 1003, id="text-frame"),
        pytest.param(b"", 1002, id="empty-binary-frame"),
        pytest.param(b"\x00\x02\x80", 1002, id="truncated-varuint"),
        pytest.param(
            b"\x00\x02" + write_var_uint(1000) + b"abc", 1002, id="length-over-frame"
        ),
        pytest.param(
            b"\x00\x02" + write_var_uint(2**40) + b"abc", 1002, id="length-2**40"
        ),
        pytest.param(b"\x07", 1003, id="unknown-message-type"),
        pytest.param(b"\x00\x03\x01\x00", 1003, id="unknown-sync-subtype"),
    ],
)
async def test_malformed_frame_closes_only_its_sender(
    hostile: ServerProcess,
    rooms: Callable[[str], str],
    frame: bytes | str,
    code: int,
) -> None:
    """A malformed frame in the good room closes its sender with the documented code."""
    counts = await Counts.now(hostile)
    async with good_room(hostile, rooms("good")) as good:
        assert await close_code_after(hostile.url, good.room, frame) == code
        await assert_survived(hostile, good)
        assert await counts.closes() == {closes(code): 1}


# --- updates pycrdt refuses ---------------------------------------------------

#: Garbage inside a well-formed sync update message; pycrdt cannot decode it.
GARBAGE_UPDATE = b"\xde\xad\xbe\xef-ysyncd-garbage-\xde\xad\xbe\xef"

#: A room's stored history: its snapshot (as row 0), then its log, in order.
_STORED_ROWS = """
SELECT 0, snapshot FROM rooms WHERE name = :name
UNION ALL
SELECT u.id, u.data FROM updates AS u JOIN rooms AS r ON r.id = u.room_id
WHERE r.name = :name
ORDER BY 1
"""


def read_only(db: Path) -> sqlite3.Connection:
    """A read-only connection to the shared server's database."""
    return sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)


def content_in_db(db: Path, room: str) -> Content:
    """The room's content rebuilt from the rows the server stored (read-only,
    beside the running server: the database is in WAL mode)."""
    with contextlib.closing(read_only(db)) as conn:
        rows = conn.execute(_STORED_ROWS, {"name": room}).fetchall()
    assert rows, f"nothing stored for room {room!r}"
    doc: Doc[Any] = Doc()
    for _, update in rows:
        if update is not None:  # a room not compacted yet has no snapshot
            doc.apply_update(update)
    return {
        "text": str(doc.get("text", type=Text)),
        "map": doc.get("map", type=Map).to_py(),
        "array": doc.get("array", type=Array).to_py(),
    }


async def test_undecodable_update_closes_1007_and_is_neither_stored_nor_relayed(
    hostile: ServerProcess, rooms: Callable[[str], str]
) -> None:
    """Garbage in a sync update closes 1007; it is never stored nor relayed."""
    with pytest.raises(ValueError):
        base_doc().apply_update(GARBAGE_UPDATE)
    counts = await Counts.now(hostile)
    async with good_room(hostile, rooms("good")) as good:
        frame = protocol.encode_update(GARBAGE_UPDATE)
        assert await close_code_after(hostile.url, good.room, frame) == 1007
        await assert_survived(hostile, good)
        assert await counts.closes() == {closes(1007): 1}
        # The survival check's echo came after any relay of the garbage would have.
        relayed = [
            m
            for m in good.client.received
            if isinstance(m, protocol.Update | protocol.SyncStep2)
            and GARBAGE_UPDATE in m.update
        ]
        assert relayed == []
        final = good.client.content()
        assert final == good.expected
    with contextlib.closing(read_only(hostile.db)) as db:
        (stored,) = db.execute(
            "SELECT count(*) FROM updates WHERE instr(data, ?) > 0", (GARBAGE_UPDATE,)
        ).fetchone()
        (snapshots,) = db.execute(
            "SELECT count(*) FROM rooms WHERE instr(snapshot, ?) > 0",
            (GARBAGE_UPDATE,),
        ).fetchone()
    assert (stored, snapshots) == (0, 0)
    # What is stored rebuilds the room exactly...
    assert content_in_db(hostile.db, good.room) == final
    # ...and so does the server, loading the room afresh once it has evicted it.
    evicted = f"room {good.room!r} evicted"
    await wait_until(
        lambda: any(evicted in line for line in hostile.log),
        "the good room's eviction",
        timeout=15,
    )
    assert await stored_content(hostile.url, good.room) == final


@functools.cache
def tainting_update() -> bytes:
    """A corrupted copy of the good room's update that fails half-way through.

    Flip 1-3 bytes of the base document's update (seeded, so the pick is always
    the same) until pycrdt, applying it on top of the base content, raises the
    RuntimeError of an update that was decoded fine but cannot be integrated.
    """
    base = base_doc().get_update()
    rng = random.Random(20240611)
    for _ in range(200_000):
        candidate = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            candidate[rng.randrange(len(candidate))] = rng.randrange(256)
        try:
            base_doc().apply_update(bytes(candidate))
        except RuntimeError as exc:
            if "must be deleted or shared ref type" in str(exc):
                return bytes(candidate)
        except ValueError:
            continue
    raise AssertionError("no corrupted update fails half-way through integration")


async def test_update_failing_half_way_closes_1007_and_room_is_rebuilt(
    hostile: ServerProcess, rooms: Callable[[str], str]
) -> None:
    """An update that breaks during integration closes 1007; the room is rebuilt."""
    update = tainting_update()
    with pytest.raises(RuntimeError, match="must be deleted or shared ref type"):
        base_doc().apply_update(update)
    counts = await Counts.now(hostile)
    async with (
        good_room(hostile, rooms("good")) as good,
        YClient.connect(hostile.url, good.room) as other,
    ):
        assert other.content() == good.expected
        frame = protocol.encode_update(update)
        assert await close_code_after(hostile.url, good.room, frame) == 1007
        rebuilt = f"room {good.room!r} rebuilt"
        await wait_until(
            lambda: any(rebuilt in line for line in hostile.log),
            "the room to be rebuilt",
        )
        # The second peer of the room keeps working too.
        other.array.append("from the other peer")
        await other.wait_confirmed()
        await good.client.wait(
            lambda: good.client.content()["array"][-1] == "from the other peer",
            "the other peer's edit",
        )
        good.expected = {
            **good.expected,
            "array": [*good.expected["array"], "from the other peer"],
        }
        assert other.content() == good.expected
        await assert_survived(hostile, good)
        assert await counts.closes() == {closes(1007): 1}


# --- sizes --------------------------------------------------------------------


async def test_64_mib_message_closes_1009_without_being_buffered(
    hostile: ServerProcess, rooms: Callable[[str], str]
) -> None:
    """A 64 MiB frame closes 1009 and never sits in the server's memory."""
    assert hostile.proc is not None
    pid = hostile.proc.pid
    counts = await Counts.now(hostile)
    async with good_room(hostile, rooms("good")) as good:
        size = 64 * MiB
        frame = b"\x00\x02" + write_var_uint(size) + bytes(size)
        rss_before = rss(pid)
        reset_peak(pid)
        assert await close_code_after(hostile.url, good.room, frame) == 1009
        peak_after = peak(pid)
        assert peak_after - rss_before < 16 * MiB, (rss_before, peak_after)
        await assert_survived(hostile, good)
        assert await counts.closes() == {closes(1009): 1}


async def test_awareness_state_over_the_byte_limit_closes_1009(
    hostile: ServerProcess, rooms: Callable[[str], str]
) -> None:
    """An awareness state of 65536 UTF-8 bytes is relayed; one more closes 1009."""
    counts = await Counts.now(hostile)
    async with (
        good_room(hostile, rooms("good")) as good,
        YClient.connect(hostile.url, good.room) as attacker,
    ):
        seen = good.client
        # Two UTF-8 bytes per character: the limit counts bytes, not characters.
        fits = json.dumps({"blob": "é" * 32762}, ensure_ascii=False)
        too_big = json.dumps({"blob": "é" * 32762 + "x"}, ensure_ascii=False)
        assert (len(fits.encode()), len(too_big.encode())) == (65536, 65537)
        assert len(too_big) < 40_000
        await attacker.ws.send(awareness_frame((777, 1, fits)))
        await seen.wait(lambda: 777 in seen.awareness, "the state at the limit")
        await attacker.ws.send(awareness_frame((777, 2, too_big)))
        assert await attacker.wait_closed() == 1009
        await seen.wait(lambda: 777 not in seen.awareness, "the state's removal")
        assert (777, too_big) not in awareness_states_seen(seen)
        await assert_survived(hostile, good)
        assert await counts.closes() == {closes(1009): 1}


# --- awareness policy ---------------------------------------------------------


async def test_seventeenth_awareness_client_closes_1008(
    hostile: ServerProcess, rooms: Callable[[str], str]
) -> None:
    """A connection may control 16 awareness client IDs; the 17th closes it 1008."""
    counts = await Counts.now(hostile)
    async with (
        good_room(hostile, rooms("good")) as good,
        YClient.connect(hostile.url, good.room) as attacker,
    ):
        seen = good.client
        ids = range(1000, 1016)
        await attacker.ws.send(awareness_frame(*((i, 1, "{}") for i in ids)))
        await seen.wait(lambda: all(i in seen.awareness for i in ids), "16 states")
        await attacker.ws.send(awareness_frame((1016, 1, "{}")))
        assert await attacker.wait_closed() == 1008
        await seen.wait(lambda: not seen.awareness, "removal of every state")
        # The 17th state was never relayed (only, harmlessly, its removal).
        assert (1016, "{}") not in awareness_states_seen(seen)
        await assert_survived(hostile, good)
        assert await counts.closes() == {closes(1008): 1}


async def test_awareness_flood_closes_1008(
    hostile: ServerProcess, rooms: Callable[[str], str]
) -> None:
    """256 awareness updates in a burst are merged; a flood over 300/s closes 1008."""
    per_frame = protocol.MAX_MESSAGES_PER_FRAME

    def burst(first_clock: int, frames: int) -> list[bytes]:
        return [
            awareness_frame((888, clock, json.dumps({"clock": clock})))
            for clock in range(first_clock, first_clock + frames * per_frame)
        ]

    def pack(messages: list[bytes]) -> list[bytes]:
        """Put up to 64 messages in each frame, as a batching client may."""
        return [
            b"".join(messages[i : i + per_frame])
            for i in range(0, len(messages), per_frame)
        ]

    counts = await Counts.now(hostile)
    async with (
        good_room(hostile, rooms("good")) as good,
        YClient.connect(hostile.url, good.room) as attacker,
    ):
        seen = good.client
        # 256 updates at once: under 10 x 30/s, so merged and relayed, not closed.
        for frame in pack(burst(1, 4)):
            await attacker.ws.send(frame)
        await seen.wait(
            lambda: seen.awareness.get(888) == {"clock": 256}, "the merged state"
        )
        # 448 more at once: over 10 x 30 within one second, a flood.
        for frame in pack(burst(257, 7)):
            with contextlib.suppress(ConnectionClosed):
                await attacker.ws.send(frame)
        assert await attacker.wait_closed() == 1008
        await seen.wait(lambda: 888 not in seen.awareness, "the flooder's removal")
        await assert_survived(hostile, good)
        assert await counts.closes() == {closes(1008): 1}


# --- a peer that never reads --------------------------------------------------


async def test_peer_that_never_reads_is_dropped_and_its_room_keeps_flowing(
    hostile: ServerProcess, rooms: Callable[[str], str]
) -> None:
    """A non-reading peer is dropped; its room's other peers miss nothing.

    The room keeps writing fast, so the peer's 1 MiB send buffer fills well
    within the 3 s drain timeout: it is closed with 1013. Should the drain
    watch get there first, it is aborted instead, with no close frame.
    """
    assert hostile.proc is not None
    pid = hostile.proc.pid
    busy = rooms("busy")
    chunk = "z" * (256 * 1024)
    counts = await Counts.now(hostile)
    async with (
        good_room(hostile, rooms("good")) as good,
        YClient.connect(hostile.url, busy) as writer,
        YClient.connect(hostile.url, busy) as watcher,
    ):
        slow = await connect_non_reader(f"{hostile.url}/{busy}", hostile.port)
        try:
            rss_before = rss(pid)
            reset_peak(pid)

            async def round_trip(i: int) -> None:
                # 256 KiB on the wire each round, but the document keeps only
                # one character: deleted text is garbage-collected.
                writer.text.insert(0, chunk)
                del writer.text[0 : len(chunk)]
                writer.text.insert(len(writer.text), str(i % 10))
                await writer.wait_confirmed()
                await watcher.wait(
                    lambda: watcher.doc.get_state() == writer.doc.get_state(),
                    f"round {i} at the watcher",
                    timeout=5,
                )
                assert watcher.content() == writer.content()

            hits: dict[str, float] = {}
            rounds = 0
            for rounds in range(1, 201):
                await round_trip(rounds)
                hits = await counts.delta("ysyncd_limit_hits_total")
                if hits:
                    break
            else:
                raise AssertionError("the non-reading peer was never dropped")
            closed_1013 = {limit_hits("send_buffer_bytes"): 1}
            aborted = {limit_hits("drain_timeout"): 1}
            assert hits in (closed_1013, aborted), hits
            # Another 48 MiB through the room: none of it may pile up for the
            # dropped peer.
            for i in range(rounds + 1, rounds + 193):
                await round_trip(i)
            peak_after = peak(pid)
            assert peak_after - rss_before < 32 * MiB, (rss_before, peak_after)
            # Reading again, the dropped peer finds the server's 1013 close
            # frame behind what was waiting for it; or, if the drain watch
            # dropped it, the end of the connection without one.
            slow.transport.resume_reading()
            if hits == closed_1013:
                assert await wait_closed_by_server(slow) == 1013
            else:
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(scaled(15)):
                        for _ in range(1_000_000):
                            await slow.recv()
                assert slow.protocol.close_rcvd is None, slow.protocol.close_rcvd
        finally:
            if slow.state is not State.CLOSED:
                slow.transport.abort()
        code = 1013 if hits == closed_1013 else 1006
        assert await counts.closes() == {closes(code): 1}
        assert await counts.delta("ysyncd_limit_hits_total") == hits
        assert await stored_content(hostile.url, busy) == writer.content()
        await assert_survived(hostile, good)


# --- connection churn ---------------------------------------------------------


async def test_rapid_connects_and_disconnects_leave_the_server_serving(
    hostile: ServerProcess, rooms: Callable[[str], str]
) -> None:
    """500 connections cut at every stage of their life leave the server healthy.

    (tests/test_limits.py churns a server with a small --max-connections too,
    and checks that every slot comes free.)
    """
    # No connection of an earlier test is left: the count below is this test's.
    await wait_for_metric(hostile, "ysyncd_connections", 0)
    async with good_room(hostile, rooms("good")) as good:
        outcomes = await churn(hostile, rooms, 500)
        assert set(outcomes) <= {
            "closed cleanly",
            "dropped after the 101",
            "dropped mid-handshake",
        }, (outcomes, "".join(hostile.log[-3:]))
        cut_early = sum(1 for i in range(500) if i % 6 < 3)
        assert outcomes["dropped mid-handshake"] == cut_early, outcomes
        # Every churned connection is gone: only the healthy client's is left.
        await wait_for_metric(hostile, "ysyncd_connections", 1)
        await assert_survived(hostile, good)
        await wait_for_metric(hostile, "ysyncd_connections", 1)


# --- fuzzing ------------------------------------------------------------------

GOLDEN_FRAMES = [vector.frame for vector in VECTORS]
LENGTHS = [0, 1, 2, 127, 128, 1000, 2**31, 2**40, 2**53 - 1, 2**53, 2**63]


def _var_uint(value: int) -> bytes:
    """lib0's varUint, for any size (pycrdt's encoder stops at 64 bits)."""
    out = bytearray()
    while value >= 0x80:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _relength(frame: bytes, length: int) -> bytes:
    """Replace the first message's length prefix (sync or awareness) by ``length``."""
    head = 2 if frame[:1] == b"\x00" else 1
    pos = head
    while pos < len(frame) and frame[pos] & 0x80:
        pos += 1
    return frame[:head] + _var_uint(length) + frame[pos + 1 :]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A golden frame from the real JS client, with a few bytes changed."""
    frame = bytearray(draw(st.sampled_from(GOLDEN_FRAMES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "length", "truncate"]))
        if op == "length":
            length = draw(st.sampled_from(LENGTHS) | st.integers(0, 300))
            frame = bytearray(_relength(bytes(frame), length))
        elif op == "insert":
            at = draw(st.integers(0, len(frame)))
            frame[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif not frame:
            continue
        elif op == "flip":
            at = draw(st.integers(0, len(frame) - 1))
            frame[at] ^= draw(st.integers(1, 255))
        elif op == "delete":
            del frame[draw(st.integers(0, len(frame) - 1))]
        else:
            frame = frame[: draw(st.integers(0, len(frame) - 1))]
    return bytes(frame)


FUZZ_FRAMES: st.SearchStrategy[bytes | str] = st.one_of(
    mutated_frames(),
    st.sampled_from(GOLDEN_FRAMES),
    st.binary(max_size=64),
    st.builds(
        lambda kind, rest: bytes([kind]) + rest,
        st.integers(0, 9),
        st.binary(max_size=32),
    ),
    st.lists(mutated_frames(), min_size=2, max_size=3).map(b"".join),
    st.text(max_size=16),
)


async def keep_editing(good: YClient, stop: asyncio.Event) -> int:
    """Append digits to the good room's text, one echoed edit at a time."""
    for i in range(100_000):
        if stop.is_set():
            return i
        good.text.insert(len(good.text), str(i % 10))
        await good.wait_confirmed()
    raise AssertionError("the healthy client was never told to stop")


def test_fuzzed_frames_never_hurt_the_server_or_other_rooms(
    hostile: ServerProcess, rooms: Callable[[str], str]
) -> None:
    """Random and mutated frames close only their sender; a busy room stays exact."""
    # Hypothesis calls its test function synchronously, once per example. An
    # async test under @given would run each example as a separate trip into the
    # event loop (via pytest-asyncio internals), and the healthy client's edits
    # would stall whenever Hypothesis is generating. So this test is synchronous:
    # the healthy client and every example's connection live in one event loop
    # in a thread of its own, which keeps running between examples; each example
    # hands a coroutine to that loop and waits for its result, with a timeout.
    # (The shared server runs in the hostile fixture's own loop; this one only
    # needs its URL.)
    outcomes: Counter[int | None] = Counter()
    fuzz_room = rooms("fuzz")
    with LoopThread() as bg:
        stack = contextlib.AsyncExitStack()
        stop = asyncio.Event()
        try:
            good: Good = bg.run(
                stack.enter_async_context(good_room(hostile, rooms("good")))
            )
            editing = bg.submit(keep_editing(good.client, stop))
            probes = iter(range(1_000_000))

            @settings(
                max_examples=200,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(st.lists(FUZZ_FRAMES, min_size=1, max_size=3))
            @example([GOLDEN_FRAMES[0]])  # accepted: the probe comes back
            @example([b"\x00\x02\x05\x01"])  # refused: 1002
            def fuzz(frames: list[bytes | str]) -> None:
                code = bg.run(send_fuzz(hostile.url, fuzz_room, frames, next(probes)))
                assert code is None or code in BAD_INPUT_CODES, code
                outcomes[code] += 1

            fuzz()
            bg.call(stop.set)
            edits = editing.result(scaled(30))
            good.expected = {
                **good.expected,
                "text": good.expected["text"]
                + "".join(str(i % 10) for i in range(edits)),
            }
            assert edits > 0
            assert outcomes[None] > 0 and outcomes[1002] > 0, outcomes
            bg.run(assert_survived(hostile, good))
        finally:
            bg.call(stop.set)
            bg.run(stack.aclose())
