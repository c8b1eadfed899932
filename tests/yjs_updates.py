"""Build raw Yjs updates (format v1) byte by byte, for tests and fuzzing.

This module owns an encoder of the Yjs update format v1, written from the
format as Yjs (``src/utils/encoding.js``, ``src/structs/*.js``,
``src/utils/DeleteSet.js``, lib0 ``encoding.js``) and y-crdt (``yrs/src/block.rs``,
``yrs/src/updates/encoder.rs``) read and write it, and Hypothesis strategies that
draw updates that are valid in structure but extreme in content. It does not
import ysyncd on purpose: ysyncd is what these bytes test.

An update v1 is::

    update      = structs delete_set
    structs     = varUint(#blocks) block*
    block       = varUint(#structs) varUint(client) varUint(first clock) struct*
    struct      = GC: byte 0, varUint(len) | Skip: byte 10, varUint(len) | item
    item        = info [origin] [right origin] [parent [parentSub]] content
    info        = content ref (low 5 bits) | 0x80 origin | 0x40 right origin
                  | 0x20 parentSub
    parent      = varUint(1) varString(root name) | varUint(0) id
    id          = varUint(client) varUint(clock)
    delete_set  = varUint(#clients) (varUint(client) varUint(#ranges)
                  (varUint(clock) varUint(len))*)*

The parent (and parentSub) are written only when the item has neither an origin
nor a right origin: a decoder copies them from its neighbour otherwise. The
structs of a block take consecutive clocks from the block's first clock; each
struct is as long as its content (strings count UTF-16 code units).

Where yrs (0.28, in pycrdt 0.14.13) reads differently from Yjs, this module
writes what Yjs writes: ContentJSON (yrs reads one string more than counted) and
XmlHook (yrs reads no hook name) then misparse in yrs. yrs also holds clocks in
32 bits, so larger clocks and lengths wrap there.

Nothing here recurses in Python, so nesting depths of a million are fine.
Bulky content (deep nesting, many structs, many ranges) is made from a few drawn
numbers, never drawn element by element, so examples stay cheap and shrink well.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import ClassVar, Literal, TypeAlias

from hypothesis import strategies as st

__all__ = [
    "GC",
    "ID",
    "MAX_SAFE_INTEGER",
    "UNDEFINED",
    "AnyContent",
    "AnyValue",
    "BigInt",
    "BinaryContent",
    "ClientDeletes",
    "ClientStructs",
    "Container",
    "Content",
    "DeletedContent",
    "DocContent",
    "EmbedContent",
    "FormatContent",
    "FuzzUpdate",
    "Item",
    "JSONContent",
    "RawAny",
    "Skip",
    "StringContent",
    "Struct",
    "TypeContent",
    "TypeRef",
    "Undefined",
    "Update",
    "any_value",
    "any_values",
    "client_ids",
    "clocks",
    "dangling_origin_update",
    "deep_any_update",
    "deep_embed_update",
    "deep_format_update",
    "deep_json_update",
    "delete_every_other",
    "delete_update",
    "formatted_text_update",
    "huge_clock_update",
    "item_chain_update",
    "lengths",
    "many_clients_update",
    "missing_parent_update",
    "nested_any",
    "nested_any_array",
    "nested_any_object",
    "nested_arrays_update",
    "nested_json",
    "nested_maps_update",
    "read_state_vector",
    "resent_clocks_update",
    "string_update",
    "text_of",
    "text_update",
    "updates",
    "utf16_length",
    "var_bytes",
    "var_int",
    "var_string",
    "var_uint",
]

MAX_SAFE_INTEGER = 2**53 - 1
"""The largest integer a JavaScript number holds exactly: Yjs's largest clock."""

_BITS31 = 0x7FFFFFFF
_SMALL_UINTS = [bytes((n,)) for n in range(0x80)]

# Content refs: the low five bits of an item's info byte (Yjs encoding.js).
_GC_REF = 0
_SKIP_REF = 10


# --- lib0 primitives ------------------------------------------------------------


