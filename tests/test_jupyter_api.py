"""jupyter-server-ydoc's Python API and events, served by ysyncd.jupyter.

A real Jupyter server runs ysyncd.jupyter (jupyter-server-ydoc is off) and
``tests.jupyter_probe``, a server extension that finds collaboration the
ways real extensions do and edits notebooks through ``get_document``; a real
``ysyncd serve`` keeps the documents (tests/jupyterstack.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio

from tests.jupyterclient import cells_of, source_of
from tests.jupyterstack import Stack, ecosystem
from tests.timing import scaled

pytestmark = pytest.mark.asyncio(loop_scope="module")

FIXTURES = Path(__file__).parent / "fixtures" / "jupyter"
T = TypeVar("T")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with ecosystem(
        tmp_path_factory.mktemp("api"),
        extensions=["tests.jupyter_probe"],
        # Rooms are told "clean" soon after their last socket closes.
        config="c.YsyncdExtension.document_cleanup_delay = 1.0\n",
    ) as stack:
        yield stack


def notebook(stack: Stack, path: str) -> Path:
    disk = stack.jupyter.root_dir / path
    shutil.copy(FIXTURES / "nb45.ipynb", disk)
    return disk


def sources(client_cells: list[dict[str, object]]) -> list[str]:
    return [str(cell["source"]) for cell in client_cells]


async def test_extensions_find_collaboration_where_they_look(stack: Stack) -> None:
    """settings["jupyter_server_ydoc"], extension_apps (nbmodel) and
    extensions[...].enabled (jupyterlab-chat) all name one stand-in."""
    found = await stack.get_json("probe/lookup")
    assert found == {
        "settings": "Collaboration",
        "apps": 1,
        "same": True,
        "enabled": True,
        "disable_rtc": False,
    }


async def test_an_extension_edits_a_live_document(stack: Stack) -> None:
    disk = notebook(stack, "live.ipynb")
    session = await stack.open("live.ipynb")
    # Not open anywhere: None, as jupyter-server-ydoc says; create=True opens it.
    assert await stack.get_json("probe/document", path="live.ipynb") is None
    created = await stack.get_json("probe/document", path="live.ipynb", create="true")
    original = json.loads(disk.read_text())
    assert created == ["".join(c["source"]) for c in original["cells"]]

    async with stack.client(session) as browser:
        # The extension's cell reaches the browser...
        await stack.post_json(
            "probe/cell", {"source": "from_extension()"}, path="live.ipynb"
        )
        await browser.wait(
            lambda: "from_extension()" in sources(cells_of(browser)), "extension's cell"
        )
        # ...and the browser's edit reaches the extension's live model.
        source_of(browser, 0).insert(0, "# browser\n")

        async def seen_by_extension() -> list[str]:
            got = await stack.get_json(
                "probe/document", path="live.ipynb", copy="false"
            )
            assert isinstance(got, list)
            return got

        await wait_until(
            lambda cells: cells[0].startswith("# browser\n"), seen_by_extension
        )
        # A snapshot (copy=True) holds the same.
        snapshot = await stack.get_json("probe/document", path="live.ipynb")
        assert snapshot == sources(cells_of(browser))
        assert await browser.save(1) == "success"
    saved = json.loads(disk.read_text())
    assert ["".join(c["source"]) for c in saved["cells"]][-1] == "from_extension()"

    # ysyncd restarts under the live model: it reconnects, resyncs, and its
    # next edit lands once, beside everything else, nothing duplicated.
    await stack.ysyncd.kill()
    await stack.ysyncd.start()
    await stack.post_json(
        "probe/cell", {"source": "after_restart()"}, path="live.ipynb"
    )
    async with stack.client(session) as browser:
        await browser.wait(
            lambda: "after_restart()" in sources(cells_of(browser)), "second cell"
        )
        cells = sources(cells_of(browser))
    assert cells.count("from_extension()") == 1
    assert cells.count("after_restart()") == 1
    assert len(cells) == len(original["cells"]) + 2
    await stack.post_json("probe/release")


async def test_get_document_follows_the_rooms_open_here(stack: Stack) -> None:
    """A room is "open" while a socket to it is, and is then told clean."""
    notebook(stack, "open.ipynb")
    session = await stack.open("open.ipynb")
    async with stack.events() as events:
        async with stack.client(session):
            event = await events.wait_for(
                "session/v1", room=session.room_id, action="initialize"
            )
            assert event["path"] == "open.ipynb"
            await events.wait_for("awareness/v1", roomid=session.room_id, action="join")
            assert await stack.get_json("probe/document", path="open.ipynb") is not None
        await events.wait_for("awareness/v1", roomid=session.room_id, action="leave")
        await events.wait_for("session/v1", room=session.room_id, action="clean")


async def test_two_views_of_one_file_are_warned_about(stack: Stack) -> None:
    """The notebook open as a notebook and in the text editor: a WARNING
    session event, which JupyterLab shows as "opened with two different views"."""
    notebook(stack, "twice.ipynb")
    as_notebook = await stack.open("twice.ipynb")
    as_text = await stack.open("twice.ipynb", file_type="file", file_format="text")
    assert as_text.file_id == as_notebook.file_id
    async with stack.events() as events:
        async with stack.client(as_notebook):
            await events.wait_for(
                "session/v1", room=as_notebook.room_id, action="initialize"
            )
            assert not events.of("session/v1", level="WARNING")
            async with stack.client(as_text):
                warning = await events.wait_for(
                    "session/v1", level="WARNING", room=as_text.room_id
                )
    assert warning["path"] == "twice.ipynb"
    assert "another collaborative session" in warning["msg"]


async def wait_until(
    done: Callable[[T], bool], read: Callable[[], Awaitable[T]], timeout: float = 10
) -> T:
    """Poll ``read()`` (an HTTP question: nothing to await but the answer)
    until ``done(value)``; the value."""
    value = None
    try:
        async with asyncio.timeout(scaled(timeout)):
            while True:
                value = await read()
                if done(value):
                    return value
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"still {value!r}") from None
