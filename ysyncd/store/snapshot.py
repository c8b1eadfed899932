"""Building a room's document from its log: compaction, and loads.

Both run in the worker process (:mod:`ysyncd.worker`) for big rooms, so they
take plain bytes and return plain data.

Applying the log into a :class:`pycrdt.Doc` and encoding it again is linear;
``pycrdt.merge_updates`` is super-linear on long logs (minutes at 100k
updates), so it is never used here.

``Doc.get_update()`` leaves out what the doc could not integrate yet: structs
whose dependencies never arrived, and deletions of items it has not seen. Rows
holding either are reported so the store keeps them beside the snapshot
instead of silently dropping them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, get_update

from ysyncd.errors import DecodeError, StoreError, YsyncdError
from ysyncd.integrate import is_panic
from ysyncd.pieces import pieces
from ysyncd.protocol import Reader, decode_state_vector
from ysyncd.updates import NO_LIMITS, Layout, shape_of

__all__ = ["Prepared", "Snapshot", "build_snapshot", "doc_from_updates", "prepare"]

#: Most extra passes over updates left waiting (see _replay).
_REPLAY_PASSES = 16


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A compacted document and the log rows that must be kept beside it."""

    update: bytes
    #: Indexes into the input of updates not fully integrated into ``update``.
    pending: list[int]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A room's document, ready to be applied a slice at a time."""

    #: Its state in pieces (see :func:`ysyncd.updates.pieces`), in order.
    pieces: list[bytes]
    #: Stored updates not fully integrated (waiting for what they need):
    #: applied after the pieces, they wait in the new doc as they did.
    pending: list[bytes]


def prepare(
    updates: Sequence[bytes], *, max_structs: int = 512, max_ranges: int = 1024
) -> Prepared:
    """Replay ``updates`` and cut the result into pieces.

    Raises:
        StoreError: a stored update cannot be applied.
    """
    try:
        doc, waiting = _replay(updates)
        state = doc.get_update()
        pending = [updates[i] for i in waiting]
        layout = Layout()
        shape = shape_of(state, NO_LIMITS, layout)
        parts = pieces(
            state, shape, layout, max_structs=max_structs, max_ranges=max_ranges
        )
        return Prepared([part for part in parts if part], pending)
    except (ValueError, RuntimeError, YsyncdError) as exc:
        raise StoreError(f"stored updates do not apply: {exc}") from exc
    except BaseException as exc:
        if not is_panic(exc):
            raise
        # Not picklable across the worker's pipe, and not an Exception.
        raise StoreError(f"pycrdt panicked on the stored updates: {exc}") from None


def doc_from_updates(updates: Sequence[bytes]) -> Doc[Any]:
    """A fresh doc with ``updates`` applied (pycrdt errors propagate)."""
    doc, _ = _replay(updates)
    return doc


def _replay(updates: Sequence[bytes]) -> tuple[Doc[Any], list[int]]:
    """Apply ``updates`` in order; return the doc and the indexes of those
    still not integrated (waiting for what never came).

    yrs (pycrdt 0.14) can leave structs pending although what they wait for
    came later: seen with a run of one client's updates arriving before its
    gap, part of the gap, more of the run, then the rest. Applying the
    waiting updates again integrates them, so they are, while that makes
    progress. Rows appended by many nodes can come in such an order.
    """
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    waiting = list(range(len(updates)))
    for _ in range(_REPLAY_PASSES):
        state = doc.get_state()
        clocks = decode_state_vector(state)
        waiting = [i for i in waiting if not _is_integrated(updates[i], state, clocks)]
        if not waiting:
            break
        for i in waiting:
            doc.apply_update(updates[i])
        if decode_state_vector(doc.get_state()) == clocks:
            break  # no progress: they wait for updates that are not here
    return doc, list(waiting)


def _is_integrated(update: bytes, state: bytes, clocks: dict[int, int]) -> bool:
    # The diff against the doc's state vector is: structs the doc lacks, then
    # the update's whole delete set. Integrated means no structs, and no
    # deleted range reaching past what the doc knows of that client.
    reader = Reader(get_update(update, state))
    if reader.var_uint() != 0:
        return False
    for _ in range(reader.var_uint()):
        client = reader.var_uint()
        known = clocks.get(client, 0)
        for _ in range(reader.var_uint()):
            clock, length = reader.var_uint(), reader.var_uint()
            if clock + length > known:
                return False
    return True


def build_snapshot(updates: Sequence[bytes]) -> Snapshot:
    """Apply ``updates`` into a fresh doc, encode it, and verify the result.

    Raises:
        StoreError: a stored update cannot be applied, or the snapshot does not
            decode back to the same document. Nothing should be replaced then.
    """
    try:
        doc, pending = _replay(updates)
        snapshot = doc.get_update()
        clocks = decode_state_vector(doc.get_state())
        # The content check: a doc rebuilt from the snapshot must encode to the
        # very same bytes (items and delete set) and the same state vector. A
        # state vector's byte order follows a hash map, so compare it decoded.
        check: Doc[Any] = Doc()
        check.apply_update(snapshot)
        same = (
            check.get_update() == snapshot
            and decode_state_vector(check.get_state()) == clocks
        )
    except (ValueError, RuntimeError, DecodeError) as exc:
        raise StoreError(f"stored updates do not apply: {exc}") from exc
    except BaseException as exc:
        if not is_panic(exc):
            raise
        raise StoreError(f"pycrdt panicked on the stored updates: {exc}") from None
    if not same:
        raise StoreError("snapshot does not round-trip to the same document")
    return Snapshot(snapshot, pending)