def _put_uint(buf: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError(f"varUint of a negative number: {n}")
    while n >= 0x80:
        buf.append((n & 0x7F) | 0x80)
        n >>= 7
    buf.append(n)


def _utf8(text: str) -> bytes:
    """UTF-8 as a JavaScript ``TextEncoder`` writes it.

    Python strings may hold surrogates that JavaScript would pair or replace:
    pairs are joined, lone surrogates become U+FFFD, as in JavaScript.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        units = text.encode("utf-16-le", "surrogatepass")
        return units.decode("utf-16-le", "replace").encode("utf-8")


def _put_string(buf: bytearray, text: str) -> None:
    data = _utf8(text)
    _put_uint(buf, len(data))
    buf += data


def _put_bytes(buf: bytearray, data: bytes) -> None:
    _put_uint(buf, len(data))
    buf += data


def _put_int(buf: bytearray, n: int, negative: bool | None = None) -> None:
    # lib0 writeVarInt: the first byte holds a continuation bit, a sign bit and six
    # bits of the magnitude; the next bytes hold seven bits each.
    if negative is None:
        negative = n < 0
    n = abs(n)
    buf.append((0x80 if n > 0x3F else 0) | (0x40 if negative else 0) | (n & 0x3F))
    n >>= 6
    while n > 0:
        buf.append((0x80 if n > 0x7F else 0) | (n & 0x7F))
        n >>= 7


def var_uint(n: int) -> bytes:
    """lib0 ``writeVarUint``: seven bits a byte, least significant first.

    Any non-negative Python int is accepted, also beyond 2**53 or 2**64, so that
    tests can send numbers no JavaScript peer could.

    Raises:
        ValueError: if ``n`` is negative.
    """
    if 0 <= n < 0x80:
        return _SMALL_UINTS[n]
    buf = bytearray()
    _put_uint(buf, n)
    return bytes(buf)


def var_int(n: int, *, negative_zero: bool = False) -> bytes:
    """lib0 ``writeVarInt``: sign and magnitude, six bits in the first byte.

    Args:
        n: the number.
        negative_zero: write -0 (the sign bit with a zero magnitude), as lib0
            does for the JavaScript number ``-0``; only meaningful when n is 0.
    """
    buf = bytearray()
    _put_int(buf, n, negative=True if negative_zero and n == 0 else None)
    return bytes(buf)


def var_string(text: str) -> bytes:
    """lib0 ``writeVarString``: varUint length in UTF-8 bytes, then the bytes."""
    buf = bytearray()
    _put_string(buf, text)
    return bytes(buf)


def var_bytes(data: bytes) -> bytes:
    """lib0 ``writeVarUint8Array``: varUint length, then the bytes."""
    return var_uint(len(data)) + bytes(data)


def utf16_length(text: str) -> int:
    """Length of ``text`` in UTF-16 code units: the clock length of a string item."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


# --- lib0 Any -------------------------------------------------------------------


class Undefined(Enum):
    """JavaScript ``undefined`` (Any tag 127); use the ``UNDEFINED`` member."""

    UNDEFINED = "undefined"


UNDEFINED = Undefined.UNDEFINED


@dataclass(frozen=True, slots=True)
class BigInt:
    """A JavaScript BigInt (Any tag 122: 8 bytes, signed, big-endian)."""

    value: int

    def __post_init__(self) -> None:
        if not -(2**63) <= self.value < 2**63:
            raise ValueError(f"BigInt out of the int64 range: {self.value}")


@dataclass(frozen=True, slots=True)
class RawAny:
    """Bytes already encoded as one lib0 Any value, written as they are.

    Lets deep values built by :func:`nested_any` sit inside lists, objects and
    contents without ever becoming Python objects.
    """

    data: bytes


AnyValue: TypeAlias = (
    "Undefined | bool | int | float | str | bytes | BigInt | RawAny"
    " | list[AnyValue] | tuple[AnyValue, ...] | dict[str, AnyValue] | None"
)


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str
    value: AnyValue


def _put_number(buf: bytearray, x: float) -> None:
    # lib0 writeAny on a JavaScript number: a safe 31-bit integer is a varInt
    # (-0 included, with its sign), a value that survives float32 is float32,
    # anything else float64. NaN fails the float32 round trip, infinities pass.
    if math.isfinite(x) and x.is_integer() and abs(x) <= _BITS31:
        buf.append(125)
        _put_int(buf, int(x), negative=math.copysign(1.0, x) < 0)
        return
    try:
        as32 = struct.pack(">f", x)
    except OverflowError:
        as32 = b""
    if as32 and struct.unpack(">f", as32)[0] == x:
        buf.append(124)
        buf += as32
    else:
        buf.append(123)
        buf += struct.pack(">d", x)


def _put_any(buf: bytearray, value: AnyValue) -> None:
    # An explicit stack instead of recursion: values may nest a million deep.
    stack: list[AnyValue | _Entry] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, _Entry):
            _put_string(buf, v.key)
            stack.append(v.value)
        elif v is None:
            buf.append(126)
        elif v is UNDEFINED:
            buf.append(127)
        elif isinstance(v, bool):
            buf.append(120 if v else 121)
        elif isinstance(v, int):
            if -_BITS31 <= v <= _BITS31:
                buf.append(125)
                _put_int(buf, v)
            else:
                _put_number(buf, float(v))  # a JavaScript number, as lib0 sees it
        elif isinstance(v, float):
            _put_number(buf, v)
        elif isinstance(v, str):
            buf.append(119)
            _put_string(buf, v)
        elif isinstance(v, dict):
            buf.append(118)
            _put_uint(buf, len(v))
            stack.extend(_Entry(k, x) for k, x in reversed(list(v.items())))
        elif isinstance(v, list | tuple):
            buf.append(117)
            _put_uint(buf, len(v))
            stack.extend(reversed(v))
        elif isinstance(v, bytes | bytearray):
            buf.append(116)
            _put_bytes(buf, bytes(v))
        elif isinstance(v, BigInt):
            buf.append(122)
            buf += v.value.to_bytes(8, "big", signed=True)
        elif isinstance(v, RawAny):
            buf += v.data
        else:
            raise TypeError(f"not an Any value: {type(v).__name__}")


def any_value(value: AnyValue) -> bytes:
    """lib0 ``writeAny`` of one value.

    Tags: 127 undefined, 126 null, 125 varInt, 124 float32, 123 float64,
    122 BigInt, 121/120 false/true, 119 string, 118 object, 117 array,
    116 bytes. Python ints and floats are treated as the JavaScript number of the
    same value (so ``3.0`` is written as the integer 3 and ``2**40`` as a float),
    except that a :class:`BigInt` asks for tag 122.

    Raises:
        TypeError: for a value that is none of :data:`AnyValue`.
        OverflowError: for an int too large for a float64.
    """
    buf = bytearray()
    _put_any(buf, value)
    return bytes(buf)


Container = Literal["array", "object", "alternate"]


