"""The server: wires the store, the committer, the rooms and websockets together.

:func:`serve` runs until ``stop`` is set, then shuts down in order:

1. stop listening (handshakes still in flight get HTTP 503);
2. flush every pending commit, which releases the echoes waiting for it;
3. close every peer with 1001 (going away) and wait for their handlers;
4. commit whatever arrived in the meantime, then close the store.

Routing happens in ``process_request``, before any upgrade: requests without
an upgrade go to :mod:`ysyncd.routes`; a path that names no valid room gets
400, and a connection over the room, per-room or total limit gets 503.
"""

from __future__ import annotations

import asyncio
import http
import logging
import socket
import ssl
import weakref
from collections.abc import Callable, Sequence

import anyio
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosedError
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from ysyncd.admission import Admission, Admitter, duplicate_header
from ysyncd.api import API, DocumentsApi, read_admin_token
from ysyncd.auth import Authorizer, allowed_origins, build_authorizer
from ysyncd.auth.recheck import Rechecker
from ysyncd.cluster import open_cluster
from ysyncd.commits import Committer
from ysyncd.config import Settings
from ysyncd.connection import Connection, counted
from ysyncd.dashboard import Dashboard
from ysyncd.errors import (
    AuthError,
    BackplaneError,
    BadRequest,
    InvalidRoomName,
    ProtocolError,
    StoreError,
)
from ysyncd.health import Health
from ysyncd.integrate import UpdatePolicy, is_panic
from ysyncd.jupyter.files import FileError, FileGone
from ysyncd.jupyter.service import JupyterRooms, unknown_session
from ysyncd.keepalive import DrainWatch, Keepalive
from ysyncd.peer import BACKLOG_BYTES, Peer, close_code_for, close_reason, fan_out
from ysyncd.presence import AwarenessPolicy
from ysyncd.reader import Reader
from ysyncd.room import Room
from ysyncd.rooms import RoomRegistry
from ysyncd.roomtypes import RoomFailed
from ysyncd.routes import FILES_CHANGED, HISTORY, Routes
from ysyncd.stats import Stats
from ysyncd.store import is_postgres_url, open_store
from ysyncd.store.memory import MemoryStore
from ysyncd.store.snapshot import Snapshot, build_snapshot
from ysyncd.turns import Turns
from ysyncd.updates import Limits
from ysyncd.webhooks import start_webhooks
from ysyncd.worker import Worker, raise_stack_limit

__all__ = ["serve"]


log = logging.getLogger("ysyncd.server")

Listening = Callable[[str, int], None]


