"""Yjs and awareness payloads: made before a measured window, parsed after it.

Updates are made by pycrdt, each writer in its own document, before the load
starts, so making them costs nothing while the servers are measured. Each one is
a small text insert into the root text ``"text"``.

An update is identified by the id of its first struct, ``(client, clock)``. The
Node server re-encodes every update it relays (it applies it, then emits its own
encoding), so the bytes differ between servers, but the struct ids do not.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pycrdt import Doc, Text, TransactionEvent, write_message, write_var_uint

from ysyncd.awareness import decode_update
from ysyncd.protocol import Awareness, Reader, encode, encode_update

__all__ = [
    "EMPTY_UPDATE",
    "DocState",
    "Framed",
    "History",
    "StructId",
    "awareness_message",
    "decode_awareness",
    "diff_history",
    "doc_state",
    "first_struct_id",
    "frame_client",
    "history",
    "text_updates",
    "unique_client_ids",
]

#: The update with no structs and no deletions (what an empty doc sends).
EMPTY_UPDATE = b"\x00\x00"
TEXT = "text"

StructId = tuple[int, int]
#: An update and its ready-to-send sync frame.
Framed = tuple[bytes, bytes]


def unique_client_ids(rng: random.Random, count: int) -> list[int]:
    """``count`` distinct Yjs client ids (uint32, as Yjs makes them)."""
    seen: set[int] = set()
    ids: list[int] = []
    while len(ids) < count:
        client_id = rng.randrange(1, 2**32)
        if client_id not in seen:
            seen.add(client_id)
            ids.append(client_id)
    return ids


def _token(i: int) -> str:
    # Three characters that vary, so a misordered merge shows in the text.
    return f"{chr(97 + i % 26)}{i % 100:02d}"


def _writer(client_id: int, count: int) -> tuple[list[bytes], Doc[Any]]:
    doc: Doc[Any] = Doc(client_id=client_id)
    text = doc.get(TEXT, type=Text)
    updates: list[bytes] = []

    def keep(event: TransactionEvent) -> None:
        updates.append(event.update)

    subscription = doc.observe(keep)
    # A writer never sees the others' updates (it is made ahead of time), so it
    # types inside a region of its own, "[...]", always right after its "[":
    # each insert's neighbours (origin "[" and right origin, its previous
    # insert) are its own items, with nobody else's in between. The servers
    # then integrate every update at once, as in a session where each user
    # types in their own paragraph. (Had writers typed at a shared position,
    # at the start or the end, every insert would be concurrent with the other
    # writers' and Yjs would scan their items each time: quadratic, and no
    # real session looks like that.) An insert never merges with its
    # neighbour, so N updates make a document of N items, the demanding case
    # for sync step 2; and pycrdt makes each insert in constant time.
    text.insert(0, "[]")
    for i in range(count - 1):
        text.insert(1, _token(i))
    doc.unobserve(subscription)
    return updates, doc


def text_updates(client_id: int, count: int) -> list[Framed]:
    """``count`` separate updates by one writer, each inserting 2 or 3 characters."""
    updates, _ = _writer(client_id, count)
    return [(update, encode_update(update)) for update in updates]


@dataclass(frozen=True, slots=True)
class DocState:
    """What two documents must share to be equal: content and state vector."""

    text: str
    state_vector: dict[int, int]

    def describe(self) -> str:
        clocks = sum(self.state_vector.values())
        return (
            f"{len(self.text)} chars, clock sum {clocks}"
            f" over {len(self.state_vector)} clients"
        )


def decode_state_vector(state_vector: bytes) -> dict[int, int]:
    """A v1 state vector as ``{client: next clock}``."""
    reader = Reader(state_vector)
    entries: dict[int, int] = {}
    for _ in range(reader.var_uint()):
        client = reader.var_uint()
        entries[client] = reader.var_uint()
    return entries


def doc_state(doc: Doc[Any]) -> DocState:
    return DocState(str(doc.get(TEXT, type=Text)), decode_state_vector(doc.get_state()))


def doc_from(updates: Iterable[bytes]) -> Doc[Any]:
    """A fresh document with ``updates`` applied in order."""
    doc: Doc[Any] = Doc()
    for update in updates:
        if update != EMPTY_UPDATE:
            doc.apply_update(update)
    return doc


@dataclass(frozen=True, slots=True)
class History:
    """A room's history written by one client, and the document it makes."""

    client_id: int
    updates: list[Framed]
    expected: DocState


@lru_cache(maxsize=8)
def history(client_id: int, count: int) -> History:
    """``count`` updates by one writer, and the document they make.

    Cached: every run of a case sends the same updates.
    """
    updates, doc = _writer(client_id, count)
    framed = [(update, encode_update(update)) for update in updates]
    return History(client_id, framed, doc_state(doc))


@lru_cache(maxsize=4)
def diff_history(client_id: int, count: int, delete_every: int) -> History:
    """``count`` updates by a writer that sends diffs against its last state.

    Like :func:`history`, each update inserts a token right after the ``"["``;
    every ``delete_every``-th one also deletes the middle character of the
    token before it, so the deletions never touch: N updates leave N /
    ``delete_every`` separate deleted ranges. Each update is
    ``get_update(state vector before)``, as some clients send them, and such a
    diff carries the document's whole delete set, so the updates grow as the
    document is edited: 12,000 of them, one in 8 deleting, hold about 30 MB.
    """
    if delete_every < 2:
        raise ValueError("delete_every must be at least 2, or deletions touch")
    doc: Doc[Any] = Doc(client_id=client_id)
    text = doc.get(TEXT, type=Text)
    updates: list[bytes] = []
    state = doc.get_state()
    for i in range(-1, count - 1):
        with doc.transaction():
            if i < 0:
                text.insert(0, "[]")
            else:
                text.insert(1, _token(i))
                if i % delete_every == delete_every - 1:
                    # "[" + the new token (1-3), then the one before it (4-6).
                    del text[5]
        updates.append(doc.get_update(state))
        state = doc.get_state()
    framed = [(update, encode_update(update)) for update in updates]
    return History(client_id, framed, doc_state(doc))


def first_struct_id(update: bytes) -> StructId | None:
    """``(client, clock)`` of an update's first struct; None if it has none.

    A v1 update starts with varUint(number of clients), then for the first
    client varUint(number of structs), varUint(client), varUint(clock).
    """
    reader = Reader(update)
    if reader.var_uint() == 0:
        return None
    reader.var_uint()
    client = reader.var_uint()
    return client, reader.var_uint()


def frame_client(frame: bytes) -> int | None:
    """The client id of the first struct of a sync update frame, unsliced."""
    reader = Reader(frame)
    reader.var_uint()  # message type: sync
    reader.var_uint()  # sync type: update
    reader.var_uint()  # length of the update
    if reader.var_uint() == 0:
        return None
    reader.var_uint()
    return reader.var_uint()


def awareness_message(client_id: int, clock: int, state: dict[str, Any]) -> Framed:
    """An awareness update setting one client's state, and its frame."""
    text = json.dumps(state, separators=(",", ":"))
    update = b"".join(
        (
            write_var_uint(1),
            write_var_uint(client_id),
            write_var_uint(clock),
            write_message(text.encode()),
        )
    )
    return update, encode(Awareness(update))


def decode_awareness(update: bytes) -> list[tuple[int, int, str]]:
    """``(client_id, clock, state_json)`` for each entry of an awareness update."""
    return decode_update(update)
