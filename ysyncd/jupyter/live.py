"""Live documents: a room's doc inside the Jupyter server, in step with ysyncd.

Server extensions (jupyter-server-nbmodel, jupyterlab-chat, AI agents) edit
collaborative documents through ``get_document(copy=False)``, which with
jupyter-server-ydoc hands them the room's own jupyter_ydoc model. Here the
rooms live in ysyncd, so a :class:`LiveDocument` is one more client of the
room: a pycrdt Doc joined to ysyncd over one WebSocket, as the Jupyter server
itself (``X-Ysyncd-User: jupyter-server``), never as a browser's user.

- Everyone's edits reach it; its own edits, however they are made (in a
  transaction, or later by a model's observers), go to ysyncd as updates,
  which ysyncd stores before anyone else sees them.
- If the socket drops (ysyncd restarts), it reconnects with backoff and
  resyncs both ways from state vectors: what either side missed crosses
  once, and nothing is duplicated.
- Awareness goes both ways: the model's ``awareness`` holds everyone's
  states, and what the extension sets locally is announced, and renewed
  before ysyncd would drop it as stale.

:class:`LiveDocuments` keeps one per room and hands the same model to every
caller. The socket stays open while anything holds the document (its model
or any shared type of it: nbmodel keeps a cell while it writes outputs) and
for ``keep_seconds`` after the last ``get_document``, so that callers asking
again soon share one connection; then it closes.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from jupyter_ydoc.ybasedoc import YBaseDoc
from pycrdt import Awareness as PycrdtAwareness
from pycrdt import Doc, Map, TransactionEvent
from tornado import web
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError

from ysyncd.errors import DecodeError
from ysyncd.jupyter import documents
from ysyncd.jupyter.glue import Glue
from ysyncd.protocol import (
    Awareness,
    SyncStep1,
    SyncStep2,
    Update,
    decode_jupyter,
    encode,
    encode_update,
)

__all__ = ["SERVER_USER", "LiveDocument", "LiveDocuments", "YsyncdUnavailable"]

log = logging.getLogger("ysyncd.jupyter.live")

#: Who the Jupyter server's own edits are from, in ysyncd's logs.
SERVER_USER = "jupyter-server"
#: Reconnection backoff (seconds): first wait and cap.
_BACKOFF = (0.1, 5.0)
#: How often a local awareness state is announced again (ysyncd drops
#: states not renewed within 30 s, as y-protocols does).
_RENEW_SECONDS = 15.0


class YsyncdUnavailable(RuntimeError):
    """ysyncd did not give the document in time (down, or refusing)."""


class LiveDocument:
    """One room's doc in this Jupyter server, joined to ysyncd (see module)."""

    def __init__(
        self,
        glue: Glue,
        room_id: str,
        file_type: str,
        model: YBaseDoc | None = None,
    ) -> None:
        """``model``: a model of a doc made here, whose content the room is
        to get (a timeline's); by default an empty doc takes the room's."""
        self.glue = glue
        self.room_id = room_id
        self.file_type = file_type
        doc: Doc[Any] = Doc() if model is None else model.ydoc
        # Weak: what keeps the doc (and so the socket) alive is its holders,
        # the model's or a shared type's; this until the model is made.
        self._doc = weakref.ref(doc)
        self._holding: Doc[Any] | None = doc
        self.synced = asyncio.Event()
        #: Set once :meth:`close` was called; the socket is not reopened.
        self.closed = False
        self._model: weakref.ref[YBaseDoc] | None = None
        if model is not None:
            self._model = weakref.ref(model)
            self._holding = None  # the model's holder keeps the doc
        self._conn: WebSocketClientConnection | None = None
        self._remote = False  # applying what ysyncd sent: not ours to send
        self._synced_here = False  # this connection got ysyncd's state
        self._runner: asyncio.Task[None] | None = None
        self._subscription = doc.observe(self._on_transaction)

    @property
    def doc(self) -> Doc[Any] | None:
        """The doc, or None once nothing holds it."""
        return self._doc()

    # -- the model -------------------------------------------------------------------

    def model(self) -> YBaseDoc:
        """The jupyter_ydoc model over :attr:`doc`; one for every caller.

        Made once the doc holds ysyncd's content. A model may edit the doc as
        it is made (YChat marks itself dirty): the values the room had are
        put back before anything is sent, so the room sees no change.
        """
        model = self._model() if self._model is not None else None
        if model is not None:
            return model
        doc = self._doc()
        assert doc is not None, "a model is asked for by a holder of the doc"
        state = doc.get("state", type=Map)
        before, vector = dict(state.items()), doc.get_state()
        # Sent as one update once the state is put back (a model cannot be
        # made inside a transaction: its UndoManager takes the doc).
        self._remote = True
        try:
            model = documents.model_class(self.file_type)(doc)
            with doc.transaction():
                for key, value in before.items():
                    if state.get(key) != value:
                        state[key] = value
        finally:
            self._remote = False
        made = doc.get_update(vector)
        if made != b"\x00\x00":
            self._send(encode_update(made))
        self._model = weakref.ref(model)
        self._holding = None
        if model.awareness is not None:
            model.awareness.observe(self._on_awareness)
        return model

    # -- the socket ------------------------------------------------------------------

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
            self._runner.add_done_callback(_log_failure)

    async def wait_synced(self, timeout: float) -> None:
        """Wait until the doc holds what ysyncd holds; YsyncdUnavailable if not."""
        try:
            async with asyncio.timeout(timeout):
                await self.synced.wait()
        except TimeoutError:
            raise YsyncdUnavailable(
                f"ysyncd did not give room {self.room_id!r} within {timeout:g} s"
            ) from None

    def close(self) -> None:
        """Close the socket for good (what is not sent yet is sent first)."""
        if self.closed:
            return
        self.closed = True
        self._holding = None
        doc = self._doc()
        if doc is not None:
            doc.unobserve(self._subscription)
        if self._runner is not None:
            self._runner.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(1000, "document released")

    async def _run(self) -> None:
        delay = _BACKOFF[0]
        while not self.closed:
            try:
                conn = await self.glue.connect(self.room_id, "", SERVER_USER, True)
            except web.HTTPError as exc:
                log.warning(
                    "room %s: ysyncd refused or is away (%s); retrying in %.1f s",
                    self.room_id,
                    exc.reason or exc.status_code,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF[1])
                continue
            self._conn = conn
            self._synced_here = False
            try:
                await self._serve(conn)
            finally:
                self._conn = None
            if self.closed:
                return
            # Back off unless the socket got as far as a sync: a room that
            # turns every connection away (4404, a gone file) is not hammered.
            delay = _BACKOFF[0] if self._synced_here else min(delay * 2, _BACKOFF[1])
            log.info(
                "room %s: ysyncd closed the socket (%s %s); reconnecting in %.1f s",
                self.room_id,
                conn.close_code,
                conn.close_reason,
                delay,
            )
            await asyncio.sleep(delay)

    async def _serve(self, conn: WebSocketClientConnection) -> None:
        # Both sides send their state vector; each answers with what the
        # other lacks. Edits made while away cross here, once.
        doc = self._doc()
        if doc is None:
            return
        self._send(encode(SyncStep1(doc.get_state())))
        self._announce()
        renew = asyncio.get_running_loop().call_later(_RENEW_SECONDS, self._renew)
        try:
            while (frame := await conn.read_message()) is not None:
                if isinstance(frame, str):
                    continue  # ysyncd sends none
                try:
                    messages = decode_jupyter(frame)
                except DecodeError as exc:
                    log.warning(
                        "room %s: a bad frame from ysyncd: %s", self.room_id, exc
                    )
                    continue
                for message in messages:
                    self._receive(message)
        finally:
            renew.cancel()

    def _receive(self, message: object) -> None:
        doc = self._doc()
        if doc is None:
            return  # released: the finalizer closes the socket
        match message:
            case SyncStep1(state_vector):
                self._send(encode(SyncStep2(doc.get_update(state_vector))))
            case SyncStep2(update) | Update(update):
                self._remote = True
                try:
                    doc.apply_update(update)
                finally:
                    self._remote = False
                if isinstance(message, SyncStep2):
                    self._synced_here = True
                    self.synced.set()
            case Awareness(update):
                awareness = self._awareness()
                if awareness is not None:
                    awareness.apply_awareness_update(update, "remote")

    def _send(self, frame: bytes) -> None:
        conn = self._conn
        if conn is None:
            return  # the next connection's resync carries it
        try:
            sent = conn.write_message(frame, binary=True)
        except WebSocketClosedError:
            return  # likewise
        sent.add_done_callback(_consume)

    # -- what changes here --------------------------------------------------------

    def _on_transaction(self, event: TransactionEvent) -> None:
        if not self._remote:
            self._send(encode_update(event.update))

    def _on_awareness(self, topic: str, changes: tuple[dict[str, Any], Any]) -> None:
        if topic == "update" and changes[1] == "local":
            self._announce()

    def _awareness(self) -> PycrdtAwareness | None:
        model = self._model() if self._model is not None else None
        return None if model is None else model.awareness

    def _announce(self) -> None:
        awareness = self._awareness()
        if awareness is None or awareness.get_local_state() is None:
            return
        self._send(
            encode(Awareness(awareness.encode_awareness_update([awareness.client_id])))
        )

    def _renew(self) -> None:
        self._announce()
        if self._conn is not None:
            asyncio.get_running_loop().call_later(_RENEW_SECONDS, self._renew)


