"""Failures to start: one line naming the flag or path, exit status 2.

Each case starts the real ``ysyncd serve`` and checks that a person gets a
line they can act on instead of a traceback, and that nothing was changed
that should not be.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import running_server
from tests.timing import scaled
from tests.yclient import YClient, stored_content
from ysyncd.errors import StoreInUse, StoreOpenError
from ysyncd.store.sqlite import SCHEMA_VERSION, SQLiteStore

TOKENS = '[[tokens]]\nuser = "a"\ntoken = "t"\nrooms = ["*"]\n'


async def refusal(*args: str, prefix: tuple[str, ...] = ()) -> str:
    """Run ``ysyncd serve`` on loopback; assert it exits 2 with one line; return it.

    ``args`` come last, so they win over the default host and port.
    """
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "ysyncd",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with asyncio.timeout(scaled(30)):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("ysyncd did not exit") from None
    stderr = err.decode()
    assert proc.returncode == 2, stderr
    assert out == b""
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    return stderr.rstrip("\n")


def unprivileged() -> tuple[str, ...]:
    """A command prefix that runs ysyncd without root's power over files and ports."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root, and setpriv is not installed to drop that")
    caps = "-dac_override,-dac_read_search,-net_bind_service"
    return (setpriv, "--bounding-set", caps, "--")


def first_unprivileged_port() -> int:
    setting = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    return int(setting.read_text()) if setting.exists() else 1024


def file_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def token_args(tmp_path: Path) -> tuple[str, ...]:
    """Token auth, so that a host other than loopback starts without a warning."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS, encoding="utf-8")
    return ("--auth", "token", "--token-file", str(tokens))


async def make_ysyncd_db(path: Path) -> None:
    """A ysyncd database with some rows in it."""
    store = await SQLiteStore.open(path)
    try:
        await store.append([("room", bytes([i]) * 2000) for i in range(50)])
    finally:
        await store.aclose()


@pytest.fixture
def listener() -> Iterator[int]:
    """A port someone else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_port_in_use(tmp_path: Path, listener: int, loop: str) -> None:
    """A port that another process listens on is named, with the host."""
    line = await refusal(
        "--db", str(tmp_path / "y.db"), "--port", str(listener), "--loop", loop
    )
    assert line == f"ysyncd: --port {listener}: address already in use (127.0.0.1)"


async def test_privileged_port(tmp_path: Path) -> None:
    """A port below 1024 without the privilege to bind it says so."""
    if first_unprivileged_port() <= 1:
        pytest.skip("every port is unprivileged here")
    line = await refusal(
        "--db", str(tmp_path / "y.db"), "--port", "1", prefix=unprivileged()
    )
    assert line == (
        "ysyncd: --port 1: permission denied (127.0.0.1); "
        "ports below 1024 need privileges"
    )


async def test_host_that_does_not_resolve(tmp_path: Path) -> None:
    """A host name that does not resolve is named.

    The name is not a valid host name, so the resolver refuses it without
    asking a DNS server.
    """
    line = await refusal(
        "--db", str(tmp_path / "y.db"), "--host", "bad!host", *token_args(tmp_path)
    )
    assert line.startswith("ysyncd: --host bad!host: does not resolve ("), line


async def test_address_not_on_this_machine(tmp_path: Path) -> None:
    """An address no interface has (TEST-NET-1) is named."""
    line = await refusal(
        "--db", str(tmp_path / "y.db"), "--host", "192.0.2.1", *token_args(tmp_path)
    )
    assert line == "ysyncd: --host 192.0.2.1: address not available on this machine"


async def test_db_in_a_missing_directory_is_not_created(tmp_path: Path) -> None:
    """A --db whose folder does not exist (a typo) is refused, not created empty."""
    db = tmp_path / "typo" / "y.db"
    line = await refusal("--db", str(db))
    assert line == f"ysyncd: --db {db}: directory {db.parent} does not exist"
    assert not db.parent.exists()


async def test_db_that_is_a_directory(tmp_path: Path) -> None:
    """A directory given as --db is named."""
    line = await refusal("--db", str(tmp_path))
    assert line == f"ysyncd: --db {tmp_path}: is a directory, not a database file"


@pytest.mark.parametrize("where", ["file", "directory"])
async def test_db_without_permission(tmp_path: Path, where: str) -> None:
    """A database file, or the folder for a new one, that ysyncd may not write."""
    if where == "file":
        db = tmp_path / "y.db"
        await make_ysyncd_db(db)
        db.chmod(0o000)
        expected = "permission denied (ysyncd reads and writes it)"
    else:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        db = folder / "y.db"
        expected = f"permission denied in directory {folder}"
    try:
        line = await refusal("--db", str(db), prefix=unprivileged())
    finally:
        db.parent.chmod(0o755)
        if db.exists():
            db.chmod(0o644)
    assert line == f"ysyncd: --db {db}: {expected}"


