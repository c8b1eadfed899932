"""A JupyterLab-like client: YClient plus the Jupyter dialect's raw messages."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import nbformat
from pycrdt import Array, Map, Text

from tests.yclient import YClient
from ysyncd import protocol

ROOM_PREFIX = "api/collaboration/room/"


def room_path(owner: str, room_id: str, server: str = "", **query: str) -> str:
    """A JupyterLab room path under JupyterHub's layout, with its query."""
    path = f"user/{owner}/" + (f"{server}/" if server else "") + ROOM_PREFIX + room_id
    if query:
        path += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return path


class JupyterClient(YClient):
    """Reads the server's raw JSON messages (type 2) into :attr:`raw`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw: list[dict[str, Any]] = []
        self.frames_of_type_2 = 0

    def _decode(self, frame: bytes) -> list[protocol.Message]:
        if frame[:1] == b"\x02":
            self.frames_of_type_2 += 1
            reader = protocol.Reader(frame)
            reader.var_uint()
            self.raw.append(json.loads(reader.var_string()))
            return []
        return protocol.decode(frame)

    async def save(self, save_id: int, timeout: float = 10) -> str:
        """Ask for a save, as JupyterLab's Save button does; the reply's status."""
        await self.ws.send(protocol.encode(protocol.JupyterSave(save_id)))

        def reply() -> dict[str, Any] | None:
            for message in self.raw:
                if message.get("responseTo") == save_id:
                    return message
            return None

        await self.wait(lambda: reply() is not None, f"save reply {save_id}", timeout)
        answer = reply()
        assert answer is not None and answer["type"] == "save"
        return str(answer["status"])


def notebook_bytes(content: dict[str, Any]) -> bytes:
    """What jupyter_server's FileContentsManager writes for a notebook:
    ``nbformat.write(nb, f, version=NO_CONVERT)``, i.e. ``writes`` and "\\n"."""
    text = nbformat.writes(nbformat.from_dict(content), version=nbformat.NO_CONVERT)
    return (text if text.endswith("\n") else text + "\n").encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def state_of(client: YClient) -> dict[str, Any]:
    return client.doc.get("state", type=Map).to_py() or {}


def cells_of(client: YClient) -> list[dict[str, Any]]:
    """The raw cells (no jupyter_ydoc clean-up, so duplicates stay visible)."""
    return client.doc.get("cells", type=Array).to_py() or []


def source_of(client: YClient, index: int) -> Text:
    text: Text = client.doc.get("cells", type=Array)[index]["source"]
    return text


def append(text: Text, value: str) -> None:
    text.insert(len(text), value)
