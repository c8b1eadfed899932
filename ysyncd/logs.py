"""Logging set-up, with credentials taken out of every line.

ysyncd's own messages never hold a token, but at ``--log-level debug``
websockets logs each request line and its headers, and exception texts may
quote a URL. The formatter therefore masks, in the final text of each
record (tracebacks included), whatever the server reads as a credential:

- the value of every query parameter whose name, once percent-decoded as
  the server decodes it (``?tok%65n=`` is ``token``), is ``token``;
- ``Authorization`` and ``Cookie`` header values;
- bearer tokens.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

__all__ = ["RedactingFormatter", "configure", "redact"]

#: Query parameters that carry credentials (as their names read decoded).
_CREDENTIAL_PARAMETERS = frozenset({"token", "access_token"})

_QUERY_PARAMETER = re.compile(r"(?P<keep>[?&;](?P<name>[^=&;\s\"'#?]+)=)[^&;\s\"'#]*")

_SECRETS = re.compile(
    r"(?P<keep>\b(?:Authorization|Cookie|Set-Cookie):\s*)[^\r\n]+"
    r"|(?P<keep2>\b(?:Bearer|token)\s+)[A-Za-z0-9._~+/=-]{16,}",
    re.IGNORECASE,
)


def _query_parameter(match: re.Match[str]) -> str:
    name = unquote_plus(match["name"], errors="replace").strip().lower()
    if name in _CREDENTIAL_PARAMETERS:
        return match["keep"] + "[redacted]"
    return match[0]


def redact(text: str) -> str:
    """``text`` with every credential it holds replaced by ``[redacted]``."""
    text = _QUERY_PARAMETER.sub(_query_parameter, text)
    return _SECRETS.sub(lambda m: (m["keep"] or m["keep2"]) + "[redacted]", text)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(level: str) -> None:
    """Log to stderr at ``level``, redacted."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # websockets logs every handshake at INFO, httpx every auth request;
    # ours says what matters.
    if level != "debug":
        for noisy in ("websockets", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
