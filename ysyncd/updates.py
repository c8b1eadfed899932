"""Yjs updates read as structure, before pycrdt sees them. Pure: no I/O.

Format v1 (Yjs ``src/utils/encoding.js``, lib0's ``encoding.js``)::

    update    = structs deleteSet
    structs   = varUint(clients) { varUint(n) varUint(client) varUint(clock) struct*n }
    struct    = info origin? rightOrigin? (parent parentSub?)? content
              | GC varUint(length) | Skip varUint(length)
    deleteSet = varUint(clients) { varUint(client) varUint(n) { varUint(clock)
                varUint(length) }* }

:func:`walk` checks, iteratively (nothing here recurses, whatever the
input), the limits pycrdt needs. It overflows its stack on
  deeply nested ``Any`` values (SIGSEGV at about 100,000 levels, which fit in
  200 KB), and the Python side recurses on nested JSON and shared types. Depth
  is counted in ``Any`` values, in the JSON text of JSON, embed and format
  contents, and in chains of shared types that one update creates.
With a :class:`Layout`, it also records where each struct is and what it
depends on, for :mod:`ysyncd.pieces` to cut the update into smaller ones.

A length is a clock: a string counts UTF-16 code units, as in Yjs.

Where yrs and Yjs read the format differently, the walker refuses what they
disagree on, so that what it checked is what pycrdt reads: ContentJSON (yrs
reads one string more than Yjs writes) and XmlHook (yrs reads no hook name)
are refused, and so are clocks past 2**31 (yrs keeps 32 bits and panics near
the top) and client ids past 2**53 (lib0's and pycrdt's limit).
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Generator
from dataclasses import dataclass, field

from ysyncd.errors import InvalidUpdate, PolicyViolation

__all__ = [
    "MAX_CLOCK",
    "NO_LIMITS",
    "STEP",
    "Layout",
    "Limits",
    "Reader",
    "Section",
    "Shape",
    "TooNested",
    "delete_ends",
    "shape_of",
    "walk",
]

_GC, _SKIP = 0, 10
_ORIGIN, _RIGHT_ORIGIN, _PARENT_SUB = 0x80, 0x40, 0x20
_DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC = range(1, 10)
_XML_ELEMENT, _XML_HOOK, _LAST_TYPE_REF = 3, 5, 6  # type refs; 3 and 5 carry a name
# lib0 writeAny tags, and how many bytes follow the fixed-size ones.
_ANY_FIXED = {127: 0, 126: 0, 121: 0, 120: 0, 124: 4, 123: 8, 122: 8}
_ANY_VARINT, _ANY_STRING, _ANY_OBJECT, _ANY_ARRAY, _ANY_BYTES = 125, 119, 118, 117, 116
# lib0 stops varUints at 53 bits, yrs at 64: 10 bytes at most either way.
_MAX_VARUINT_BYTES = 10
#: Clocks (and clock + length) stay below this, client ids below _MAX_CLIENT.
MAX_CLOCK = 2**31
_MAX_CLIENT = 2**53
#: Every byte that ends a varUint (its high bit clear).
_LOW_BYTES = bytes(range(0x80))
# JSON text: strings (skipped) and the brackets a parser would recurse on.
_JSON_TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|[\[\]{}]')
#: Structs (or delete ranges) walked between two pauses.
STEP = 4096


class TooNested(PolicyViolation):
    """An update nests values or shared types deeper than the limit (1008)."""

    limit = "max_nesting_depth"


@dataclass(frozen=True, slots=True)
class Limits:
    """Shape limits checked before an update reaches pycrdt."""

    #: Deepest nesting of Any values, of JSON text, and of shared types that
    #: one update creates (a map in a map in a map is 3).
    max_depth: int = 64


#: For walking our own stored or re-encoded data: no limit but the stack's.
NO_LIMITS = Limits(max_depth=2**62)


@dataclass(slots=True)
class Shape:
    """What :func:`walk` found in an update."""

    structs: int = 0
    #: How many ranges the delete set names (counted from its bytes, not
    #: parsed: its reading, :func:`delete_ends`, costs a Python loop per
    #: range, and is needed only when nothing else changed).
    delete_ranges: int = 0
    #: Per client: the first clock and the end clock of its structs.
    clocks: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: The deepest nesting seen (Any, JSON or shared types).
    depth: int = 0
    #: Where the delete set starts, in bytes.
    delete_set_at: int = 0


@dataclass(slots=True)
class Section:
    """One client's structs in an update, as :func:`pieces` needs them."""

    client: int
    #: Byte offset and first clock of each struct, then one past the last.
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    clocks: array[int] = field(default_factory=lambda: array("Q"))


