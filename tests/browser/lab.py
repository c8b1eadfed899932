"""JupyterLab from PyPI in headless Debian Chromium, driven by Playwright.

Everything here is loopback only and every wait is bounded:

- :func:`launch_chromium` starts the system Chromium (``/usr/bin/chromium``,
  or ``$YSYNCD_TESTS_CHROMIUM``) through Playwright's own driver. Playwright
  never downloads a browser for it, and the flags keep Chromium from calling
  home (the machine may have no network at all).
- :func:`lab_config` is the Jupyter server config every lab runs with: users
  named by a ``?user=`` query parameter on their first visit (so two browser
  contexts are two known collaborators, never two random "Anonymous" moons
  that may collide), and no news or update checks.
- :func:`write_user_settings` writes JupyterLab user settings into the
  server's (isolated) config directory.
- :class:`LabPage` is one user's JupyterLab tab showing one notebook, with the
  selectors the test relies on.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import nbformat
from playwright.async_api import Browser, Locator, Page, Playwright, expect

from tests.timing import scaled

CHROMIUM = Path(os.environ.get("YSYNCD_TESTS_CHROMIUM", "/usr/bin/chromium"))

#: Headless, no sandbox (CI runs as root), and nothing that reaches the network.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    # Docker's default /dev/shm (64 MiB) is too small for Chromium's renderers.
    "--disable-dev-shm-usage",
)

#: The Jupyter server extensions JupyterLab itself needs (besides RTC's).
LAB_EXTENSIONS = ("jupyterlab",)


def lab_config(extra: str = "") -> str:
    """Config-file text for tests/jupyterproc.py's ``config=``."""
    return _LAB_CONFIG + extra


_LAB_CONFIG = '''
from jupyter_server.auth.identity import IdentityProvider as _IdentityProvider
from jupyter_server.auth.identity import User as _User


class NamedTestUsers(_IdentityProvider):
    """A token-authenticated first visit with ``?user=alice`` is "Alice Tester".

    The login cookie then carries that user, as it would an anonymous one.
    """

    def generate_anonymous_user(self, handler):
        username = handler.get_argument("user", None)
        if not username:
            return super().generate_anonymous_user(handler)
        name = username.title()
        return _User(
            username=username,
            name=name,
            display_name=f"{name} Tester",
            initials=name[:2].upper(),
        )


c.ServerApp.identity_provider_class = NamedTestUsers
# The machine has no network: no news feed, no update check.
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
'''

#: JupyterLab settings (plugin id -> values) for every test user.
USER_SETTINGS: dict[str, dict[str, Any]] = {
    # No "get notified about Jupyter news?" toast over the notebook.
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def write_user_settings(
    config_dir: Path, settings: dict[str, dict[str, Any]] = USER_SETTINGS
) -> None:
    """Write JupyterLab user settings where LabApp reads them by default:
    ``{JUPYTER_CONFIG_DIR}/lab/user-settings/{package}/{plugin}.jupyterlab-settings``.
    """
    for plugin_id, values in settings.items():
        package, plugin = plugin_id.split(":")
        path = (
            config_dir
            / "lab"
            / "user-settings"
            / package
            / (f"{plugin}.jupyterlab-settings")
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2))


def write_page_config(config_dir: Path, disabled: Iterable[str]) -> None:
    """Disable JupyterLab plugins, as ``jupyter labextension disable`` does:
    ``{JUPYTER_CONFIG_DIR}/labconfig/page_config.json``."""
    path = config_dir / "labconfig" / "page_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"disabledExtensions": dict.fromkeys(disabled, True)}))


def write_notebook(path: Path, *sources: str) -> None:
    """A notebook of code cells, without a kernelspec."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, path)


def read_sources(path: Path) -> list[str]:
    """The cells' sources of the notebook on disk."""
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    return ["".join(cell.source) for cell in nb.cells]


async def wait_for_notebook(
    path: Path,
    wanted: Callable[[list[str]], bool],
    what: str,
    timeout: float = 15,
) -> list[str]:
    """Poll the notebook file until its cells' sources are ``wanted``."""
    sources: list[str] | str = "(never read)"
    try:
        async with asyncio.timeout(scaled(timeout)):
            while True:
                try:
                    sources = read_sources(path)
                except (OSError, ValueError, nbformat.ValidationError) as exc:
                    # Not written yet, or caught half-written.
                    sources = f"(unreadable: {exc!r})"
                else:
                    if wanted(sources):
                        return sources
                # Nothing to await: the file is written by another process.
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(
            f"{path.name} never had {what}; last read: {sources!r}"
        ) from None


