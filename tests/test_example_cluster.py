"""examples/cluster as it stands: three ysyncd nodes on one PostgreSQL and one
Redis, behind a real HAProxy running examples/cluster/haproxy.cfg.

Real processes throughout: the nodes (tests/serverproc.py), PostgreSQL and
Redis (tests/services.py), Debian's haproxy (started by run.py's own
helpers), and run.py itself. Clients dial only the balancer. The checks are on
document content, on HAProxy's view of its servers (its stats CSV) and on
each node's /metrics. Without haproxy the tests skip, except on CI
(``CI=true``): they fail there.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml
from pycrdt import Text

from tests.cluster import metric, running_cluster, wait_healthz
from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled, wait_until
from tests.yclient import YClient, stored_content
from ysyncd.config import describe

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cluster"


def _load_run() -> ModuleType:
    """examples/cluster/run.py as a module (examples/ is no package)."""
    name = "examples_cluster_run"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up there.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


run = _load_run()


def require_haproxy() -> None:
    """Skip the calling test without haproxy, except on CI: fail there."""
    if run.haproxy_binary() is not None:
        return
    msg = "haproxy not found: install Debian's haproxy (apt-get install haproxy)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@contextlib.asynccontextmanager
async def balancer(
    nodes: Sequence[ServerProcess], log: Path
) -> AsyncIterator[run.Balancer]:
    """HAProxy with the example's config in front of ``nodes``, all checked up."""
    require_haproxy()
    try:
        async with run.running_haproxy(
            [f"127.0.0.1:{node.port}" for node in nodes], log=log
        ) as lb:
            yield lb
    except BaseException:
        # pytest shows it with the failure.
        sys.stderr.write(f"--- HAProxy's log ---\n{read_log(log)}")
        raise


def read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def connections(nodes: Sequence[ServerProcess]) -> list[int]:
    """Each node's open WebSocket connections, from its /metrics."""
    return [int(await metric(node, "ysyncd_connections")) for node in nodes]


async def wait_servers(
    lb: run.Balancer, up: Sequence[str], timeout: float
) -> dict[str, float]:
    """Wait until HAProxy's checks found just ``up`` healthy; return when (by
    time.monotonic(), to the second) each server last changed state."""
    view = await run.wait_checked(
        lb.stats_url, up, timeout=scaled(timeout), proc=lb.proc
    )
    now = time.monotonic()
    return {name: now - int(row["lastchg"]) for name, row in view.items()}


def words(client: YClient) -> set[str]:
    return set(str(client.text).split())


def echoed_words(client: YClient) -> set[str]:
    """The words of the document as the server sent it: what it had committed."""
    return set(str(client.server_view.get("text", type=Text)).split())