@dataclass(slots=True)
class Layout:
    """Where an update's structs are, and what each waits for elsewhere in it."""

    sections: list[Section] = field(default_factory=list)
    #: (section, struct index, other client, clock): a dependency on another
    #: client's struct (resolved against the update in :func:`pieces`).
    deps: list[tuple[int, int, int, int]] = field(default_factory=list)


class Reader:
    """A bounds-checked cursor; raises InvalidUpdate on anything malformed."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def byte(self) -> int:
        pos = self.pos
        if pos >= self.end:
            raise InvalidUpdate("the update is truncated")
        self.pos = pos + 1
        return self.data[pos]

    def uint(self) -> int:
        data, pos, end = self.data, self.pos, self.end
        if pos + 1 < end:  # one or two bytes: the usual cases, inlined
            low = data[pos]
            if low < 0x80:
                self.pos = pos + 1
                return low
            high = data[pos + 1]
            if high < 0x80:
                self.pos = pos + 2
                return (low & 0x7F) | (high << 7)
        value = 0
        for shift in range(0, 7 * _MAX_VARUINT_BYTES, 7):
            if pos >= end:
                raise InvalidUpdate("the update is truncated")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return value
        raise InvalidUpdate("a varUint is too long")

    def skip_varint(self) -> None:
        for _ in range(_MAX_VARUINT_BYTES):
            if self.byte() < 0x80:
                return
        raise InvalidUpdate("a varInt is too long")

    def skip(self, count: int) -> None:
        if count > self.end - self.pos:
            raise InvalidUpdate("a length runs past the end of the update")
        self.pos += count

    def string(self) -> str:
        count = self.uint()
        start = self.pos
        self.skip(count)
        try:
            return self.data[start : self.pos].decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidUpdate("a string is not valid UTF-8") from None


def _utf16_length(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def _json_depth(text: str, limit: int) -> int:
    """How deeply JSON text nests: what a parser would recurse on. Strings
    are skipped; malformed text is measured all the same."""
    brackets = text.count("[") + text.count("{")
    if brackets <= 1:
        return brackets
    depth = deepest = 0
    for token in _JSON_TOKENS.finditer(text):
        char = token.group()
        if char == "[" or char == "{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    raise TooNested(f"JSON nested deeper than {limit}")
        elif char == "]" or char == "}":
            depth -= 1
    return deepest


def _any_depth(r: Reader, limit: int) -> int:
    """Skip one Any value; return how deeply it nests (an array or object
    is one level)."""
    stack: list[tuple[int, bool]] = []  # the enclosing levels: (left, object)
    left, in_object = 1, False  # values left at this level; object: key first
    deepest = 0
    while True:
        if left == 0:
            if not stack:
                return deepest
            left, in_object = stack.pop()
            continue
        left -= 1
        if in_object:
            r.skip(r.uint())  # the key
        tag = r.byte()
        fixed = _ANY_FIXED.get(tag)
        if fixed is not None:
            r.skip(fixed)
        elif tag == _ANY_VARINT:
            r.skip_varint()
        elif tag == _ANY_STRING or tag == _ANY_BYTES:
            r.skip(r.uint())
        elif tag == _ANY_ARRAY or tag == _ANY_OBJECT:
            count = r.uint()
            stack.append((left, in_object))
            if len(stack) > deepest:
                deepest = len(stack)
                if deepest > limit:
                    raise TooNested(f"Any values nested deeper than {limit}")
            left, in_object = count, tag == _ANY_OBJECT
        else:
            raise InvalidUpdate(f"unknown Any tag {tag}")


def _content(r: Reader, ref: int, limit: int) -> tuple[int, int]:
    """Skip an item's content; return its length (in clocks) and depth."""
    if ref == _STRING:
        return _utf16_length(r.string()), 0
    if ref == _ANY:
        count = r.uint()
        deepest = 0
        for _ in range(count):
            deepest = max(deepest, _any_depth(r, limit))
        return count, deepest
    if ref == _DELETED:
        return r.uint(), 0
    if ref == _TYPE:
        type_ref = r.uint()
        if type_ref > _LAST_TYPE_REF or type_ref == _XML_HOOK:
            raise InvalidUpdate(f"unsupported shared type {type_ref}")
        if type_ref == _XML_ELEMENT:
            r.skip(r.uint())  # its tag name
        return 1, 0
    if ref == _BINARY:
        r.skip(r.uint())
        return 1, 0
    if ref == _EMBED:
        return 1, _json_depth(r.string(), limit)
    if ref == _FORMAT:
        r.skip(r.uint())  # the key
        return 1, _json_depth(r.string(), limit)
    if ref == _DOC:
        r.skip(r.uint())  # the guid
        return 1, _any_depth(r, limit)
    if ref == _JSON:
        raise InvalidUpdate("legacy JSON content is not supported")
    raise InvalidUpdate(f"unknown content type {ref}")


