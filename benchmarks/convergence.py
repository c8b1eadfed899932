"""Did every client end up with the same document as a fresh reader?

Run after the measured window, when the servers have relayed everything. Each
client's document is built from scratch: the sync step 2 it got on joining, the
updates it sent, and every update it received, applied in arrival order. A
fresh client then joins the room, and its document must equal every one of
them. And every update that any client sent must be in that document.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from benchmarks.loadgen import Client
from benchmarks.payloads import DocState, doc_from, doc_state, first_struct_id
from ysyncd.protocol import Update

__all__ = ["check_room", "client_state", "reader_state"]


def client_state(client: Client) -> DocState:
    """The document this client would hold, built after the fact."""
    received = [m.update for _, m in client.messages() if isinstance(m, Update)]
    own = [update for _, update in client.sent]
    return doc_state(doc_from([*client.step2, *own, *received]))


async def reader_state(url: str, room: str) -> tuple[DocState, int]:
    """What a fresh client gets on joining: its document and the step 2 size."""
    reader = await Client.connect(url, room, 0, label=f"{room} (fresh reader)")
    try:
        return doc_state(doc_from(reader.step2)), sum(map(len, reader.step2))
    finally:
        await reader.close()


async def check_room(
    url: str, room: str, clients: Sequence[Client], *, reader: bool = True
) -> list[str]:
    """Problems found in one room; an empty list means it converged.

    Each client is compared with a fresh reader of the room; with ``reader``
    False (a server that keeps no document: the relay), with the first client.
    """
    problems = [p for c in clients if (p := c.problem()) is not None]
    if reader:
        reference, _ = await reader_state(url, room)
    else:
        reference = client_state(clients[0])
    for client in clients:
        state = client_state(client)
        if state != reference:
            problems.append(
                f"{client.label}: {state.describe()}, but a fresh reader of"
                f" {room!r} has {reference.describe()}"
            )
        await asyncio.sleep(0)  # building documents is slow: let the loop run
    for client in clients:
        for _, update in client.sent:
            struct = first_struct_id(update)
            if (
                struct is not None
                and reference.state_vector.get(struct[0], 0) <= struct[1]
            ):
                problems.append(f"{client.label}: its update {struct} is missing")
                break
    return problems
