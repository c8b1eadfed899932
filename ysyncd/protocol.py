"""A pure codec for y-websocket frames: bytes in, messages out, and back. No I/O.

The grammar (y-protocols ``PROTOCOL.md``), where ``varUint`` is lib0's
little-endian base-128 integer and ``varBytes`` is a ``varUint`` length followed
by that many bytes::

    frame           = message { message }
    message         = sync | awareness | auth | queryAwareness
    sync            = varUint(0) ( step1 | step2 | update )
      step1         = varUint(0) varBytes(stateVector)
      step2         = varUint(1) varBytes(update)
      update        = varUint(2) varBytes(update)
    awareness       = varUint(1) varBytes(awarenessUpdate)
    auth            = varUint(2) varUint(0) varString(reason)  ; permission denied
    queryAwareness  = varUint(3)

JupyterLab's provider gives type 2 another meaning ("raw" JSON messages), so
on Jupyter rooms :func:`decode_jupyter` reads it instead::

    raw             = varUint(2) varString("save") varUint(saveId)   ; client
                    | varUint(2) varString(json)                     ; server

A frame may hold several messages; newer clients concatenate them, so
:func:`decode` returns every message in order.

Decoding never trusts a length: every length is checked against the bytes that
remain, integers are capped at 53 bits like lib0's, and the number of messages
per frame is capped. The only exception :func:`decode` raises is
:class:`~ysyncd.errors.DecodeError` (or its sibling
:class:`~ysyncd.errors.UnknownMessageType`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from pycrdt import write_message, write_var_uint

from ysyncd.errors import DecodeError, UnknownMessageType

__all__ = [
    "MAX_MESSAGES_PER_FRAME",
    "Awareness",
    "JupyterSave",
    "Message",
    "MessageType",
    "PermissionDenied",
    "QueryAwareness",
    "SyncStep1",
    "SyncStep2",
    "SyncType",
    "Update",
    "coalesce",
    "decode",
    "decode_jupyter",
    "decode_state_vector",
    "encode",
    "encode_raw",
    "encode_update",
]

#: A frame with more messages than this is refused. Real clients send one to three.
MAX_MESSAGES_PER_FRAME = 64

# lib0 reads varUints up to 2**53 (a JavaScript safe integer); so do we.
_MAX_VARUINT_BYTES = 8
_MAX_VARUINT = 2**53 - 1


class MessageType(IntEnum):
    """The first varUint of every message."""

    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3


class SyncType(IntEnum):
    """The second varUint of a sync message."""

    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


# y-protocols auth.js: the only auth message defined is "permission denied".
_PERMISSION_DENIED = 0


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """A state vector: "send me what I am missing"."""

    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """The reply to :class:`SyncStep1`: an update with everything missing."""

    update: bytes


@dataclass(frozen=True, slots=True)
class Update:
    """An incremental document update."""

    update: bytes


@dataclass(frozen=True, slots=True)
class Awareness:
    """An encoded awareness update (see :mod:`ysyncd.awareness`)."""

    update: bytes


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    """A request for every known awareness state."""


@dataclass(frozen=True, slots=True)
class PermissionDenied:
    """Server to client: a write was refused."""

    reason: str


@dataclass(frozen=True, slots=True)
class JupyterSave:
    """Client to server, Jupyter rooms only: save the document now."""

    save_id: int


Message = (
    SyncStep1
    | SyncStep2
    | Update
    | Awareness
    | QueryAwareness
    | PermissionDenied
    | JupyterSave
)


class Reader:
    """A bounds-checked cursor over a byte string."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        """How many bytes are left to read."""
        return len(self._data) - self._pos

    def var_uint(self) -> int:
        """Read one lib0 varUint."""
        data, pos = self._data, self._pos
        value = 0
        for i in range(_MAX_VARUINT_BYTES):
            if pos + i >= len(data):
                raise DecodeError("truncated varUint")
            byte = data[pos + i]
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                if value > _MAX_VARUINT:
                    break
                self._pos = pos + i + 1
                return value
        raise DecodeError("varUint larger than 2**53")

    def var_bytes(self) -> bytes:
        """Read a varUint length, then that many bytes."""
        length = self.var_uint()
        if length > self.remaining:
            raise DecodeError(
                f"length prefix {length} exceeds the {self.remaining} bytes left"
            )
        start = self._pos
        self._pos += length
        return self._data[start : self._pos]

    def var_string(self) -> str:
        """Read a varBytes holding UTF-8 text."""
        raw = self.var_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("string is not valid UTF-8") from exc


def _read_message(reader: Reader, *, jupyter: bool = False) -> Message:
    kind = reader.var_uint()
    if jupyter and kind == MessageType.AUTH:
        request = reader.var_string()
        if request != "save":
            raise UnknownMessageType(f"unknown Jupyter raw message {request[:40]!r}")
        return JupyterSave(reader.var_uint())
    if kind == MessageType.SYNC:
        sync_type = reader.var_uint()
        payload = reader.var_bytes()
        if sync_type == SyncType.STEP1:
            return SyncStep1(payload)
        if sync_type == SyncType.STEP2:
            return SyncStep2(payload)
        if sync_type == SyncType.UPDATE:
            return Update(payload)
        raise UnknownMessageType(f"unknown sync message type {sync_type}")
    if kind == MessageType.AWARENESS:
        return Awareness(reader.var_bytes())
    if kind == MessageType.QUERY_AWARENESS:
        return QueryAwareness()
    if kind == MessageType.AUTH:
        auth_type = reader.var_uint()
        if auth_type != _PERMISSION_DENIED:
            raise UnknownMessageType(f"unknown auth message type {auth_type}")
        return PermissionDenied(reader.var_string())
    raise UnknownMessageType(f"unknown message type {kind}")


def decode(frame: bytes, *, jupyter: bool = False) -> list[Message]:
    """Decode every message in one binary frame.

    Raises:
        DecodeError: the frame is empty, truncated, or holds too many messages.
        UnknownMessageType: a message type this server does not speak.
    """
    if not frame:
        raise DecodeError("empty frame")
    reader = Reader(frame)
    messages: list[Message] = []
    while reader.remaining:
        if len(messages) == MAX_MESSAGES_PER_FRAME:
            raise DecodeError(f"more than {MAX_MESSAGES_PER_FRAME} messages in a frame")
        messages.append(_read_message(reader, jupyter=jupyter))
    return messages


def decode_jupyter(frame: bytes) -> list[Message]:
    """:func:`decode`, with type 2 read as JupyterLab's raw messages."""
    return decode(frame, jupyter=True)


