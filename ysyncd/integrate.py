"""Applying a peer's update to a room's doc: checked, sliced, and measured.

pycrdt (yrs) is trusted with structure it has been shown to survive, and
nothing else:

- an update is walked first (:mod:`ysyncd.updates`): malformed bytes are
  refused before pycrdt reads them, and nesting that would overflow its stack
  is refused outright;
- a big update is applied in pieces, a slice at a time, so other rooms are
  served in between, and it is undone (the room rebuilt) once applying it
  has cost more CPU than its size allows;
- a Rust panic inside pycrdt surfaces as pyo3's ``PanicException``, a
  ``BaseException``: it is caught here and treated like an update that failed
  half-way (the doc may hold part of it), never let through.

An update that adds nothing (every struct known, every deletion done, nothing
left pending) is reported as such, so the room neither stores nor relays it:
pycrdt's provider echoes back every update it receives.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc

from ysyncd.errors import InvalidUpdate, PolicyViolation
from ysyncd.pieces import delete_pieces, pieces
from ysyncd.protocol import decode_state_vector
from ysyncd.updates import (
    NO_LIMITS,
    Layout,
    Limits,
    Shape,
    delete_ends,
    shape_of,
    walk,
)

__all__ = [
    "HalfApplied",
    "UpdatePolicy",
    "UpdateTooCostly",
    "apply_in_slices",
    "apply_pieces",
    "apply_update",
    "integrating",
    "is_panic",
]

MiB = 2**20
# How long a slice of work may run before other rooms get the loop back.
_SLICE_SECONDS = 0.02


class HalfApplied(InvalidUpdate):
    """pycrdt gave up in the middle of an update: the doc may hold part of
    it, and must be rebuilt from the store (close 1007)."""


class UpdateTooCostly(PolicyViolation):
    """Applying the update took more CPU than its size allows; it was
    undone (close 1008)."""

    limit = "apply_budget"


@dataclass(frozen=True, slots=True)
class UpdatePolicy:
    """How updates are checked and applied (see Settings)."""

    limits: Limits = field(default_factory=Limits)
    #: CPU seconds applying may take per MiB of update, and at least.
    seconds_per_mib: float = 2.0
    min_seconds: float = 1.0
    #: Updates this big or bigger are applied a slice at a time.
    slice_bytes: int = 64 * 1024
    #: Most structs and delete ranges in one piece.
    piece_structs: int = 512
    piece_ranges: int = 1024

    def budget(self, size: int) -> float:
        """CPU seconds an update of ``size`` bytes may take to apply."""
        return max(self.min_seconds, size / MiB * self.seconds_per_mib)


def is_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a Rust panic inside pycrdt (pyo3's PanicException,
    which no module exports and which derives from BaseException only)."""
    return type(exc).__name__ == "PanicException"


#: The doc an update is being integrated into right now (see :func:`integrating`).
_integrating: Doc[Any] | None = None


def integrating(doc: Doc[Any]) -> bool:
    """Whether the transaction under way in ``doc`` integrates an update.

    A doc observer asks it to tell updates applied from outside (a peer's,
    a stored one) from edits made on the doc itself (a model's observers).
    """
    return _integrating is doc


def _integrate(doc: Doc[Any], update: bytes, observe: bool) -> tuple[bool, bytes]:
    """Apply ``update`` in one transaction; return (changed, state before).

    ``changed`` is exact with ``observe`` (pycrdt calls a doc observer only
    for a transaction that added structs or deleted something); without it,
    it says whether structs were added (the state vector grew), which is all
    an update without a delete set can do.

    Raises:
        InvalidUpdate: pycrdt refused the update whole; the doc is untouched.
        HalfApplied: pycrdt failed or panicked during integration.
    """
    global _integrating
    fired: list[object] = []
    subscription = doc.observe(fired.append) if observe else None
    _integrating = doc
    try:
        with doc.transaction() as txn:
            raw = txn._txn
            assert raw is not None
            before = doc._doc.get_state(raw)
            doc._doc.apply_update(raw, update)
            after = before if observe else doc._doc.get_state(raw)
    except ValueError as exc:  # refused while decoding: the doc is untouched
        raise InvalidUpdate(f"update rejected by pycrdt: {exc}") from exc
    except RuntimeError as exc:  # refused while integrating: maybe half-applied
        raise HalfApplied(f"update rejected by pycrdt: {exc}") from exc
    except BaseException as exc:
        if not is_panic(exc):
            raise
        raise HalfApplied(f"pycrdt panicked: {exc}") from None
    finally:
        _integrating = None
        if subscription is not None:
            doc.unobserve(subscription)
    return (bool(fired) if observe else after != before), before


