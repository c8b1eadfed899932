"""The HTTP API against its own OpenAPI document, with schemathesis.

schemathesis reads ``/api/openapi.json`` from a real server, generates
requests for every operation (valid and invalid ones), and checks each
answer: never a 5xx, and status code, content type, headers and body as the
document says. It runs with the admin token, which opens everything, and
with a room token from a real token file, which the authorizer decides on;
each on SQLite and on PostgreSQL. Rooms exist beforehand, edited by a real
client, so that reads find documents, not only 404s.

Every check schemathesis has runs but one, ``positive_data_acceptance``: it
expects any string the document allows to be accepted, and a room name's
rules, a Yjs update's encoding and a time's formats are more than JSON Schema
says (they are answered 400, with the reason).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
from pathlib import Path

import pytest

from tests.serverproc import running_server
from tests.test_auth import ALICE, token_file  # noqa: F401 - fixture
from tests.timing import scaled
from tests.yclient import YClient

ADMIN = secrets.token_hex(24)

pytestmark = pytest.mark.timeout(600)


def schemathesis_cli() -> list[str]:
    found = shutil.which("schemathesis") or shutil.which("st")
    if found:
        return [found]
    return [sys.executable, "-m", "schemathesis.cli"]


@pytest.mark.parametrize("who", ["admin", "room token"])
async def test_every_answer_matches_the_openapi_document(
    tmp_path: Path,
    token_file: Path,  # noqa: F811 - the fixture
    any_db: str,
    who: str,
) -> None:
    admin = tmp_path / "admin.token"
    admin.write_text(ADMIN)
    args = ("--auth", "token", "--token-file", str(token_file))
    async with running_server(
        any_db, *args, "--admin-token-file", str(admin)
    ) as server:
        auth = {"additional_headers": {"Authorization": f"Bearer {ALICE}"}}
        for room in ("notes/plan", "notes/second"):
            async with YClient.connect(server.url, room, **auth) as client:
                client.text.insert(0, f"in {room}")
                client.map["k"] = 1
                await client.wait_confirmed()
        token = ADMIN if who == "admin" else ALICE
        proc = await asyncio.create_subprocess_exec(
            *schemathesis_cli(),
            "run",
            f"{server.http_url}/api/openapi.json",
            "--checks",
            "all",
            # What a valid room name, update or time is cannot be written in
            # JSON Schema (names.py's rules, Yjs's encoding); the document
            # gives their shape, and 400 says what is wrong with one.
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            os.environ.get("YSYNCD_SCHEMATHESIS_EXAMPLES", "40"),
            "--header",
            f"Authorization: Bearer {token}",
            "--seed",
            "1",
            "--no-color",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )
        async with asyncio.timeout(scaled(500)):
            out, _ = await proc.communicate()
        report = out.decode(errors="replace")
        assert proc.returncode == 0, report[-6000:]
        assert "passed" in report.lower()
