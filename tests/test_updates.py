"""The update walker and splitter (ysyncd.updates), checked against pycrdt."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from ysyncd.errors import InvalidUpdate
from ysyncd.integrate import apply_update
from ysyncd.pieces import pieces
from ysyncd.protocol import decode_state_vector as clocks
from ysyncd.updates import Layout, Limits, TooNested, shape_of

LIMITS = Limits(max_depth=64)


def content(doc: Doc[Any]) -> dict[str, Any]:
    return {
        "text": str(doc.get("text", type=Text)),
        "map": doc.get("map", type=Map).to_py(),
        "array": doc.get("array", type=Array).to_py(),
    }


def edit(doc: Doc[Any], rng: random.Random) -> None:
    """One random edit of text, map or array (nested types included).

    Text stays ASCII here: pycrdt's text indexes and yrs's clocks count
    non-ASCII characters differently, and random deletions among them make
    pycrdt panic or leave empty items behind."""
    text = doc.get("text", type=Text)
    array = doc.get("array", type=Array)
    kind = rng.randrange(5)
    if kind == 0 and len(text) > 3:
        start = rng.randrange(len(text) - 2)
        del text[start : start + rng.randint(1, 2)]
    elif kind <= 2:
        text.insert(rng.randint(0, len(text)), rng.choice(["ab", "cde", "x", "z"]))
    elif kind == 3:
        doc.get("map", type=Map)[rng.choice("abc")] = rng.choice(
            [1, "v", Map({"k": Array([1, 2])}), [1, [2, {"x": None}]]]
        )
    else:
        array.insert(rng.randint(0, len(array)), rng.choice([Map({"n": 1}), "s", 2]))
        if len(array) > 4:
            array.pop()


def history(seed: int, clients: int, steps: int) -> tuple[Doc[Any], list[bytes]]:
    """Several clients editing one document, syncing as they go."""
    rng = random.Random(seed)
    docs: list[Doc[Any]] = [Doc(client_id=1000 + i) for i in range(clients)]
    updates = []
    for _ in range(steps):
        i = rng.randrange(clients)
        before = docs[i].get_state()
        edit(docs[i], rng)
        update = docs[i].get_update(before)
        updates.append(update)
        for j in range(clients):
            if j != i and rng.random() < 0.8:
                docs[j].apply_update(docs[i].get_update(docs[j].get_state()))
    for d in docs[1:]:
        docs[0].apply_update(d.get_update(docs[0].get_state()))
    return docs[0], updates


@settings(max_examples=60, deadline=None, database=None)
@given(
    seed=st.integers(0, 10_000),
    clients=st.integers(1, 4),
    steps=st.integers(1, 120),
    max_structs=st.integers(1, 8),
    max_ranges=st.integers(1, 5),
)
def test_pieces_in_order_make_the_same_document_with_nothing_pending(
    seed: int, clients: int, steps: int, max_structs: int, max_ranges: int
) -> None:
    """A multi-client document cut into pieces: each piece integrates fully
    (the state vector grows by exactly its structs) and the end result is the
    document itself."""
    doc, _ = history(seed, clients, steps)
    update = doc.get_update()
    layout = Layout()
    shape = shape_of(update, LIMITS, layout)
    assert {c: end for c, (_, end) in shape.clocks.items()} == clocks(doc.get_state())
    parts = pieces(
        update, shape, layout, max_structs=max_structs, max_ranges=max_ranges
    )
    rebuilt: Doc[Any] = Doc()
    expected: dict[int, int] = {}
    for part in parts:
        if not part:
            continue  # a pause point
        part_shape = shape_of(part, LIMITS)
        assert part_shape.structs <= max_structs
        assert part_shape.delete_ranges <= max_ranges
        rebuilt.apply_update(part)
        for client, (_, end) in part_shape.clocks.items():
            expected[client] = max(expected.get(client, 0), end)
        assert clocks(rebuilt.get_state()) == expected, "a piece went pending"
    # The same items (not the same bytes: integration order decides which
    # neighbours merge into one struct).
    assert content(rebuilt) == content(doc)
    assert clocks(rebuilt.get_state()) == clocks(doc.get_state())


@settings(max_examples=30, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 80))
def test_each_stored_update_walks_and_splits_onto_a_doc_that_has_the_rest(
    seed: int, steps: int
) -> None:
    """Every update of a history, split, applies onto the history before it."""
    _, updates = history(seed, 3, steps)
    whole: Doc[Any] = Doc()
    split: Doc[Any] = Doc()
    for update in updates:
        layout = Layout()
        shape = shape_of(update, LIMITS, layout)
        whole.apply_update(update)
        for part in pieces(update, shape, layout, max_structs=2, max_ranges=1):
            if part:
                split.apply_update(part)
        assert content(split) == content(whole)
    assert clocks(split.get_state()) == clocks(whole.get_state())


def nested_any_array(depth: int) -> bytes:
    """An update with one item in root array "a": an Any nested ``depth`` deep."""
    value = b"\x75\x01" * (depth - 1) + b"\x75\x00"  # [[...[]...]]
    item = b"\x08" + b"\x01\x01a" + b"\x01" + value  # ContentAny, root "a", 1 value
    return b"\x01\x01\x07\x00" + item + b"\x00"  # 1 client (7) at clock 0; no ds


def test_nested_any_values_are_measured_and_capped() -> None:
    """Depth 64 passes (and pycrdt agrees on the value); 65 is TooNested."""
    doc: Doc[Any] = Doc()
    doc.apply_update(nested_any_array(64))
    value = doc.get("a", type=Array).to_py()[0]
    for _ in range(63):
        value = value[0]
    assert value == []
    assert shape_of(nested_any_array(64), LIMITS).depth == 64
    with pytest.raises(TooNested):
        shape_of(nested_any_array(65), LIMITS)
    # Deep enough to crash pycrdt, walked without recursion.
    with pytest.raises(TooNested):
        shape_of(nested_any_array(1_000_000), LIMITS)


def test_json_embed_and_format_depth_is_measured() -> None:
    """JSON text nests too: arrays and objects count, strings do not."""
    doc: Doc[Any] = Doc()
    text = doc.get("t", type=Text)
    text.insert(0, "hi")
    deep = json.loads("[" * 30 + "]" * 30)
    text.format(0, 1, {"bold": deep})
    text.insert_embed(1, {"x": deep, "s": "[[[[[[[[[["})
    update = doc.get_update()
    assert shape_of(update, LIMITS).depth == 31
    with pytest.raises(TooNested):
        shape_of(update, Limits(max_depth=30))


@pytest.mark.parametrize("via", ["parent", "origin", "array"])
def test_a_chain_of_shared_types_in_one_update_is_capped(via: str) -> None:
    """Types nested in types, created by one update: the chain is its depth,
    whether each names its parent or follows an origin to it."""
    doc: Doc[Any] = Doc()
    inner: Map[Any] | Array[Any] = doc.get("m", type=Map)
    for _ in range(70):
        nxt: Map[Any] | Array[Any] = Array() if via == "array" else Map()
        if isinstance(inner, Array):
            inner.append("before")  # the next one's origin
            inner.append(nxt)
        else:
            if via == "origin":
                inner["k"] = "replaced"  # the next one's origin
            inner["k"] = nxt
        inner = nxt
    update = doc.get_update()
    shape_of(update, Limits(max_depth=70))  # 70 deep: not over
    with pytest.raises(TooNested, match="shared types"):
        shape_of(update, Limits(max_depth=69))
    # Many types side by side are not a chain.
    flat: Doc[Any] = Doc()
    array = flat.get("a", type=Array)
    for i in range(200):
        array.append(Map({"i": Map({"j": i})}))
    shape_of(flat.get_update(), Limits(max_depth=2))
    with pytest.raises(TooNested):
        shape_of(flat.get_update(), Limits(max_depth=1))


@pytest.mark.parametrize(
    "update",
    [
        b"",
        b"\x01",
        b"\x01\x01\x07\x00\x1f",  # unknown content type 31
        b"\x01\x01\x07\x00\x04\x01\x01a\x05ab",  # string length past the end
        b"\x01\x01\x07\x00\x04\x01\x01a\x02\xff\xfe\x00",  # invalid UTF-8
    ],
)
def test_malformed_updates_are_invalid(update: bytes) -> None:
    with pytest.raises(InvalidUpdate):
        shape_of(update, LIMITS)


@pytest.mark.parametrize(
    "update",
    [b"\x00\x01\x07\x05", b"\x00\x01\x07\x01\x03"],
    ids=["ranges-missing", "range-truncated"],
)
def test_a_malformed_delete_set_is_refused_with_the_doc_untouched(
    update: bytes,
) -> None:
    """The walk counts the delete set without reading it; pycrdt reads it,
    and refuses it whole before changing anything."""
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, "kept")
    before = doc.get_update()
    with pytest.raises(InvalidUpdate):
        apply_update(doc, update, shape_of(update, LIMITS))
    assert doc.get_update() == before