class LiveDocuments:
    """This Jupyter server's live documents, one per room (see the module)."""

    def __init__(self, glue: Glue, *, keep_seconds: float = 60.0) -> None:
        self.glue = glue
        self.keep_seconds = keep_seconds
        self._live: dict[str, LiveDocument] = {}
        # A strong reference to each model asked for lately, and its timer.
        self._kept: dict[str, tuple[YBaseDoc, asyncio.TimerHandle]] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    def __contains__(self, room_id: str) -> bool:
        live = self._live.get(room_id)
        return live is not None and not live.closed

    async def get(self, room_id: str, file_type: str) -> YBaseDoc:
        """The live model of ``room_id``, synced with ysyncd.

        Raises:
            YsyncdUnavailable: ysyncd did not give the document in time.
        """
        lock = self._opening.setdefault(room_id, asyncio.Lock())
        async with lock:
            live = self._live.get(room_id)
            if live is None or live.closed:
                live = LiveDocument(self.glue, room_id, file_type)
                self._live[room_id] = live
                live.start()
                # Closed once nothing holds its doc any more.
                weakref.finalize(live.doc, self._release, room_id, live)
            try:
                await live.wait_synced(self.glue.timeout)
            except YsyncdUnavailable:
                if not live.synced.is_set():
                    self._forget(room_id, live)
                raise
            model = live.model()
        self._keep(room_id, model)
        return model

    async def attach(self, room_id: str, file_type: str, model: YBaseDoc) -> None:
        """Join ``model``'s doc, made here, to ``room_id`` (a new room): the
        first sync gives the room its content, in one update. It stays
        joined while the caller holds the model.

        Raises:
            YsyncdUnavailable: ysyncd did not take it in time.
        """
        live = LiveDocument(self.glue, room_id, file_type, model)
        if model.awareness is not None:
            model.awareness.observe(live._on_awareness)
        self._live[room_id] = live
        live.start()
        weakref.finalize(model.ydoc, self._release, room_id, live)
        try:
            await live.wait_synced(self.glue.timeout)
        except YsyncdUnavailable:
            self._forget(room_id, live)
            raise

    def close_room(self, room_id: str) -> None:
        """Close ``room_id``'s socket now, whoever holds its doc."""
        live = self._live.get(room_id)
        if live is not None:
            self._forget(room_id, live)

    def _keep(self, room_id: str, model: YBaseDoc) -> None:
        old = self._kept.pop(room_id, None)
        if old is not None:
            old[1].cancel()
        timer = asyncio.get_running_loop().call_later(
            self.keep_seconds, self._kept.pop, room_id, None
        )
        self._kept[room_id] = (model, timer)

    def _release(self, room_id: str, live: LiveDocument) -> None:
        """The doc is unreachable: close its socket (a weakref finalizer)."""
        self._forget(room_id, live)

    def _forget(self, room_id: str, live: LiveDocument) -> None:
        live.close()
        if self._live.get(room_id) is live:
            del self._live[room_id]
            self._opening.pop(room_id, None)

    def close(self) -> None:
        """Close every live document (the Jupyter server stops)."""
        for _, timer in self._kept.values():
            timer.cancel()
        self._kept.clear()
        for room_id, live in list(self._live.items()):
            self._forget(room_id, live)


def _consume(sent: asyncio.Future[None]) -> None:
    # A write to a socket that closed meanwhile: the reconnect resyncs it.
    if not sent.cancelled() and sent.exception() is not None:
        log.debug("a frame for ysyncd was not sent: %s", sent.exception())


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("a live document's connection failed", exc_info=exc)
