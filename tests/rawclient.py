"""Low-level clients for hostile tests: raw TCP handshakes and peers that never read.

websockets' own client always finishes its handshake politely and always reads
what it is sent; these helpers do neither, on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from tests.timing import scaled

__all__ = [
    "abort",
    "connect_non_reader",
    "handshake",
    "open_tcp",
    "process_memory",
    "upgrade_request",
]


def upgrade_request(path: str) -> bytes:
    """A complete, valid WebSocket upgrade request for ``path``."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


async def open_tcp(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain TCP connection to the server on loopback."""
    async with asyncio.timeout(scaled(10)):
        return await asyncio.open_connection("127.0.0.1", port)


async def handshake(
    port: int, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Send an upgrade request by hand; return the streams and the status line."""
    reader, writer = await open_tcp(port)
    writer.write(upgrade_request(path))
    async with asyncio.timeout(scaled(10)):
        await writer.drain()
        status = await reader.readline()
        # The rest of the response head, so the caller sits right after it.
        for _ in range(64):
            if await reader.readline() in (b"\r\n", b""):
                break
    return reader, writer, status


def abort(writer: asyncio.StreamWriter, *, reset: bool = False) -> None:
    """Drop the TCP connection without any closing handshake (RST if ``reset``)."""
    sock = writer.get_extra_info("socket")
    if reset and sock is not None and not writer.transport.is_closing():
        # A zero linger time makes close() send RST instead of FIN.
        with contextlib.suppress(OSError):  # the server may have closed it already
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
    writer.transport.abort()


async def connect_non_reader(
    url: str, port: int, *, receive_buffer: int = 4096
) -> ClientConnection:
    """A websockets client that stops reading right after the handshake.

    Its socket has a small receive buffer, so the server's unsent bytes to it
    pile up in the server's own buffer quickly. Call
    ``conn.transport.resume_reading()`` to let it read again.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(scaled(10)):
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        conn = await connect(
            url, sock=sock, max_size=None, compression=None, open_timeout=scaled(10)
        )
    except BaseException:
        sock.close()
        raise
    conn.transport.pause_reading()
    return conn


def process_memory(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of a process in bytes: its resident and peak memory."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]