def encode_raw(json_text: str) -> bytes:
    """A Jupyter raw message (type 2) carrying JSON, e.g. a save reply."""
    return b"\x02" + _var_string(json_text)


def encode_update(update: bytes) -> bytes:
    """Encode a sync update message; the hot path of every broadcast."""
    return b"\x00\x02" + write_message(update)


def encode(message: Message) -> bytes:
    """Encode one message as a frame of its own."""
    match message:
        case SyncStep1(state_vector):
            return b"\x00\x00" + write_message(state_vector)
        case SyncStep2(update):
            return b"\x00\x01" + write_message(update)
        case Update(update):
            return encode_update(update)
        case Awareness(update):
            return b"\x01" + write_message(update)
        case QueryAwareness():
            return b"\x03"
        case PermissionDenied(reason):
            return b"\x02" + write_var_uint(_PERMISSION_DENIED) + _var_string(reason)
        case JupyterSave(save_id):
            return b"\x02" + _var_string("save") + write_var_uint(save_id)
    raise TypeError(f"not a message: {message!r}")  # pragma: no cover


def _var_string(text: str) -> bytes:
    # pycrdt's Encoder.write_var_string prefixes the length in characters, which
    # is wrong for non-ASCII text; lib0 counts UTF-8 bytes.
    return write_message(text.encode("utf-8"))


def coalesce(messages: list[Message]) -> list[Message]:
    """``messages`` without the sync step 1s and query-awarenesses that a
    later one of the same kind in the frame makes moot: one answer, to the
    last, covers them all (and costs one encode, not 64)."""
    if len(messages) < 2:
        return messages
    last: dict[type, int] = {}
    for index, message in enumerate(messages):
        if isinstance(message, SyncStep1 | QueryAwareness):
            last[type(message)] = index
    return [
        m
        for i, m in enumerate(messages)
        if not isinstance(m, SyncStep1 | QueryAwareness) or last[type(m)] == i
    ]


def decode_state_vector(state: bytes) -> dict[int, int]:
    """A Yjs state vector (``varUint(n) { varUint(client) varUint(clock) }``)
    as ``{client: clock}``; its byte order follows a hash map, so compare it
    decoded.

    Raises:
        DecodeError: truncated or malformed.
    """
    reader = Reader(state)
    return {reader.var_uint(): reader.var_uint() for _ in range(reader.var_uint())}
