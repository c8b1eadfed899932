"""JupyterLab-like clients, a real Jupyter server and ysyncd keeping its files.

One ``jupyter server`` per module (tests/jupyterproc.py) with
jupyter_server_fileid and jupyter_server_ydoc: it hands out the file ids (the
session endpoint is the only way to get one), resolves them for ysyncd, and
is the reference the differential tests compare with. ysyncd runs with
``--jupyter-files fs --fs-root <the server's root_dir>``, its file ids from the
server's REST API, and polls files every 0.2 s.

Clients are :class:`JupyterClient` connections with ``jupyter_ydoc`` models
bound to their Doc, reaching ysyncd through the Jupyter URL form
(``user/{owner}/api/collaboration/room/{format}:{type}:{fileId}?sessionId=``).
As JupyterLab's frontend, they never set ``state.dirty`` themselves: it is
the server's way to tell them the document is saved.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import nbformat
import pytest
import pytest_asyncio
from jupyter_ydoc import YNotebook, YUnicode
from pycrdt import Array, Doc, Map, MapEvent, Text, TransactionEvent
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.jupyterclient import (
    ROOM_PREFIX,
    JupyterClient,
    append,
    cells_of,
    notebook_bytes,
    room_path,
    sha256,
    source_of,
    state_of,
)
from tests.jupyterproc import JupyterServer, collaborating_jupyter, file_args
from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled, wait_until
from ysyncd import protocol

pytestmark = pytest.mark.asyncio(loop_scope="module")

FIXTURES = Path(__file__).parent / "fixtures" / "jupyter"
OWNER = "alice"
POLL_S = 0.2
#: Long enough that nothing is saved unless a client asks.
NO_AUTOSAVE_S = 30.0
AUTOSAVE_S = 0.2


# --- fixtures and helpers -------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jupyter(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[JupyterServer]:
    async with collaborating_jupyter(tmp_path_factory.mktemp("jupyter")) as server:
        yield server


def ysyncd_args(jupyter: JupyterServer, save_delay: float) -> list[str]:
    return file_args(jupyter, save_delay=save_delay, poll_interval=POLL_S)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ysyncd(
    jupyter: JupyterServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServerProcess]:
    """ysyncd over the Jupyter server's files, saving only when asked."""
    db = tmp_path_factory.mktemp("ysyncd") / "ysyncd.db"
    async with running_server(db, *ysyncd_args(jupyter, NO_AUTOSAVE_S)) as server:
        yield server


@dataclass(frozen=True)
class Shared:
    """A file in the Jupyter server's root, as JupyterLab opens it."""

    path: str
    disk: Path
    file_format: str
    file_type: str
    file_id: str
    #: The Jupyter server's own sessionId (jupyter_server_ydoc's).
    jupyter_session: str

    @property
    def room_id(self) -> str:
        return f"{self.file_format}:{self.file_type}:{self.file_id}"


async def share(
    jupyter: JupyterServer,
    fixture: str,
    path: str,
    file_format: str = "json",
    file_type: str = "notebook",
) -> Shared:
    """Copy a fixture to ``path`` and get its id as JupyterLab does."""
    disk = jupyter.root_dir / path
    shutil.copy(FIXTURES / fixture, disk)
    resp = await jupyter.request(
        "PUT",
        f"api/collaboration/session/{quote(path, safe='')}",
        json={"format": file_format, "type": file_type},
        expect=(200, 201),
    )
    body = resp.json()
    return Shared(path, disk, file_format, file_type, body["fileId"], body["sessionId"])


async def epoch_of(server: ServerProcess) -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=scaled(10)) as http:
        resp = await http.get(server.http_url + "/_ysyncd/epoch")
    assert resp.status_code == 200, resp.text
    return str(resp.json()["epoch"])


async def ysyncd_path(server: ServerProcess, room_id: str) -> str:
    """The Jupyter URL form of a room, with the store's epoch as sessionId."""
    return room_path(OWNER, room_id, sessionId=await epoch_of(server))


def reference_url(jupyter: JupyterServer) -> str:
    return f"ws://127.0.0.1:{jupyter.port}"


def reference_path(jupyter: JupyterServer, shared: Shared) -> str:
    """jupyter_server_ydoc's own room; ``?token=`` is enough for jupyter_server."""
    return (
        f"{ROOM_PREFIX}{shared.room_id}"
        f"?sessionId={shared.jupyter_session}&token={jupyter.token}"
    )


