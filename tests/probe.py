"""Time awareness round trips through one room, in a process of its own.

``python -m tests.probe URL ROOM CLIENT_ID`` prints ``ready`` after its first
three round trips, keeps going until its stdin closes, then prints the times
(seconds) as one JSON list and exits.

It runs apart from the test so that the test's own CPU work (building a huge
update, decoding a 10 MB echo) cannot delay the probe and pass for a stall of
the server.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from pycrdt import write_message, write_var_uint
from websockets.asyncio.client import connect

from ysyncd import protocol
from ysyncd.awareness import decode_update

READY_AFTER = 3
# 25 a second: under --awareness-rate (30/s), above which the server merges
# updates and relays them at its next tick.
PAUSE = 0.04
MAX_ROUND_TRIPS = 100_000
ROUND_TRIP_TIMEOUT = 120.0


def awareness_frame(client_id: int, clock: int, state: str) -> bytes:
    update = write_var_uint(1) + write_var_uint(client_id) + write_var_uint(clock)
    return protocol.encode(protocol.Awareness(update + write_message(state.encode())))


async def probe(url: str, client_id: int) -> list[float]:
    times: list[float] = []
    stdin_closed = asyncio.Event()
    loop = asyncio.get_running_loop()
    # stdin is read in a thread: its EOF is the signal to stop.
    reading = loop.run_in_executor(None, sys.stdin.read)
    reading.add_done_callback(lambda _: stdin_closed.set())
    async with connect(url, compression=None, proxy=None, open_timeout=30) as ws:
        for clock in range(1, MAX_ROUND_TRIPS):
            if stdin_closed.is_set():
                break
            state = json.dumps({"probe": clock})
            started = time.perf_counter()
            await ws.send(awareness_frame(client_id, clock, state))
            async with asyncio.timeout(ROUND_TRIP_TIMEOUT):
                while True:
                    frame = await ws.recv()
                    assert isinstance(frame, bytes)
                    if any(
                        isinstance(m, protocol.Awareness)
                        and (client_id, clock, state) in decode_update(m.update)
                        for m in protocol.decode(frame)
                    ):
                        break
            times.append(time.perf_counter() - started)
            if len(times) == READY_AFTER:
                print("ready", flush=True)
            await asyncio.sleep(PAUSE)
    await reading
    return times


def main() -> None:
    url, room, client_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    times = asyncio.run(probe(f"{url}/{room}", client_id))
    print(json.dumps(times), flush=True)


if __name__ == "__main__":
    main()