async def launch_chromium(playwright: Playwright) -> Browser:
    return await playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=list(CHROMIUM_ARGS),
        headless=True,
        timeout=scaled(30) * 1000,
    )


def ms(seconds: float) -> float:
    """A scaled timeout in Playwright's milliseconds."""
    return scaled(seconds) * 1000


# --- one user's page ------------------------------------------------------------------

#: The notebook's cells' editors (CodeMirror 6 content elements).
CELL_EDITOR = ".jp-NotebookPanel .jp-Notebook .jp-Cell .cm-content"
#: The name on a remote user's cursor flag in an editor (@jupyter/collaboration).
REMOTE_CURSOR_NAME = ".jp-remote-userFlag-name"
#: The left side bar's tab that opens the Collaboration panel.
COLLABORATION_TAB = '.jp-SideBar [role="tab"][data-id="jp-collaboration-panel"]'
#: One other user in the Collaboration panel's list.
COLLABORATOR = "#jp-collaboration-panel .jp-CollaboratorsList .jp-Collaborator"


@dataclass
class LabPage:
    """One user's JupyterLab, in its own browser context (cookies) and workspace."""

    page: Page
    user: str
    #: Uncaught page errors and failed requests, for failure messages.
    problems: list[str] = field(default_factory=list)

    @property
    def display_name(self) -> str:
        return f"{self.user.title()} Tester"

    @classmethod
    async def open(
        cls,
        browser: Browser,
        base_url: str,
        token: str,
        user: str,
        notebook: str | None,
    ) -> LabPage:
        """Sign in with the token as ``user`` and open ``notebook`` (or no
        file) in a workspace of the user's own (so two users never share
        layout state)."""
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(ms(20))
        page = await context.new_page()
        lab = cls(page, user)
        page.on("pageerror", lambda exc: lab.problems.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda m: (
                lab.problems.append(f"console {m.type}: {m.text}")
                if m.type == "error"
                else None
            ),
        )
        page.on(
            "requestfailed",
            lambda req: lab.problems.append(f"request failed: {req.url} {req.failure}"),
        )
        query = urlencode({"token": token, "user": user})
        tree = f"/tree/{quote(notebook)}" if notebook else ""
        url = f"{base_url}lab/workspaces/{quote(user)}{tree}?{query}"
        await page.goto(url, timeout=ms(30))
        return lab

    async def ready(self, timeout: float = 30) -> None:
        """Wait for the notebook's first cell, and answer the kernel dialog.

        The notebook has no kernelspec, so JupyterLab asks for a kernel once
        the document is loaded: "No Kernel" keeps kernels out of the test.
        """
        dialog = self.page.get_by_role("dialog").filter(has_text="Select Kernel")
        await expect(dialog).to_be_visible(timeout=ms(timeout))
        await dialog.get_by_role("button", name="No Kernel", exact=True).click()
        await expect(dialog).to_have_count(0, timeout=ms(10))
        await expect(self.cell_editor()).to_be_visible(timeout=ms(timeout))

    def cell_editor(self, index: int = 0) -> Locator:
        return self.page.locator(CELL_EDITOR).nth(index)

    async def type_in_cell(self, text: str, index: int = 0, *, new_line: bool) -> None:
        """Click into a cell's editor, go to its end and type ``text``."""
        editor = self.cell_editor(index)
        await editor.click()
        await self.page.keyboard.press("Control+End")
        if new_line:
            await self.page.keyboard.press("Enter")
        await self.page.keyboard.type(text)

    async def save(self) -> None:
        """Ctrl+S, as a user saves (focus is in the notebook)."""
        await self.page.keyboard.press("Control+s")

    async def open_collaboration_panel(self) -> None:
        await self.page.locator(COLLABORATION_TAB).click()
        await expect(self.page.locator("#jp-collaboration-panel")).to_be_visible()

    def collaborator(self, display_name: str) -> Locator:
        return self.page.locator(COLLABORATOR).filter(has_text=display_name)

    def remote_cursor(self, display_name: str) -> Locator:
        return self.page.locator(REMOTE_CURSOR_NAME).filter(has_text=display_name)

    async def screenshot(self, directory: Path) -> Path:
        path = directory / f"{self.user}.png"
        await self.page.screenshot(path=path, timeout=ms(10))
        return path


def describe(pages: Iterable[LabPage]) -> str:
    """The pages' recorded problems, for a failure note."""
    lines = [f"{lab.user}: {problem}" for lab in pages for problem in lab.problems]
    return "\n".join(lines) or "(no page errors or failed requests)"
