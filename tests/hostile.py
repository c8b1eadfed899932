"""What the hostile tests share: one ysyncd for all of them, and their probes.

Every attack runs against the same ``ysyncd serve`` process (the ``hostile``
fixture, one per test session), each in rooms of its own, and the process
must still be the same one, serving, at the end: one client never ends the
server. Each test fills a healthy room of its own first ("good"), and checks
afterwards that it still holds exactly that content, as its client sees it
and as a fresh client loads it. Counters in ``/metrics`` grow over the whole
session, so tests compare them before and after (:class:`Counts`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import re
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import pytest
from pycrdt import Array, Doc, Map, Text, write_message, write_var_uint
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from tests.rawclient import abort, handshake, open_tcp, upgrade_request
from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled, wait_until
from tests.yclient import YClient, stored_content
from tests.yjs_updates import ID, ClientStructs, DeletedContent, Item, StringContent
from tests.yjs_updates import Update as UpdateBuilder
from ysyncd import protocol
from ysyncd.awareness import decode_update

T = TypeVar("T")
Content = dict[str, Any]

MiB = 2**20
#: The healthy client's Yjs client ID: fixed, so its document is reproducible.
GOOD_CLIENT_ID = 4242
#: Close codes the server documents for bad input.
BAD_INPUT_CODES = {1002, 1003, 1007, 1008, 1009}
#: How long any one message may keep another room waiting.
STALL_BOUND = 0.25

#: The shared server's settings: timeouts short enough for the attacks to be
#: quick to show; everything else is the default.
HOSTILE_ARGS = (
    "--sqlite-synchronous",
    "normal",
    "--drain-timeout",
    "3",
    "--close-timeout",
    "30",
    "--room-idle-seconds",
    "2",
)


# --- a loop in a thread, for the shared server ----------------------------------


class LoopThread:
    """An asyncio event loop in a thread of its own, driven from synchronous code."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="test-loop")

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()

    def __enter__(self) -> LoopThread:
        self._thread.start()
        assert self._ready.wait(scaled(10)), "the event loop did not start"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(scaled(30))
        assert not self._thread.is_alive(), "the event loop did not stop"

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` in the loop without waiting for it."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` in the loop's thread."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(callback)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` in the loop and wait (from this thread) for its result."""
        future = self.submit(coro)
        try:
            return future.result(scaled(timeout))
        except TimeoutError:
            future.cancel()
            raise AssertionError(f"timed out after {timeout} s") from None


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The one ysyncd every hostile test attacks; it must outlive them all."""
    db = tmp_path_factory.mktemp("hostile") / "hostile.db"
    with LoopThread() as loop:
        stack = contextlib.AsyncExitStack()
        server = loop.run(stack.enter_async_context(running_server(db, *HOSTILE_ARGS)))
        assert server.proc is not None
        pid = server.proc.pid
        try:
            yield server
            last_lines = "".join(server.log[-40:])
            assert server.proc.pid == pid and server.proc.returncode is None, (
                f"ysyncd did not survive the hostile tests:\n{last_lines}"
            )
            # And it still shuts down cleanly.
            assert loop.run(server.stop(), timeout=60) == 0
        finally:
            loop.run(stack.aclose(), timeout=60)


@pytest.fixture
def rooms(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Room names of this test's own: ``rooms("good")``."""
    test = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[-80:]
    return lambda name: f"{test}/{name}"


# --- the good room ------------------------------------------------------------


def _fill(text: Text, map_: Map[Any], array: Array[Any]) -> None:
    """The healthy client's edits, one update each."""
    text.insert(0, "hello world")
    map_["k"] = "v"
    map_["n"] = 3
    array.extend([1, 2, "three"])
    map_["nested"] = Map({"x": 1})
    array.append(Array([4, 5]))
    text.insert(5, ",")


def base_doc() -> Doc[Any]:
    """A document holding exactly what the healthy client puts in a good room."""
    doc: Doc[Any] = Doc(client_id=GOOD_CLIENT_ID)
    _fill(
        doc.get("text", type=Text),
        doc.get("map", type=Map),
        doc.get("array", type=Array),
    )
    return doc


BASE_CONTENT: Content = {
    "text": "hello, world",
    "map": {"k": "v", "n": 3.0, "nested": {"x": 1.0}},
    "array": [1.0, 2.0, "three", [4.0, 5.0]],
}


