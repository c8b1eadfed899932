"""Big frames take turns: a class joining a big document at once.

When 150 clients join a room holding a 20 MiB document in the same second,
each is owed the whole document. Written to every transport at once, the
copies go out interleaved, so every joiner is synced only at the very end,
when all of them are. Taking turns, a few peers at a time, sends the same
bytes in the same total time, but the first joiners are synced after their
own share of it: the median joiner waits half as long.

A frame of at least :data:`BIG_FRAME` bytes is a turn. At most ``at_once``
peers hold a turn; the others wait in order, and whatever else is sent to a
waiting peer waits behind its big frame, so each peer's frames keep their
order. A turn ends when the peer's transport has handed its buffer to the
kernel, or after ``longest`` seconds in any case, so that a peer that reads
slowly (or not at all) does not hold up the others: its buffer is still
sent, outside the turns, and the send-buffer and drain limits still apply.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

__all__ = ["BIG_FRAME", "Turns"]

#: Frames at least this big are sent in turns.
BIG_FRAME = 2**20


class Taker(Protocol):
    """A peer that can wait for its turn (see :class:`~ysyncd.peer.Peer`)."""

    @property
    def closing(self) -> bool: ...

    def take_turn(self) -> None:
        """Write what waited for the turn; call ``Turns.done`` once drained."""


class Turns:
    """Who is sending a big frame now, and who waits for a turn."""

    def __init__(self, at_once: int = 4, longest: float = 0.25) -> None:
        self.at_once = at_once
        self.longest = longest
        self._taking: dict[Taker, asyncio.TimerHandle] = {}
        self._waiting: deque[Taker] = deque()

    def ask(self, peer: Taker) -> bool:
        """True if ``peer`` may send its big frame now (its turn started);
        else it waits, and its ``take_turn`` is called when its turn comes."""
        if len(self._taking) < self.at_once and not self._waiting:
            self._start(peer)
            return True
        self._waiting.append(peer)
        return False

    def holds(self, peer: Taker) -> bool:
        """Whether ``peer`` is taking its turn now."""
        return peer in self._taking

    def done(self, peer: Taker) -> None:
        """``peer``'s turn is over (drained, gone, or out of time)."""
        timer = self._taking.pop(peer, None)
        if timer is None:
            return
        timer.cancel()
        while self._waiting and len(self._taking) < self.at_once:
            nxt = self._waiting.popleft()
            if nxt.closing:
                continue  # gone while it waited: what it held goes with it
            self._start(nxt)
            nxt.take_turn()

    def _start(self, peer: Taker) -> None:
        loop = asyncio.get_running_loop()
        self._taking[peer] = loop.call_later(self.longest, self.done, peer)

    @property
    def waiting(self) -> int:
        """Peers waiting for a turn."""
        return len(self._waiting)
