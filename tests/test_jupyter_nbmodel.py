"""Server-side execution: jupyter-server-nbmodel writes outputs through ysyncd.

A real Jupyter server runs ysyncd.jupyter with jupyter-server-nbmodel and a
real ipykernel; cells are run through nbmodel's REST API, as JupyterLab does
with ``serverSideExecution``. nbmodel finds the notebook through
``extension_apps["jupyter_server_ydoc"]`` and writes the outputs into the
live model, which ysyncd stores and sends to every client.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.jupyterclient import cells_of
from tests.jupyterstack import Session, Stack, ecosystem
from tests.timing import scaled

pytestmark = pytest.mark.asyncio(loop_scope="module")

FIXTURES = Path(__file__).parent / "fixtures" / "jupyter"
#: The fixture notebook's code cell ``x = 6; x * 7``.
CELL = "2f0d7c3e"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with ecosystem(
        tmp_path_factory.mktemp("nbmodel"),
        extensions=["jupyter_server_nbmodel"],
        config="c.YsyncdExtension.server_side_execution = True\n",
    ) as stack:
        yield stack


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kernel(stack: Stack) -> str:
    resp = await stack.jupyter.request(
        "POST", "api/kernels", json={"name": "python3"}, expect=201
    )
    return str(resp.json()["id"])


async def execute(
    stack: Stack, kernel: str, session: Session, cell_id: str, code: str
) -> str:
    """Ask nbmodel to run ``code`` as cell ``cell_id``; its request URL."""
    resp = await stack.jupyter.request(
        "POST",
        f"api/kernels/{kernel}/execute",
        json={
            "code": code,
            "metadata": {"document_id": session.room_id, "cell_id": cell_id},
        },
        expect=202,
    )
    return str(resp.json()["request_url"])


async def finished(stack: Stack, request_url: str, timeout: float = 60) -> Any:
    """Poll nbmodel's request until it is done (it answers 202 meanwhile)."""
    async with asyncio.timeout(scaled(timeout)):
        while True:
            resp = await stack.jupyter.request("GET", request_url, expect=(200, 202))
            if resp.status_code == 200:
                return resp.json()
            await asyncio.sleep(0.1)  # a REST poll, as JupyterLab's


def cell(cells: list[dict[str, Any]], cell_id: str) -> dict[str, Any]:
    return next(c for c in cells if c.get("id") == cell_id)


def texts(outputs: list[dict[str, Any]]) -> str:
    """Streams' text and results' plain text, in order."""
    parts: list[Any] = []
    for output in outputs:
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] == "execute_result":
            parts.append(output["data"]["text/plain"])
    # A file's text may be split in lines, as nbformat writes it.
    return "".join("".join(p) if isinstance(p, list) else str(p) for p in parts)


async def test_outputs_reach_clients_and_the_file(stack: Stack, kernel: str) -> None:
    disk = stack.jupyter.root_dir / "run.ipynb"
    shutil.copy(FIXTURES / "nb45.ipynb", disk)
    session = await stack.open("run.ipynb")
    async with stack.client(session) as browser:
        request = await execute(stack, kernel, session, CELL, "print('hello')\n6 * 7")
        await finished(stack, request)
        # nbmodel writes the outputs as they come, the count once it is done.
        await browser.wait(
            lambda: cell(cells_of(browser), CELL).get("execution_count") is not None,
            "the execution count",
        )
        ran = cell(cells_of(browser), CELL)
        assert texts(ran["outputs"]) == "hello\n42"
        assert await browser.save(1) == "success"
    saved = cell(json.loads(disk.read_text())["cells"], CELL)
    assert texts(saved["outputs"]) == "hello\n42"
    assert saved["execution_count"] == ran["execution_count"]


async def test_a_client_away_during_a_long_cell_sees_every_output(
    stack: Stack, kernel: str
) -> None:
    """The browser leaves while the cell runs; nbmodel keeps writing into the
    live model, and the browser, back, has every line."""
    shutil.copy(FIXTURES / "nb45.ipynb", stack.jupyter.root_dir / "long.ipynb")
    session = await stack.open("long.ipynb")
    code = (
        "import time\nfor i in range(6):\n    print(i, flush=True)\n    time.sleep(0.3)"
    )
    async with stack.client(session) as browser:
        request = await execute(stack, kernel, session, CELL, code)
        await browser.wait(
            lambda: "0\n" in texts(cell(cells_of(browser), CELL)["outputs"]),
            "the first line",
        )
    await finished(stack, request)
    async with stack.client(session) as browser:
        await browser.wait(
            lambda: cell(cells_of(browser), CELL).get("execution_state") == "idle",
            "the end of the run",
        )
        outputs = cell(cells_of(browser), CELL)["outputs"]
    assert texts(outputs) == "0\n1\n2\n3\n4\n5\n"
