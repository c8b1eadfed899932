"""Building a room's snapshot from its log: the pure half of compaction.

Applying the log into a :class:`pycrdt.Doc` and encoding it again is linear;
``pycrdt.merge_updates`` is super-linear on long logs (minutes at 100k
updates), so it is never used here.

``Doc.get_update()`` leaves out structs the doc could not integrate yet
(their dependencies never arrived). Rows holding such structs are reported so
the store keeps them beside the snapshot instead of silently dropping them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, get_update

from ysyncd.errors import DecodeError, StoreError
from ysyncd.protocol import Reader

__all__ = ["Snapshot", "build_snapshot"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A compacted document and the log rows that must be kept beside it."""

    update: bytes
    #: Indexes into the input of updates not fully integrated into ``update``.
    pending: list[int]


def _is_integrated(update: bytes, state: bytes) -> bool:
    # The diff of an update against the doc's state vector holds no structs
    # (its first varUint, the number of clients with structs, is 0) exactly
    # when every struct of the update made it into the doc.
    return Reader(get_update(update, state)).var_uint() == 0


def build_snapshot(updates: Sequence[bytes]) -> Snapshot:
    """Apply ``updates`` into a fresh doc, encode it, and verify the result.

    Raises:
        StoreError: a stored update cannot be applied, or the snapshot does not
            decode back to the same document. Nothing should be replaced then.
    """
    doc: Doc[Any] = Doc()
    try:
        for update in updates:
            doc.apply_update(update)
        snapshot = doc.get_update()
        state = doc.get_state()
        pending = [i for i, u in enumerate(updates) if not _is_integrated(u, state)]
    except (ValueError, RuntimeError, DecodeError) as exc:
        raise StoreError(f"stored updates do not apply: {exc}") from exc
    # The content check: a doc rebuilt from the snapshot must encode to the very
    # same bytes (items and delete set) and the same state vector.
    check: Doc[Any] = Doc()
    check.apply_update(snapshot)
    if check.get_update() != snapshot or check.get_state() != state:
        raise StoreError("snapshot does not round-trip to the same document")
    return Snapshot(snapshot, pending)
