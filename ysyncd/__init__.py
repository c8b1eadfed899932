"""ysyncd: a durable Yjs sync daemon speaking the y-websocket protocol."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