class StateLog:
    """Every change to the doc's ``state`` map, as @jupyter/ydoc reports them."""

    def __init__(self, client: JupyterClient) -> None:
        self.state = client.doc.get("state", type=Map)
        self.changes: list[tuple[str, Any]] = []
        self.state.observe(self._on_change)

    def _on_change(self, event: MapEvent[Any]) -> None:
        for key in event.keys:
            self.changes.append((key, self.state.get(key)))


async def wait_for_file(
    path: Path, wanted: Callable[[bytes], bool], what: str, timeout: float = 10
) -> bytes:
    """Wait until the file's bytes are ``wanted``; those bytes."""
    seen: list[bytes] = []

    def ok() -> bool:
        try:
            seen.append(path.read_bytes())
        except FileNotFoundError:
            return False
        return wanted(seen[-1])

    await wait_until(ok, what, timeout)
    return seen[-1]


async def first_close(url: str, timeout: float = 2) -> tuple[int, str] | None:
    """How the server closes a new connection; None if it is still open after
    ``timeout`` seconds."""
    async with connect(url, open_timeout=scaled(10)) as ws:
        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:
                    await ws.recv()
        except ConnectionClosed:
            assert ws.close_code is not None
            return ws.close_code, ws.close_reason or ""
        except TimeoutError:
            return None