@dataclass
class Good:
    """A healthy client in a good room, and what the room must hold."""

    client: YClient
    room: str
    expected: Content


@contextlib.asynccontextmanager
async def good_room(server: ServerProcess, room: str) -> AsyncIterator[Good]:
    """A healthy client that filled ``room`` and stays connected."""
    async with YClient.connect(
        server.url, room, doc=Doc(client_id=GOOD_CLIENT_ID)
    ) as good:
        _fill(good.text, good.map, good.array)
        await good.wait_confirmed()
        assert good.content() == BASE_CONTENT
        yield Good(good, room, BASE_CONTENT)


async def assert_survived(server: ServerProcess, good: Good) -> None:
    """The server still serves, and the good room holds exactly what it should."""
    client, room = good.client, good.room
    assert client.content() == good.expected, "the healthy client's document changed"
    assert await stored_content(server.url, room) == good.expected
    # The healthy client can still write, and gets its echo.
    client.text.insert(len(client.text), "!")
    await client.wait_confirmed()
    good.expected = {**good.expected, "text": good.expected["text"] + "!"}
    assert client.content() == good.expected
    assert await stored_content(server.url, room) == good.expected
    # A brand-new client in a brand-new room connects, writes and syncs.
    after = f"{room}-after"
    async with YClient.connect(server.url, after) as fresh:
        fresh.map["alive"] = "yes"
        await fresh.wait_confirmed()
    assert (await stored_content(server.url, after))["map"] == {"alive": "yes"}
    assert (await http_get(server.http_url + "/healthz"))[0] == 200


# --- HTTP, metrics, close codes -----------------------------------------------


async def http_get(url: str) -> tuple[int, str]:
    """GET ``url`` (loopback); return the status and the body."""

    def get() -> tuple[int, str]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=scaled(10)) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(get)


async def metrics(server: ServerProcess) -> dict[str, float]:
    """``/metrics`` as ``{'name{labels}': value}``."""
    status, body = await http_get(server.http_url + "/metrics")
    assert status == 200
    values: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def wait_for_metric(server: ServerProcess, name: str, expected: float) -> None:
    """Poll ``/metrics`` until ``name`` equals ``expected``."""
    value = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(scaled(15)):
            for _ in range(10_000):
                value = (await metrics(server)).get(name)
                if value == expected:
                    return
                await asyncio.sleep(0.05)  # polling: /metrics has no push
    raise AssertionError(f"{name} is {value}, not {expected}")


def limit_hits(limit: str) -> str:
    return f'ysyncd_limit_hits_total{{limit="{limit}"}}'


def closes(code: int) -> str:
    return f'ysyncd_closes_total{{code="{code}"}}'


@dataclass
class Counts:
    """``/metrics`` counters as they were when a test started."""

    server: ServerProcess
    before: dict[str, float] = field(default_factory=dict)

    @classmethod
    async def now(cls, server: ServerProcess) -> Counts:
        return cls(server, await metrics(server))

    async def delta(self, prefix: str = "") -> dict[str, float]:
        """Counters (starting with ``prefix``) that grew since, by how much."""
        after = await metrics(self.server)
        return {
            name: value - self.before.get(name, 0.0)
            for name, value in after.items()
            if name.startswith(prefix) and value != self.before.get(name, 0.0)
        }

    async def wait(
        self, condition: Callable[[dict[str, float]], bool], what: str
    ) -> dict[str, float]:
        """Poll until the growth satisfies ``condition``; return it."""
        grown: dict[str, float] = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(scaled(15)):
                for _ in range(10_000):
                    grown = await self.delta()
                    if condition(grown):
                        return grown
                    await asyncio.sleep(0.05)  # polling: /metrics has no push
        raise AssertionError(f"timed out waiting for {what}; grown: {grown}")

    async def closes(self) -> dict[str, float]:
        """Abnormal closes counted since (once there is one)."""

        def abnormal(grown: dict[str, float]) -> dict[str, float]:
            return {
                name: value
                for name, value in grown.items()
                if name.startswith("ysyncd_closes_total") and '"1000"' not in name
            }

        return abnormal(await self.wait(lambda g: bool(abnormal(g)), "a close"))


