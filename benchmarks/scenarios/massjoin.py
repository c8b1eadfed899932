"""Mass join: a class opens the lecture notebook at once.

A writer puts a big document into a room (``doc_mib`` MiB of text, one MiB
per update). Then ``joiners`` clients connect at the same moment, each
asking for the whole document (sync step 1 with the empty state vector).
Measured:

* time until each joiner is synced: from the start of its connect until its
  sync step 2 has arrived (p50, p99, and the last one);
* the server's peak RSS while they join (sampled every 20 ms), and its CPU;
* the load generator's CPU: receiving ``joiners`` copies of the document
  costs the client side too, on the same cores. The joiners are bare
  sockets that read the answer into one reused 1 MiB buffer and drop it
  (see :func:`lean_join`), so that the time measured is mostly the server's.

ysyncd is restarted after the document is written (the database is kept
for later rounds, as coldjoin's), so the joins find the room on disk, not in
memory: the first joiner's request loads it while the others wait. The Node
server keeps rooms in memory only: it is joined warm. Three joiners' copies
are applied to fresh documents and must equal the writer's.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import resource
import socket
import string
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from pycrdt import Doc, Text, TransactionEvent
from websockets.frames import Frame, Opcode

from benchmarks.loadgen import Client, LoadgenError
from benchmarks.payloads import DocState, Framed, doc_from, doc_state
from benchmarks.scenarios.base import Case, Metric, Outcome, RunContext
from benchmarks.servers import RunningServer, ServerSpec
from benchmarks.stats import percentile
from ysyncd.protocol import SyncStep1, SyncStep2, decode, encode, encode_update

__all__ = ["MassJoinCase"]

WRITER_ID = 5_555_555
ROOM = "lecture"
ECHO_TIMEOUT_S = 120.0
JOIN_TIMEOUT_S = 300.0
RSS_SAMPLE_S = 0.02
#: Joiners whose copy is applied and compared with the writer's document.
CHECKED = 3
_PREPARED = "prepared"
_MIB = 2**20
_CHUNK = 2**20
_FRAMES_MAX = 1000
_STEP2_PREFIX = b"\x00\x01"


def big_document(mib: int) -> tuple[list[Framed], DocState]:
    """``mib`` updates of one MiB of text each, and the document they make."""
    doc: Doc[Any] = Doc(client_id=WRITER_ID)
    updates: list[bytes] = []

    def keep(event: TransactionEvent) -> None:
        updates.append(event.update)

    doc.observe(keep)
    text = doc.get("text", type=Text)
    rng = random.Random("massjoin")
    for _ in range(mib):
        chunk = "".join(rng.choices(string.ascii_letters + " ", k=_MIB))
        text.insert(len(text), chunk)
    return [(u, encode_update(u)) for u in updates], doc_state(doc)


class _Socket:
    """A bare non-blocking socket read into one reused buffer: receiving a
    chunk costs the kernel's copy and nothing more."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray(_CHUNK)
        self.view = memoryview(self.buffer)
        self.pending = b""  # read and not yet taken

    async def _recv(self) -> int:
        count = await self.loop.sock_recv_into(self.sock, self.buffer)
        if not count:
            raise LoadgenError("the server closed the connection")
        return count

    async def until(self, marker: bytes) -> bytes:
        """Everything up to and including ``marker``."""
        for _ in range(_FRAMES_MAX):
            end = self.pending.find(marker)
            if end >= 0:
                end += len(marker)
                taken, self.pending = self.pending[:end], self.pending[end:]
                return taken
            self.pending += self.view[: await self._recv()]
        raise LoadgenError(f"no {marker!r} in {_FRAMES_MAX} reads")

    async def exactly(self, size: int) -> bytes:
        parts = [self.pending[:size]]
        got = len(parts[0])
        self.pending = self.pending[size:]
        while got < size:
            count = await self._recv()
            take = min(count, size - got)
            parts.append(bytes(self.view[:take]))
            got += take
            self.pending = bytes(self.view[take:count])
        return b"".join(parts)

    async def skip(self, size: int) -> None:
        dropped = min(size, len(self.pending))
        self.pending = self.pending[dropped:]
        size -= dropped
        while size:
            count = await self._recv()
            take = min(count, size)
            size -= take
            self.pending = bytes(self.view[take:count])


