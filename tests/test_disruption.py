"""Convergence under disruption: random edits, drops, reconnects and offline edits.

Hypothesis generates the schedule. It drives async tests cleanly here:
pytest-asyncio runs every example of an ``async def`` ``@given`` test in the
test's own event loop, the one the ``server`` fixture was started in, so all
examples share one real server and each uses a fresh room. (Sharing the fixture
across examples is deliberate, hence the suppressed health check.) The schedule
is a plain list of actions, so a failure shrinks to a short, readable one.

``YSYNCD_DISRUPTION_EXAMPLES`` sets the number of examples per test (15 by
default; raise it for a longer run).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from tests.jsclient import JsClient, require_node
from tests.serverproc import ServerProcess
from tests.yclient import YClient

EXAMPLES = int(os.environ.get("YSYNCD_DISRUPTION_EXAMPLES", "15"))
PY_CLIENTS = 3
SNIPPETS = ["a", "bc", "xyz ", "é", "Zoë", "日本", "🎉", "a🙂b", "\n", " "]
KEYS = ["k0", "k1", "k2", "k3", "naïve", "鍵"]
EDIT_KINDS = [
    "text_insert",
    "text_insert",
    "text_delete",
    "map_set",
    "map_set",
    "map_delete",
    "array_insert",
    "array_insert",
    "array_delete",
]
_rooms = itertools.count()


# ---- the schedule -------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """One local edit; ``pos`` and ``value`` are resolved against the doc then."""

    who: int
    kind: str
    pos: int
    value: int


@dataclass(frozen=True)
class Toggle:
    """Go offline (``abrupt``: drop the TCP connection, no close frame) or online."""

    who: int
    abrupt: bool


@dataclass(frozen=True)
class Pause:
    """Let messages flow for a moment between actions."""

    ms: int


Action = Edit | Toggle | Pause


def schedules(clients: int) -> st.SearchStrategy[list[Action]]:
    who = st.integers(0, clients - 1)
    edit = st.builds(
        Edit,
        who=who,
        kind=st.sampled_from(EDIT_KINDS),
        pos=st.integers(0, 10**6),
        value=st.integers(0, 10**6),
    )
    toggle = st.builds(Toggle, who=who, abrupt=st.booleans())
    pause = st.builds(Pause, ms=st.integers(0, 25))
    # Edits weigh twice as much as toggles or pauses.
    action = st.one_of(edit, edit, toggle, pause)
    return st.lists(action, min_size=10, max_size=60)


def value_for(n: int) -> Any:
    """A JSON-like value for map and array entries."""
    match n % 5:
        case 0:
            return n % 1000 - 500
        case 1:
            return SNIPPETS[n % len(SNIPPETS)] + SNIPPETS[(n // 7) % len(SNIPPETS)]
        case 2:
            return n % 2 == 0
        case 3:
            return None
        case _:
            return [n % 10, SNIPPETS[n % len(SNIPPETS)]]


def byte_offset(text: str, chars: int) -> int:
    """pycrdt's Text indexes are UTF-8 byte offsets; stay on a character boundary."""
    return len(text[:chars].encode())


# ---- the clients --------------------------------------------------------------


class Actor(Protocol):
    """One client of the schedule, whatever its implementation."""

    @property
    def online(self) -> bool: ...

    async def go_online(self) -> None: ...

    async def go_offline(self, abrupt: bool) -> None: ...

    async def edit(self, edit: Edit) -> None: ...

    async def mark(self, marker: str) -> None: ...

    async def confirm(self) -> None: ...

    async def settle(self, expected: dict[str, Any]) -> None: ...


