"""What nodes tell each other through the backplane, and how gaps are found.

Pure: bytes in, values out, no I/O. Four kinds of message, each from one
*origin* (a node's id, new with every process):

* :class:`Updates`: updates its node has committed to the shared store, on the
  room's channel, numbered per origin and room (1, 2, 3, ...).
* :class:`Awareness`: an awareness update its node relayed, on the room's
  channel. Never stored.
* :class:`Deleted`: its node deleted the room (``DELETE /api/rooms/...``):
  the others close its peers and drop it from memory.
* :class:`Heartbeat`: once a second on the nodes' channel: the node is alive,
  and the last number it gave each room it published to lately, so that a
  lost *last* message is noticed too.

:class:`Sequences` follows the numbers of one room's messages per origin and
says when one is missing. Its answer is never "wait": a gap is repaired from
the store at once, which holds every update that was published.

Wire format: a kind byte, the origin (16 bytes), then varUint-framed fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from pycrdt import write_var_uint

from ysyncd.errors import DecodeError
from ysyncd.protocol import Reader

__all__ = [
    "HEARTBEAT_SECONDS",
    "LEASE_MARGIN",
    "LEASE_RENEW",
    "LEASE_SECONDS",
    "ORIGIN_BYTES",
    "Awareness",
    "Deleted",
    "Heartbeat",
    "Message",
    "Sequences",
    "Updates",
    "Verdict",
    "decode",
    "encode",
]

ORIGIN_BYTES = 16

# Timing every node counts on.
#: A node says it is alive this often.
HEARTBEAT_SECONDS = 1.0
#: A lease's TTL; its holder renews it every LEASE_RENEW seconds, and stops
#: counting on it LEASE_MARGIN seconds before it would expire.
LEASE_SECONDS = 5.0
LEASE_RENEW = 1.0
LEASE_MARGIN = 1.0
_UPDATES, _AWARENESS, _HEARTBEAT, _DELETED = b"U", b"A", b"H", b"D"


@dataclass(frozen=True, slots=True)
class Updates:
    """Updates ``origin`` committed, in commit order; number ``seq`` for the room."""

    origin: bytes
    seq: int
    #: Wall-clock milliseconds at publish, for the cross-node delay.
    sent_ms: int
    updates: list[bytes]


@dataclass(frozen=True, slots=True)
class Awareness:
    """An awareness update relayed by ``origin``'s node."""

    origin: bytes
    update: bytes


@dataclass(frozen=True, slots=True)
class Deleted:
    """``origin``'s node deleted the room, from the store and from memory."""

    origin: bytes


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """``origin`` is alive; the last number it gave each room it published to
    lately; rooms whose messages it had to drop (the others repair them)."""

    origin: bytes
    latest: dict[str, int] = field(default_factory=dict)
    lossy: list[str] = field(default_factory=list)


Message = Updates | Awareness | Deleted | Heartbeat


def encode(message: Message) -> bytes:
    """The bytes of one message."""
    match message:
        case Updates(origin, seq, sent_ms, updates):
            parts = [_UPDATES, origin, write_var_uint(seq), write_var_uint(sent_ms)]
            parts.append(write_var_uint(len(updates)))
            for update in updates:
                parts += (write_var_uint(len(update)), update)
        case Awareness(origin, update):
            parts = [_AWARENESS, origin, write_var_uint(len(update)), update]
        case Deleted(origin):
            parts = [_DELETED, origin]
        case Heartbeat(origin, latest, lossy):
            parts = [_HEARTBEAT, origin, write_var_uint(len(latest))]
            for room, seq in latest.items():
                parts += (_var_string(room), write_var_uint(seq))
            parts.append(write_var_uint(len(lossy)))
            parts += map(_var_string, lossy)
    return b"".join(parts)


def decode(data: bytes) -> Message:
    """Read one message.

    Raises:
        DecodeError: not a message of this format.
    """
    if len(data) < 1 + ORIGIN_BYTES:
        raise DecodeError("backplane message too short")
    kind, origin = data[:1], data[1 : 1 + ORIGIN_BYTES]
    reader = Reader(data[1 + ORIGIN_BYTES :])
    message: Message
    if kind == _UPDATES:
        seq, sent_ms, count = reader.var_uint(), reader.var_uint(), reader.var_uint()
        if count > reader.remaining:
            raise DecodeError("more updates announced than bytes left")
        message = Updates(
            origin, seq, sent_ms, [reader.var_bytes() for _ in range(count)]
        )
    elif kind == _AWARENESS:
        message = Awareness(origin, reader.var_bytes())
    elif kind == _DELETED:
        message = Deleted(origin)
    elif kind == _HEARTBEAT:
        count = reader.var_uint()
        if count > reader.remaining:
            raise DecodeError("more rooms announced than bytes left")
        latest: dict[str, int] = {}
        for _ in range(count):
            room = _read_string(reader)
            latest[room] = reader.var_uint()
        count = reader.var_uint()
        if count > reader.remaining:
            raise DecodeError("more rooms announced than bytes left")
        message = Heartbeat(
            origin, latest, [_read_string(reader) for _ in range(count)]
        )
    else:
        raise DecodeError(f"unknown backplane message kind {kind!r}")
    if reader.remaining:
        raise DecodeError("trailing bytes after a backplane message")
    return message


def _var_string(text: str) -> bytes:
    data = text.encode()
    return write_var_uint(len(data)) + data


def _read_string(reader: Reader) -> str:
    try:
        return reader.var_bytes().decode()
    except UnicodeDecodeError as exc:
        raise DecodeError("room name is not UTF-8") from exc


class Verdict(Enum):
    """What to do with a numbered message."""

    #: The next one: apply it.
    NEXT = "next"
    #: Seen already (or older than what a repair covered): drop it.
    SEEN = "seen"
    #: Some before it are missing: apply it, and repair the room from the store.
    GAP = "gap"


class Sequences:
    """The last number seen from each origin, for one room.

    The first message from an origin sets where it starts: a node subscribes
    to a room before reading it from the store, so anything published before
    that first message is in what it read (publishes follow commits).
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[bytes, int] = {}

    def receive(self, origin: bytes, seq: int) -> Verdict:
        """Count ``seq`` from ``origin``; say whether any went missing."""
        last = self._last.get(origin)
        if last is not None and seq <= last:
            return Verdict.SEEN
        self._last[origin] = seq
        if last is None or seq == last + 1:
            return Verdict.NEXT
        return Verdict.GAP

    def behind(self, origin: bytes, latest: int) -> bool:
        """Whether ``origin`` says it numbered ``latest`` and we saw less.

        Counts ``latest`` as seen: the repair this calls for covers it.
        """
        last = self._last.get(origin)
        if last is None or latest <= last:
            return False
        self._last[origin] = latest
        return True

    def forget(self, origin: bytes) -> None:
        """Drop an origin that died: its numbers never come back."""
        self._last.pop(origin, None)

    def reset(self) -> None:
        """Start afresh, after a repair that covers everything published."""
        self._last.clear()