async def test_clients_through_the_balancer_spread_over_the_nodes_and_converge(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Nine clients of one room connect through HAProxy, which spreads them
    over all three nodes (leastconn); they edit at once, and all converge on
    every edit, as does a late reader through the balancer."""
    room = "through-haproxy"
    async with (
        running_cluster(pg_url, redis_url, 3) as nodes,
        balancer(nodes, tmp_path / "haproxy.log") as lb,
        contextlib.AsyncExitStack() as stack,
    ):
        clients = [
            await stack.enter_async_context(YClient.connect(lb.url, room))
            for _ in range(9)
        ]
        spread = await connections(nodes)
        assert sum(spread) == 9 and min(spread) >= 2, spread

        async def edit(n: int, client: YClient) -> None:
            for i in range(30):
                client.text.insert(len(client.text), f"{n}.{i} ")
                client.map[f"{n}"] = i
                await asyncio.sleep(0.005)

        await asyncio.gather(*(edit(n, c) for n, c in enumerate(clients)))
        await asyncio.gather(*(c.wait_confirmed() for c in clients))
        expected = {f"{n}.{i}" for n in range(9) for i in range(30)}
        await asyncio.gather(
            *(
                c.wait(lambda c=c: words(c) == expected, "every edit", timeout=20)  # type: ignore[misc]
                for c in clients
            )
        )
        union = clients[0].content()
        assert union["map"] == {f"{n}": 29 for n in range(9)}
        await asyncio.gather(*(c.wait_content(union) for c in clients))
        assert await stored_content(lb.url, room) == union


async def test_a_killed_node_is_taken_out_and_its_clients_lose_nothing(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    """``kill -9`` one of three nodes while six clients edit through HAProxy.
    Connecting through the balancer right away reaches a live node, which
    holds every edit the dead node had echoed; the dead node's clients come
    back that way with their own edits; HAProxy's check marks the node down
    within seconds; and everyone converges on every edit."""
    room = "killed-behind-haproxy"
    async with (
        running_cluster(pg_url, redis_url, 3) as nodes,
        balancer(nodes, tmp_path / "haproxy.log") as lb,
        contextlib.AsyncExitStack() as stack,
    ):
        victim = nodes[0]  # HAProxy's n1
        clients = [
            await stack.enter_async_context(YClient.connect(lb.url, room))
            for _ in range(6)
        ]
        on_victim = (await connections(nodes))[0]
        assert on_victim >= 1

        killed_at = 0.0
        for i in range(40):
            for n, client in enumerate(clients):
                client.text.insert(len(client.text), f"{n}.{i} ")
            if i == 20:
                await victim.kill()
                killed_at = time.monotonic()
            await asyncio.sleep(0.01)

        def closed() -> list[YClient]:
            return [c for c in clients if c._reader is not None and c._reader.done()]

        await wait_until(lambda: len(closed()) == on_victim, "the victim's clients")
        # What the victim echoed to its clients, it had committed.
        echoed = set().union(*(echoed_words(c) for c in closed()))
        assert echoed
        # At once, before the checks may have noticed: a connection the dead
        # node refuses is retried on another (haproxy.cfg's redispatch).
        async with YClient.connect(lb.url, room) as reader:
            await reader.wait(
                lambda: echoed <= words(reader), "what the dead node echoed", 20
            )
        print(f"its echoes on a live node {time.monotonic() - killed_at:.1f} s after")
        back = [
            await stack.enter_async_context(
                YClient.connect(lb.url, room, doc=c.doc)  # with its own edits
            )
            for c in closed()
        ]
        await asyncio.gather(*(c.wait_confirmed(timeout=20) for c in back))
        down_after = (await wait_servers(lb, ["n2", "n3"], 10))["n1"] - killed_at
        print(f"n1 marked down {down_after:.0f} s after the kill")
        assert down_after < scaled(5), down_after
        assert int((await run.haproxy_servers(lb.stats_url))["n1"]["scur"]) == 0

        expected = {f"{n}.{i}" for n in range(6) for i in range(40)}
        for client in [c for c in clients if c not in closed()] + back:
            await client.wait(
                lambda c=client: words(c) == expected,  # type: ignore[misc]
                "convergence",
                timeout=20,
            )
        final = await stored_content(lb.url, room)
        assert set(final["text"].split()) == expected


class Forwarder:
    """A TCP forwarder to a port on 127.0.0.1 that can be cut and mended, as
    a network partition between one node and PostgreSQL would be."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        """Listen (on the same port again after a cut)."""
        self._server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections, and reset the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()

    async def _link(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self.target
            )
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            for end in (writer, up_writer):
                self._links.discard(end)
                end.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = (
        f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    )
    return urlunsplit(parts._replace(netloc=netloc))


async def test_a_node_whose_store_is_unreachable_gets_no_new_connections(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    """n3 reaches PostgreSQL through a forwarder the test cuts: its /healthz
    says 503, HAProxy's check takes it out, and the clients that connect
    meanwhile all land on n1 and n2 and converge. Mended, it answers 200,
    is checked back in, and serves the next client the whole room."""
    room = "store-cut"
    forwarder = Forwarder(urlsplit(pg_url).port or 5432)
    await forwarder.open()
    try:
        async with (
            running_cluster(pg_url, redis_url, 2) as healthy,
            running_server(
                with_port(pg_url, forwarder.port), "--backplane", redis_url
            ) as cut_off,
        ):
            nodes = [*healthy, cut_off]
            async with (
                balancer(nodes, tmp_path / "haproxy.log") as lb,
                contextlib.AsyncExitStack() as stack,
            ):
                await forwarder.cut()
                cut_at = time.monotonic()
                await wait_healthz(cut_off, 503)
                await wait_servers(lb, ["n1", "n2"], timeout=15)
                print(f"n3 out {time.monotonic() - cut_at:.1f} s after the cut")
                clients = [
                    await stack.enter_async_context(YClient.connect(lb.url, room))
                    for _ in range(6)
                ]
                for n, client in enumerate(clients):
                    client.text.insert(len(client.text), f"w{n} ")
                await asyncio.gather(*(c.wait_confirmed() for c in clients))
                expected = {f"w{n}" for n in range(6)}
                for client in clients:
                    await client.wait(
                        lambda c=client: words(c) == expected,  # type: ignore[misc]
                        "convergence",
                    )
                assert await connections(nodes) == [3, 3, 0]

                await forwarder.open()
                await wait_healthz(cut_off, 200, timeout=15)
                await wait_servers(lb, ["n1", "n2", "n3"], timeout=15)
                # leastconn: n3, with no connection, gets the next one.
                async with YClient.connect(lb.url, room) as joiner:
                    assert words(joiner) == expected
                    assert await connections(nodes) == [3, 3, 1]
    finally:
        await forwarder.cut()


async def test_run_py_serves_the_layout_and_stops_on_ctrl_c(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    """The script as documented: it prints the balancer's URL, a client's
    edits through it reach every node, and Ctrl-C stops every process it
    started."""
    require_haproxy()
    script = EXAMPLE / "run.py"
    log = tmp_path / "run.log"
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            "--postgres",
            pg_url,
            "--redis",
            redis_url,
            "--port",
            "0",
            "--stats-port",
            "0",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
        )
    assert proc.stdout is not None
    out: list[str] = []
    try:
        async with asyncio.timeout(scaled(60)):
            while not out or not out[-1].startswith("Connect to "):
                line = (await proc.stdout.readline()).decode()
                assert line, "run.py exited:\n" + "".join(out) + read_log(log)
                out.append(line)
        url = re.fullmatch(r"Connect to (ws://\S+)/<room>\n", out[-1])
        assert url, out
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", "".join(out))]
        nodes = re.findall(r"^n\d: (ws://\S+) ", "".join(out), re.M)
        assert len(pids) == 4 and len(nodes) == 3, out
        async with YClient.connect(url[1], "run-py") as client:
            client.text.insert(0, "through run.py")
            await client.wait_confirmed()
        for node in nodes:
            assert (await stored_content(node, "run-py"))["text"] == "through run.py"
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(scaled(30)):
            rest, _ = await proc.communicate()
        assert proc.returncode == 0, read_log(log)
        assert rest.decode().endswith("stopped\n")
        for pid in pids:
            assert not _alive(pid), f"pid {pid} outlived run.py"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_compose_file_parses_and_names_real_settings() -> None:
    """compose.yaml (reference only) is YAML, its three nodes share one
    PostgreSQL and one Redis, and every YSYNCD_* variable is a setting."""
    text = (EXAMPLE / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    known = {env for s in describe() for env in s.envvars}
    named = set(re.findall(r"\bYSYNCD_[A-Z_]+\b", text))
    assert {"YSYNCD_DB", "YSYNCD_BACKPLANE"} <= named
    assert named <= known, named - known
    services = compose["services"]
    nodes = [s for s in services.values() if "YSYNCD_BACKPLANE" in str(s)]
    assert len(nodes) == len(run.SERVERS)
    assert "./haproxy.cfg:" in str(services["haproxy"]["volumes"])
    # The nodes are built from the repository's Dockerfile: it must install
    # the PostgreSQL and Redis clients.
    dockerfile = (ROOT / "Dockerfile").read_text()
    extras = re.search(r'pip install [^\n]*"\.\[([a-z,]+)\]"', dockerfile)
    assert extras and "cluster" in extras[1].split(","), extras