def file_stamp(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


# --- 1. saving ------------------------------------------------------------------------


async def test_save_writes_the_notebook_as_jupyter_server_would(
    jupyter: JupyterServer, ysyncd: ServerProcess
) -> None:
    """The room loads the file's cells; "save" writes them as jupyter_server's
    FileContentsManager would, and state.dirty/hash describe the file."""
    nb_file = await share(jupyter, "nb45.ipynb", "save.ipynb")
    original = nb_file.disk.read_bytes()
    on_disk = nbformat.reads(original.decode(), as_version=4)
    path = await ysyncd_path(ysyncd, nb_file.room_id)
    async with JupyterClient.connect(ysyncd.url, path) as client:
        notebook = YNotebook(ydoc=client.doc)
        loaded = notebook.get()
        assert [c["id"] for c in loaded["cells"]] == [c["id"] for c in on_disk.cells]
        assert [c["source"] for c in loaded["cells"]] == [
            c["source"] for c in on_disk.cells
        ]
        assert state_of(client) == {
            "path": "save.ipynb",
            "dirty": False,
            "hash": sha256(original),
        }

        append(source_of(client, 0), "\nEdited in the room ✓")
        notebook.append_cell(
            {
                "cell_type": "markdown",
                "id": "added-in-room",
                "metadata": {},
                "source": "A new cell 🎉",
            }
        )
        await client.wait_confirmed()
        assert nb_file.disk.read_bytes() == original, "saved without being asked"

        assert await client.save(1) == "success"
        expected = notebook_bytes(notebook.get())
        assert nb_file.disk.read_bytes() == expected
        await client.wait(
            lambda: state_of(client).get("hash") == sha256(expected),
            "state.hash of the saved file",
        )
        assert state_of(client)["dirty"] is False

    # The Jupyter server reads what was saved, and agrees on the hash.
    model = (
        await jupyter.request(
            "GET", "api/contents/save.ipynb", params={"hash": "1"}, expect=200
        )
    ).json()
    assert model["hash"] == sha256(expected)
    cells = model["content"]["cells"]
    assert cells[0]["source"] == on_disk.cells[0]["source"] + "\nEdited in the room ✓"
    assert cells[-1]["id"] == "added-in-room"
    assert len(cells) == len(on_disk.cells) + 1


async def test_save_writes_a_text_file(
    jupyter: JupyterServer, ysyncd: ServerProcess
) -> None:
    """The same for a text file (type file, format text) in a YUnicode model."""
    text_file = await share(jupyter, "unicode.md", "save.md", "text", "file")
    original = text_file.disk.read_bytes()
    path = await ysyncd_path(ysyncd, text_file.room_id)
    async with JupyterClient.connect(ysyncd.url, path) as client:
        document = YUnicode(ydoc=client.doc)
        assert document.get() == original.decode()
        assert state_of(client) == {
            "path": "save.md",
            "dirty": False,
            "hash": sha256(original),
        }
        source = client.doc.get("source", type=Text)
        source.insert(0, "Edited first ✓\n")
        append(source, "\nlast line 🎉")
        await client.wait_confirmed()
        assert text_file.disk.read_bytes() == original, "saved without being asked"

        assert await client.save(1) == "success"
        expected = document.get().encode("utf-8")
        assert expected.startswith("Edited first ✓\n".encode())
        assert text_file.disk.read_bytes() == expected
        await client.wait(
            lambda: state_of(client).get("hash") == sha256(expected),
            "state.hash of the saved file",
        )
        assert state_of(client)["dirty"] is False


# --- 2. autosave ----------------------------------------------------------------------


async def test_autosave_writes_edits_and_leaves_unchanged_files_alone(
    jupyter: JupyterServer, tmp_path: Path
) -> None:
    """An edit reaches the file by itself; a doc whose content did not change
    is not written (same inode and mtime)."""
    nb_file = await share(jupyter, "nb45.ipynb", "autosave.ipynb")
    before = file_stamp(nb_file.disk)
    quiet = 5 * AUTOSAVE_S  # several autosave delays and polls
    args = ysyncd_args(jupyter, AUTOSAVE_S)
    async with running_server(tmp_path / "ysyncd.db", *args) as server:
        path = await ysyncd_path(server, nb_file.room_id)
        async with JupyterClient.connect(server.url, path) as client:
            notebook = YNotebook(ydoc=client.doc)
            # Changes that leave the content as it is: what JupyterLab writes
            # on its first sync, and typing a character then deleting it.
            client.doc.get("state", type=Map)["document_id"] = nb_file.room_id
            source = source_of(client, 0)
            append(source, "x")
            del source[len(source) - 1]
            await client.wait_confirmed()
            await asyncio.sleep(scaled(quiet))
            assert file_stamp(nb_file.disk) == before, "an unchanged doc was written"

            append(source_of(client, 1), " Autosaved ✓")
            expected = notebook_bytes(notebook.get())
            await client.wait_confirmed()
            saved = await wait_for_file(
                nb_file.disk, lambda data: data == expected, "the autosave"
            )
            await client.wait(
                lambda: state_of(client).get("hash") == sha256(saved),
                "state.hash of the autosaved file",
            )
            assert state_of(client)["dirty"] is False
            after_save = file_stamp(nb_file.disk)
            # The save's own state update changes the doc, not its content.
            await asyncio.sleep(scaled(quiet))
            assert file_stamp(nb_file.disk) == after_save, "saved twice"


# --- 3. differential: the same scenario against jupyter_server_ydoc -------------------


def edit_notebook(client: JupyterClient) -> None:
    """Cell 0 edited, a markdown cell appended."""
    append(source_of(client, 0), "\nchanged by the differential test ✓")
    YNotebook(ydoc=client.doc).append_cell(
        {
            "cell_type": "markdown",
            "id": "differential",
            "metadata": {"tags": ["added"]},
            "source": "# Added\n\nwith two paragraphs 🎉",
        }
    )


def edit_text(client: JupyterClient) -> None:
    source = client.doc.get("source", type=Text)
    source.insert(0, "first ✓\n")
    append(source, "\nedited ✓")


async def edit_and_save(
    url: str, path: str, edit: Callable[[JupyterClient], None]
) -> list[tuple[str, Any]]:
    """Connect, edit, save; the state changes the client saw from the save."""
    async with JupyterClient.connect(url, path) as client:
        edit(client)
        await client.wait_confirmed()
        log = StateLog(client)
        assert await client.save(7) == "success"
        await client.wait(
            lambda: any(key == "hash" for key, _ in log.changes), "state.hash"
        )
        return log.changes


async def test_notebook_saves_are_byte_identical_to_jupyter_server_ydoc(
    jupyter: JupyterServer, ysyncd: ServerProcess
) -> None:
    """Copies A and B of a notebook, loaded, edited and saved the same way
    through jupyter_server_ydoc (A) and ysyncd (B), end up byte-identical."""
    ref = await share(jupyter, "nb45.ipynb", "differential-ref.ipynb")
    ours = await share(jupyter, "nb45.ipynb", "differential-ysyncd.ipynb")
    # Both load the same document.
    async with (
        JupyterClient.connect(
            reference_url(jupyter), reference_path(jupyter, ref)
        ) as ref_client,
        JupyterClient.connect(
            ysyncd.url, await ysyncd_path(ysyncd, ours.room_id)
        ) as our_client,
    ):
        assert (
            YNotebook(ydoc=our_client.doc).get() == YNotebook(ydoc=ref_client.doc).get()
        )

    await edit_and_save(
        reference_url(jupyter), reference_path(jupyter, ref), edit_notebook
    )
    await edit_and_save(
        ysyncd.url, await ysyncd_path(ysyncd, ours.room_id), edit_notebook
    )
    ref_bytes, our_bytes = ref.disk.read_bytes(), ours.disk.read_bytes()
    assert our_bytes != (FIXTURES / "nb45.ipynb").read_bytes()
    assert our_bytes == ref_bytes


async def test_saves_tell_clients_the_document_is_clean_as_the_reference_does(
    jupyter: JupyterServer, ysyncd: ServerProcess
) -> None:
    """JupyterLab marks a document dirty locally when it is edited and clears
    the mark only when the shared ``state.dirty`` reports a change to False
    (its DocumentModel follows the shared state one way). So after every save
    the server must set it, even when it is False already."""
    ref = await share(jupyter, "unicode.md", "clean-ref.md", "text", "file")
    ours = await share(jupyter, "unicode.md", "clean-ysyncd.md", "text", "file")
    ref_changes = await edit_and_save(
        reference_url(jupyter), reference_path(jupyter, ref), edit_text
    )
    our_changes = await edit_and_save(
        ysyncd.url, await ysyncd_path(ysyncd, ours.room_id), edit_text
    )
    assert ours.disk.read_bytes() == ref.disk.read_bytes()
    assert ("dirty", False) in ref_changes, ref_changes
    assert ("hash", sha256(ref.disk.read_bytes())) in ref_changes
    assert ("hash", sha256(ours.disk.read_bytes())) in our_changes
    assert ("dirty", False) in our_changes, (
        f"ysyncd's save sent no state.dirty: {our_changes}"
    )


# --- 4. an outside edit while the room has unsaved edits ------------------------------


async def test_outside_edits_merge_with_unsaved_room_edits(
    jupyter: JupyterServer, ysyncd: ServerProcess
) -> None:
    """A file rewritten by another program reaches the room, and the room's
    unsaved edit stays (jupyter_server_ydoc would drop it); a save keeps both."""
    nb_file = await share(jupyter, "nb45.ipynb", "outside.ipynb")
    original = nb_file.disk.read_bytes()
    path = await ysyncd_path(ysyncd, nb_file.room_id)
    async with JupyterClient.connect(ysyncd.url, path) as client:
        notebook = YNotebook(ydoc=client.doc)
        append(source_of(client, 0), " (unsaved room edit)")
        await client.wait_confirmed()
        expected = notebook.get()
        assert nb_file.disk.read_bytes() == original

        # Another program rewrites the file: cell 1 changes.
        outside = nbformat.reads(original.decode(), as_version=4)
        outside.cells[1].source = "Rewritten outside, ✓ longer than before."
        # One write() call: no half-written file that is a valid notebook.
        nb_file.disk.write_bytes(notebook_bytes(outside))
        written = nb_file.disk.read_bytes()
        expected["cells"][1]["source"] = outside.cells[1].source

        await client.wait(
            lambda: str(source_of(client, 1)) == outside.cells[1].source,
            "the outside edit",
        )
        assert str(source_of(client, 0)).endswith(" (unsaved room edit)")
        assert notebook.get() == expected
        await client.wait(
            lambda: state_of(client).get("hash") == sha256(written),
            "state.hash of the file written outside",
        )

        assert await client.save(1) == "success"
        saved = nb_file.disk.read_bytes()
        assert saved == notebook_bytes(expected)
        cells = nbformat.reads(saved.decode(), as_version=4).cells
        assert cells[0].source.endswith(" (unsaved room edit)")
        assert cells[1].source == "Rewritten outside, ✓ longer than before."


# --- 5. kill -9 mid-edit --------------------------------------------------------------


@dataclass
class Typist:
    """Types tokens into one cell (and appends cells) while connected or not,
    remembering each edit's update to tell which ones the server echoed."""

    client: JupyterClient
    cell: int
    prefix: str
    new_cells: bool
    edits: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._updates: list[bytes] = []
        self.client.doc.observe(self._on_change)

    def _on_change(self, event: TransactionEvent) -> None:
        self._updates.append(event.update)

    def _edit(self, token: str, change: Callable[[], None]) -> None:
        seen = len(self._updates)
        change()
        self.edits.append((token, self._updates[seen]))

    async def run(self, stop: asyncio.Event) -> None:
        notebook = YNotebook(ydoc=self.client.doc)
        n = 0
        while not stop.is_set():
            token = f"{self.prefix}{n};"
            source = source_of(self.client, self.cell)
            self._edit(token, partial(append, source, token))
            if self.new_cells and n % 8 == 7:
                cell_id = f"{self.prefix}-cell-{n}"
                cell = {"cell_type": "raw", "id": cell_id, "metadata": {}, "source": ""}
                self._edit(cell_id, partial(notebook.append_cell, cell))
            n += 1
            await asyncio.sleep(0.005)

    def typed(self) -> str:
        return "".join(t for t, _ in self.edits if t.endswith(";"))

    def acknowledged(self) -> list[str]:
        return [t for t, u in self.edits if u not in self.client.unconfirmed]

    def cell_ids(self) -> list[str]:
        return [t for t, _ in self.edits if not t.endswith(";")]


def copy_of(doc: Doc) -> Doc:
    """A client's doc as it reconnects, its history intact."""
    again: Doc = Doc()
    again.apply_update(doc.get_update())
    return again


async def test_a_crash_mid_edit_loses_and_duplicates_nothing(
    jupyter: JupyterServer, tmp_path: Path
) -> None:
    """kill -9 while two clients type; after a restart on the same database
    the session holds, acknowledged edits are there, and once the clients
    reconnect every edit is there exactly once."""
    nb_file = await share(jupyter, "nb45.ipynb", "crash.ipynb")
    on_disk = nbformat.reads(nb_file.disk.read_text(), as_version=4)
    args = ysyncd_args(jupyter, AUTOSAVE_S)
    async with running_server(tmp_path / "ysyncd.db", *args) as server:
        epoch = await epoch_of(server)
        path = room_path(OWNER, nb_file.room_id, sessionId=epoch)
        stop = asyncio.Event()
        async with (
            JupyterClient.connect(server.url, path) as a,
            JupyterClient.connect(server.url, path) as b,
        ):
            typists = [Typist(a, 0, "A", True), Typist(b, 1, "B", False)]
            tasks = [asyncio.create_task(t.run(stop)) for t in typists]
            await wait_until(
                lambda: all(len(t.acknowledged()) > 30 for t in typists),
                "acknowledged edits",
            )
            await server.kill()
            acknowledged = [t.acknowledged() for t in typists]
            at_kill = [len(t.edits) for t in typists]
            # A few edits offline: only the client that made them has them.
            await wait_until(
                lambda: all(
                    len(t.edits) > n for t, n in zip(typists, at_kill, strict=True)
                ),
                "edits made offline",
            )
            stop.set()
            await asyncio.gather(*tasks)
            docs = [copy_of(a.doc), copy_of(b.doc)]

        await server.start()
        assert await epoch_of(server) == epoch
        # What the server kept, before the clients bring back what it lost.
        async with JupyterClient.connect(server.url, path) as fresh:
            kept = [str(source_of(fresh, 0)), str(source_of(fresh, 1))]
            kept_ids = [c["id"] for c in cells_of(fresh)]

        async with (
            JupyterClient.connect(server.url, path, doc=docs[0]) as a,
            JupyterClient.connect(server.url, path, doc=docs[1]) as b,
            JupyterClient.connect(server.url, path) as reader,
        ):
            clients = [a, b, reader]
            await wait_until(
                lambda: cells_of(a) == cells_of(b) == cells_of(reader),
                "the clients to agree",
            )
            assert [c.close_code for c in clients] == [None, None, None]
            ids = [c["id"] for c in cells_of(reader)]
            sources = [str(source_of(reader, i)) for i in (0, 1)]

    assert len(ids) == len(set(ids)), f"duplicated cells: {ids}"
    # Every edit the server had acknowledged was still there after the crash...
    original_ids = [c["id"] for c in on_disk.cells]
    for i, (typist, acked) in enumerate(zip(typists, acknowledged, strict=True)):
        acked_text = "".join(t for t in acked if t.endswith(";"))
        original = on_disk.cells[typist.cell]["source"]
        assert kept[i].startswith(original + acked_text), (
            f"cell {typist.cell} lost acknowledged edits in the restart: it held "
            f"{kept[i]!r}, acknowledged were {acked_text!r}"
        )
        assert (original + typist.typed()).startswith(kept[i])
    acked_ids = [t for t in acknowledged[0] if not t.endswith(";")]
    assert kept_ids[: len(original_ids) + len(acked_ids)] == original_ids + acked_ids
    # ...and once the clients are back, every edit is there once.
    assert ids == original_ids + typists[0].cell_ids()
    assert sources == [
        on_disk.cells[0]["source"] + typists[0].typed(),
        on_disk.cells[1]["source"] + typists[1].typed(),
    ]


# --- 6. a wiped database --------------------------------------------------------------


async def stale_attempt(url: str, history: bytes) -> tuple[int, str, bool]:
    """Connect and push ``history`` as a reconnecting client would: how the
    server closes the connection, and whether the history went out first."""
    async with connect(url, open_timeout=scaled(10)) as ws:
        try:
            await ws.send(protocol.encode(protocol.SyncStep1(b"\x00")))
            await ws.send(protocol.encode(protocol.SyncStep2(history)))
            pushed = True
        except ConnectionClosed:
            pushed = False  # closed before it could send
        try:
            async with asyncio.timeout(scaled(10)):
                while True:
                    await ws.recv()
        except ConnectionClosed:
            assert ws.close_code is not None
            return ws.close_code, ws.close_reason or "", pushed


async def test_a_wiped_store_sends_stale_clients_to_reload(
    jupyter: JupyterServer, tmp_path: Path
) -> None:
    """After the database is lost, a client of the old epoch gets 1003
    unknown_session and its unsaved history goes nowhere."""
    nb_file = await share(jupyter, "nb45.ipynb", "wiped.ipynb")
    original = nb_file.disk.read_bytes()
    db = tmp_path / "ysyncd.db"
    args = ysyncd_args(jupyter, NO_AUTOSAVE_S)
    async with running_server(db, *args) as server:
        old_epoch = await epoch_of(server)
        stale_path = room_path(OWNER, nb_file.room_id, sessionId=old_epoch)
        async with JupyterClient.connect(server.url, stale_path) as client:
            notebook = YNotebook(ydoc=client.doc)
            append(source_of(client, 0), " unsaved, then lost")
            notebook.append_cell(
                {"cell_type": "raw", "id": "lost-cell", "metadata": {}, "source": "x"}
            )
            await client.wait_confirmed()
            history = client.doc.get_update()
            await server.kill()
        for name in (db.name, db.name + "-wal", db.name + "-shm", db.name + "-journal"):
            (db.parent / name).unlink(missing_ok=True)
        await server.start()
        new_epoch = await epoch_of(server)
        assert new_epoch != old_epoch

        code, reason, _ = await stale_attempt(f"{server.url}/{stale_path}", history)
        assert code == 1003
        assert json.loads(reason) == {
            "reason": "unknown_session",
            "sessionId": old_epoch,
            "reloadable": True,
        }
        loaded = nbformat.reads(original.decode(), as_version=4)
        fresh_path = room_path(OWNER, nb_file.room_id, sessionId=new_epoch)
        async with JupyterClient.connect(server.url, fresh_path) as fresh:
            assert [c["id"] for c in cells_of(fresh)] == [c.id for c in loaded.cells]
            assert [str(source_of(fresh, i)) for i in range(len(loaded.cells))] == [
                c.source for c in loaded.cells
            ]
            assert "lost" not in json.dumps(cells_of(fresh))
            assert await fresh.save(1) == "success"
            assert fresh.close_code is None
        assert nb_file.disk.read_bytes() == original


# --- 7. deleted files, unknown ids ----------------------------------------------------


async def test_deleted_files_and_unknown_ids_close_with_4404(
    jupyter: JupyterServer, ysyncd: ServerProcess
) -> None:
    """New connections to a deleted file's room, or to an unknown file id,
    are closed with 4404, as jupyter_server_ydoc closes them."""
    text_file = await share(jupyter, "unicode.md", "doomed.md", "text", "file")
    path = await ysyncd_path(ysyncd, text_file.room_id)
    url = f"{ysyncd.url}/{path}"
    async with JupyterClient.connect(ysyncd.url, path) as client:
        assert str(client.doc.get("source", type=Text)).startswith("# Ünïcödé")
        text_file.disk.unlink()

        # Each try takes up to 0.5 s: about 10 s in all.
        for _ in range(20):
            closed = await first_close(url, timeout=0.5)
            if closed is not None:
                break
            await asyncio.sleep(POLL_S / 2)
        assert closed is not None and closed[0] == 4404, closed
    closed = await first_close(url)
    assert closed is not None and closed[0] == 4404, closed
    assert closed[1].startswith("Error initializing")

    # Deleted before any room was opened on it.
    unopened = await share(jupyter, "nb45.ipynb", "never-opened.ipynb")
    unopened.disk.unlink()
    closed = await first_close(
        f"{ysyncd.url}/{await ysyncd_path(ysyncd, unopened.room_id)}"
    )
    assert closed is not None and closed[0] == 4404, closed

    unknown = "json:notebook:00000000-0000-0000-0000-00000000dead"
    closed = await first_close(f"{ysyncd.url}/{await ysyncd_path(ysyncd, unknown)}")
    assert closed is not None and closed[0] == 4404, closed


# --- 8. renames -----------------------------------------------------------------------


async def test_a_rename_moves_the_room_to_the_new_path(
    jupyter: JupyterServer, ysyncd: ServerProcess
) -> None:
    """A rename through the Contents API reaches state.path, and saves go to
    the new path."""
    nb_file = await share(jupyter, "nb45.ipynb", "before-rename.ipynb")
    path = await ysyncd_path(ysyncd, nb_file.room_id)
    async with JupyterClient.connect(ysyncd.url, path) as client:
        assert state_of(client)["path"] == "before-rename.ipynb"
        await jupyter.request(
            "PATCH",
            "api/contents/before-rename.ipynb",
            json={"path": "after rename ü.ipynb"},
            expect=200,
        )
        await client.wait(
            lambda: state_of(client).get("path") == "after rename ü.ipynb",
            "state.path to follow the rename",
        )
        notebook = YNotebook(ydoc=client.doc)
        append(source_of(client, 0), " after the rename")
        await client.wait_confirmed()
        assert await client.save(1) == "success"
        renamed = jupyter.root_dir / "after rename ü.ipynb"
        assert renamed.read_bytes() == notebook_bytes(notebook.get())
        assert not nb_file.disk.exists()


async def test_a_save_right_after_a_rename_follows_it(
    jupyter: JupyterServer, tmp_path: Path
) -> None:
    """A save that comes before any poll has seen a rename writes to the new
    path: it neither brings the old file back nor takes the room for gone."""
    nb_file = await share(jupyter, "nb45.ipynb", "save-after-rename.ipynb")
    args = file_args(jupyter, save_delay=NO_AUTOSAVE_S, poll_interval=600)
    async with running_server(tmp_path / "ysyncd.db", *args) as server:
        path = await ysyncd_path(server, nb_file.room_id)
        async with JupyterClient.connect(server.url, path) as client:
            append(source_of(client, 0), " renamed under the room")
            await client.wait_confirmed()
            await jupyter.request(
                "PATCH",
                "api/contents/save-after-rename.ipynb",
                json={"path": "renamed-before-save.ipynb"},
                expect=200,
            )
            assert await client.save(1) == "success"
            await client.wait(
                lambda: state_of(client).get("path") == "renamed-before-save.ipynb",
                "state.path to follow the rename",
            )
            renamed = jupyter.root_dir / "renamed-before-save.ipynb"
            expected = notebook_bytes(YNotebook(ydoc=client.doc).get())
            assert renamed.read_bytes() == expected
            assert not nb_file.disk.exists()
        # The room is not taken for gone: it opens again.
        async with JupyterClient.connect(server.url, path) as again:
            assert state_of(again)["path"] == "renamed-before-save.ipynb"


def repaired(doc: Doc, cells: int) -> bool:
    """Read without jupyter_ydoc, which fails on the shape before the repair:
    the bad cells are gone and no two cells share an id."""
    found = doc.get("cells", type=Array)
    ids = [cell.get("id") for cell in found if isinstance(cell, Map)]
    return len(found) == cells and len(set(ids)) == len(ids)


async def test_a_document_of_the_wrong_shape_is_repaired_not_fatal(
    jupyter: JupyterServer, tmp_path: Path
) -> None:
    """A client may give the shared types any shape jupyter_ydoc cannot read
    back: a cell without a type, a text among the cells.
    Before it saves, the server edits away just that, every client sees the
    repair, and the file gets the rest of the client's edits. The server and
    its other rooms are never affected."""
    nb_file = await share(jupyter, "nb45.ipynb", "wrong-shape.ipynb")
    other = await share(jupyter, "nb45.ipynb", "bystander.ipynb")
    args = ysyncd_args(jupyter, AUTOSAVE_S)
    async with running_server(tmp_path / "ysyncd.db", *args) as server:
        path = await ysyncd_path(server, nb_file.room_id)
        async with (
            JupyterClient.connect(server.url, path) as client,
            JupyterClient.connect(server.url, path) as watcher,
        ):
            notebook = YNotebook(ydoc=client.doc)
            good_cells = len(notebook.get()["cells"])
            twin = {**notebook.get()["cells"][0], "source": "a twin"}
            append(source_of(client, 0), " and bad cells")
            cells = client.doc.get("cells", type=Array)
            # A copy of the first cell's id first: reading the doc renames
            # it in place before it fails on the bad cells, an edit that must
            # be recorded with the repair.
            cells.insert(1, Map({k: v for k, v in twin.items() if k != "source"}))
            cells[1]["source"] = Text("a twin")
            cells.append(Map({"attachments": {}, "source": "no cell_type"}))
            cells.append(Text("not a cell"))
            good_cells += 1
            await client.wait_confirmed()

            saved = await wait_for_file(
                nb_file.disk,
                lambda data: b"and bad cells" in data,
                "the autosave of the repaired notebook",
            )
            on_disk = nbformat.reads(saved.decode(), as_version=4)
            nbformat.validate(on_disk)
            assert on_disk.nbformat == 4 and len(on_disk.cells) == good_cells
            assert on_disk.cells[0].source.endswith(" and bad cells")
            for each in (client, watcher):
                await each.wait(
                    lambda each=each: repaired(each.doc, good_cells),
                    "the repair at every client",
                )
            assert YNotebook(ydoc=watcher.doc).get() == notebook.get()
            # "skipped" while the autosave of the repair is under way (as
            # jupyter_server_ydoc answers): asked again once it is done.
            for attempt in range(1, 6):
                status = await client.save(attempt)
                if status != "skipped":
                    break
                await client.wait(
                    lambda: state_of(client).get("dirty") is False, "the autosave"
                )
            assert status == "success"

            bystander = await ysyncd_path(server, other.room_id)
            async with JupyterClient.connect(server.url, bystander) as fine:
                assert state_of(fine)["path"] == "bystander.ipynb"
            assert client.close_code is None


def nest(parent: Map[Any], key: str, levels: int) -> Map[Any]:
    """Put maps ``levels`` deep at ``parent[key]``, in one transaction (one
    update), level by level (pycrdt integrates a nested prelim recursively);
    return the deepest."""
    assert parent.doc is not None
    with parent.doc.transaction():
        inner: Map[Any] = Map()
        parent[key] = inner
        for _ in range(levels - 1):
            deeper: Map[Any] = Map()
            inner["k"] = deeper
            inner = deeper
    return inner


def map_depth(root: Map[Any]) -> int:
    """How deeply shared maps nest under ``root`` (iterative, not to_py)."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        shared, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((v, depth + 1) for v in shared.values() if isinstance(v, Map))
    return deepest


def depth_of(value: Any) -> int:
    """How deeply plain data nests (iterative: it may be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
    return deepest


async def test_deep_nesting_is_refused_at_the_edit_or_cut_never_fatal(
    jupyter: JupyterServer, tmp_path: Path
) -> None:
    """A map nested 1,000 deep in one 14 KB edit is refused (1008, not stored).
    Nested as deep over many edits, it is cut back at the next read (the
    autosave), recorded, and saved; the save before eviction, a restart and
    the next load all go through, and the server process never ends."""
    nb_file = await share(jupyter, "nb45.ipynb", "deeply-nested.ipynb")
    args = [*ysyncd_args(jupyter, AUTOSAVE_S), "--room-idle-seconds", "0.5"]
    async with running_server(tmp_path / "ysyncd.db", *args) as server:
        assert server.proc is not None
        pid = server.proc.pid
        path = await ysyncd_path(server, nb_file.room_id)
        async with (
            JupyterClient.connect(server.url, path) as attacker,
            JupyterClient.connect(server.url, path) as watcher,
        ):
            metadata = attacker.doc.get("meta", type=Map)["metadata"]
            nest(metadata, "deep", 1000)
            assert await attacker.wait_closed() == 1008
            # Nothing of it was relayed: the watcher's next save comes first.
            assert await watcher.save(1) == "success"
            assert "deep" not in watcher.doc.get("meta", type=Map)["metadata"]
        async with JupyterClient.connect(server.url, path) as writer:
            metadata = writer.doc.get("meta", type=Map)["metadata"]
            assert "deep" not in metadata
            # The same depth over 16 edits of 63 levels each.
            deepest = nest(metadata, "deep", 63)
            for _ in range(15):
                deepest = nest(deepest, "k", 63)
            append(source_of(writer, 0), " after the deep edits")
            await writer.wait_confirmed()
            saved = await wait_for_file(
                nb_file.disk,
                lambda data: b"after the deep edits" in data,
                "the autosave of the cut notebook",
                timeout=30,
            )
            on_disk = json.loads(saved)
            assert 1 < depth_of(on_disk["metadata"]["deep"]) <= 64
            await writer.wait(
                lambda: map_depth(writer.doc.get("meta", type=Map)["metadata"]) <= 65,
                "the cut, recorded for every client",
            )
        assert server.proc.pid == pid and server.proc.returncode is None
        # Evicted with a last save, then loaded again: no 1011.
        await wait_until(
            lambda: any("evicted" in line for line in server.log), "the eviction"
        )
        async with JupyterClient.connect(server.url, path) as again:
            assert "after the deep edits" in str(source_of(again, 0))
            assert again.close_code is None
        await server.restart()
        path = await ysyncd_path(server, nb_file.room_id)
        async with JupyterClient.connect(server.url, path) as after_restart:
            assert "after the deep edits" in str(source_of(after_restart, 0))
        assert server.proc.returncode is None
        assert not any("Traceback" in line for line in server.log), server.log
