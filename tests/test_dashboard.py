"""The live dashboard (``/_ysyncd/``) in headless Chromium, and the
histograms ``/metrics`` gains.

Real clients keep rooms open and a load edits one of them; the page, opened
with the admin token, lists the rooms with their peers and shows commits per
second above zero while the load runs and back at zero once it stops. A
screenshot is kept in the test's directory. Without the token, the page asks
for it and its state endpoint answers 401.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from tests.browser.lab import CHROMIUM, launch_chromium, ms
from tests.serverproc import ServerProcess, running_server
from tests.yclient import YClient

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

ADMIN = secrets.token_hex(24)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    if not CHROMIUM.exists():
        msg = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    token = tmp_path / "admin.token"
    token.write_text(ADMIN)
    async with running_server(
        tmp_path / "d.db", "--admin-token-file", str(token)
    ) as server:
        yield server


async def load(client: YClient, stop: asyncio.Event) -> None:
    """Edits, each waited for, until ``stop`` (at most 5,000)."""
    for i in range(5000):
        if stop.is_set():
            return
        client.text.insert(len(client.text), f"{i} ")
        await client.wait_confirmed()
        await asyncio.sleep(0.01)  # pacing: a steady load, not a flood


async def test_the_dashboard_shows_live_rooms_and_load(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        refused = await http.get(f"{server.http_url}/_ysyncd/state")
        assert refused.status_code == 401
    stop = asyncio.Event()
    async with (
        YClient.connect(server.url, "lecture") as teacher,
        YClient.connect(server.url, "lecture"),
        YClient.connect(server.url, "notes"),
        async_playwright() as pw,
    ):
        browser = await launch_chromium(pw)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 800})
            await page.goto(f"{server.http_url}/_ysyncd/")
            await expect(page.locator("#login")).to_be_visible(timeout=ms(10))

            await page.fill("#token", "not-the-token")
            await page.click("#login button")
            await expect(page.locator("#error")).to_have_text(re.compile("refused"))
            await page.fill("#token", ADMIN)
            await page.click("#login button")
            await expect(page.locator("#rooms")).to_have_text("2", timeout=ms(10))
            # A link may carry the token in its fragment, which is never sent.
            other = await (await browser.new_context()).new_page()
            await other.goto(f"{server.http_url}/_ysyncd/#token={ADMIN}")
            await expect(other.locator("#peers")).to_have_text("3", timeout=ms(10))
            assert "token" not in other.url  # dropped from the address bar
            rows = page.locator("#room_rows tr")
            await expect(rows.first).to_have_text(re.compile("lecture\\s*2"))
            await expect(page.locator("#store")).to_have_text("store: ok")

            task = asyncio.create_task(load(teacher, stop))
            try:
                rate = page.locator("#updates")
                await expect(rate).to_have_text(
                    re.compile(r"^[1-9]\d*\.\d$"), timeout=ms(15)
                )
                await expect(page.locator("#commit_latency")).to_have_text(
                    re.compile(r"^\d+\.\d / \d+\.\d$")
                )
                shot = tmp_path / "dashboard.png"
                await page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
            finally:
                stop.set()
                await task
            await expect(page.locator("#updates")).to_have_text("0.0", timeout=ms(15))
        finally:
            await browser.close()

    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        metrics = (await http.get(f"{server.http_url}/metrics")).text
    count = re.search(r"^ysyncd_commit_latency_seconds_count (\S+)$", metrics, re.M)
    assert count is not None and float(count.group(1)) > 0
    assert re.search(r'^ysyncd_delivery_seconds_bucket\{le="\+Inf"\} ', metrics, re.M)
