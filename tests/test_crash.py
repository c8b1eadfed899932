"""Crash cycles: kill -9 during continuous edits never loses an echoed update.

``YSYNCD_CRASH_CYCLES`` sets the number of cycles (3 by default; raise it for a
longer run).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

from tests.serverproc import running_server
from tests.timing import scaled
from tests.yclient import YClient

CYCLES = int(os.environ.get("YSYNCD_CRASH_CYCLES", "3"))


async def test_kill_9_cycles_keep_every_echoed_update(db_path: Path) -> None:
    """Each cycle: edit non-stop, SIGKILL right after an echo, restart, check."""
    confirmed: set[str] = set()
    async with running_server(db_path) as server:
        for cycle in range(CYCLES):
            async with YClient.connect(server.url, "cycles") as client:
                present = set(client.map.keys())
                missing = confirmed - present
                assert not missing, f"cycle {cycle}: lost {sorted(missing)[:5]}"
                sent: dict[bytes, str] = {}
                for i in range(5000):  # bounded; the kill comes much sooner
                    key = f"c{cycle}-{i}"
                    before = set(client.unconfirmed)
                    client.map[key] = i
                    (update,) = client.unconfirmed - before
                    sent[update] = key
                    await asyncio.sleep(0)
                    echoed = [k for u, k in sent.items() if u not in client.unconfirmed]
                    if len(echoed) >= 50 + 25 * cycle:
                        # Kill the moment after an echo, with more edits in flight.
                        assert server.proc is not None
                        server.proc.send_signal(signal.SIGKILL)
                        break
                else:
                    raise AssertionError("never reached the kill point")
                confirmed.update(echoed)
            await asyncio.wait_for(server.proc.wait(), scaled(10))
            await server.start()
        async with YClient.connect(server.url, "cycles") as client:
            assert confirmed <= set(client.map.keys())
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
