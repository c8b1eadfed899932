"""Building a room's snapshot from its log: the pure half of compaction.

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

from ysyncd.errors import DecodeError, StoreError
from ysyncd.protocol import Reader

__all__ = ["Snapshot", "build_snapshot", "doc_from_updates"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A compacted document and the log rows that must be kept beside it."""

    update: bytes
    #: Indexes into the input of updates not fully integrated into ``update``.
    pending: list[int]


def doc_from_updates(updates: Sequence[bytes]) -> Doc[Any]:
    """A fresh doc with ``updates`` applied in order (pycrdt errors propagate)."""
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


def _state_vector(state: bytes) -> dict[int, int]:
    reader = Reader(state)
    return {reader.var_uint(): reader.var_uint() for _ in range(reader.var_uint())}


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
        doc = doc_from_updates(updates)
        snapshot = doc.get_update()
        state = doc.get_state()
        clocks = _state_vector(state)
        pending = [
            i for i, u in enumerate(updates) if not _is_integrated(u, state, clocks)
        ]
        # The content check: a doc rebuilt from the snapshot must encode to the
        # very same bytes (items and delete set) and the same state vector. A
        # state vector's byte order follows a hash map, so compare it decoded.
        check: Doc[Any] = Doc()
        check.apply_update(snapshot)
        same = (
            check.get_update() == snapshot
            and _state_vector(check.get_state()) == clocks
        )
    except (ValueError, RuntimeError, DecodeError) as exc:
        raise StoreError(f"stored updates do not apply: {exc}") from exc
    if not same:
        raise StoreError("snapshot does not round-trip to the same document")
    return Snapshot(snapshot, pending)
