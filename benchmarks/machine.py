"""Facts about the machine and the software measured, for both reports."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from benchmarks.servers import NODE_MODULES

__all__ = ["machine_facts"]

_REPO = Path(__file__).resolve().parent.parent
_NPM_PACKAGES = ("@y/websocket-server", "yjs", "ws", "y-protocols", "lib0")


def _cpu_model() -> str:
    fallback = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return fallback  # no /proc: not Linux, reported as such
    return fallback


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None  # no /proc: reported as unknown
    return None


def _run(*argv: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _npm_version(name: str) -> str | None:
    try:
        data = json.loads((NODE_MODULES / name / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = data.get("version")
    return str(version) if version is not None else None


def _filesystem(path: str) -> str:
    """The file system type holding ``path`` (fsync costs differ: ext4 vs tmpfs)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and path.startswith(parts[1]):
                    if len(parts[1]) > len(best):
                        best, kind = parts[1], parts[2]
    except OSError:
        return "unknown"  # no /proc: reported as unknown
    return kind


def _package(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, object]:
    git = _run("git", "-C", str(_REPO), "rev-parse", "--short", "HEAD")
    dirty = _run("git", "-C", str(_REPO), "status", "--porcelain", "--", "ysyncd")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    tmp = tempfile.gettempdir()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "fd_limit": soft,
        # Other work on the machine skews every number: see it here.
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "tmp_dir": tmp,
        "tmp_filesystem": _filesystem(os.path.realpath(tmp)),
        "python": platform.python_version(),
        "node": _run("node", "--version"),
        "ysyncd": _package("ysyncd"),
        "ysyncd_git": None if git is None else git + ("+dirty" if dirty else ""),
        "pycrdt": _package("pycrdt"),
        "websockets": _package("websockets"),
        # ysyncd's default --loop auto runs on uvloop when it is installed.
        "uvloop": _package("uvloop"),
        **{f"npm:{name}": _npm_version(name) for name in _NPM_PACKAGES},
    }
