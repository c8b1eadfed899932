"""The examples work as their READMEs say, against a real server."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess
from tests.timing import scaled
from tests.yclient import stored_content

ROOT = Path(__file__).resolve().parent.parent
BROWSER = ROOT / "examples" / "browser"


async def run_example(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), scaled(240))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_pycrdt_client_example_appends_and_reads(server: ServerProcess) -> None:
    """examples/client.py appends lines durably and prints the room's text."""
    url = f"{server.url}/example%20room"
    script = str(ROOT / "examples" / "client.py")
    for line in ("first line", "zweite Zeile ü"):
        code, _, err = await run_example(sys.executable, script, url, "--append", line)
        assert code == 0, err
    code, out, err = await run_example(sys.executable, script, url)
    assert code == 0, err
    assert out == "first line\nzweite Zeile ü\n"
    assert (await stored_content(server.url, "example%20room"))["text"] == out


async def test_browser_example_builds_from_npm_packages() -> None:
    """The documented build (npm ci, npm run build) bundles yjs and y-websocket."""
    npm = shutil.which("npm")
    if npm is None:
        if os.environ.get("CI") == "true":
            pytest.fail("npm is required on CI")
        pytest.skip("npm is not installed")
    code, _, err = await run_example(npm, "ci", "--prefix", str(BROWSER))
    assert code == 0, err
    code, _, err = await run_example(npm, "run", "build", "--prefix", str(BROWSER))
    assert code == 0, err
    bundle = (BROWSER / "dist" / "bundle.js").read_text()
    assert "WebsocketProvider" in bundle or "websocket" in bundle.lower()
    assert "cdn" not in (BROWSER / "index.html").read_text().lower()
