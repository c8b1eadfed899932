"""How frames travel between peers and rooms: messages read in the
transport's callback (fragmented ones too), and big frames sent in turns."""

from __future__ import annotations

import asyncio
import contextlib
import random
import string

from pycrdt import Doc, Text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.hostile import close_code_after
from tests.serverproc import ServerProcess
from tests.timing import scaled
from tests.yclient import YClient, stored_content
from ysyncd import protocol
from ysyncd.turns import Turns


async def test_fragmented_update_is_reassembled(server: ServerProcess) -> None:
    """An update sent as three continuation frames is applied whole."""
    doc = Doc()
    doc["text"] = text = Text()
    text += "sent in three fragments"
    frame = protocol.encode_update(doc.get_update())
    third = len(frame) // 3
    async with (
        YClient.connect(server.url, "fragments") as reader,
        connect(f"{server.url}/fragments", compression=None) as ws,
    ):
        await ws.send([frame[:third], frame[third : 2 * third], frame[2 * third :]])
        await reader.wait(
            lambda: reader.content()["text"] == "sent in three fragments",
            "the fragmented update",
        )
    assert (await stored_content(server.url, "fragments"))["text"] == str(text)


async def test_fragmented_text_message_closes_1003(server: ServerProcess) -> None:
    """A text message is refused (1003) also when it comes in fragments."""
    assert await close_code_after(server.url, "fragtext", "a" * 100) == 1003
    async with connect(f"{server.url}/fragtext", compression=None) as ws:
        await ws.send(["one ", "two"])
        async with asyncio.timeout(scaled(10)):
            with contextlib.suppress(ConnectionClosed):  # what it waits for
                for _ in range(1000):
                    await ws.recv()
        assert ws.close_code == 1003


def _big_text(mib: int) -> str:
    rng = random.Random(7)
    return "".join(rng.choices(string.ascii_letters, k=mib * 2**20))


async def test_joiners_of_a_big_room_take_turns_and_converge(
    server: ServerProcess,
) -> None:
    """Ten clients join a room holding 3 MiB at once, so that most wait for
    a turn (four at a time); an edit made meanwhile reaches every one of
    them after the document, and each ends with the writer's content."""
    body = _big_text(3)
    async with YClient.connect(server.url, "lecture") as writer:
        writer.text += body
        await writer.wait_confirmed(timeout=30)
        async with contextlib.AsyncExitStack() as stack:
            joins = [
                stack.enter_async_context(
                    YClient.connect(server.url, "lecture", sync=False)
                )
                for _ in range(10)
            ]
            joiners = await asyncio.gather(*joins)
            writer.array.append("made while they join")
            await writer.wait_confirmed()
            expected = writer.content()
            for joiner in joiners:
                await joiner.wait(
                    lambda joiner=joiner: joiner.content() == expected,
                    "the document and the edit",
                    60,
                )
    assert len(expected["text"]) == len(body)


class _Taker:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.closing = False
        self.taken = asyncio.Event()

    def take_turn(self) -> None:
        self.log.append(self.name)
        self.taken.set()


async def test_turns_go_in_order_and_end_by_time() -> None:
    """Two at a time: the others start in the order they asked, a closed
    one is skipped, and a turn nobody ends is over after ``longest``."""
    log: list[str] = []
    turns = Turns(at_once=2, longest=0.05)
    a, b, c, d, e = (_Taker(name, log) for name in "abcde")
    assert turns.ask(a) and turns.ask(b)
    assert not turns.ask(c) and not turns.ask(d) and not turns.ask(e)
    d.closing = True
    turns.done(a)
    assert log == ["c"] and turns.holds(c) and not turns.holds(a)
    # b and c never say they are done: their time runs out.
    async with asyncio.timeout(scaled(5)):
        await e.taken.wait()
    assert log == ["c", "e"]
    assert turns.waiting == 0 and not turns.holds(d)
