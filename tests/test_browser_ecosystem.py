"""JupyterLab in a real browser with what builds on collaboration.

One notebook, with a kernel, on each collaboration backend
(tests/browser/servers.py: jupyter_server_ydoc, the reference, and ysyncd):

1. **Server-side execution** (``serverSideExecution`` with
   jupyter-server-nbmodel): a cell run with Shift+Enter is executed through
   nbmodel's REST API, and its output reaches the page through the shared
   notebook.
2. **The timeline** of jupyter-collaboration-ui: the status bar's "Document
   Timeline" button shows a slider; moving it to the start shows the
   notebook as it was loaded, and "Restore version" makes that the
   notebook's content for everyone (read here by a pycrdt client).
3. **Two views**: another user opens the same ``.ipynb`` in the text
   Editor; both pages warn that the file "has been opened with two
   different views", as the JupyterLab RTC docs say.

Needs Chromium as tests/test_browser.py does (skipped without it, except on CI).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path
from urllib.parse import quote, urlsplit

import nbformat
import pytest
from playwright.async_api import Page, Request, async_playwright, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout

from tests.browser.lab import LabPage, describe, launch_chromium, ms
from tests.browser.servers import BACKENDS, Lab
from tests.jupyterclient import ROOM_PREFIX, JupyterClient, cells_of
from tests.test_browser import chromium  # noqa: F401 - the fixture

pytestmark = [
    pytest.mark.browser,
    pytest.mark.usefixtures("chromium"),
    pytest.mark.timeout(240),
]

NOTEBOOK = "eco.ipynb"
SOURCE = "print(6 * 7)"
TYPED = "typed_later = 1"
CONFIG = (
    "c.Collaboration.server_side_execution = True\n"
    # window.jupyterapp, to open the notebook with the text Editor.
    "c.LabApp.expose_app_in_browser = True\n"
)
TWO_VIEWS = "has been opened with two different views"
#: Cell executors that are not nbmodel's own (JupyterLab has one provider of
#: INotebookCellExecutor; nbmodel's README says to disable the default one).
#: jupyter-docprovider's would run cells through nbmodel too, but posts
#: another body than nbmodel 0.2.9 reads.
EXECUTORS_OFF = (
    "@jupyterlab/notebook-extension:cell-executor",
    "@jupyter/docprovider-extension:notebook-cell-executor",
)


def write_notebook(path: Path) -> None:
    """One code cell, and a kernelspec: JupyterLab starts the kernel."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(SOURCE)]
    nbformat.write(nb, path)


async def first_cell_source(lab: Lab) -> str:
    """The first cell's source in the room, read by a pycrdt client."""
    resp = await lab.jupyter.request(
        "PUT",
        f"api/collaboration/session/{quote(NOTEBOOK)}",
        json={"format": "json", "type": "notebook"},
        expect=(200, 201),
    )
    body = resp.json()
    url = lab.url.replace("http://", "ws://").rstrip("/")
    room = f"json:notebook:{body['fileId']}"
    query = f"sessionId={body['sessionId']}&token={lab.token}"
    async with JupyterClient.connect(url, f"{ROOM_PREFIX}{room}?{query}") as client:
        return str(cells_of(client)[0]["source"])


async def wait_for_source(lab: Lab, wanted: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = await first_cell_source(lab)
        if seen == wanted:
            return
        # Each read is a new connection and a full sync: nothing to await.
        await asyncio.sleep(0.2)
    raise AssertionError(f"the room's first cell is {seen!r}, not {wanted!r}")


def is_execute(request: Request) -> bool:
    """nbmodel's REST execution of a cell."""
    return request.method == "POST" and urlsplit(request.url).path.endswith("/execute")


async def open_with_editor(page: Page, path: str) -> None:
    await page.evaluate(
        "path => window.jupyterapp.commands.execute("
        "'docmanager:open', {path, factory: 'Editor'})",
        path,
    )


@pytest.mark.parametrize("backend", sorted(BACKENDS))
async def test_execution_timeline_and_two_views(backend: str, tmp_path: Path) -> None:
    make_lab = partial(
        BACKENDS[backend],
        extensions=["jupyter_server_nbmodel"],
        config=CONFIG,
        disabled=EXECUTORS_OFF,
    )
    async with make_lab(tmp_path / "lab") as lab, async_playwright() as playwright:
        write_notebook(lab.root_dir / NOTEBOOK)
        browser = await launch_chromium(playwright)
        pages: list[LabPage] = []
        try:
            alice = await LabPage.open(browser, lab.url, lab.token, "alice", NOTEBOOK)
            pages.append(alice)
            await expect(alice.cell_editor()).to_be_visible(timeout=ms(30))
            await expect(
                alice.page.locator(
                    ".jp-Notebook-ExecutionIndicator[data-status='idle']"
                )
            ).to_have_count(1, timeout=ms(60))

            # 1. Shift+Enter runs the cell on the server; the output comes
            # back through the shared notebook.
            # A run asked for before the page's session holds the kernel is
            # dropped by the executor (it clears the cell): ask once more then.
            # The request proves the cell ran through nbmodel's REST API.
            for attempt in range(2):
                try:
                    async with alice.page.expect_request(is_execute, timeout=ms(20)):
                        await alice.cell_editor().click()
                        await alice.page.keyboard.press("Shift+Enter")
                    break
                except PlaywrightTimeout:
                    if attempt:
                        raise
            output = alice.page.locator(".jp-Cell .jp-OutputArea-output").first
            await expect(output).to_contain_text("42", timeout=ms(60))

            # 2. The timeline: an edit, then the slider back to the start.
            await alice.type_in_cell(TYPED, new_line=True)
            await expect(alice.cell_editor()).to_contain_text(TYPED, timeout=ms(15))
            await wait_for_source(lab, f"{SOURCE}\n{TYPED}")
            await alice.page.locator("[title='Document Timeline']").click()
            slider = alice.page.locator("input.jp-Slider")
            await expect(slider).to_be_visible(timeout=ms(20))
            await slider.fill("0")
            await expect(alice.cell_editor()).not_to_contain_text(TYPED, timeout=ms(20))
            await alice.page.locator(".jp-restoreBtn").click()
            await wait_for_source(lab, SOURCE)

            # 3. The same file in the text Editor, in another page: both warn.
            bob = await LabPage.open(browser, lab.url, lab.token, "bob", None)
            pages.append(bob)
            await expect(bob.page.locator("#jp-main-dock-panel")).to_be_visible(
                timeout=ms(30)
            )
            await open_with_editor(bob.page, NOTEBOOK)
            for page in (alice, bob):
                dialog = page.page.get_by_role("dialog").filter(has_text=TWO_VIEWS)
                await expect(dialog).to_be_visible(timeout=ms(20))
        except BaseException as exc:
            shots = []
            for page in pages:
                try:
                    shots.append(str(await page.screenshot(tmp_path)))
                except Exception as shot_error:
                    shots.append(f"{page.user}: no screenshot ({shot_error!r})")
            exc.add_note("screenshots: " + ", ".join(shots))
            exc.add_note(describe(pages))
            exc.add_note(lab.logs()[-20000:])
            raise
        finally:
            await browser.close()