async def close_code_after(url: str, room: str, *frames: bytes | str) -> int:
    """Send ``frames`` on a new connection; return the code the server closes with."""
    ws = await connect(
        f"{url}/{room}",
        max_size=None,
        compression=None,
        proxy=None,
        open_timeout=scaled(10),
    )
    try:
        async with asyncio.timeout(scaled(30)):
            with contextlib.suppress(ConnectionClosed):
                for frame in frames:
                    await ws.send(frame)
                for _ in range(100_000):
                    await ws.recv()
    except TimeoutError:
        raise AssertionError("the server did not close the connection") from None
    finally:
        if ws.state is not State.CLOSED:
            ws.transport.abort()
    received = ws.protocol.close_rcvd
    assert received is not None, "the connection was dropped without a close frame"
    return received.code


async def wait_closed_by_server(ws: ClientConnection, timeout: float = 15) -> int:
    """Read (and drop) what ``ws`` receives until the server closes it."""
    try:
        async with asyncio.timeout(scaled(timeout)):
            with contextlib.suppress(ConnectionClosed):
                for _ in range(1_000_000):
                    await ws.recv()
    except TimeoutError:
        raise AssertionError("the server did not close the connection") from None
    received = ws.protocol.close_rcvd
    assert received is not None, "the connection was dropped without a close frame"
    return received.code


def awareness_frame(*entries: tuple[int, int, str]) -> bytes:
    """One awareness message with ``(client_id, clock, state_json)`` entries."""
    update = write_var_uint(len(entries))
    for client_id, clock, state in entries:
        update += write_var_uint(client_id) + write_var_uint(clock)
        update += write_message(state.encode())
    return protocol.encode(protocol.Awareness(update))


def awareness_states_seen(client: YClient) -> list[tuple[int, str]]:
    """Every awareness entry ``client`` has received, in order."""
    return [
        (client_id, state)
        for message in client.received
        if isinstance(message, protocol.Awareness)
        for client_id, _clock, state in decode_update(message.update)
    ]


async def send_fuzz(
    url: str, room: str, frames: list[bytes | str], probe: int, timeout: float = 10
) -> int | None:
    """Send ``frames`` to ``room``; return the close code, or None if still open.

    An awareness state sent last (and relayed back to its sender) shows that the
    server has handled every frame before it and kept the connection.
    """
    probe_state = json.dumps({"probe": probe})
    async with connect(
        f"{url}/{room}",
        max_size=None,
        compression=None,
        proxy=None,
        open_timeout=scaled(10),
    ) as ws:
        try:
            async with asyncio.timeout(scaled(timeout)):
                with contextlib.suppress(ConnectionClosed):
                    for frame in frames:
                        await ws.send(frame)
                    await ws.send(awareness_frame((2**40 + probe, 1, probe_state)))
                    for _ in range(100_000):
                        message = await ws.recv()
                        assert isinstance(message, bytes)
                        for m in protocol.decode(message):
                            if isinstance(m, protocol.Awareness) and (
                                (2**40 + probe, 1, probe_state)
                                in decode_update(m.update)
                            ):
                                return None
        except TimeoutError:
            raise AssertionError(
                "no close and no probe echo: the server hangs"
            ) from None
    received = ws.protocol.close_rcvd
    assert received is not None, "dropped without a close frame"
    return received.code


# --- another room's latency, and memory ------------------------------------------


@dataclass
class Probe:
    """Round trips through another room while an attack runs."""

    times: list[float] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(self.times, default=0.0)


