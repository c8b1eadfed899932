"""What a room keeps per peer: its awareness clients, and what it may still ask.

Pure bookkeeping with no I/O: the token buckets that bound a peer's awareness
updates and its requests for the whole document.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ysyncd.errors import PolicyViolation

__all__ = ["AwarenessPolicy", "Presence"]

#: Sync step 1 and query-awareness answers a peer gets at once, then the
#: seconds between two more (y-websocket clients ask on connect, and on
#: resyncs every few seconds at most).
_REQUESTS_BURST = 4
_REQUESTS_EVERY = 2.0


@dataclass(frozen=True, slots=True)
class AwarenessPolicy:
    """Limits on what one peer may do with awareness (see Settings)."""

    timeout: float = 30.0
    max_state_bytes: int = 64 * 1024
    rate: float = 30.0
    max_clients: int = 16


@dataclass(slots=True)
class Presence:
    """Per-peer bookkeeping: awareness, and what it may still ask for."""

    #: Client IDs whose live state came through this peer.
    ids: set[int] = field(default_factory=set)
    #: How many client IDs this peer has introduced over its life.
    introduced: int = 0
    tokens: float = 0.0
    refilled: float = 0.0
    window_start: float = 0.0
    window_count: int = 0
    #: Whole-document requests it may make now, and when that was counted.
    requests: float = _REQUESTS_BURST
    requests_counted: float = 0.0
    #: Requests over the rate, merged, for the next tick: the last state
    #: vector asked for, and whether it asked for the awareness.
    deferred_step1: bytes | None = None
    deferred_query: bool = False

    def take_request(self, now: float) -> bool:
        """Count one whole-document request; False if over the rate."""
        self.requests = min(
            _REQUESTS_BURST,
            self.requests + (now - self.requests_counted) / _REQUESTS_EVERY,
        )
        self.requests_counted = now
        if self.requests < 1:
            return False
        self.requests -= 1
        return True

    def within_rate(self, now: float, rate: float) -> bool:
        """Count one awareness update; False if it must wait for the next tick.

        Raises:
            PolicyViolation: ten times the rate within one second (a flood).
        """
        if now - self.window_start >= 1.0:
            self.window_start, self.window_count = now, 0
        self.window_count += 1
        if self.window_count > 10 * rate:
            raise PolicyViolation("awareness flood")
        self.tokens = min(2 * rate, self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
