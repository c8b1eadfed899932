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

from pycrdt import Doc, get_state

from ysyncd.errors import DecodeError, StoreError
from ysyncd.protocol import Reader

__all__ = ["Snapshot", "build_snapshot", "decode_state_vector"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A compacted document and the log rows that must be kept beside it."""

    update: bytes
    #: Indexes into the input of updates not fully integrated into ``update``.
    pending: list[int]


def decode_state_vector(state: bytes) -> dict[int, int]:
    """Decode a Yjs state vector into ``{client_id: clock}``."""
    reader = Reader(state)
    entries = dict(
        (reader.var_uint(), reader.var_uint()) for _ in range(reader.var_uint())
    )
    if reader.remaining:
        raise DecodeError("trailing bytes after the state vector")
    return entries


def _is_covered(update: bytes, state: dict[int, int]) -> bool:
    return all(
        clock <= state.get(client, 0)
        for client, clock in decode_state_vector(get_state(update)).items()
    )


def build_snapshot(updates: Sequence[bytes]) -> Snapshot:
    """Apply ``updates`` into a fresh doc, encode it, and verify the result.

    Raises:
        StoreError: a stored update cannot be applied, or the snapshot does not
            decode back to the same document. Nothing should be replaced then.
    """
    doc: Doc = Doc()
    try:
        for update in updates:
            doc.apply_update(update)
        snapshot = doc.get_update()
        state = doc.get_state()
        clocks = decode_state_vector(state)
        pending = [i for i, u in enumerate(updates) if not _is_covered(u, clocks)]
    except (ValueError, RuntimeError, DecodeError) as exc:
        raise StoreError(f"stored updates do not apply: {exc}") from exc
    # The content check: a doc rebuilt from the snapshot must encode to the very
    # same bytes (items and delete set) and the same state vector.
    check: Doc = Doc()
    check.apply_update(snapshot)
    if check.get_update() != snapshot or check.get_state() != state:
        raise StoreError("snapshot does not round-trip to the same document")
    return Snapshot(snapshot, pending)