def nested_any(
    depth: int,
    *,
    container: Container = "array",
    key: str = "a",
    leaf: AnyValue | None = None,
) -> bytes:
    """The Any bytes of ``depth`` nested containers, built without recursion.

    ``depth=3`` gives ``[[[]]]`` (array), ``{"a":{"a":{}}}`` (object) or
    ``[{"a":[]}]`` (alternate). With a ``leaf``, the innermost container holds it:
    ``[[[leaf]]]``, ``{"a":{"a":{"a":leaf}}}``. Depth 0 is the leaf alone.

    Raises:
        ValueError: if depth is negative, or 0 without a leaf.
    """
    if depth < 0 or (depth == 0 and leaf is None):
        raise ValueError(f"depth must be positive (or 0 with a leaf): {depth}")
    if depth == 0:
        return any_value(leaf)
    array_open = b"\x75\x01"
    object_open = b"\x76\x01" + var_string(key)
    inner = b"" if leaf is None else any_value(leaf)
    if container == "array":
        opens = array_open * (depth - 1)
        last = b"\x75\x01" + inner if leaf is not None else b"\x75\x00"
    elif container == "object":
        opens = object_open * (depth - 1)
        last = object_open + inner if leaf is not None else b"\x76\x00"
    else:
        pair = array_open + object_open
        opens = pair * ((depth - 1) // 2) + (array_open if (depth - 1) % 2 else b"")
        last_is_array = depth % 2 == 1
        if leaf is None:
            last = b"\x75\x00" if last_is_array else b"\x76\x00"
        else:
            last = (array_open if last_is_array else object_open) + inner
    return opens + last


def nested_any_array(depth: int, leaf: AnyValue | None = None) -> bytes:
    """Any bytes of ``[[[...]]]`` with ``depth`` arrays (see :func:`nested_any`)."""
    return nested_any(depth, container="array", leaf=leaf)


def nested_any_object(depth: int, leaf: AnyValue | None = None) -> bytes:
    """Any bytes of ``{"a":{"a":...{}}}`` with ``depth`` objects."""
    return nested_any(depth, container="object", leaf=leaf)


def nested_json(depth: int, *, container: Container = "array") -> str:
    """JSON text of ``depth`` nested containers: ``[[[]]]`` or ``{"a":{"a":{}}}``.

    Raises:
        ValueError: if depth is below 1.
    """
    if depth < 1:
        raise ValueError(f"depth must be positive: {depth}")
    if container == "array":
        return "[" * depth + "]" * depth
    if container == "object":
        return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)
    # Alternate: arrays at even levels, objects at odd ones, the innermost empty.
    outer = depth - 1
    opens = '[{"a":' * (outer // 2) + ("[" if outer % 2 else "")
    inner = "[]" if outer % 2 == 0 else "{}"
    closes = ("]" if outer % 2 else "") + "}]" * (outer // 2)
    return opens + inner + closes


# --- contents -------------------------------------------------------------------


class TypeRef(IntEnum):
    """Type refs of a ContentType (Yjs ``YArrayRefID`` ... ``YXmlTextRefID``)."""

    ARRAY = 0
    MAP = 1
    TEXT = 2
    XML_ELEMENT = 3  # followed by the node name
    XML_FRAGMENT = 4
    XML_HOOK = 5  # followed by the hook name in Yjs; yrs reads no name
    XML_TEXT = 6


@dataclass(frozen=True, slots=True)
class StringContent:
    """ContentString (ref 4): one varString; as long as its UTF-16 units."""

    REF: ClassVar[int] = 4
    text: str

    @property
    def length(self) -> int:
        return utf16_length(self.text)

    def put(self, buf: bytearray) -> None:
        _put_string(buf, self.text)


@dataclass(frozen=True, slots=True)
class AnyContent:
    """ContentAny (ref 8): varUint count, then one lib0 Any per element."""

    REF: ClassVar[int] = 8
    values: Sequence[AnyValue]

    @property
    def length(self) -> int:
        return len(self.values)

    def put(self, buf: bytearray) -> None:
        _put_uint(buf, len(self.values))
        for value in self.values:
            _put_any(buf, value)


@dataclass(frozen=True, slots=True)
class JSONContent:
    """ContentJSON (ref 2): varUint count, then one JSON text per element.

    The texts are written as given, unchecked (Yjs writes ``"undefined"`` for an
    undefined element).
    """

    REF: ClassVar[int] = 2
    texts: Sequence[str]

    @property
    def length(self) -> int:
        return len(self.texts)

    def put(self, buf: bytearray) -> None:
        _put_uint(buf, len(self.texts))
        for text in self.texts:
            _put_string(buf, text)


@dataclass(frozen=True, slots=True)
class EmbedContent:
    """ContentEmbed (ref 5): one JSON text; length 1."""

    REF: ClassVar[int] = 5
    json: str

    @property
    def length(self) -> int:
        return 1

    def put(self, buf: bytearray) -> None:
        _put_string(buf, self.json)


@dataclass(frozen=True, slots=True)
class FormatContent:
    """ContentFormat (ref 6): key string, then the value as JSON text; length 1.

    A formatting mark in a text; ``"null"`` as the value ends a formatted span.
    """

    REF: ClassVar[int] = 6
    key: str
    json: str

    @property
    def length(self) -> int:
        return 1

    def put(self, buf: bytearray) -> None:
        _put_string(buf, self.key)
        _put_string(buf, self.json)


@dataclass(frozen=True, slots=True)
class BinaryContent:
    """ContentBinary (ref 3): one varUint8Array; length 1."""

    REF: ClassVar[int] = 3
    data: bytes

    @property
    def length(self) -> int:
        return 1

    def put(self, buf: bytearray) -> None:
        _put_bytes(buf, self.data)


@dataclass(frozen=True, slots=True)
class DeletedContent:
    """ContentDeleted (ref 1): varUint length; stands for that many deleted units."""

    REF: ClassVar[int] = 1
    count: int

    @property
    def length(self) -> int:
        return self.count

    def put(self, buf: bytearray) -> None:
        _put_uint(buf, self.count)


@dataclass(frozen=True, slots=True)
class TypeContent:
    """ContentType (ref 7): varUint type ref, then a name for 3 and 5; length 1.

    ``name`` is written whenever it is given, so ``TypeContent(TypeRef.XML_HOOK)``
    is the hook as yrs writes it and ``TypeContent(TypeRef.XML_HOOK, "h")`` the
    hook as Yjs writes it. Any int is accepted as ``type_ref`` (yrs also knows 7
    weak link, 9 sub-document and 15 undefined).
    """

    REF: ClassVar[int] = 7
    type_ref: int
    name: str | None = None

    @property
    def length(self) -> int:
        return 1

    def put(self, buf: bytearray) -> None:
        _put_uint(buf, self.type_ref)
        if self.name is not None:
            _put_string(buf, self.name)


@dataclass(frozen=True, slots=True)
class DocContent:
    """ContentDoc (ref 9): guid string, then the options as one Any; length 1."""

    REF: ClassVar[int] = 9
    guid: str
    options: AnyValue = None

    @property
    def length(self) -> int:
        return 1

    def put(self, buf: bytearray) -> None:
        _put_string(buf, self.guid)
        _put_any(buf, {} if self.options is None else self.options)


Content: TypeAlias = (
    StringContent
    | AnyContent
    | JSONContent
    | EmbedContent
    | FormatContent
    | BinaryContent
    | DeletedContent
    | TypeContent
    | DocContent
)


# --- structs --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ID:
    """A struct id: (client, clock)."""

    client: int
    clock: int


@dataclass(frozen=True, slots=True)
class Item:
    """An item: content plus where it goes.

    Args:
        content: one of the contents above.
        origin: id of the item originally to the left (info flag 0x80).
        right_origin: id of the item originally to the right (flag 0x40).
        parent: root type name (str) or id of the parent type's item. Written only
            when there is neither origin nor right origin.
        parent_sub: map key (flag 0x20); its string is written only with the
            parent, as Yjs does.
    """

    content: Content
    origin: ID | None = None
    right_origin: ID | None = None
    parent: str | ID | None = None
    parent_sub: str | None = None

    @property
    def length(self) -> int:
        return self.content.length

    def put(self, buf: bytearray) -> None:
        info = self.content.REF & 0x1F
        if self.origin is not None:
            info |= 0x80
        if self.right_origin is not None:
            info |= 0x40
        if self.parent_sub is not None:
            info |= 0x20
        buf.append(info)
        if self.origin is not None:
            _put_id(buf, self.origin)
        if self.right_origin is not None:
            _put_id(buf, self.right_origin)
        if self.origin is None and self.right_origin is None:
            if isinstance(self.parent, str):
                buf.append(1)
                _put_string(buf, self.parent)
            elif isinstance(self.parent, ID):
                buf.append(0)
                _put_id(buf, self.parent)
            else:
                raise ValueError("an item without origins needs a parent")
            if self.parent_sub is not None:
                _put_string(buf, self.parent_sub)
        self.content.put(buf)


@dataclass(frozen=True, slots=True)
class GC:
    """A garbage-collected range (info 0, varUint length)."""

    length: int

    def put(self, buf: bytearray) -> None:
        buf.append(_GC_REF)
        _put_uint(buf, self.length)


@dataclass(frozen=True, slots=True)
class Skip:
    """A hole in a client's clocks (info 10, varUint length): nothing to apply."""

    length: int

    def put(self, buf: bytearray) -> None:
        buf.append(_SKIP_REF)
        _put_uint(buf, self.length)


Struct: TypeAlias = Item | GC | Skip


def _put_id(buf: bytearray, id_: ID) -> None:
    _put_uint(buf, id_.client)
    _put_uint(buf, id_.clock)


# --- updates --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientStructs:
    """The structs of one client, at consecutive clocks from ``clock``."""

    client: int
    clock: int
    structs: Sequence[Struct]

    def ids(self) -> Iterator[ID]:
        """The id of each struct, in order."""
        clock = self.clock
        for s in self.structs:
            yield ID(self.client, clock)
            clock += s.length

    @property
    def end(self) -> int:
        """The clock after the last struct."""
        return self.clock + sum(s.length for s in self.structs)


@dataclass(frozen=True, slots=True)
class ClientDeletes:
    """Deleted ranges of one client: (clock, length) pairs, written as given."""

    client: int
    ranges: Sequence[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class Update:
    """A whole update v1: struct blocks, then the delete set, in the order given.

    Yjs writes blocks by descending client and ranges sorted and merged; decoders
    must not rely on that, so nothing here sorts, merges or checks.
    """

    structs: Sequence[ClientStructs] = ()
    deletes: Sequence[ClientDeletes] = ()

    def encode(self) -> bytes:
        buf = bytearray()
        _put_uint(buf, len(self.structs))
        for block in self.structs:
            _put_uint(buf, len(block.structs))
            _put_uint(buf, block.client)
            _put_uint(buf, block.clock)
            for s in block.structs:
                s.put(buf)
        _put_uint(buf, len(self.deletes))
        for d in self.deletes:
            _put_uint(buf, d.client)
            _put_uint(buf, len(d.ranges))
            for clock, length in d.ranges:
                _put_uint(buf, clock)
                _put_uint(buf, length)
        return bytes(buf)

    def __bytes__(self) -> bytes:
        return self.encode()

    def end_clocks(self) -> dict[int, int]:
        """Client -> clock after its last struct: the state vector it would give."""
        ends: dict[int, int] = {}
        for block in self.structs:
            ends[block.client] = max(ends.get(block.client, 0), block.end)
        return ends


def read_state_vector(data: bytes) -> dict[int, int]:
    """Decode a state vector (varUint count, then client/clock varUint pairs).

    Raises:
        ValueError: on truncated input.
    """
    pos = 0

    def uint() -> int:
        nonlocal pos
        n = shift = 0
        while True:
            if pos >= len(data):
                raise ValueError("truncated state vector")
            byte = data[pos]
            pos += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return n

    count = uint()
    return {uint(): uint() for _ in range(count)}


# --- ready-made updates ---------------------------------------------------------


def _one_client(client: int, structs: Sequence[Struct], clock: int = 0) -> bytes:
    return Update([ClientStructs(client, clock, structs)]).encode()


def nested_maps_update(
    depth: int, client: int = 1, *, root: str = "m", key: str = "k"
) -> bytes:
    """A Y.Map nested ``depth`` levels under the root map ``root``, under ``key``.

    One struct per level: level 0 is ``root[key]``, level i is the map at key
    ``key`` of level i-1 (parent = the id of level i-1).
    """
    structs = [Item(TypeContent(TypeRef.MAP), parent=root, parent_sub=key)]
    structs += [
        Item(TypeContent(TypeRef.MAP), parent=ID(client, i - 1), parent_sub=key)
        for i in range(1, depth)
    ]
    return _one_client(client, structs)


def nested_arrays_update(depth: int, client: int = 1, *, root: str = "a") -> bytes:
    """A Y.Array nested ``depth`` levels in the root array ``root``, one per level."""
    structs = [Item(TypeContent(TypeRef.ARRAY), parent=root)]
    structs += [
        Item(TypeContent(TypeRef.ARRAY), parent=ID(client, i - 1))
        for i in range(1, depth)
    ]
    return _one_client(client, structs)


def deep_any_update(
    depth: int,
    client: int = 1,
    *,
    root: str = "a",
    container: Container = "array",
) -> bytes:
    """One item in the root array ``root``: a ContentAny nested ``depth`` deep."""
    value = RawAny(nested_any(depth, container=container))
    return _one_client(client, [Item(AnyContent([value]), parent=root)])


def deep_json_update(depth: int, client: int = 1, *, root: str = "a") -> bytes:
    """One item in the root array ``root``: a ContentJSON ``[[[...]]]``."""
    return _one_client(client, [Item(JSONContent([nested_json(depth)]), parent=root)])


def deep_embed_update(depth: int, client: int = 1, *, root: str = "t") -> bytes:
    """One embed in the root text ``root`` whose JSON is ``[[[...]]]``."""
    return _one_client(client, [Item(EmbedContent(nested_json(depth)), parent=root)])


def deep_format_update(depth: int, client: int = 1, *, root: str = "t") -> bytes:
    """One format mark in the root text ``root``, key "bold", value ``[[[...]]]``."""
    content = FormatContent("bold", nested_json(depth))
    return _one_client(client, [Item(content, parent=root)])


def text_of(n_chars: int, alphabet: str = "abcdefghijklmnopqrstuvwxyz") -> str:
    """``n_chars`` characters cycling through ``alphabet``."""
    reps = -(-n_chars // len(alphabet))
    return (alphabet * reps)[:n_chars]


def string_update(
    text: str, client: int = 1, *, root: str = "t", clock: int = 0
) -> bytes:
    """One string item holding ``text`` in the root text ``root``."""
    return _one_client(client, [Item(StringContent(text), parent=root)], clock)


def text_update(
    n_chars: int,
    client: int = 1,
    *,
    root: str = "t",
    clock: int = 0,
    alphabet: str = "abcdefghijklmnopqrstuvwxyz",
) -> bytes:
    """A root text ``root`` holding :func:`text_of` ``(n_chars, alphabet)``."""
    return string_update(text_of(n_chars, alphabet), client, root=root, clock=clock)


def formatted_text_update(
    text: str,
    client: int = 1,
    *,
    root: str = "t",
    key: str = "bold",
    json: str = "true",
) -> bytes:
    """``text`` formatted with ``key=json``, as Yjs writes it: mark, text, end mark."""
    n = utf16_length(text)
    structs: list[Struct] = [
        Item(FormatContent(key, json), parent=root),
        Item(StringContent(text), origin=ID(client, 0)),
        Item(FormatContent(key, "null"), origin=ID(client, n)),
    ]
    return _one_client(client, structs)


def item_chain_update(
    n: int,
    client: int = 1,
    *,
    kind: Literal["any", "string"] = "any",
    root: str | None = None,
) -> bytes:
    """``n`` one-element items, each after the previous (origin = previous id).

    What ``n`` keystrokes look like before Yjs merges them into one struct. yrs
    (pycrdt 0.14.13) squashes such a chain within one transaction at a quadratic
    cost: 10,000 Any items (80 KB) take 2.3 GB; 100,000 characters "x" 5.8 s
    and 5 GB.
    """
    first: Content = AnyContent([0]) if kind == "any" else StringContent("x")
    structs: list[Struct] = [
        Item(first, parent=root or ("a" if kind == "any" else "t"))
    ]
    for i in range(1, n):
        content: Content = AnyContent([i]) if kind == "any" else StringContent("x")
        structs.append(Item(content, origin=ID(client, i - 1)))
    return _one_client(client, structs)


def resent_clocks_update(
    depth: int = 300, resend_at: int = 200, origin_clock: int = 193, client: int = 1
) -> bytes:
    """Maps nested ``depth`` deep, then the same client again from ``resend_at``.

    The second block re-sends clocks already sent (Yjs never writes that) with
    one Any item whose origin is the map at ``origin_clock``, as a map write.
    The defaults corrupt the heap of pycrdt 0.14.13 (yrs 0.28): SIGSEGV or a
    glibc abort.
    """
    chain = [Item(TypeContent(TypeRef.MAP), parent="r", parent_sub="k")]
    chain += [
        Item(TypeContent(TypeRef.MAP), parent=ID(client, i - 1), parent_sub="k")
        for i in range(1, depth)
    ]
    again = Item(AnyContent([0]), origin=ID(client, origin_clock), parent_sub="k")
    blocks = [
        ClientStructs(client, 0, chain),
        ClientStructs(client, resend_at, [again]),
    ]
    return Update(blocks).encode()


def delete_update(ranges: Mapping[int, Sequence[tuple[int, int]]]) -> bytes:
    """An update with no structs and the given delete set (client -> ranges)."""
    return Update(deletes=[ClientDeletes(c, r) for c, r in ranges.items()]).encode()


def delete_every_other(client: int, n: int, start: int = 0) -> bytes:
    """A delete set only: ``n`` ranges ``(start + 2i, 1)`` of ``client``."""
    return delete_update({client: [(start + 2 * i, 1) for i in range(n)]})


def many_clients_update(
    n_clients: int, *, first_client: int = 1, root: str = "a"
) -> bytes:
    """``n_clients`` blocks, each one Any item (its index) in root array ``root``."""
    blocks = [
        ClientStructs(first_client + i, 0, [Item(AnyContent([i]), parent=root)])
        for i in range(n_clients)
    ]
    return Update(blocks).encode()


def huge_clock_update(
    client: int = 1, clock: int = MAX_SAFE_INTEGER - 10, *, root: str = "t"
) -> bytes:
    """One one-character string item at a far clock (everything before is missing)."""
    return string_update("x", client, root=root, clock=clock)


def dangling_origin_update(client: int = 1, origin: ID = ID(987654321, 1000)) -> bytes:
    """A string item whose origin (its only placement) points at nothing."""
    return _one_client(client, [Item(StringContent("x"), origin=origin)])


def missing_parent_update(
    client: int = 1, parent: ID = ID(987654321, 1000), *, parent_sub: str | None = None
) -> bytes:
    """An item whose parent is an id nobody has."""
    item = Item(AnyContent([1]), parent=parent, parent_sub=parent_sub)
    return _one_client(client, [item])


# --- Hypothesis strategies ------------------------------------------------------

_EXTREME_CLIENTS = (0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, MAX_SAFE_INTEGER)
_EXTREME_CLOCKS = (0, 1, 2**31 - 1, 2**32 - 2, 2**32, MAX_SAFE_INTEGER - 10)
_ALPHABETS = {
    "ascii": "abcdefghijklmnopqrstuvwxyz",
    "latin": "\u00e9\u00e8\u00fc\u00df\u00f8",
    "cjk": "\u4e2d\u6587\u5b57\u7b26",
    "emoji": "\U0001f600\U0001f4a9\U0001f9ea",  # outside the BMP: 2 units each
    "combining": "e\u0301a\u0308\u200d",
    "controls": "\x00\x01\x7f\u2028\ufeff",
    "rtl": "\u05e9\u05dc\u05d5\u05dd\u0627",
}
_ROOTS = ("a", "m", "t", "x", "", "\U0001f600", "root/with/slashes")
_PART_KINDS = (
    "text",
    "any",
    "deep_any",
    "json",
    "types",
    "map_sets",
    "any_chain",
    "binary",
    "deleted",
    "gc_skip",
    "doc",
)
_EXTREME_LENGTHS = (0, 1, 2, 7, 2**31 - 1, 2**32 - 1, 2**32, MAX_SAFE_INTEGER)
_CONTAINERS: tuple[Container, ...] = ("array", "object", "alternate")
_STRIDES = (0, 1, 2, 3, 2**32)  # 0 and strides below the length overlap


def _scaled(max_value: int, min_value: int = 0) -> st.SearchStrategy[int]:
    """Integers in [min, max], as likely small as huge; shrinks towards small."""
    if max_value <= min_value:
        return st.just(max(min_value, max_value))
    branches = [st.integers(min_value, min(min_value + 8, max_value))]
    for upper in (64, 4096):
        if upper < max_value:
            branches.append(st.integers(min_value, upper))
    branches += [st.integers(min_value, max_value), st.just(max_value)]
    return st.one_of(branches)


def lengths(max_length: int, min_length: int = 0) -> st.SearchStrategy[int]:
    """Lengths of GC, Skip, Deleted and delete ranges, with the extremes often."""
    extremes = [n for n in _EXTREME_LENGTHS if min_length <= n <= max_length]
    scaled = _scaled(max_length, min_length)
    return st.one_of(scaled, st.sampled_from(extremes)) if extremes else scaled


def client_ids(max_client: int = MAX_SAFE_INTEGER) -> st.SearchStrategy[int]:
    """Client ids from 0 to ``max_client``, with the extremes often."""
    extremes = [c for c in _EXTREME_CLIENTS if c <= max_client]
    return st.one_of(st.sampled_from(extremes), st.integers(0, max_client))


def clocks(max_clock: int = MAX_SAFE_INTEGER) -> st.SearchStrategy[int]:
    """First clocks of a block: mostly 0, sometimes small gaps or huge values."""
    extremes = [c for c in _EXTREME_CLOCKS if c <= max_clock]
    return st.one_of(
        st.sampled_from(extremes),
        st.integers(0, min(100, max_clock)),
        _scaled(max_clock),
    )


_LEAVES: st.SearchStrategy[AnyValue] = st.one_of(
    st.none(),
    st.just(UNDEFINED),
    st.booleans(),
    st.sampled_from([0, -1, _BITS31, -_BITS31, _BITS31 + 1, 2**53, -(2**63)]),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.builds(BigInt, st.integers(-(2**63), 2**63 - 1)),
    st.text(max_size=20),
    st.binary(max_size=20),
)


def any_values(max_leaves: int = 20) -> st.SearchStrategy[AnyValue]:
    """Small lib0 Any values of every tag (deep ones come from :func:`nested_any`)."""
    return st.recursive(
        _LEAVES,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


class FuzzUpdate(bytes):
    """The bytes of a drawn update, with a short ``repr`` saying how it was built.

    A falsifying example then prints as its recipe, not as megabytes.
    """

    recipe: tuple[str, ...]

    def __new__(cls, data: bytes, recipe: Iterable[str]) -> FuzzUpdate:
        self = super().__new__(cls, data)
        self.recipe = tuple(recipe)
        return self

    def __repr__(self) -> str:
        return f"<FuzzUpdate {len(self)} bytes: {'; '.join(self.recipe)}>"


@dataclass(slots=True)
class _Limits:
    max_depth: int
    max_structs: int
    max_string: int
    max_key: int
    max_client: int
    max_clock: int
    max_length: int
    empty_contents: bool
    portable: bool


class _Block:
    """One client's structs being written straight to bytes, within a budget."""

    def __init__(self, client: int, clock: int) -> None:
        self.client = client
        self.clock = clock
        self.next_clock = clock
        self.count = 0
        self.body = bytearray()

    def try_put(self, s: Struct, room: int) -> bool:
        """Append ``s`` if the block stays within ``room`` bytes; say whether."""
        mark = len(self.body)
        s.put(self.body)
        if len(self.body) > room:
            del self.body[mark:]
            return False
        self.count += 1
        self.next_clock += s.length
        return True

    def header(self) -> bytes:
        return var_uint(self.count) + var_uint(self.client) + var_uint(self.clock)


def _last(block: _Block) -> ID:
    """The id of the block's last clock so far (clamped for empty structs)."""
    return ID(block.client, max(block.next_clock - 1, 0))


class _Drawer:
    """Expands a few drawn numbers into many structs and ranges, within a budget."""

    def __init__(self, draw: st.DrawFn, limits: _Limits, budget: int) -> None:
        self.draw = draw
        self.lim = limits
        self.budget = budget
        self.used = 0
        self.ids: list[ID] = []  # ids that exist in this update
        self.types: list[ID] = []  # ids of type items: parents that exist
        self.recipe: list[str] = []
        self.placed = ""  # how the last part placed its first item

    # where an item goes
    def _nowhere(self) -> ID:
        return ID(
            self.draw(client_ids(self.lim.max_client)),
            self.draw(clocks(self.lim.max_clock)),
        )

    def _root(self) -> str:
        if self.draw(st.integers(0, 5)) == 0:
            return "r" * self.draw(_scaled(self.lim.max_key, 1))
        return self.draw(st.sampled_from(_ROOTS))

    def _place(self, content: Content, key: str | None = None) -> Item:
        """Put ``content`` under a root, a type of this update, after an existing
        item, or under or after an id that exists nowhere."""
        mode = self.draw(st.sampled_from(["root", "type", "origin", "nowhere", "both"]))
        if (mode == "type" and not self.types) or (mode == "origin" and not self.ids):
            mode = "root"
        self.placed = mode
        if mode == "type":
            parent = self.draw(st.sampled_from(self.types))
            return Item(content, parent=parent, parent_sub=key)
        if mode == "origin":
            origin = self.draw(st.sampled_from(self.ids))
            return Item(content, origin=origin, parent_sub=key)
        if mode == "nowhere":
            if self.draw(st.booleans()):
                return Item(content, parent=self._nowhere(), parent_sub=key)
            return Item(content, origin=self._nowhere(), parent_sub=key)
        if mode == "both":
            return Item(content, origin=self._nowhere(), right_origin=self._nowhere())
        root = self._root()
        self.placed = f"root {root[:20]!r}" + ("..." if len(root) > 20 else "")
        return Item(content, parent=root, parent_sub=key)

    def _key(self) -> str | None:
        choice = self.draw(st.integers(0, 3))
        if choice == 0:
            return None
        if choice == 3:
            return "k" * self.draw(_scaled(self.lim.max_key))
        return self.draw(st.sampled_from(["k", "", "\U0001f600", "key with space"]))

    def put(self, block: _Block, s: Struct) -> bool:
        room = self.budget - self.used
        before = len(block.body)
        if not block.try_put(s, before + room):
            return False
        self.used += len(block.body) - before
        if len(self.ids) < 256:  # enough targets; sampling a huge list is slow
            self.ids.append(_last(block))
        return True

    # parts: each writes at least one struct unless the budget is spent
    def part(self, block: _Block) -> None:
        kind = self.draw(st.sampled_from(_PART_KINDS))
        self.placed = ""
        getattr(self, "_part_" + kind)(block)
        if self.placed:
            self.recipe[-1] += f" at {self.placed}"

    def _part_text(self, block: _Block) -> None:
        n = self.draw(_scaled(self.lim.max_structs, 1))
        size = self.draw(
            _scaled(self.lim.max_string, 0 if self.lim.empty_contents else 1)
        )
        name = self.draw(st.sampled_from(sorted(_ALPHABETS)))
        text = text_of(size, _ALPHABETS[name]) if size else ""
        first = self._place(StringContent(text))
        self.recipe.append(f"text({n} x {size} {name})")
        if not self.put(block, first):
            return
        for _ in range(n - 1):  # typing: each run's origin is the previous run
            s = Item(StringContent(text), origin=_last(block))
            if not self.put(block, s):
                return

    def _part_any(self, block: _Block) -> None:
        lo = 0 if self.lim.empty_contents else 1
        values = self.draw(st.lists(any_values(), min_size=lo, max_size=6))
        self.recipe.append(f"any({len(values)} values)")
        self.put(block, self._place(AnyContent(values), self._key()))

    def _part_deep_any(self, block: _Block) -> None:
        depth = self.draw(_scaled(self.lim.max_depth, 1))
        container = self.draw(st.sampled_from(_CONTAINERS))
        room = max(self.budget - self.used - 64, 0)
        depth = min(depth, room // 4) or 1
        where = self.draw(st.sampled_from(["any", "doc", "twice"]))
        raw = RawAny(nested_any(depth, container=container))
        self.recipe.append(f"deep_any({depth} {container} in {where})")
        if where == "doc":
            content: Content = DocContent("guid", {"meta": raw})
        elif where == "twice":
            half = RawAny(nested_any(max(depth // 2, 1), container=container))
            content = AnyContent([half, half])
        else:
            content = AnyContent([raw])
        self.put(block, self._place(content, self._key()))

    def _part_json(self, block: _Block) -> None:
        depth = self.draw(_scaled(self.lim.max_depth, 1))
        depth = min(depth, max(self.budget - self.used - 64, 0) // 8) or 1
        container = self.draw(st.sampled_from(_CONTAINERS))
        text = nested_json(depth, container=container)
        wheres = ["embed", "format"]
        if not self.lim.portable:
            wheres += ["json", "undefined"]
        where = self.draw(st.sampled_from(wheres))
        self.recipe.append(f"json({depth} {container} in {where})")
        content: Content
        if where == "embed":
            content = EmbedContent(text)
        elif where == "format":
            content = FormatContent(self._key() or "bold", text)
        elif where == "undefined":
            content = JSONContent(["undefined", "null", text])
        else:
            content = JSONContent([text])
        self.put(block, self._place(content, self._key()))

    def _part_types(self, block: _Block) -> None:
        depth = self.draw(_scaled(min(self.lim.max_depth, self.lim.max_structs), 1))
        ref = self.draw(
            st.sampled_from([r for r in range(7) if r != 5 or not self.lim.portable])
        )
        name = (
            self.draw(st.sampled_from(["div", "", "x" * 300]))
            if ref in (3, 5)
            else None
        )
        key = self._key()
        self.recipe.append(f"types({depth} x ref {ref}, key {len(key or '')})")
        item = self._place(TypeContent(ref, name), key)
        if not self.put(block, item):
            return
        self.types.append(_last(block))
        for _ in range(depth - 1):
            parent = _last(block)
            item = Item(TypeContent(ref, name), parent=parent, parent_sub=key)
            if not self.put(block, item):
                break
        self.types.append(_last(block))

    def _part_map_sets(self, block: _Block) -> None:
        # Many writes of one key, each overwriting the previous: a long conflict
        # chain with the parentSub flag set but (having an origin) no key written.
        n = self.draw(_scaled(self.lim.max_structs, 1))
        key = self._key() or "k"
        self.recipe.append(f"map_sets({n} on key {len(key)})")
        if not self.put(block, self._place(AnyContent([0]), key)):
            return
        for i in range(1, n):
            prev = _last(block)
            if not self.put(block, Item(AnyContent([i]), origin=prev, parent_sub=key)):
                return

    def _part_any_chain(self, block: _Block) -> None:
        # One-element Any items appended one after another, as unmerged typing:
        # yrs squashes them within one transaction at a quadratic cost.
        n = self.draw(_scaled(self.lim.max_structs, 1))
        self.recipe.append(f"any_chain({n})")
        if not self.put(block, self._place(AnyContent([0]))):
            return
        for i in range(1, n):
            if not self.put(block, Item(AnyContent([i]), origin=_last(block))):
                return

    def _part_binary(self, block: _Block) -> None:
        size = self.draw(_scaled(self.lim.max_string))
        size = min(size, max(self.budget - self.used - 64, 0))
        self.recipe.append(f"binary({size})")
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        self.put(block, self._place(BinaryContent(data), self._key()))

    def _part_deleted(self, block: _Block) -> None:
        lo = 0 if self.lim.empty_contents else 1
        count = self.draw(lengths(self.lim.max_length, lo))
        self.recipe.append(f"deleted({count})")
        self.put(block, self._place(DeletedContent(count)))

    def _part_gc_skip(self, block: _Block) -> None:
        lo = 0 if self.lim.empty_contents else 1
        length = self.draw(lengths(self.lim.max_length, lo))
        s: Struct = GC(length) if self.draw(st.booleans()) else Skip(length)
        self.recipe.append(f"{type(s).__name__}({length})")
        self.put(block, s)

    def _part_doc(self, block: _Block) -> None:
        guid = self.draw(st.one_of(st.text(max_size=40), st.just("g" * 1000)))
        options: AnyValue
        if self.draw(st.booleans()):
            options = self.draw(any_values())
        else:  # the options yrs reads, with odd values
            options = {
                "gc": self.draw(st.booleans()),
                "autoLoad": self.draw(st.booleans()),
                "shouldLoad": self.draw(st.booleans()),
                "encoding": BigInt(self.draw(st.integers(-2, 3))),
                "collectionId": self.draw(st.text(max_size=10)),
            }
        self.recipe.append(f"doc(guid {len(guid)})")
        self.put(block, self._place(DocContent(guid, options), self._key()))

    # delete set
    def delete_ranges(self, client: int, max_ranges: int) -> bytes:
        """Draw a few range patterns for ``client``; return their encoded pairs."""
        body = bytearray()
        count = 0
        strides = [x for x in _STRIDES if x <= max(self.lim.max_length, 3)]
        for _ in range(self.draw(st.integers(1, 3))):
            n = self.draw(_scaled(max_ranges - count, 1)) if max_ranges > count else 0
            start = self.draw(clocks(self.lim.max_clock))
            stride = self.draw(
                st.one_of(st.sampled_from(strides), _scaled(self.lim.max_length))
            )
            length = self.draw(lengths(self.lim.max_length))
            self.recipe.append(f"{n} from {start} step {stride} len {length}")
            for i in range(n):
                mark = len(body)
                _put_uint(body, start + i * stride)
                _put_uint(body, length)
                if self.used + len(body) > self.budget:
                    del body[mark:]
                    break
                count += 1
        self.used += len(body)
        return var_uint(count) + bytes(body)


def _draw_blocks(
    draw: st.DrawFn, drawer: _Drawer, max_clients: int, repeat_clients: bool
) -> list[_Block]:
    """A few blocks of parts, then maybe many one-struct clients."""
    lim = drawer.lim
    blocks: list[_Block] = []
    used: set[int] = set()
    for _ in range(draw(st.integers(0, 6))):
        if repeat_clients and blocks and draw(st.integers(0, 3)) == 0:
            # The same client again, re-sending clocks it already sent.
            prev = blocks[draw(st.integers(0, len(blocks) - 1))]
            client = prev.client
            clock = draw(st.integers(prev.clock, max(prev.next_clock, prev.clock)))
        else:
            client = draw(client_ids(lim.max_client))
            while not repeat_clients and client in used:
                client = (client + 1) % (lim.max_client + 1)
            clock = draw(clocks(lim.max_clock))
        used.add(client)
        block = _Block(client, clock)
        drawer.recipe.append(f"client {client} @ {clock}:")
        drawer.used += 30  # the block header, at most
        for _ in range(draw(st.integers(1, 4))):
            drawer.part(block)
        blocks.append(block)
    many = draw(st.one_of(st.just(0), _scaled(max_clients)))
    if many:
        first = draw(client_ids(max(lim.max_client - many + 1, 0)))
        drawer.recipe.append(f"{many} clients from {first}")
        for i in range(many):
            if not repeat_clients and first + i in used:
                continue
            block = _Block(first + i, 0)
            drawer.used += 30
            if not drawer.put(block, Item(AnyContent([i]), parent="a")):
                break
            blocks.append(block)
    return blocks


@st.composite
def updates(
    draw: st.DrawFn,
    *,
    max_bytes: int = 4 * 1024 * 1024,
    max_depth: int = 100_000,
    max_structs: int = 100_000,
    max_clients: int = 1_000,
    max_ranges: int = 200_000,
    max_string: int = 1_000_000,
    max_key: int = 100_000,
    max_client: int = MAX_SAFE_INTEGER,
    max_clock: int = MAX_SAFE_INTEGER,
    max_length: int = MAX_SAFE_INTEGER,
    empty_contents: bool = False,
    portable: bool = False,
    repeat_clients: bool = True,
) -> FuzzUpdate:
    """Updates v1 valid in structure and extreme in content, at most ``max_bytes``.

    An update is a few client blocks, each made of parts (a text typed in runs, Any
    values, Any nested up to ``max_depth`` deep, deep JSON in ContentJSON, Embed or
    Format, chains of nested types, long chains of map overwrites or of array
    appends, binary, deleted and GC/Skip runs, sub-documents), optionally many
    one-struct clients, and a delete set of patterned ranges (overlapping,
    zero-length, huge). Items are put under roots (some with long or odd names),
    under types of the same update, after existing items, or under and after ids
    that exist nowhere. Client ids and clocks favour their extremes (0, 2**32,
    2**53 - 1).

    What this costs a pycrdt 0.14.13 (yrs 0.28) peer, measured: Any nested about
    26,000 deep overflows its stack (SIGSEGV); clocks that wrap 2**32 and lengths
    of 2**32 - 1 raise ``PanicException`` (a BaseException); a chain of 10,000
    one-element Any items (80 KB) takes 2.3 GB, one of 100,000 CJK characters
    (880 KB) 39 s and 15 GB.
    ``max_depth``, ``max_structs``, ``max_clock`` and ``max_length`` reach all of
    these by default; lower them to fuzz something else.

    Args:
        max_bytes: hard limit on ``len(update)``.
        max_depth: deepest nesting of Any, JSON and type chains.
        max_structs: most structs a single part writes.
        max_clients: most one-struct clients in the "many clients" section.
        max_ranges: most delete ranges per deleting client.
        max_string: longest string or binary content (chars or bytes).
        max_key: longest map key or root name.
        max_client: largest client id.
        max_clock: largest first clock or range start.
        max_length: largest GC, Skip, Deleted or delete-range length (and
            range stride).
        empty_contents: also draw zero-length contents and structs, which Yjs
            never writes.
        portable: draw only what Yjs and yrs read alike: no ContentJSON (yrs
            reads one string more than counted) and no XmlHook (Yjs writes its
            name, yrs reads none). Without it those parts misparse in yrs.
        repeat_clients: let a client have several blocks, some re-sending
            clocks it already sent (Yjs never does; yrs 0.28 can corrupt its
            heap on it). Without it every block has its own client.

    Returns:
        A :class:`FuzzUpdate`: the bytes, with a readable ``repr``.
    """
    limits = _Limits(
        max_depth,
        max_structs,
        max_string,
        max_key,
        max_client,
        max_clock,
        max_length,
        empty_contents,
        portable,
    )
    drawer = _Drawer(draw, limits, budget=max(max_bytes - 64, 0))
    blocks = _draw_blocks(draw, drawer, max_clients, repeat_clients)
    struct_clients = [b.client for b in blocks[:8]]
    deletes: list[bytes] = []
    for _ in range(draw(st.integers(0, 4))):
        reuse = draw(st.booleans())
        if struct_clients and reuse:
            client = draw(st.sampled_from(struct_clients))
        else:
            client = draw(client_ids(max_client))
        drawer.used += 20
        drawer.recipe.append(f"deletes of {client}:")
        deletes.append(var_uint(client) + drawer.delete_ranges(client, max_ranges))
    out = bytearray(var_uint(len(blocks)))
    for block in blocks:
        out += block.header()
        out += block.body
    out += var_uint(len(deletes))
    for d in deletes:
        out += d
    return FuzzUpdate(bytes(out), drawer.recipe)
