"""``--auth token``: a TOML file maps tokens to room patterns and read/write.

::

    [[tokens]]
    user = "alice"
    sha256 = "9f86d081884c7d65…"   # hex SHA-256 of the token (or: token = "…")
    rooms = ["notes/*", "board"]   # globs over the room name; * spans slashes
    read_only = false              # optional; default false

The file is read again whenever its modification time changes, so tokens can
be added or revoked without a restart. Storing ``sha256`` instead of
``token`` keeps the file free of usable secrets.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

from websockets.http11 import Request

from ysyncd.auth.base import Globs, Grant, LocalAuthorizer, digest, require_token
from ysyncd.errors import Unauthorized

__all__ = ["TokenFile", "load_tokens"]

log = logging.getLogger("ysyncd.auth")


def load_tokens(path: Path) -> dict[str, Grant]:
    """The grants in ``path``, keyed by the SHA-256 hex digest of their token.

    Raises:
        ValueError: the file is not valid TOML or breaks the format above.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"token file {path}: {exc}") from exc
    entries = data.get("tokens", [])
    if not isinstance(entries, list):
        raise ValueError(f"token file {path}: 'tokens' must be an array of tables")
    grants: dict[str, Grant] = {}
    for number, entry in enumerate(entries, 1):
        where = f"token file {path}, entry {number}"
        key, grant = _entry(entry, where)
        if key in grants:
            raise ValueError(f"{where}: the same token appears twice")
        grants[key] = grant
    return grants


def _entry(entry: Any, where: str) -> tuple[str, Grant]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: not a table")
    unknown = set(entry) - {"user", "token", "sha256", "rooms", "read_only"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    if ("token" in entry) == ("sha256" in entry):
        raise ValueError(f"{where}: give exactly one of 'token' and 'sha256'")
    if "token" in entry:
        if not isinstance(entry["token"], str) or not entry["token"]:
            raise ValueError(f"{where}: 'token' must be a non-empty string")
        key = digest(entry["token"])
    else:
        key = str(entry["sha256"]).lower()
        if len(key) != 64 or set(key) - set("0123456789abcdef"):
            raise ValueError(f"{where}: 'sha256' must be 64 hex digits")
    user, rooms = entry.get("user"), entry.get("rooms")
    if not isinstance(user, str) or not user:
        raise ValueError(f"{where}: 'user' must be a non-empty string")
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise ValueError(f"{where}: 'rooms' must be a list of glob strings")
    read_only = entry.get("read_only", False)
    if not isinstance(read_only, bool):
        raise ValueError(f"{where}: 'read_only' must be true or false")
    return key, Grant(user, Globs(tuple(rooms)), read_only)


class TokenFile(LocalAuthorizer):
    """Grants from a token file, re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = path.stat().st_mtime_ns
        self._grants = load_tokens(path)

    def _current(self) -> dict[str, Grant]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError as exc:
            log.error("token file unreadable (%s); still using its last version", exc)
            return self._grants
        if mtime != self._mtime:
            try:
                self._grants = load_tokens(self.path)
            except ValueError as exc:
                # Keep serving the last good file rather than locking everyone out.
                log.error("%s; still using the previous version", exc)
            else:
                log.info("token file %s reloaded", self.path)
            self._mtime = mtime
        return self._grants

    async def authorize(self, request: Request, room: str) -> Grant:
        grant = self._current().get(digest(require_token(request)))
        if grant is None:
            raise Unauthorized("unknown token")
        return grant.check(room)
