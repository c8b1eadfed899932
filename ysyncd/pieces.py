"""Cutting a Yjs update into smaller ones, for applying it a slice at a time.

:func:`pieces` turns an update (walked with a :class:`~ysyncd.updates.Layout`)
into updates that, applied in turn, make the same document: runs of structs
in an order where each struct's dependencies inside the update (its origin,
right origin and parent, and its client's earlier clocks) come first, then
the delete set in chunks. So a big update never waits in pycrdt's pending
set for a struct of a later piece, and each piece costs what a small update
does. Pure: no I/O.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Generator, Iterator

from pycrdt import write_var_uint

from ysyncd.updates import STEP, Layout, Reader, Shape

__all__ = ["delete_pieces", "pieces"]


def pieces(
    update: bytes, shape: Shape, layout: Layout, *, max_structs: int, max_ranges: int
) -> Iterator[bytes]:
    """``update`` as smaller updates that, applied in order, give the same doc.

    Struct runs come in an order where each struct's dependencies inside the
    update are in an earlier piece or the same one (a cycle, which no causal
    history has, is broken by order), at most ``max_structs`` structs a piece;
    then the delete set, at most ``max_ranges`` ranges a piece. Every few
    thousand steps of work an empty ``b""`` comes instead of a piece: a point
    where the caller may pause.
    """
    for runs in _causal_runs(shape, layout, max_structs):
        yield _struct_piece(update, layout, runs) if runs else b""
    yield from delete_pieces(update, shape.delete_set_at, max_ranges)


def _causal_runs(
    shape: Shape, layout: Layout, max_structs: int
) -> Generator[list[tuple[int, int, int]], None, None]:
    """Pieces as lists of (section, first struct, end struct)."""
    sections = layout.sections
    by_client = {s.client: i for i, s in enumerate(sections)}
    # What each struct waits for in another section: (section, clock).
    waits: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for step, (at, index, client, clock) in enumerate(layout.deps, 1):
        if step % STEP == 0:
            yield []  # a pause
        other = by_client.get(client)
        if other is None:
            continue  # in the doc already, or missing: not ours to order
        first, end = shape.clocks[client]
        if first <= clock < end:
            waits.setdefault((at, index), []).append((other, clock))
    done = [s.clocks[0] for s in sections]  # clocks below this are emitted
    cursor = [0] * len(sections)
    ready = deque(range(len(sections)))
    queued = [True] * len(sections)
    blocked: list[list[tuple[int, int]]] = [[] for _ in sections]  # heaps
    piece: dict[int, list[int]] = {}
    size = 0
    left = sum(len(s.offsets) - 1 for s in sections)
    while left:
        if not ready:
            # A cycle: take the next struct of the first unfinished section.
            forced = next(
                i for i, s in enumerate(sections) if cursor[i] < len(s.offsets) - 1
            )
            ready.append(forced)
            queued[forced] = True
            waits.pop((forced, cursor[forced]), None)
        i = ready.popleft()
        queued[i] = False
        section = sections[i]
        last = len(section.offsets) - 1
        while cursor[i] < last:
            index = cursor[i]
            pending = [w for w in waits.get((i, index), ()) if w[1] >= done[w[0]]]
            if pending:
                other, clock = pending[0]
                heapq.heappush(blocked[other], (clock, i))
                break
            waits.pop((i, index), None)
            span = piece.setdefault(i, [index, index])
            span[1] = index + 1
            cursor[i] = index + 1
            done[i] = section.clocks[index + 1]
            size += 1
            left -= 1
            waiting = blocked[i]
            while waiting and waiting[0][0] < done[i]:
                _, woken = heapq.heappop(waiting)
                if not queued[woken]:
                    ready.append(woken)
                    queued[woken] = True
            if size >= max_structs:
                yield [(s, a, b) for s, (a, b) in piece.items()]
                piece, size = {}, 0
    if piece:
        yield [(s, a, b) for s, (a, b) in piece.items()]


def _struct_piece(
    update: bytes, layout: Layout, runs: list[tuple[int, int, int]]
) -> bytes:
    parts = [write_var_uint(len(runs))]
    for index, first, end in runs:
        section = layout.sections[index]
        parts += [
            write_var_uint(end - first),
            write_var_uint(section.client),
            write_var_uint(section.clocks[first]),
            update[section.offsets[first] : section.offsets[end]],
        ]
    parts.append(b"\x00")  # no delete set
    return b"".join(parts)


def delete_pieces(
    update: bytes, at: int, max_ranges: int
) -> Generator[bytes, None, None]:
    r = Reader(update)
    r.pos = at
    chunk: list[bytes] = []  # per client: client, count, ranges
    count = 0
    for _ in range(r.uint()):
        client = r.uint()
        ranges = r.uint()
        start = r.pos
        taken = 0
        for _ in range(ranges):
            r.uint()
            r.uint()
            taken += 1
            count += 1
            if count == max_ranges:
                chunk.append(
                    write_var_uint(client)
                    + write_var_uint(taken)
                    + update[start : r.pos]
                )
                yield b"\x00" + write_var_uint(len(chunk)) + b"".join(chunk)
                chunk, count, taken, start = [], 0, 0, r.pos
        if taken:
            chunk.append(
                write_var_uint(client) + write_var_uint(taken) + update[start : r.pos]
            )
    if chunk:
        yield b"\x00" + write_var_uint(len(chunk)) + b"".join(chunk)


def _ranges(client: int, count: int, encoded: bytes) -> bytes:
    """One client's entry of a delete set: its ``count`` ranges, encoded."""
    return write_var_uint(client) + write_var_uint(count) + encoded
