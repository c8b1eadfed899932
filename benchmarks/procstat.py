"""CPU time and memory of a process, read from ``/proc`` (Linux only)."""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` from field 3 (state) on."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # Field 2 (comm) is in parentheses and may hold spaces: split after it.
    return data[data.rindex(b")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid``, all of its threads included.

    The resolution is one clock tick (10 ms with the usual ``CLK_TCK`` of 100),
    so measured windows must be seconds long.
    """
    fields = _stat(pid)
    # fields[0] is field 3 (state), so utime (14) and stime (15) are 11 and 12.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def children_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``'s descendants: those running (ysyncd's worker
    process), and those that exited and were waited for (cutime, cstime)."""
    return tree_cpu_seconds([pid])[0][1]


def _children() -> dict[int, list[int]]:
    """Every process's child processes, by parent pid."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(_stat(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
            parents.setdefault(ppid, []).append(int(entry))
    return parents


def tree_cpu_seconds(pids: Sequence[int]) -> list[tuple[float, float]]:
    """(own, descendants') CPU time of each of ``pids``, from one scan of /proc.

    Descendants are counted as in :func:`children_cpu_seconds`.
    """
    parents = _children()
    readings: list[tuple[float, float]] = []
    for pid in pids:
        fields = _stat(pid)
        own = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        total = (int(fields[13]) + int(fields[14])) / _CLOCK_TICKS
        todo = list(parents.get(pid, ()))
        while todo:
            child = todo.pop()
            try:
                total += cpu_seconds(child)
            except OSError:
                continue
            todo += parents.get(child, ())
        readings.append((own, total))
    return readings


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS``)."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def self_cpu_seconds() -> float:
    """CPU time of this process: the load generator's own cost."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