# How an item names its parent: a root's name, a parent type's ID, or
# (when it has an origin) the origin's or right origin's parent.
_Parent = tuple[int, int, int]  # (kind, client, clock)
_ROOT, _PARENT_ID, _LIKE = 0, 1, 2


def walk(
    update: bytes, limits: Limits, layout: Layout | None = None
) -> Generator[None, None, Shape]:
    """Walk ``update``, yielding every few thousand structs; return its shape.

    With ``layout``, also record where each struct is and what it depends on
    (for :func:`pieces`).

    Raises:
        InvalidUpdate: the bytes are not an update pycrdt could read.
        TooNested: nested deeper than ``limits.max_depth``.
    """
    shape = Shape()
    types: dict[tuple[int, int], _Parent] = {}
    yield from _walk(update, limits, shape, types, layout, None)
    if len(types) > limits.max_depth:
        # Only then can a chain of types be too deep: walk again, keeping
        # every struct's parent to follow origins to their types.
        runs: dict[int, list[tuple[int, int, _Parent]]] = {}
        yield from _walk(update, limits, Shape(), {}, None, runs)
        shape.depth = max(shape.depth, _type_depth(types, runs, limits.max_depth))
    return shape


def _walk(
    update: bytes,
    limits: Limits,
    shape: Shape,
    types: dict[tuple[int, int], _Parent],
    layout: Layout | None,
    runs: dict[int, list[tuple[int, int, _Parent]]] | None,
) -> Generator[None, None, None]:
    r = Reader(update)
    limit = limits.max_depth
    for _ in range(r.uint()):
        count, client = r.uint(), r.uint()
        if client >= _MAX_CLIENT:
            raise InvalidUpdate(f"client id {client} is over 2**53")
        if client in shape.clocks:
            # Yjs writes each client once; two runs would make pieces and
            # pycrdt read different documents out of one update.
            raise InvalidUpdate("a client's structs appear twice")
        shape.clocks[client] = (0, 0)
        first = clock = r.uint()
        section = Section(client) if layout is not None else None
        client_runs: list[tuple[int, int, _Parent]] = []
        for index in range(count):
            shape.structs += 1
            if shape.structs % STEP == 0:
                yield
            if section is not None:
                section.offsets.append(r.pos)
                section.clocks.append(clock)
            info = r.byte()
            ref = info & 0x1F
            if ref == _GC or ref == _SKIP:
                clock += r.uint()
                if clock >= MAX_CLOCK:
                    raise InvalidUpdate(f"clock {clock} is over 2**31")
                continue
            parent: _Parent = (_ROOT, 0, 0)
            deps: list[tuple[int, int]] = []
            if info & _ORIGIN:
                oc, ok = r.uint(), r.uint()
                deps.append((oc, ok))
                parent = (_LIKE, oc, ok)
            if info & _RIGHT_ORIGIN:
                rc, rk = r.uint(), r.uint()
                deps.append((rc, rk))
                if not info & _ORIGIN:
                    parent = (_LIKE, rc, rk)
            if not info & (_ORIGIN | _RIGHT_ORIGIN):
                if r.uint() == 1:
                    r.skip(r.uint())  # a root type's name
                else:
                    pc, pk = r.uint(), r.uint()
                    deps.append((pc, pk))
                    parent = (_PARENT_ID, pc, pk)
                if info & _PARENT_SUB:
                    r.skip(r.uint())
            for dc, dk in deps:
                if dc >= _MAX_CLIENT or dk >= MAX_CLOCK:
                    raise InvalidUpdate(f"an item points at ({dc}, {dk}), out of range")
            length, depth = _content(r, ref, limit)
            if depth > shape.depth:
                shape.depth = depth
            if ref == _TYPE:
                types[(client, clock)] = parent
            if runs is not None:
                client_runs.append((clock, clock + length, parent))
            if layout is not None:
                layout.deps.extend(
                    (len(layout.sections), index, dc, dk)
                    for dc, dk in deps
                    if dc != client
                )
            clock += length
            if clock >= MAX_CLOCK:
                raise InvalidUpdate(f"clock {clock} is over 2**31")
        if clock >= MAX_CLOCK:
            raise InvalidUpdate(f"clock {clock} is over 2**31")
        if section is not None and layout is not None:
            section.offsets.append(r.pos)
            section.clocks.append(clock)
            layout.sections.append(section)
        shape.clocks[client] = (first, clock)
        if runs is not None:
            runs[client] = client_runs
    shape.delete_set_at = r.pos
    # The delete set holds no content and nothing pycrdt recurses on; pycrdt
    # validates it, and a clock it panics on is caught like any panic. Its
    # ranges are counted from its bytes (each varUint ends with a byte under
    # 0x80; a range is two), at C speed: a client resending its whole delete
    # set with every update costs no Python loop per range.
    clients = r.uint()
    delete_set = update[r.pos :]
    varuints = len(delete_set) - len(delete_set.translate(None, _LOW_BYTES))
    # Per client: its id, its count, then two per range.
    shape.delete_ranges = max(0, (varuints - 2 * clients) // 2)


def delete_ends(update: bytes, at: int) -> dict[int, int]:
    """The delete set at ``at``, read: per client, where its last range ends.

    Raises:
        InvalidUpdate: malformed, or a clock past 2**31.
    """
    r = Reader(update)
    r.pos = at
    ends: dict[int, int] = {}
    for _ in range(r.uint()):
        client = r.uint()
        end = ends.get(client, 0)
        for _ in range(r.uint()):
            clock = r.uint()
            end = max(end, clock + r.uint())
        if end >= MAX_CLOCK:
            raise InvalidUpdate(f"deleted clock {end} is over 2**31")
        ends[client] = end
    if r.pos != r.end:
        raise InvalidUpdate("bytes left after the delete set")
    return ends


def _type_depth(
    types: dict[tuple[int, int], _Parent],
    runs: dict[int, list[tuple[int, int, _Parent]]],
    limit: int,
) -> int:
    """The longest chain of shared types, each in the last, that one update
    creates. A parent from outside the update counts as depth 0."""

    def parent_type(parent: _Parent) -> tuple[int, int] | None:
        # Follow origins to an explicit parent, within the update only.
        seen = 0
        while parent[0] == _LIKE:
            run = _run_at(runs.get(parent[1]), parent[2])
            seen += 1
            if run is None or seen > 1_000_000:
                return None
            parent = run[2]
        return (parent[1], parent[2]) if parent[0] == _PARENT_ID else None

    depths: dict[tuple[int, int], int] = {}
    deepest = 0
    for start in types:
        chain: list[tuple[int, int]] = []
        node: tuple[int, int] | None = start
        base = 0
        while node is not None and node in types:
            known = depths.get(node)
            if known is not None:
                base = known
                break
            chain.append(node)
            if len(chain) > limit:
                raise TooNested(f"shared types nested deeper than {limit}")
            node = parent_type(types[node])
        for offset, item in enumerate(reversed(chain), 1):
            depths[item] = base + offset
        deepest = max(deepest, base + len(chain))
        if deepest > limit:
            raise TooNested(f"shared types nested deeper than {limit}")
    return deepest


def _run_at(
    runs: list[tuple[int, int, _Parent]] | None, clock: int
) -> tuple[int, int, _Parent] | None:
    """The struct of a client's (clock-ordered) runs that holds ``clock``."""
    if not runs:
        return None
    low, high = 0, len(runs)
    while low < high:
        middle = (low + high) // 2
        if runs[middle][1] <= clock:
            low = middle + 1
        else:
            high = middle
    if low < len(runs) and runs[low][0] <= clock:
        return runs[low]
    return None


def shape_of(update: bytes, limits: Limits, layout: Layout | None = None) -> Shape:
    """:func:`walk` in one go."""
    walker = walk(update, limits, layout)
    while True:
        try:
            next(walker)
        except StopIteration as done:
            shape: Shape = done.value
            return shape
