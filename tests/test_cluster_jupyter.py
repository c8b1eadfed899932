"""A Jupyter notebook room served by two nodes: one saves, the other takes over.

A real Jupyter server hands out the file ids (as in test_jupyter_e2e.py), two
real ysyncd nodes share PostgreSQL and Redis (started by the tests), and
JupyterLab-like clients edit through both.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from jupyter_ydoc import YNotebook

from tests.cluster import running_cluster
from tests.jupyterclient import JupyterClient, append, source_of
from tests.jupyterproc import JupyterServer, file_args
from tests.test_jupyter_e2e import (  # noqa: F401 - the module's Jupyter server
    jupyter,
    share,
    wait_for_file,
    ysyncd_path,
)
from tests.timing import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

AUTOSAVE_S = 0.3


def saves_by(log: list[str], path: str) -> int:
    return sum(f"saved {path}" in line for line in log)


async def test_one_node_saves_and_another_takes_over_when_it_dies(
    jupyter: JupyterServer,  # noqa: F811 - the fixture imported above
    pg_url: str,
    redis_url: str,
) -> None:
    """Clients on two nodes edit one notebook. Only the lease holder writes
    the file, and the file holds both nodes' edits. The holder is killed: the
    other node takes the lease within seconds, and the file ends up with
    every edit, the last ones made after the kill included."""
    nb_file = await share(jupyter, "nb45.ipynb", "cluster.ipynb")
    args = [
        *file_args(jupyter, save_delay=AUTOSAVE_S, poll_interval=0.5),
        "--log-level",
        "debug",
    ]
    async with running_cluster(pg_url, redis_url, 2, *args) as nodes:
        path = await ysyncd_path(nodes[0], nb_file.room_id)
        async with JupyterClient.connect(nodes[0].url, path) as first:
            await asyncio.sleep(0)
            async with JupyterClient.connect(nodes[1].url, path) as second:
                append(source_of(first, 0), " from node A")
                append(source_of(second, 1), " from node B")
                await first.wait_confirmed()
                await second.wait_confirmed()
                await wait_for_file(
                    nb_file.disk,
                    lambda d: b"from node A" in d and b"from node B" in d,
                    "both nodes' edits in the file",
                    timeout=15,
                )
                # (Logs arrive through a pipe: wait for the line, do not
                # expect it at once.)
                await wait_until(
                    lambda: any(saves_by(n.log, nb_file.path) for n in nodes),
                    "the save in a node's log",
                )
                holders = [
                    n for n in nodes if any("this node saves" in x for x in n.log)
                ]
                assert len(holders) == 1, [n.log for n in nodes]
                holder = holders[0]
                other = nodes[1] if holder is nodes[0] else nodes[0]
                assert saves_by(holder.log, nb_file.path) >= 1
                assert saves_by(other.log, nb_file.path) == 0
                survivor_client = second if other is nodes[1] else first
                doomed_client = first if survivor_client is second else second
                append(source_of(doomed_client, 0), " echoed before the kill")
                await doomed_client.wait_confirmed()
                await holder.kill()
                append(source_of(survivor_client, 1), " after the kill")
                await survivor_client.wait_confirmed()
                saved = await wait_for_file(
                    nb_file.disk,
                    lambda d: b"after the kill" in d and b"echoed before" in d,
                    "the new holder's save",
                    timeout=20,
                )
                assert any("now saves the file" in x for x in other.log)
                notebook: dict[str, Any] = YNotebook(ydoc=survivor_client.doc).get()
                assert "echoed before the kill" in str(notebook["cells"][0]["source"])
                assert b"from node A" in saved and b"from node B" in saved