@contextlib.asynccontextmanager
async def probing(server: ServerProcess, room: str) -> AsyncIterator[Probe]:
    """Keep timing awareness round trips in ``room`` until the block ends.

    The server relays an awareness update to its sender too, so each round
    trip is one message through the server's event loop, with no commit. A
    stall of the loop delays the round trip under way or the next one. The
    probe runs in a process of its own (tests/probe.py), so that this
    process's CPU work cannot pass for a stall of the server.
    """
    probe = Probe()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.probe",
        server.url,
        room,
        str(777_000 + len(room)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        async with asyncio.timeout(scaled(30)):
            ready = await child.stdout.readline()
        assert ready == b"ready\n", ready
        yield probe
        assert child.returncode is None, "the probe ended early"
        child.stdin.close()
        async with asyncio.timeout(scaled(150)):
            times = await child.stdout.readline()
            await child.wait()
        assert child.returncode == 0, child.returncode
        probe.times.extend(json.loads(times))
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


def rss(pid: int) -> int:
    """The process's resident memory, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def reset_peak(pid: int) -> None:
    """Start the process's peak memory (VmHWM) afresh (Linux clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak(pid: int) -> int:
    """The process's peak resident memory since start or :func:`reset_peak`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def wait_rss_below(pid: int, limit: int, what: str, timeout: float = 30) -> int:
    """Wait until the process's RSS is below ``limit``; return it."""
    try:
        await wait_until(lambda: rss(pid) < limit, what, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"{what}: RSS {rss(pid) / MiB:.0f} MiB") from None
    return rss(pid)


# --- a big room ------------------------------------------------------------------

#: Structs in the big room: alternately a character and a deleted one, so
#: that nothing merges and encoding the document takes real work.
BIG_STRUCTS = 600_000


def many_structs_update(client: int, structs: int) -> bytes:
    """A text of ``structs`` items that do not merge (every other deleted)."""
    items = [Item(StringContent("x"), parent="text")]
    for clock in range(1, structs):
        content = DeletedContent(1) if clock % 2 else StringContent("x")
        items.append(Item(content, origin=ID(client, clock - 1)))
    return UpdateBuilder([ClientStructs(client, 0, items)]).encode()


async def big_room(server: ServerProcess, room: str, structs: int = BIG_STRUCTS) -> str:
    """Fill ``room`` with a document costly to encode; return its text.

    Building the update takes seconds of this process's CPU, which would stall
    a probe running beside it here, not the server's: it is built in a thread.
    """
    update = await asyncio.to_thread(many_structs_update, 55_001, structs)
    async with YClient.connect(server.url, room) as writer:
        writer.unconfirmed.add(update)
        await writer.ws.send(protocol.encode_update(update))
        await writer.wait_confirmed(timeout=120)
        return str(writer.text)


# --- connection churn -------------------------------------------------------------

#: Rooms the churn spreads over; several of them are first loaded concurrently.
CHURN_ROOMS = 7


async def churn_connection(
    server: ServerProcess, i: int, rooms: Callable[[str], str]
) -> str:
    """One short-lived connection of kind ``i % 6``; return how it went."""
    path = "/" + (rooms("good") if i % 3 == 0 else rooms(f"churn-{i % CHURN_ROOMS}"))
    kind = i % 6
    if kind == 5:  # a well-behaved client that leaves at once
        try:
            async with connect(
                server.url + path, compression=None, proxy=None, open_timeout=scaled(10)
            ) as ws:
                await ws.send(protocol.encode(protocol.SyncStep1(b"\x00")))
        except InvalidStatus as exc:
            return f"refused {exc.response.status_code}"
        return "closed cleanly"
    if kind in (3, 4):  # gone right after the 101: FIN, or RST
        reader, writer, status = await handshake(server.port, path)
        if not status.startswith(b"HTTP/1.1 101"):
            abort(writer)
            return f"refused {status.split()[1].decode()}"
        if kind == 3:  # end the stream without a close frame; the server follows
            writer.write_eof()
            async with asyncio.timeout(scaled(10)):
                await reader.read()
        abort(writer, reset=kind == 4)
        return "dropped after the 101"
    _, writer = await open_tcp(server.port)
    if kind == 1:  # half a request line
        writer.write(upgrade_request(path)[:20])
    elif kind == 2:  # a whole request, then gone before the response
        writer.write(upgrade_request(path))
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    abort(writer, reset=kind == 2)
    return "dropped mid-handshake"


async def churn(
    server: ServerProcess, rooms: Callable[[str], str], count: int
) -> Counter[str]:
    """``count`` short-lived connections, 16 at a time: how they went."""
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        async with gate:
            try:
                return await churn_connection(server, i, rooms)
            except OSError as exc:  # refused, reset: is the server still up?
                assert server.proc is not None
                code = server.proc.returncode
                return f"{type(exc).__name__} (ysyncd exit code {code})"

    async with asyncio.timeout(scaled(60)):
        return Counter(await asyncio.gather(*(one(i) for i in range(count))))