async def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    """A file that is not SQLite is named, and left as it was."""
    db = tmp_path / "notes.txt"
    db.write_text("These are my notes, not a database.\n" * 100, encoding="utf-8")
    before = db.read_bytes()
    line = await refusal("--db", str(db))
    assert line == f"ysyncd: --db {db}: not a SQLite database"
    assert db.read_bytes() == before


async def test_corrupt_database(tmp_path: Path) -> None:
    """A ysyncd database whose pages are scribbled over is called corrupt."""
    db = tmp_path / "y.db"
    await make_ysyncd_db(db)
    data = db.read_bytes()
    page = int.from_bytes(data[16:18], "big")
    db.write_bytes(data[:page] + b"\xab" * (len(data) - page))
    line = await refusal("--db", str(db))
    assert line == (
        f"ysyncd: --db {db}: corrupt SQLite database (database disk image is malformed)"
    )


async def test_newer_schema(tmp_path: Path) -> None:
    """A database from a newer ysyncd is named and left as it was."""
    db = tmp_path / "y.db"
    await make_ysyncd_db(db)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = db.read_bytes()
    line = await refusal("--db", str(db))
    assert line == (
        f"ysyncd: --db {db}: database schema version 99 is newer than this "
        f"ysyncd understands ({SCHEMA_VERSION}); upgrade ysyncd"
    )
    assert db.read_bytes() == before


@pytest.mark.parametrize("user_version", [0, 7])
async def test_another_programs_database_is_left_unchanged(
    tmp_path: Path, user_version: int
) -> None:
    """A SQLite file with tables that ysyncd did not create is refused untouched."""
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('mine')")
        conn.execute(f"PRAGMA user_version = {user_version}")
    conn.close()
    before = db.read_bytes()
    line = await refusal("--db", str(db))
    assert line == (
        f"ysyncd: --db {db}: not a ysyncd database (it has other tables: notes); "
        "left unchanged"
    )
    assert db.read_bytes() == before
    assert file_names(tmp_path) == ["app.db"]


@pytest.mark.parametrize("kind", ["new file", "ysyncd database"])
async def test_database_locked_by_another_process(tmp_path: Path, kind: str) -> None:
    """A write lock held by another program ends start-up with a line, not a hang."""
    db = tmp_path / "y.db"
    if kind == "ysyncd database":
        await make_ysyncd_db(db)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        line = await refusal("--db", str(db), "--sqlite-busy-timeout", "1")
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert line == (
        f"ysyncd: --db {db}: locked by another process (still locked after 1 s)"
    )


async def test_store_open_waits_busy_timeout_then_gives_up(tmp_path: Path) -> None:
    """The store's open waits for a lock only as long as it is told to."""
    db = tmp_path / "y.db"
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        async with asyncio.timeout(scaled(5)):
            with pytest.raises(StoreOpenError) as caught:
                await SQLiteStore.open(db, busy_timeout=0.2)
    finally:
        holder.close()
    assert caught.value.reason == "locked by another process (still locked after 0.2 s)"


async def test_second_ysyncd_on_one_database(tmp_path: Path) -> None:
    """A second server on the same file refuses; the first serves on, data intact.

    The first one starts on an empty file, which is fine. A read-only SQLite
    connection (a backup, say) is not kept out by the lock.
    """
    db = tmp_path / "y.db"
    db.touch()
    async with running_server(db) as first:
        async with YClient.connect(first.url, "notes") as client:
            client.text.insert(0, "before")
            await client.wait_confirmed()
            assert first.proc is not None
            line = await refusal("--db", str(db))
            assert line == (
                f"ysyncd: --db {db}: in use by another ysyncd (pid {first.proc.pid})"
            )
            client.text.insert(6, " and after")
            await client.wait_confirmed()
        assert (await stored_content(first.url, "notes"))["text"] == "before and after"
        with sqlite3.connect(db.as_uri() + "?mode=ro", uri=True) as reader:
            assert reader.execute("SELECT count(*) FROM rooms").fetchone() == (1,)
        reader.close()
        await first.stop()
        # The lock went with the first server; a new one reads the same data.
        await first.start()
        assert (await stored_content(first.url, "notes"))["text"] == "before and after"


async def test_store_lock_lasts_until_close(tmp_path: Path) -> None:
    """In one process too, a second open waits for the first store's aclose."""
    db = tmp_path / "y.db"
    first = await SQLiteStore.open(db)
    try:
        with pytest.raises(StoreInUse) as caught:
            await SQLiteStore.open(db)
        assert caught.value.reason == f"in use by another ysyncd (pid {os.getpid()})"
    finally:
        await first.aclose()
    second = await SQLiteStore.open(db)
    await second.aclose()
