"""Logging set-up, with credentials taken out of every line.

ysyncd's own messages never hold a token, but at ``--log-level debug``
websockets logs each request line and its headers, and exception texts may
quote a URL. The formatter therefore masks ``token=`` query values,
``Authorization`` and ``Cookie`` header values, and bearer tokens in the
final text of each record, tracebacks included.
"""

from __future__ import annotations

import logging
import re

__all__ = ["RedactingFormatter", "configure", "redact"]

_SECRETS = re.compile(
    r"(?P<keep>[?&](?:token|access_token)=)[^&\s\"']+"
    r"|(?P<keep2>\b(?:Authorization|Cookie|Set-Cookie):\s*)[^\r\n]+"
    r"|(?P<keep3>\b(?:Bearer|token)\s+)[A-Za-z0-9._~+/=-]{16,}",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with every credential it holds replaced by ``[redacted]``."""
    return _SECRETS.sub(
        lambda m: (m["keep"] or m["keep2"] or m["keep3"]) + "[redacted]", text
    )


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