class PyActor:
    """A pycrdt client whose Doc outlives its connections."""

    def __init__(self, url: str, room: str) -> None:
        self.url, self.room = url, room
        self.doc: Doc[Any] = Doc()
        self.text = self.doc.get("text", type=Text)
        self.map = self.doc.get("map", type=Map)
        self.array = self.doc.get("array", type=Array)
        self.client: YClient | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def online(self) -> bool:
        return self.client is not None

    async def go_online(self) -> None:
        stack = contextlib.AsyncExitStack()
        self.client = await stack.enter_async_context(
            YClient.connect(self.url, self.room, doc=self.doc)
        )
        self._stack = stack

    async def go_offline(self, abrupt: bool) -> None:
        assert self.client is not None and self._stack is not None
        if abrupt:
            self.client.ws.transport.abort()
        await self._stack.aclose()
        # Stop the closed client from trying to send the offline edits.
        self.doc.unobserve(self.client._sub)
        self.client, self._stack = None, None

    async def edit(self, edit: Edit) -> None:
        text = str(self.text)
        match edit.kind:
            case "text_insert":
                at = byte_offset(text, edit.pos % (len(text) + 1))
                self.text.insert(at, SNIPPETS[edit.value % len(SNIPPETS)])
            case "text_delete" if text:
                start = edit.pos % len(text)
                end = min(len(text), start + 1 + edit.value % 3)
                del self.text[byte_offset(text, start) : byte_offset(text, end)]
            case "map_set":
                self.map[KEYS[edit.pos % len(KEYS)]] = value_for(edit.value)
            case "map_delete" if len(self.map):
                keys = sorted(self.map.keys())
                del self.map[keys[edit.pos % len(keys)]]
            case "array_insert":
                items = [value_for(edit.value + k) for k in range(1 + edit.pos % 3)]
                at = edit.pos % (len(self.array) + 1)
                self.array[at:at] = items
            case "array_delete" if len(self.array):
                start = edit.pos % len(self.array)
                del self.array[start : min(len(self.array), start + 1 + edit.value % 2)]
            case _:
                pass  # a delete on an empty container: nothing to do

    async def mark(self, marker: str) -> None:
        with self.doc.transaction():
            self.text.insert(0, marker)
            self.map[marker] = marker
            self.array.append(marker)

    async def settle(self, expected: dict[str, Any]) -> None:
        assert self.client is not None
        await self.client.wait_content(expected)

    async def confirm(self) -> None:
        assert self.client is not None
        await self.client.wait_confirmed()

    async def aclose(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()


class NodeActor:
    """The real y-websocket client; ``disconnect`` keeps its doc (offline edits)."""

    def __init__(self, client: JsClient) -> None:
        self.js = client
        self.online = True

    async def go_online(self) -> None:
        await self.js.call("connect")
        await self.js.call("wait_synced")
        self.online = True

    async def go_offline(self, abrupt: bool) -> None:
        # yclient.mjs counts an edit as confirmed only once the server echoes it
        # to this client. An edit that reached the server on a connection closed
        # before its echo is never echoed again (the next sync step 2 leaves out
        # what the client already has), so wait_confirmed would never return:
        # a limit of the harness, not of the server. Hence confirm first.
        # provider.disconnect() is the only way to go offline and keep the doc.
        await self.js.call("wait_confirmed")
        await self.js.call("disconnect")
        self.online = False

    async def edit(self, edit: Edit) -> None:
        await self.js.call("edit", n=1 + edit.pos % 3, seed=edit.value)

    async def mark(self, marker: str) -> None:
        await self.js.call("insert_text", index=0, text=marker)
        await self.js.call("set_map", key=marker, value=marker)
        await self.js.call("push_array", values=[marker])

    async def settle(self, expected: dict[str, Any]) -> None:
        await self.js.call("wait_content", expect=expected)

    async def confirm(self) -> None:
        await self.js.call("wait_confirmed")


# ---- the property -------------------------------------------------------------


async def run_schedule(
    server: ServerProcess, room: str, actors: Sequence[Actor], schedule: list[Action]
) -> None:
    """Play ``schedule``, then bring everyone back and check they all agree."""
    offline_edits = drops = 0
    for action in schedule:
        match action:
            case Edit(who=who):
                offline_edits += not actors[who].online
                await actors[who].edit(action)
            case Toggle(who=who, abrupt=abrupt):
                actor = actors[who]
                if actor.online:
                    drops += abrupt
                    await actor.go_offline(abrupt)
                else:
                    await actor.go_online()
            case Pause(ms=ms):
                await asyncio.sleep(ms / 1000)  # spacing only; nothing waits on it
    # Shown by --hypothesis-show-statistics: how much disruption was exercised.
    event(f"offline edits: {'none' if not offline_edits else 'some'}")
    event(f"abrupt drops: {'none' if not drops else 'some'}")
    # Last edits, some of them offline: nobody deletes them afterwards, so each
    # must survive into the final document.
    markers = [f"<{i}>" for i in range(len(actors))]
    for actor, marker in zip(actors, markers, strict=True):
        await actor.mark(marker)
    for actor in actors:
        if not actor.online:
            await actor.go_online()
    await asyncio.gather(*(actor.confirm() for actor in actors))
    # Everyone's edits are durable now; a fresh reader sees the union.
    async with YClient.connect(server.url, room) as reader:
        union = reader.content()
    for marker in markers:
        assert marker in union["text"]
        assert union["map"][marker] == marker
        assert marker in union["array"]
    await asyncio.gather(*(actor.settle(union) for actor in actors))


CONVERGENCE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    print_blob=True,
)


@CONVERGENCE
@given(schedule=schedules(PY_CLIENTS))
async def test_pycrdt_clients_converge_under_disruption(
    server: ServerProcess, schedule: list[Action]
) -> None:
    """Random edits, drops, reconnects and offline edits end in one identical doc."""
    room = f"disrupt-{next(_rooms)}"
    actors = [PyActor(server.url, room) for _ in range(PY_CLIENTS)]
    try:
        for actor in actors:
            await actor.go_online()
        await run_schedule(server, room, actors, schedule)
    finally:
        for actor in actors:
            await actor.aclose()


@pytest.mark.interop
@CONVERGENCE
@given(schedule=schedules(PY_CLIENTS + 1))
async def test_pycrdt_and_node_clients_converge_under_disruption(
    server: ServerProcess, schedule: list[Action]
) -> None:
    """As above, with a real y-websocket client as the last of four clients."""
    require_node()
    room = f"disrupt-js-{next(_rooms)}"
    py = [PyActor(server.url, room) for _ in range(PY_CLIENTS)]
    try:
        async with JsClient.start(server.url, room) as js:
            await js.call("wait_synced")
            for actor in py:
                await actor.go_online()
            await run_schedule(server, room, [*py, NodeActor(js)], schedule)
    finally:
        for actor in py:
            await actor.aclose()