async def lean_join(port: int, room: str, *, keep: bool) -> bytes | None:
    """Join ``room`` as a y-websocket client does (sync step 1 with the empty
    state vector) over a bare socket, and read until the sync step 2 is
    whole; return its frame's payload if ``keep``, else read it into one
    reused buffer and drop it. The joiners of this case receive the document
    150 times: websockets' client (or a stream reader's copies) would spend
    more CPU on those bytes than the server spends on sending them, on the
    same cores."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        stream = _Socket(sock)
        await stream.loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await stream.loop.sock_sendall(
            sock,
            f"GET /{room} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
        )
        head = await stream.until(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise LoadgenError(f"upgrade refused: {head[:80]!r}")
        ask = encode(SyncStep1(b"\x00"))
        await stream.loop.sock_sendall(
            sock, Frame(Opcode.BINARY, ask).serialize(mask=True)
        )
        for _ in range(_FRAMES_MAX):
            first, second = await stream.exactly(2)
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(await stream.exactly(2))
            elif length == 127:
                length = int.from_bytes(await stream.exactly(8))
            opcode = first & 0x0F
            prefix = await stream.exactly(min(2, length))
            if opcode != Opcode.BINARY.value or prefix != _STEP2_PREFIX:
                await stream.skip(length - len(prefix))
                continue
            if keep:
                return prefix + await stream.exactly(length - len(prefix))
            await stream.skip(length - len(prefix))
            return None
        raise LoadgenError(f"no sync step 2 in {_FRAMES_MAX} frames")
    finally:
        sock.close()


def _loadgen_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class MassJoinCase(Case):
    doc_mib: int
    joiners: int

    scenario: ClassVar[str] = "massjoin"
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("sync_p50_ms", "joiner synced p50", "ms"),
        Metric("sync_p99_ms", "joiner synced p99", "ms"),
        Metric("sync_last_ms", "last joiner synced", "ms"),
        Metric("peak_rss_mib", "server peak RSS while joining", "MiB"),
        Metric("join_cpu_s", "server CPU for all joins", "s"),
        Metric("loadgen_cpu_s", "load generator CPU for all joins", "s"),
        Metric("step2_mib", "sync step 2 size", "MiB"),
    )
    timeout_s: float = 900.0

    @property
    def name(self) -> str:
        return f"{self.joiners} clients join a {self.doc_mib} MiB document at once"

    async def run(self, spec: ServerSpec, ctx: RunContext) -> Outcome:
        updates, expected = big_document(self.doc_mib)
        outcome = Outcome()
        if spec.durable:
            data_dir = ctx.kept_dir(f"massjoin-{self.doc_mib}-{spec.name}")
            marker = data_dir / _PREPARED
            if not marker.exists():
                async with spec.start(data_dir) as server:
                    await self._write(server, updates, outcome)
                if outcome.converged:
                    marker.touch()  # after a clean stop, so every row is in
            if not outcome.converged:
                return outcome
            async with spec.start(data_dir) as server:
                await self._joins(server, expected, outcome)
        else:
            async with spec.start(ctx.fresh_dir(spec.name)) as server:
                await self._write(server, updates, outcome)
                if outcome.converged:
                    await self._joins(server, expected, outcome)
        return outcome

    async def _write(
        self, server: RunningServer, updates: list[Framed], outcome: Outcome
    ) -> None:
        writer = await Client.connect(
            server.url, ROOM, WRITER_ID, label="writer", track_echo=True
        )
        try:
            for update in updates:
                await writer.send_update(update)
                await writer.wait_unechoed_below(1, ECHO_TIMEOUT_S)
            if (problem := writer.problem()) is not None:
                outcome.problems.append(problem)
        finally:
            await writer.close()

    async def _joins(
        self, server: RunningServer, expected: DocState, outcome: Outcome
    ) -> None:
        peak = server.rss_bytes()
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, server.rss_bytes())
                await asyncio.sleep(RSS_SAMPLE_S)

        async def join(index: int) -> tuple[bytes | None, float]:
            started = time.perf_counter_ns()
            async with asyncio.timeout(JOIN_TIMEOUT_S):
                step2 = await lean_join(server.port, ROOM, keep=index < CHECKED)
            return step2, (time.perf_counter_ns() - started) / 1e6

        sampler = asyncio.create_task(sample())
        cpu_before, loadgen_before = server.cpu_seconds(), _loadgen_cpu_s()
        try:
            joined = await asyncio.gather(
                *(join(i) for i in range(self.joiners)), return_exceptions=True
            )
        finally:
            sampling = False
            await sampler
        cpu = server.cpu_seconds() - cpu_before
        loadgen = _loadgen_cpu_s() - loadgen_before
        done = [j for j in joined if not isinstance(j, BaseException)]
        failed = [j for j in joined if isinstance(j, BaseException)]
        if failed:
            outcome.problems.append(
                f"{len(failed)} of {self.joiners} joiners failed: {failed[0]!r}"
            )
        times = [elapsed for _, elapsed in done]
        if times:
            outcome.values.update(
                sync_p50_ms=percentile(times, 0.50),
                sync_p99_ms=percentile(times, 0.99),
                sync_last_ms=max(times),
                peak_rss_mib=peak / _MIB,
                join_cpu_s=cpu,
                loadgen_cpu_s=loadgen,
            )
        kept = [step2 for step2, _ in done if step2 is not None]
        for index, step2 in enumerate(kept):
            messages = decode(step2)
            update = next(m.update for m in messages if isinstance(m, SyncStep2))
            outcome.values["step2_mib"] = len(update) / _MIB
            state = doc_state(doc_from([update]))
            if state != expected:
                outcome.problems.append(
                    f"joiner {index}: {state.describe()},"
                    f" expected {expected.describe()}"
                )
        outcome.info.update(joiners=self.joiners, doc_mib=self.doc_mib)
        server.check_alive()
