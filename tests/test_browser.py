"""JupyterLab in a real browser: two users edit one notebook together.

JupyterLab from PyPI with the prebuilt collaboration frontend
(jupyter-collaboration-ui + jupyter-docprovider) runs in headless Debian
Chromium under Playwright: no CDN, no browser download, loopback only. Two
browser contexts, Alice and Bob, open the same notebook. Each types into the
first cell and sees the other's text; each sees the other in the Collaboration
panel (the global awareness room) and as a named remote cursor in the cell
(the document's awareness); Alice saves with Ctrl+S and the file on disk has
both lines.

Parametrized over the collaboration backend (tests/browser/servers.py):
jupyter_server_ydoc, the reference, and ysyncd behind its server extension.

Run only these: ``pytest -m browser``. Needs ``/usr/bin/chromium`` (Debian
package ``chromium``; ``$YSYNCD_TESTS_CHROMIUM`` names another) and the
``playwright``, ``jupyterlab``, ``jupyter-collaboration-ui`` and
``jupyter-docprovider`` packages (the test extra). Without Chromium it is
skipped, except on CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from tests.browser.lab import (
    CHROMIUM,
    LabPage,
    describe,
    launch_chromium,
    ms,
    wait_for_notebook,
    write_notebook,
)
from tests.browser.servers import BACKENDS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.usefixtures("chromium"),
    # Two JupyterLabs loading in one Chromium take ~10 s; the whole case < 60 s.
    pytest.mark.timeout(120),
]


@pytest.fixture
def chromium() -> None:
    """Skip without Debian's Chromium, except on CI (``CI=true``): fail there."""
    if CHROMIUM.exists():
        return
    msg = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


NOTEBOOK = "shared.ipynb"
ALICE_LINE = "typed_by_alice = 1234"
BOB_LINE = "typed_by_bob = 5678"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
async def test_two_users_edit_one_notebook(backend: str, tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()

    def lap(what: str) -> None:
        timings[what] = round(time.monotonic() - started, 2)

    async with (
        BACKENDS[backend](tmp_path / "lab") as lab,
        async_playwright() as playwright,
    ):
        disk = lab.root_dir / NOTEBOOK
        write_notebook(disk, "")
        lap("servers up")
        browser = await launch_chromium(playwright)
        pages: list[LabPage] = []
        try:
            alice, bob = await asyncio.gather(
                *(
                    LabPage.open(browser, lab.url, lab.token, user, NOTEBOOK)
                    for user in ("alice", "bob")
                )
            )
            pages = [alice, bob]
            await asyncio.gather(alice.ready(), bob.ready())
            lap("notebook open in both pages")

            # Each sees the other in the Collaboration panel.
            for me, other in ((alice, bob), (bob, alice)):
                await me.open_collaboration_panel()
                await expect(me.collaborator(other.display_name)).to_be_visible(
                    timeout=ms(15)
                )
            lap("collaborators listed")
            if lab.room_sockets is not None:
                # Two rooms per page: the notebook and the global awareness.
                sockets = await lab.room_sockets()
                assert sockets >= 4, f"{backend} has {sockets} room sockets open"

            # Text typed in one page appears in the other, both ways.
            await alice.type_in_cell(ALICE_LINE, new_line=False)
            await expect(bob.cell_editor()).to_contain_text(ALICE_LINE, timeout=ms(15))
            await bob.type_in_cell(BOB_LINE, new_line=True)
            await expect(alice.cell_editor()).to_contain_text(BOB_LINE, timeout=ms(15))
            lap("typed text seen")

            # Each sees the other's cursor, with their name, in the cell.
            for me, other in ((alice, bob), (bob, alice)):
                await expect(me.remote_cursor(other.display_name)).to_have_count(
                    1, timeout=ms(15)
                )
            lap("remote cursors seen")

            await alice.cell_editor().click()  # focus in the notebook
            await alice.save()
            sources = await wait_for_notebook(
                disk,
                lambda sources: (
                    bool(sources)
                    and ALICE_LINE in sources[0]
                    and BOB_LINE in sources[0]
                ),
                f"both users' lines after Ctrl+S ({backend})",
            )
            assert sources[0].splitlines() == [ALICE_LINE, BOB_LINE]
            lap("saved")
        except BaseException as exc:
            shots = []
            for page in pages:
                try:
                    shots.append(str(await page.screenshot(tmp_path)))
                except Exception as shot_error:
                    shots.append(f"{page.user}: no screenshot ({shot_error!r})")
            exc.add_note(f"timings so far: {timings}")
            exc.add_note("screenshots: " + ", ".join(shots))
            exc.add_note(describe(pages))
            exc.add_note(lab.logs()[-20000:])
            raise
        finally:
            await browser.close()
    print(f"{backend}: {timings}")
