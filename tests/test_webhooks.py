"""Change webhooks, delivered to a real local HTTP receiver.

A burst of edits in a room gives one signed POST; a second burst, a second.
A receiver that fails gets retries (counted in /metrics) and, once it is
back, one POST carrying every change. A receiver that hangs does not slow
the room: edits are confirmed while it holds the server's requests.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import metric
from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled, wait_until
from tests.yclient import YClient
from ysyncd.webhooks import signature

SECRET = secrets.token_hex(24)


@dataclass
class Receiver:
    """A real HTTP server on loopback, in a thread; ``mode`` is what it does
    with each POST: "ok" (204), "fail" (503) or "hang" (until released)."""

    url: str = ""
    mode: str = "ok"
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    attempts: int = 0
    release: threading.Event = field(default_factory=threading.Event)

    def bodies(self, room: str) -> list[dict[str, Any]]:
        found = [json.loads(body) for _, body in list(self.received)]
        return [b for b in found if b["room"] == room]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.attempts += 1
            if state.mode == "hang":
                state.release.wait(timeout=60)
            if state.mode == "fail":
                self.send_response(503)
                self.end_headers()
                return
            state.received.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the test reads what arrived, not the log

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def server_args(tmp_path: Path, receiver: Receiver, debounce: float) -> list[str]:
    secret = tmp_path / "webhook.secret"
    secret.write_text(SECRET + "\n")
    return [
        "--webhook-url",
        receiver.url,
        "--webhook-secret-file",
        str(secret),
        "--webhook-debounce",
        str(debounce),
    ]


async def edit_burst(client: YClient, n: int, tag: str) -> None:
    for i in range(n):
        client.text.insert(len(client.text), f"{tag}{i} ")
    await client.wait_confirmed()


async def test_one_signed_post_per_burst(
    tmp_path: Path, any_db: str, receiver: Receiver
) -> None:
    """On SQLite and on PostgreSQL."""
    args = server_args(tmp_path, receiver, debounce=0.5)
    async with (
        running_server(any_db, *args) as server,
        YClient.connect(server.url, "notes") as notes,
        YClient.connect(server.url, "todo") as todo,
    ):
        await edit_burst(notes, 20, "n")
        await edit_burst(todo, 3, "t")
        await wait_until(
            lambda: receiver.bodies("notes") and receiver.bodies("todo"),
            "a webhook for each room",
            timeout=scaled(15),
        )
        [first] = receiver.bodies("notes")
        assert first["event"] == "room.changed"
        assert first["updates"] == 20
        assert first["first_change"] <= first["last_change"]
        assert receiver.bodies("todo")[0]["updates"] == 3

        # Signed: the HMAC of "timestamp.body" with the shared secret.
        for headers, body in receiver.received:
            stamp = headers["Ysyncd-Timestamp"]
            expected = signature(SECRET.encode(), stamp, body)
            assert headers["Ysyncd-Signature"] == expected
            assert headers["Ysyncd-Signature"] != signature(b"x" * 32, stamp, body)

        # A second burst, a second POST: nothing was sent per update.
        await edit_burst(notes, 7, "m")
        await wait_until(
            lambda: len(receiver.bodies("notes")) >= 2,
            "the second burst's webhook",
            timeout=scaled(15),
        )
        assert [b["updates"] for b in receiver.bodies("notes")] == [20, 7]
        assert len(receiver.bodies("todo")) == 1


async def test_a_failing_receiver_gets_retries_and_then_everything(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.mode = "fail"
    args = server_args(tmp_path, receiver, debounce=0.2)
    async with (
        running_server(tmp_path / "f.db", *args) as server,
        YClient.connect(server.url, "doc") as client,
    ):
        await edit_burst(client, 5, "a")
        await wait_for_metric(server, "retried", 2)
        await edit_burst(client, 4, "b")  # joins the burst being retried
        receiver.mode = "ok"
        await wait_until(
            lambda: sum(b["updates"] for b in receiver.bodies("doc")) >= 9,
            "every change, delivered",
            timeout=scaled(30),
        )
        bodies = receiver.bodies("doc")
        assert sum(b["updates"] for b in bodies) == 9
        assert bodies[0]["attempt"] > 2  # the burst that failed, retried
        await wait_for_metric(server, "delivered", 1)


async def test_a_hanging_receiver_does_not_slow_the_room(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The receiver holds every request for up to 60 s; edits are still
    confirmed, one durable commit at a time, long before that."""
    receiver.mode = "hang"
    args = server_args(tmp_path, receiver, debounce=0.05)
    async with (
        running_server(tmp_path / "h.db", *args) as server,
        YClient.connect(server.url, "busy") as client,
        YClient.connect(server.url, "other") as other,
    ):
        await edit_burst(client, 3, "x")
        await wait_until(lambda: receiver.attempts >= 1, "a held request", timeout=10)
        for round_ in range(20):  # many commits while the receiver hangs
            client.text.insert(0, f"r{round_} ")
            other.text.insert(0, f"o{round_} ")
            await client.wait_confirmed()
            await other.wait_confirmed()
        async with YClient.connect(server.url, "busy") as fresh:
            assert str(fresh.text) == str(client.text)
        assert receiver.received == []  # still held: the edits did not wait
        receiver.release.set()


async def wait_for_metric(server: ServerProcess, outcome: str, at_least: int) -> None:
    name = f'ysyncd_webhook_deliveries_total{{outcome="{outcome}"}}'
    seen = 0.0
    for _ in range(600):
        seen = await metric(server, name)
        if seen >= at_least:
            return
        await asyncio.sleep(0.05)  # polling: /metrics has no push
    raise AssertionError(f"{name} stayed at {seen}")