def _beyond(update: bytes, shape: Shape, before: bytes) -> bool:
    """Whether ``shape`` reaches past the state ``before``: structs or
    deletions pycrdt keeps pending until what they need arrives, and which
    must be stored like any change."""
    known = decode_state_vector(before)
    if any(end > known.get(c, 0) for c, (_, end) in shape.clocks.items()):
        return True
    if not shape.delete_ranges:
        return False
    ends = delete_ends(update, shape.delete_set_at)
    return any(end > known.get(c, 0) for c, end in ends.items())


def apply_update(doc: Doc[Any], update: bytes, shape: Shape | None = None) -> bool:
    """Apply ``update`` to ``doc`` now; return whether it changed anything.

    Raises:
        InvalidUpdate, HalfApplied: see :func:`_integrate`.
    """
    if len(update) < 2:
        raise InvalidUpdate("an update is two bytes at least")
    # An update without structs (first byte 0) or with a delete set (last
    # byte not 0, the empty delete set's count) needs the observer to tell
    # whether its deletions were new. A plain insertion, the usual update,
    # is told by its state vector, which costs less.
    deletes = update[0] == 0 or update[-1] != 0
    changed, before = _integrate(doc, update, observe=deletes)
    if changed:
        return True
    shape = shape or shape_of(update, NO_LIMITS)
    if shape.delete_ranges and not deletes:
        return True  # a delete set ending in a 0: cannot tell, so keep it
    return _beyond(update, shape, before)


async def apply_in_slices(
    doc: Doc[Any],
    update: bytes,
    policy: UpdatePolicy,
    shape: Shape | None = None,
    *,
    clock: Callable[[], float] = time.thread_time,
) -> bool:
    """Walk, cut and apply a big ``update``, yielding the loop between slices.

    ``shape``, if the caller walked the update already, spares a walk when
    its structs fit in one piece. Returns whether it changed anything.

    Raises:
        InvalidUpdate, TooNested: refused before anything was applied.
        HalfApplied: pycrdt failed part-way; the doc must be rebuilt.
        UpdateTooCostly: over its CPU budget part-way; the doc must be rebuilt.
    """
    slice_started = time.monotonic()
    if shape is not None and shape.structs <= policy.piece_structs:
        # The structs whole, then the delete set in chunks.
        parts: Iterator[bytes] = itertools.chain(
            [update[: shape.delete_set_at] + b"\x00"] if shape.structs else [],
            delete_pieces(update, shape.delete_set_at, policy.piece_ranges),
        )
    else:
        layout = Layout()
        walker = walk(update, policy.limits, layout)
        while True:
            try:
                next(walker)
            except StopIteration as done:
                shape = done.value
                break
            slice_started = await _pause(slice_started)
        parts = pieces(
            update,
            shape,
            layout,
            max_structs=policy.piece_structs,
            max_ranges=policy.piece_ranges,
        )
    budget = policy.budget(len(update))
    spent = 0.0
    changed = False
    before = doc.get_state()
    for part in parts:
        if part:
            started = clock()
            try:
                changed |= _integrate(doc, part, observe=True)[0]
            except InvalidUpdate as exc:  # earlier pieces are in the doc
                raise HalfApplied(str(exc)) from exc
            spent += clock() - started
            if spent > budget:
                raise UpdateTooCostly(
                    f"applying the update took over {budget:.1f} s of CPU"
                )
        slice_started = await _pause(slice_started)
    return changed or _beyond(update, shape, before)


async def apply_pieces(doc: Doc[Any], parts: list[bytes]) -> None:
    """Apply our own pieces (a room's stored state, see
    :func:`ysyncd.store.snapshot.prepare`), yielding the loop between slices.

    Raises:
        InvalidUpdate, HalfApplied: pycrdt refused a piece.
    """
    slice_started = time.monotonic()
    for part in parts:
        _integrate(doc, part, observe=False)
        slice_started = await _pause(slice_started)


async def _pause(since: float) -> float:
    """Give the loop back once a slice has run long enough; the new start."""
    now = time.monotonic()
    if now - since < _SLICE_SECONDS:
        return since
    await asyncio.sleep(0)
    return time.monotonic()