class _App(Routes, DocumentsApi, Dashboard):
    """The per-server state the websockets callbacks need."""

    def __init__(
        self,
        settings: Settings,
        registry: RoomRegistry,
        committer: Committer,
        stats: Stats,
        keepalive: Keepalive | None,
        authorizer: Authorizer,
        jupyter: JupyterRooms,
        drains: DrainWatch,
        health: Health,
    ) -> None:
        self.jupyter = jupyter
        self.health = health
        self.settings = settings
        self.admin_token = read_admin_token(settings.admin_token_file)
        self.authorizer = authorizer
        self.rechecker = (
            Rechecker(authorizer, max(settings.auth_cache_seconds, 1.0))
            if authorizer.rechecks
            else None
        )
        self.admitter = Admitter(
            authorizer,
            jupyter.route,
            max_room_name_bytes=settings.max_room_name_bytes,
            origins=allowed_origins(settings),
            keep_credentials=self.rechecker is not None,
        )
        self.keepalive = keepalive
        self.registry = registry
        self.committer = committer
        self.stats = stats
        self.connections = 0
        self.drains = drains
        self.turns = Turns()
        #: Connections in their opening handshake (see _counted).
        self.handshakes: set[Connection] = set()
        # Admitted but not yet handled; weak, so a failed handshake leaks nothing.
        self.admissions: weakref.WeakKeyDictionary[ServerConnection, Admission] = (
            weakref.WeakKeyDictionary()
        )
        stats.gauges.update(
            handshakes=lambda: len(self.handshakes),
            rooms=lambda: len(registry.rooms),
            connections=lambda: self.connections,
            commit_backlog=lambda: committer.backlog,
        )
        stats.counter_reads.update(
            commits=lambda: committer.stats_commits,
            compactions=lambda: committer.stats_compactions,
            updates_committed=lambda: committer.committed,
        )

    def _over_limit(self, room: str) -> str | None:
        """The name of the limit this connection would pass, if any."""
        s = self.settings
        if self.connections + len(self.admissions) >= s.max_connections:
            return "max_connections"
        loaded = self.registry.rooms.get(room)
        if loaded is None:
            if len(self.registry.rooms) + self.registry.loading >= s.max_rooms:
                return "max_rooms"
        elif len(loaded.peers) >= s.max_peers_per_room:
            return "max_peers_per_room"
        return None

    async def process_request(
        self, conn: ServerConnection, request: Request
    ) -> Response | None:
        try:
            return await self._process_request(conn, request)
        except InvalidRoomName as exc:
            self.stats.limit_hit("room_name", str(exc))
            return conn.respond(http.HTTPStatus.BAD_REQUEST, f"{exc}\n")
        except BadRequest as exc:
            self.stats.limit_hit("bad_request", str(exc))
            return conn.respond(http.HTTPStatus.BAD_REQUEST, f"{exc}\n")
        except Exception as exc:  # noqa: BLE001 - logged by Stats.failed
            # A bug here must cost one request a 500, not the log a
            # traceback per request: logged once, then at debug level.
            self.stats.failed("handling a request", exc)
            return conn.respond(
                http.HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n"
            )

    async def _process_request(
        self, conn: ServerConnection, request: Request
    ) -> Response | None:
        repeated = duplicate_header(request)
        if repeated is not None:
            raise BadRequest(f"the {repeated} header appears more than once")
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            path = request.path.partition("?")[0]
            if path.startswith(FILES_CHANGED):
                return await self._files_changed(conn, request, path)
            if path.startswith(HISTORY):
                return await self._history(conn, request, path)
            if path.startswith(API):
                return await self._api(conn, request)
            return self._dashboard(request, path) or self._plain_http(conn, path)
        located = self.admitter.locate(request.path)
        try:
            grant = await self.admitter.authorize(request, located.key)
        except AuthError as exc:
            return self._refuse(conn, located.key, exc)
        limit = self._over_limit(located.key)
        if limit is not None:
            self.stats.limit_hit(limit, f"refused a connection to {located.key!r}")
            return conn.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"{limit}\n")
        self.admissions[conn] = self.admitter.admission(request, located, grant)
        return None

    def handshake_started(self, conn: Connection) -> None:
        """A TCP connection arrived: drop it unread past --max-handshakes."""
        if len(self.handshakes) >= self.settings.max_handshakes:
            self.stats.limit_hit("max_handshakes", "dropped a connection unread")
            conn.transport.abort()
            return
        self.handshakes.add(conn)

    def handshake_ended(self, conn: Connection) -> None:
        self.handshakes.discard(conn)

    async def handler(self, conn: ServerConnection) -> None:
        assert isinstance(conn, Connection)  # see counted()
        self.handshake_ended(conn)
        admission = self.admissions.pop(conn)
        # The handshake is over and the admission holds what we needed from it;
        # emptying the kept headers saves a few KiB per idle connection.
        for message in (conn.request, conn.response):
            if message is not None:
                message.headers.clear()
        if self.keepalive is not None:
            self.keepalive.add(conn)
        if self.rechecker is not None and admission.credentials is not None:
            self.rechecker.add(
                conn, admission.credentials, admission.room, admission.grant
            )
        self.connections += 1
        self.stats.count("connections")
        try:
            await self._serve_peer(conn, admission)
        except Exception as exc:  # noqa: BLE001 - logged by Stats.failed
            # A bug a client can trigger must cost that client its
            # connection, not the log a traceback per connection.
            self.stats.failed("serving a connection", exc)
            await _close_draining(conn, CloseCode.INTERNAL_ERROR, "internal error")
        except BaseException as exc:
            if not is_panic(exc):
                raise
            self.stats.failed("serving a connection (pycrdt panicked)", exc)
            await _close_draining(conn, CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self.connections -= 1
            # Count the code we sent when we closed; otherwise the peer's.
            sent = conn.protocol.close_sent
            code = sent.code if sent is not None else conn.close_code
            if code is not None:
                self.stats.closed(code)

    async def _serve_peer(self, conn: Connection, admission: Admission) -> None:
        route, registry, setup = admission.jupyter, self.registry, None
        if route is not None:
            if route.target is None:
                registry = self.jupyter.transient
            else:
                session = route.session
                epoch = self.committer.store.epoch
                if (
                    session
                    and session != epoch
                    and not self.settings.skip_session_check
                ):
                    # History from a lineage this store does not hold: merging
                    # it would duplicate cells. The client must reload.
                    await conn.close(
                        CloseCode.UNSUPPORTED_DATA, unknown_session(session)
                    )
                    return
                setup = self.jupyter.setup(route.target)
        try:
            room = await registry.acquire(admission.room, setup)
        except FileError as exc:
            await conn.close(exc.close_code, f"Error initializing: {exc}")
            return
        except StoreError:
            await conn.close(CloseCode.INTERNAL_ERROR, "room could not be loaded")
            return
        try:
            await self._serve_in_room(conn, admission, room)
        finally:
            registry.release(room)

    async def _serve_in_room(
        self, conn: Connection, admission: Admission, room: Room
    ) -> None:
        binding = room.document
        if binding is not None and binding.gone:
            await conn.close(FileGone.close_code, "Error initializing: file deleted")
            return
        peer = Peer(
            conn,
            admission.dialect,
            read_only=admission.grant.read_only,
            user=admission.grant.user,
            send_buffer_bytes=self.settings.send_buffer_bytes,
            on_slow=self._on_slow_peer,
            on_backlog=self.drains.watch,
            turns=self.turns,
        )
        try:
            await room.settle()
            if not self._room_has_space(room):
                await conn.close(CloseCode.TRY_AGAIN_LATER, "room is full")
                return
            room.join(peer)
            reader = Reader(
                peer, room, self.committer, self.jupyter, admission.jupyter is not None
            )
            await conn.read(reader.receive)
        except ProtocolError as exc:
            self.stats.limit_hit(
                exc.limit or f"bad_input_{type(exc).__name__}", str(exc)
            )
            log.debug("peer %d in room %r sent bad input: %s", peer.id, room.key, exc)
            room.leave(peer)  # at once: its cursor must not outlive the verdict
            await _close_draining(conn, close_code_for(exc), str(exc))
        except ConnectionClosedError as exc:
            log.debug("peer %d connection lost: %s", peer.id, exc)
        except RoomFailed as exc:
            await conn.close(CloseCode.INTERNAL_ERROR, str(exc))
        finally:
            room.leave(peer)

    def _on_slow_peer(self) -> None:
        self.stats.limit_hit("send_buffer_bytes", "a peer fell behind")

    def _room_has_space(self, room: Room) -> bool:
        # process_request checks loaded rooms; connections racing into a room
        # that was still loading are checked here, after the fact (close 1013).
        if len(room.peers) < self.settings.max_peers_per_room:
            return True
        self.stats.limit_hit("max_peers_per_room", f"room {room.key!r} is full")
        return False


async def _close_draining(conn: Connection, code: int, reason: str) -> None:
    """Close, discarding frames the peer had queued meanwhile.

    Reading pauses while frames wait unread (``max_queue``), so without the
    discarding the peer's close reply would sit unread until the close timeout.
    """
    conn.discard()
    await conn.close(code, close_reason(reason))


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context for --certfile/--keyfile, or None for plain ws://."""
    if settings.certfile is None:
        if settings.keyfile is not None:
            raise ValueError("--keyfile needs --certfile")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.certfile, settings.keyfile)
    return context


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_listening: Listening | None = None,
    authorizer: Authorizer | None = None,
    tls: ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until ``stop`` is set, then shut down gracefully (see module docs).

    ``authorizer`` defaults to the one ``settings.auth`` names; ``tls`` (see
    :func:`tls_context`) serves wss:// instead of ws://; ``sock``, a socket
    already listening (a worker's, see :mod:`ysyncd.supervisor`), is served
    instead of binding ``settings.host`` and ``settings.port``.
    """
    if authorizer is None:
        authorizer = build_authorizer(settings)
    raise_stack_limit()
    try:
        await _serve(settings, stop, on_listening, authorizer, tls, sock)
    finally:
        await authorizer.aclose()


async def _serve(
    settings: Settings,
    stop: asyncio.Event,
    on_listening: Listening | None,
    authorizer: Authorizer,
    tls: ssl.SSLContext | None,
    sock: socket.socket | None,
) -> None:
    if settings.backplane and not is_postgres_url(settings.db):
        raise BackplaneError(
            settings.backplane,
            "needs a store shared by every node: --db postgresql://...",
        )
    store = await open_store(
        settings.db,
        synchronous=settings.sqlite_synchronous,
        busy_timeout=settings.sqlite_busy_timeout,
        shared=bool(settings.backplane),
        history_retention=settings.history_retention,
    )
    # Started on first use: most servers never hold a room big enough.
    worker = Worker()
    try:

        async def build_in_worker(updates: Sequence[bytes]) -> Snapshot:
            return await worker.run(build_snapshot, list(updates))

        committer = Committer(
            store,
            batch_max=settings.commit_batch_max,
            queue_max=settings.commit_queue_max,
            compact_after=settings.compact_after,
            build=build_in_worker,
        )
        updates = UpdatePolicy(
            limits=Limits(max_depth=settings.max_nesting_depth),
            seconds_per_mib=settings.apply_seconds_per_mib,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            cluster = None
            if settings.backplane:
                cluster = await open_cluster(settings.backplane, store.epoch, tg)
                committer.listeners.append(cluster.committed)
            health = Health(committer, cluster)
            tg.start_soon(health.watch)
            policy = AwarenessPolicy(
                timeout=settings.awareness_timeout,
                max_state_bytes=settings.max_awareness_bytes,
                rate=settings.awareness_rate,
                max_clients=settings.max_awareness_clients,
            )
            registry = RoomRegistry(
                committer,
                tg,
                idle_seconds=settings.room_idle_seconds,
                policy=policy,
                fan_out=fan_out,
                updates=updates,
                worker=worker,
                cluster=cluster,
            )
            tg.start_soon(registry.run_ticks)
            keepalive = None
            if settings.ping_interval:
                keepalive = Keepalive(settings.ping_interval, settings.ping_timeout)
                tg.start_soon(keepalive.run)
            # Transient Jupyter rooms (global awareness, forks): memory only,
            # and relayed between nodes like the others, under names of their
            # own (a NUL cannot start a room's name).
            scratch = Committer(MemoryStore(), batch_max=settings.commit_batch_max)
            await tg.start(scratch.run)
            passing = cluster.space("\x00transient/") if cluster else None
            if passing is not None:
                scratch.listeners.append(passing.committed)
            jupyter = JupyterRooms(
                settings,
                RoomRegistry(
                    scratch,
                    tg,
                    idle_seconds=settings.room_idle_seconds,
                    policy=policy,
                    fan_out=fan_out,
                    updates=updates,
                    cluster=passing,
                ),
                tg,
                cluster,
            )
            tg.start_soon(jupyter.transient.run_ticks)
            stats = Stats()
            committer.on_latency = stats.observe
            start_webhooks(settings, committer, stats, tg)
            if cluster is not None:
                cluster.report(stats)
            drains = DrainWatch(
                settings.drain_timeout,
                backlog=BACKLOG_BYTES,
                on_drop=lambda: stats.limit_hit(
                    "drain_timeout", "dropped a peer that stopped reading"
                ),
            )
            tg.start_soon(drains.run)
            app = _App(
                settings,
                registry,
                committer,
                stats,
                keepalive,
                authorizer,
                jupyter,
                drains,
                health,
            )
            if app.rechecker is not None:
                tg.start_soon(app.rechecker.run)
            async with ws_serve(
                app.handler,
                None if sock else settings.host,
                None if sock else settings.port,
                sock=sock,
                create_connection=counted(app, settings.max_message_bytes),
                process_request=app.process_request,
                compression=None,  # per-peer deflate would dominate fan-out cost
                max_size=settings.max_message_bytes,
                # Frames buffered per connection before reading pauses; with
                # large messages allowed, this bounds a connection's memory.
                max_queue=4,
                ping_interval=None,  # see Keepalive
                ping_timeout=None,
                close_timeout=settings.close_timeout,
                server_header=None,
                ssl=tls,
            ) as server:
                _announce(server, on_listening, "wss" if tls else "ws")
                await stop.wait()
                await _shut_down(server, committer, settings.shutdown_timeout)
            # Commit what arrived during the close, finish any compaction, then
            # cancel what is left (idle-eviction timers).
            committer.stop()
            with anyio.move_on_after(settings.shutdown_timeout) as scope:
                await committer.wait_stopped()
            if scope.cancelled_caught:
                log.error(
                    "the store did not finish within %.0f s", settings.shutdown_timeout
                )
            tg.cancel_scope.cancel()
            if cluster is not None:
                await cluster.aclose()
    finally:
        # In a thread: it waits for the worker process to exit.
        await anyio.to_thread.run_sync(worker.close)
        await store.aclose()
    log.info("ysyncd stopped")


def _announce(server: Server, on_listening: Listening | None, scheme: str) -> None:
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        log.info("ysyncd listening on %s://%s:%d", scheme, host, port)
        if on_listening is not None:
            on_listening(host, port)


async def _shut_down(server: Server, committer: Committer, timeout: float) -> None:
    log.info("shutting down: no new connections, flushing commits")
    server.server.close()
    with anyio.move_on_after(timeout) as scope:
        await committer.flush()
    if scope.cancelled_caught:
        log.error("commits did not finish within %.0f s", timeout)
    server.close(code=CloseCode.GOING_AWAY)
    with anyio.move_on_after(timeout):
        await server.wait_closed()
