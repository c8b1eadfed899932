"""The raw-update builder of ``tests/yjs_updates.py`` against pycrdt (yrs).

pycrdt is the oracle: what the builder writes must apply, and the document must
then hold exactly what was encoded. A small scanner written here from the format
checks that every drawn update is well formed to its last byte. Drawn updates go
to pycrdt in a child process, since pycrdt can die of a stack overflow (SIGSEGV)
on deep content; in this process nesting stays at 1,000 or less.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText
from pycrdt import write_var_uint as pycrdt_var_uint

from tests.yjs_updates import (
    GC,
    ID,
    MAX_SAFE_INTEGER,
    UNDEFINED,
    AnyContent,
    AnyValue,
    BigInt,
    BinaryContent,
    ClientDeletes,
    ClientStructs,
    DeletedContent,
    DocContent,
    Item,
    JSONContent,
    RawAny,
    Skip,
    StringContent,
    Struct,
    TypeContent,
    TypeRef,
    Update,
    any_value,
    any_values,
    dangling_origin_update,
    deep_any_update,
    deep_embed_update,
    deep_format_update,
    deep_json_update,
    delete_every_other,
    delete_update,
    formatted_text_update,
    huge_clock_update,
    item_chain_update,
    many_clients_update,
    missing_parent_update,
    nested_any,
    nested_any_array,
    nested_arrays_update,
    nested_json,
    nested_maps_update,
    read_state_vector,
    string_update,
    text_of,
    text_update,
    updates,
    utf16_length,
    var_int,
    var_string,
    var_uint,
)

REPO = Path(__file__).resolve().parent.parent


def applied(*updates: bytes) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


def state(doc: Doc[Any]) -> dict[int, int]:
    return read_state_vector(doc.get_state())


def expected_py(value: AnyValue) -> Any:
    """What pycrdt gives back for an Any value: numbers are floats (but big BigInts)."""
    if value is None or value is UNDEFINED:
        return None
    if isinstance(value, bool | str | bytes):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, BigInt):  # unsafe integers stay ints
        return (
            value.value if abs(value.value) > MAX_SAFE_INTEGER else float(value.value)
        )
    if isinstance(value, list | tuple):
        return [expected_py(v) for v in value]
    if isinstance(value, dict):
        return {k: expected_py(v) for k, v in value.items()}
    raise TypeError(value)


# --- an independent reader of the format, for well-formedness -------------------


class Scan:
    """Walks an update v1 to its end without recursion; counts what it saw."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.structs = 0
        self.ranges = 0
        self.blocks = 0
        self.refs: set[int] = set()  # content refs seen
        self.type_refs: set[int] = set()

    def byte(self) -> int:
        b = self.data[self.pos]  # IndexError on truncation
        self.pos += 1
        return b

    def uint(self) -> int:
        n = shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return n

    def skip(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise IndexError("truncated")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def string(self) -> str:
        return self.skip(self.uint()).decode("utf-8")

    def any(self) -> None:
        todo = [("v", 1)]  # ("v", n): n values; ("e", n): n key/value entries
        while todo:
            kind, n = todo.pop()
            if n == 0:
                continue
            todo.append((kind, n - 1))
            if kind == "e":
                self.string()
            tag = self.byte()
            if tag == 125:
                while self.byte() & 0x80:
                    pass
            elif tag in (124, 123, 122):
                self.skip({124: 4, 123: 8, 122: 8}[tag])
            elif tag in (119, 116):
                self.skip(self.uint())
            elif tag == 118:
                todo.append(("e", self.uint()))
            elif tag == 117:
                todo.append(("v", self.uint()))
            elif tag not in (127, 126, 121, 120):
                raise ValueError(f"Any tag {tag}")

    def content(self, ref: int) -> None:
        if ref == 1:
            self.uint()
        elif ref == 2:
            for _ in range(self.uint()):
                self.string()
        elif ref == 3:
            self.skip(self.uint())
        elif ref in (4, 5):
            self.string()
        elif ref == 6:
            self.string()
            self.string()
        elif ref == 7:
            type_ref = self.uint()
            self.type_refs.add(type_ref)
            if type_ref in (3, 5):
                self.string()
        elif ref == 8:
            for _ in range(self.uint()):
                self.any()
        elif ref == 9:
            self.string()
            self.any()
        else:
            raise ValueError(f"content ref {ref}")

    def struct(self) -> None:
        info = self.byte()
        ref = info & 0x1F
        self.refs.add(ref)
        if ref in (0, 10):
            self.uint()
            return
        if info & 0x80:
            self.uint(), self.uint()
        if info & 0x40:
            self.uint(), self.uint()
        if info & 0xC0 == 0:
            if self.uint() == 1:
                self.string()
            else:
                self.uint(), self.uint()
            if info & 0x20:
                self.string()
        self.content(ref)

    def run(self) -> Scan:
        for _ in range(self.uint()):
            self.blocks += 1
            n = self.uint()
            self.uint(), self.uint()
            for _ in range(n):
                self.struct()
                self.structs += 1
        for _ in range(self.uint()):
            self.uint()
            for _ in range(self.uint()):
                self.uint(), self.uint()
                self.ranges += 1
        if self.pos != len(self.data):
            raise ValueError(f"{len(self.data) - self.pos} bytes after the update")
        return self


# --- lib0 primitives ------------------------------------------------------------


@given(st.integers(0, 2**64 - 1))
def test_var_uint_matches_pycrdt(n: int) -> None:
    """var_uint writes the same bytes as pycrdt's own varUint writer."""
    assert var_uint(n) == pycrdt_var_uint(n)


def test_var_uint_and_var_int_vectors() -> None:
    """Known lib0 encodings, including the sign bit and six-bit first byte of varInt."""
    assert var_uint(0) == b"\x00"
    assert var_uint(127) == b"\x7f"
    assert var_uint(128) == b"\x80\x01"
    assert var_uint(MAX_SAFE_INTEGER) == b"\xff" * 7 + b"\x0f"
    assert var_int(0) == b"\x00"
    assert var_int(63) == b"\x3f"
    assert var_int(64) == b"\x80\x01"
    assert var_int(-1) == b"\x41"
    assert var_int(-64) == b"\xc0\x01"
    assert var_int(0, negative_zero=True) == b"\x40"
    assert var_string("h\u00e9") == b"\x03h\xc3\xa9"
    with pytest.raises(ValueError):
        var_uint(-1)


def test_any_value_tags() -> None:
    """Each Any kind takes its lib0 tag, numbers as JavaScript numbers."""
    assert any_value(UNDEFINED) == b"\x7f"
    assert any_value(None) == b"\x7e"
    assert any_value(True) == b"\x78"
    assert any_value(False) == b"\x79"
    assert any_value(-3) == b"\x7d\x43"
    assert any_value(3.0) == b"\x7d\x03"  # an integral JS number
    assert any_value(2.5) == b"\x7c\x40\x20\x00\x00"  # float32 is exact
    assert any_value(0.1)[0] == 123  # needs float64
    assert any_value(float("nan"))[0] == 123
    assert any_value(2**40)[0] == 124  # beyond 31 bits: a float
    assert any_value(BigInt(-2)) == b"\x7a" + b"\xff" * 7 + b"\xfe"
    assert any_value("x") == b"\x77\x01x"
    assert any_value({"a": []}) == b"\x76\x01\x01a\x75\x00"
    assert any_value(b"\x00") == b"\x74\x01\x00"


@settings(max_examples=60, deadline=None)
@given(st.lists(any_values(), min_size=1, max_size=5))
def test_any_values_read_back_by_pycrdt(values: list[AnyValue]) -> None:
    """ContentAny of every Any kind applies and reads back value for value."""
    update = Update([ClientStructs(1, 0, [Item(AnyContent(values), parent="a")])])
    doc = applied(update.encode())
    got = doc.get("a", type=Array).to_py()
    assert _same(got, expected_py(values))
    assert state(doc) == {1: len(values)}


def _same(a: Any, b: Any) -> bool:
    """Equality that holds for NaN and for bytearray against bytes, nested."""
    return bool(_norm(a) == _norm(b))


def _norm(x: Any) -> Any:
    if isinstance(x, float) and x != x:
        return "NaN"
    if isinstance(x, bytearray):
        return bytes(x)
    if isinstance(x, list):
        return [_norm(v) for v in x]
    if isinstance(x, dict):
        return {k: _norm(v) for k, v in x.items()}
    return x


def test_nested_any_shapes() -> None:
    """nested_any builds the documented shapes, equal to any_value of the same."""
    assert nested_any_array(3) == any_value([[[]]])
    assert nested_any(3, container="object") == any_value({"a": {"a": {}}})
    assert nested_any(3, container="alternate") == any_value([{"a": []}])
    assert nested_any(4, container="alternate") == any_value([{"a": [{}]}])
    assert nested_any_array(2, leaf=7) == any_value([[7]])
    assert nested_any(0, leaf="x") == any_value("x")
    for depth in range(1, 8):
        for container in ("array", "object", "alternate"):
            assert json.loads(nested_json(depth, container=container)) is not None
    assert nested_json(4, container="alternate") == '[{"a":[{}]}]'


def test_million_deep_any_without_recursion() -> None:
    """Depth 1,000,000 builds in well under 5 s, with no RecursionError."""
    start = time.perf_counter()
    deep = {c: nested_any(1_000_000, container=c) for c in ("array", "object")}
    alternate = nested_any(1_000_000, container="alternate")
    value: list[Any] = []
    for _ in range(999_999):
        value = [value]
    assert any_value(value) == deep["array"]
    assert len(deep_any_update(1_000_000)) > 2_000_000
    assert len(nested_json(1_000_000, container="alternate")) == 3_999_996
    assert time.perf_counter() - start < 5
    item = Item(AnyContent([RawAny(alternate)]), parent="a")
    assert Scan(Update([ClientStructs(1, 0, [item])]).encode()).run().structs == 1


# --- what pycrdt makes of the builders ------------------------------------------


def test_text_update() -> None:
    """A text update gives a Text of exactly that content and clock."""
    doc = applied(text_update(100, 7))
    assert str(doc.get("t", type=Text)) == text_of(100)
    assert state(doc) == {7: 100}


@pytest.mark.parametrize(
    "text", ["\U0001f600", "a\U0001f600b", "\u4e2d\U0001f4a9\u00e9", "e\u0301"]
)
def test_string_clock_counts_utf16_units(text: str) -> None:
    """Characters outside the BMP take two clocks, as in Yjs."""
    doc = applied(string_update(text, 3))
    assert str(doc.get("t", type=Text)) == text
    assert state(doc) == {3: utf16_length(text)}


def test_lone_surrogate_is_written_as_replacement_character() -> None:
    """Like JavaScript's TextEncoder: U+FFFD, one clock."""
    doc = applied(string_update("a\ud800b"))
    assert str(doc.get("t", type=Text)) == "a\ufffdb"
    assert state(doc) == {1: 3}


def test_appending_runs_with_origins() -> None:
    """Structs at consecutive clocks chained by origin read as one text."""
    structs = [
        Item(StringContent("ab"), parent="t"),
        Item(StringContent("\U0001f600"), origin=ID(1, 1)),
        Item(StringContent("cd"), origin=ID(1, 3)),
    ]
    update = Update([ClientStructs(1, 0, structs)])
    doc = applied(update.encode())
    assert str(doc.get("t", type=Text)) == "ab\U0001f600cd"
    assert state(doc) == update.end_clocks() == {1: 6}


def test_nested_maps_update() -> None:
    """Depth 50 gives 50 maps, each under key "k" of the previous."""
    doc = applied(nested_maps_update(50, client=9))
    node = doc.get("m", type=Map)
    depth = 0
    while "k" in node:
        node = node["k"]
        assert isinstance(node, Map)
        depth += 1
    assert depth == 50
    assert state(doc) == {9: 50}


def test_nested_arrays_update() -> None:
    """Depth 50 gives 50 arrays, each the only element of the previous."""
    node = applied(nested_arrays_update(50)).get("a", type=Array)
    depth = 0
    while len(node):
        assert len(node) == 1
        node = node[0]
        assert isinstance(node, Array)
        depth += 1
    assert depth == 50


@pytest.mark.parametrize("depth", [1, 20, 1_000])
def test_deep_any_update(depth: int) -> None:
    """A ContentAny nested ``depth`` deep reads back as the same nested list."""
    got = applied(deep_any_update(depth)).get("a", type=Array)[0]
    for _ in range(depth - 1):
        assert isinstance(got, list) and len(got) == 1
        got = got[0]
    assert got == []


def test_deep_any_object_update() -> None:
    """The object flavour reads back as nested dicts."""
    got = applied(deep_any_update(20, container="object")).get("a", type=Array)[0]
    for _ in range(19):
        got = got["a"]
    assert got == {}


@pytest.mark.parametrize("kind", ["any", "string"])
def test_item_chain_update(kind: Literal["any", "string"]) -> None:
    """n one-element items, each after the previous, read back in order."""
    doc = applied(item_chain_update(300, 2, kind=kind))
    if kind == "any":
        assert doc.get("a", type=Array).to_py() == [float(i) for i in range(300)]
    else:
        assert str(doc.get("t", type=Text)) == "x" * 300
    assert state(doc) == {2: 300}


def test_delete_every_other_on_a_text() -> None:
    """Ranges (2i, 1) delete every other character."""
    doc = applied(text_update(20), delete_every_other(1, 10))
    assert str(doc.get("t", type=Text)) == text_of(20)[1::2]
    doc = applied(text_update(20), delete_every_other(1, 5, start=10))
    assert str(doc.get("t", type=Text)) == text_of(20)[:10] + text_of(20)[11::2]


def test_overlapping_and_repeated_delete_ranges() -> None:
    """Overlapping and repeated ranges delete their union, once."""
    ranges = [(2, 3), (3, 1), (2, 3), (0, 1)]
    doc = applied(text_update(8), delete_update({1: ranges}))
    assert str(doc.get("t", type=Text)) == "bfgh"


def test_formatted_text_and_embed_apply_to_a_text() -> None:
    """Format marks bracket a span; an embed is one element of the delta."""
    doc = applied(formatted_text_update("hey", 5))
    assert doc.get("t", type=Text).diff() == [("hey", {"bold": True})]
    deep = formatted_text_update("x", 5, key="data", json=nested_json(3))
    assert applied(deep).get("t", type=Text).diff() == [("x", {"data": [[[]]]})]
    doc = applied(deep_embed_update(3))
    assert doc.get("t", type=Text).diff() == [([[[]]], None)]
    assert state(doc) == {1: 1}


def test_format_and_embed_json_deeper_than_serde_allows_is_rejected() -> None:
    """yrs parses embed/format JSON with serde_json's 128-level limit: ValueError."""
    applied(deep_embed_update(127))
    for update in (deep_embed_update(128), deep_format_update(1_000)):
        with pytest.raises(ValueError, match="recursion limit"):
            applied(update)


class YrsJSON:
    """ContentJSON framed as yrs reads it: it reads one string more than counted."""

    REF: ClassVar[int] = 2

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.length = len(texts)

    def put(self, buf: bytearray) -> None:
        buf += var_uint(len(self.texts) - 1)
        for text in self.texts:
            buf += var_string(text)


def test_json_content_yrs_reads_one_string_too_many() -> None:
    """ContentJSON as Yjs writes it fails in yrs; yrs's off-by-one framing applies."""
    with pytest.raises(ValueError, match="end of buffer"):
        applied(deep_json_update(3))
    item = Item(YrsJSON(["[[[]]]", "1"]), parent="a")  # type: ignore[arg-type]
    doc = applied(Update([ClientStructs(1, 0, [item])]).encode())
    assert doc.get("a", type=Array).to_py() == ["[[[]]]", "1"]  # kept as text
    assert state(doc) == {1: 2}
    assert JSONContent(["1", "2"]).length == 2


@pytest.mark.parametrize("ref", [TypeRef.ARRAY, TypeRef.MAP, TypeRef.TEXT])
def test_type_content_in_a_map(ref: TypeRef) -> None:
    """A ContentType under a root map key becomes a shared type of that kind."""
    item = Item(TypeContent(ref), parent="m", parent_sub="k")
    doc = applied(Update([ClientStructs(1, 0, [item])]).encode())
    kind = {TypeRef.ARRAY: Array, TypeRef.MAP: Map, TypeRef.TEXT: Text}[ref]
    assert isinstance(doc.get("m", type=Map)["k"], kind)


def test_xml_types() -> None:
    """XmlElement (with its name), XmlText and attributes under an XmlFragment."""
    structs = [
        Item(TypeContent(TypeRef.XML_ELEMENT, "div"), parent="x"),
        Item(TypeContent(TypeRef.XML_TEXT), origin=ID(1, 0)),
        Item(StringContent("hi"), parent=ID(1, 1)),
        Item(StringContent("v"), parent=ID(1, 0), parent_sub="class"),
        Item(TypeContent(TypeRef.XML_FRAGMENT), parent="m", parent_sub="f"),
    ]
    doc = applied(Update([ClientStructs(1, 0, structs)]).encode())
    element, text = doc.get("x", type=XmlFragment).children
    assert isinstance(element, XmlElement) and element.tag == "div"
    assert element.attributes.get("class") == "v"
    assert isinstance(text, XmlText) and str(text) == "hi"
    assert isinstance(doc.get("m", type=Map)["f"], XmlFragment)


def test_xml_hook_name_is_not_read_by_yrs() -> None:
    """Yjs writes a hook's name; yrs does not read it, so the update misparses."""

    def hook(name: str | None) -> bytes:
        item = Item(TypeContent(TypeRef.XML_HOOK, name), parent="m", parent_sub="h")
        tail = Item(StringContent("z"), parent="t")
        return Update([ClientStructs(1, 0, [item, tail])]).encode()

    with pytest.raises(ValueError):
        applied(hook("a-hook-name"))
    assert str(applied(hook(None)).get("t", type=Text)) == "z"


def test_doc_binary_deleted_gc_skip() -> None:
    """Sub-document, binary, deleted, GC and Skip structs take their clocks."""
    structs: list[Struct] = [
        Item(DocContent("sub-guid", {"gc": False}), parent="a"),
        Item(BinaryContent(b"\x00\xff"), origin=ID(1, 0)),
        Item(DeletedContent(4), origin=ID(1, 1)),
        GC(3),
        Item(AnyContent([RawAny(any_value("raw"))]), origin=ID(1, 5)),
    ]
    update = Update([ClientStructs(1, 0, structs)])
    doc = applied(update.encode())
    array = doc.get("a", type=Array)
    assert array[0].guid == "sub-guid"
    assert bytes(array[1]) == b"\x00\xff"
    assert array[2] == "raw"
    assert state(doc) == update.end_clocks() == {1: 10}
    skipped = Update(
        [ClientStructs(2, 0, [Skip(5), Item(AnyContent([1]), parent="a")])]
    )
    assert Scan(skipped.encode()).run().structs == 2


def test_many_clients_update() -> None:
    """Every client's struct applies; the state vector lists them all."""
    doc = applied(many_clients_update(300, first_client=1_000))
    assert sorted(doc.get("a", type=Array).to_py()) == [float(i) for i in range(300)]
    assert state(doc) == {1_000 + i: 1 for i in range(300)}


def test_pending_and_unknown_references_do_not_apply() -> None:
    """A missing parent or origin leaves the update pending: nothing is visible."""
    for update in (dangling_origin_update(), missing_parent_update(parent_sub="k")):
        assert state(applied(update)) == {}


def test_huge_clock_update_bytes() -> None:
    """The far clock is written as the block's first clock."""
    data = huge_clock_update(4, MAX_SAFE_INTEGER - 10)
    assert data.startswith(b"\x01\x01\x04" + var_uint(MAX_SAFE_INTEGER - 10))
    assert Scan(data).run().structs == 1


def test_update_writes_the_documented_layout() -> None:
    """Header counts, ids, info flags, parent info and delete set, byte for byte."""
    item = Item(AnyContent([1]), parent="m", parent_sub="k")
    moved = Item(
        AnyContent([2]), origin=ID(5, 0), right_origin=ID(6, 1), parent_sub="k"
    )
    update = Update([ClientStructs(5, 0, [item, moved])], [ClientDeletes(5, [(0, 1)])])
    assert update.encode() == (
        b"\x01"  # one block
        b"\x02\x05\x00"  # two structs, client 5, clock 0
        b"\x28\x01\x01m\x01k\x01\x7d\x01"  # 0x20|8: root "m", key "k", [1]
        b"\xe8\x05\x00\x06\x01\x01\x7d\x02"  # 0x80|0x40|0x20|8: ids, no key, [2]
        b"\x01\x05\x01\x00\x01"  # delete set: client 5, one range (0, 1)
    )
    assert bytes(update) == update.encode()
    with pytest.raises(ValueError):
        Item(AnyContent([1])).put(bytearray())


# --- the strategies -------------------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(updates(max_bytes=256 * 1024))
def test_drawn_updates_are_well_formed_and_within_size(update: bytes) -> None:
    """Every drawn update parses to its last byte and respects max_bytes."""
    assert len(update) <= 256 * 1024
    Scan(update).run()
    assert repr(update).startswith("<FuzzUpdate")


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(updates(max_bytes=64 * 1024, portable=True))
def test_portable_updates_avoid_json_and_hooks(update: bytes) -> None:
    """portable=True draws no ContentJSON and no XmlHook, which yrs misreads."""
    scan = Scan(update).run()
    assert 2 not in scan.refs and TypeRef.XML_HOOK not in scan.type_refs


def test_strategy_reaches_its_extremes() -> None:
    """Across examples, the knobs' far ends are actually drawn."""
    seen = {"ranges": 0, "structs": 0, "size": 0, "blocks": 0}

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(updates(max_bytes=512 * 1024, max_ranges=20_000, max_structs=20_000))
    def record(update: bytes) -> None:
        scan = Scan(update).run()
        seen["ranges"] = max(seen["ranges"], scan.ranges)
        seen["structs"] = max(seen["structs"], scan.structs)
        seen["size"] = max(seen["size"], len(update))
        seen["blocks"] = max(seen["blocks"], scan.blocks)

    record()
    assert seen["size"] > 256 * 1024
    assert seen["ranges"] >= 10_000 or seen["structs"] >= 10_000
    assert seen["blocks"] > 6


# Parameters at which pycrdt neither crashes nor panics (4,000 examples clean):
# nesting far below its stack limit, clocks and lengths that cannot wrap yrs's
# u32 clocks, one block per client (re-sent clocks corrupt yrs's heap), chains
# short enough for yrs's quadratic squashing.
SMALL: dict[str, Any] = {
    "max_bytes": 64 * 1024,
    "max_depth": 1_000,
    "max_structs": 2_000,
    "max_clients": 50,
    "max_ranges": 2_000,
    "max_string": 4_000,
    "max_key": 1_000,
    "max_clock": 2**30,
    "max_length": 2**20,
    "repeat_clients": False,
}

CHILD = """
import json, sys
from hypothesis import HealthCheck, given, settings
from pycrdt import Doc
from tests.yjs_updates import updates

params = json.loads(sys.argv[1])
counts = {"applied": 0, "rejected": 0}

@settings(max_examples=int(sys.argv[2]), deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(updates(**params))
def apply(update):
    print(repr(update), flush=True)  # the last line names a crash's culprit
    try:
        Doc().apply_update(update)
    except (ValueError, RuntimeError):
        counts["rejected"] += 1
    except BaseException as exc:  # pyo3's PanicException is a BaseException
        raise AssertionError(f"{type(exc).__name__}: {exc}") from None
    else:
        counts["applied"] += 1

apply()
print(json.dumps(counts))
"""


def run_child(
    code: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_drawn_updates_apply_or_are_rejected_cleanly_by_pycrdt() -> None:
    """At small parameters pycrdt applies each or raises ValueError/RuntimeError."""
    proc = run_child(CHILD, json.dumps(SMALL), "150")
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    assert proc.returncode == 0, tail
    counts = json.loads(proc.stdout.splitlines()[-1])
    assert counts["applied"] > 0 and counts["rejected"] > 0, counts


HOSTILE = """
import sys
from pycrdt import Doc
import tests.yjs_updates as Y

wrap = [
    Y.Item(Y.DeletedContent(2**32 - 1), parent="t"),
    Y.Item(Y.StringContent("xy"), parent="t"),
]
cases = {
    "control": lambda: [Y.deep_any_update(1_000)],
    "clock wraps u32": lambda: [Y.text_update(3), Y.huge_clock_update(1, 2**32 - 2)],
    "length wraps u32": lambda: [Y.Update([Y.ClientStructs(1, 0, wrap)]).encode()],
    "resent clocks": lambda: [Y.resent_clocks_update()],
    "Any 100,000 deep": lambda: [Y.deep_any_update(100_000)],
}
try:
    # Heap corruption does not always crash at once: try a few fresh docs.
    for _ in range(5 if sys.argv[1] == "resent clocks" else 1):
        doc = Doc()
        for update in cases[sys.argv[1]]():
            doc.apply_update(update)
    print("applied")
except (ValueError, RuntimeError) as exc:
    print(type(exc).__name__)
except BaseException as exc:  # pyo3's PanicException is not an Exception
    print(type(exc).__name__)
"""

PANIC = "yrs 0.28 panics: pyo3's PanicException, which `except Exception` misses"


@pytest.mark.parametrize(
    "case",
    [
        "control",
        pytest.param(
            "clock wraps u32",
            marks=pytest.mark.xfail(strict=True, reason=PANIC + " (Option::unwrap)"),
        ),
        pytest.param(
            "length wraps u32",
            marks=pytest.mark.xfail(strict=True, reason=PANIC + " (divide by zero)"),
        ),
        pytest.param(
            "resent clocks",
            marks=pytest.mark.xfail(
                strict=True, reason="yrs 0.28 corrupts its heap: SIGSEGV or abort"
            ),
        ),
        pytest.param(
            "Any 100,000 deep",
            marks=pytest.mark.xfail(
                strict=True, reason="yrs decodes Any recursively: stack overflow"
            ),
        ),
    ],
)
def test_pycrdt_rejects_hostile_updates_cleanly(case: str) -> None:
    """Each applies or raises ValueError/RuntimeError in a child that lives on.

    The xfails are pycrdt 0.14.13's known failures; strict, so a pycrdt that
    fixes one makes this test say so.
    """
    proc = run_child(HOSTILE, case)
    assert proc.returncode == 0, f"child died: {proc.returncode}"
    assert proc.stdout.strip() in {"applied", "ValueError", "RuntimeError"}, proc.stdout
