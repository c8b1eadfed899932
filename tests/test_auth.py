"""Access control against a real server: token files, JWT, TLS, origins, logs.

JupyterHub and delegate auth have their own modules, with real hub and
Jupyter servers (test_auth_hub.py, test_auth_delegate.py).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import os
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.jsclient import JsClient, require_node
from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled, wait_until
from tests.yclient import YClient, stored_content
from ysyncd.auth.glue import namespace_secret

EMPTY: dict[str, Any] = {"text": "", "map": {}, "array": []}

ALICE = "alice-0123456789abcdefghijklmnop"
BOB = "bob-0123456789abcdefghijklmnopqrs"
VIEWER = "viewer-0123456789abcdefghijklmno"


async def refusal(url: str, **options: Any) -> int:
    """The HTTP status a connection to ``url`` is refused with."""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, open_timeout=scaled(10), **options):
            pass
    return caught.value.response.status_code


def write_tokens(path: Path, body: str) -> None:
    path.write_text(body, encoding="utf-8")
    # A new mtime every time, even within the file system's clock resolution.
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def replace_in_file(path: Path, old: str, new: str) -> None:
    write_tokens(path, path.read_text(encoding="utf-8").replace(old, new))


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.toml"
    bob_hash = hashlib.sha256(BOB.encode()).hexdigest()
    write_tokens(
        path,
        f"""
[[tokens]]
user = "alice"
token = "{ALICE}"
rooms = ["notes/*"]

[[tokens]]
user = "bob"
sha256 = "{bob_hash}"
rooms = ["board", "notes/shared"]

[[tokens]]
user = "viewer"
token = "{VIEWER}"
rooms = ["notes/*"]
read_only = true
""",
    )
    return path


@pytest.fixture
async def token_server(db_path: Path, token_file: Path) -> Any:
    args = ("--auth", "token", "--token-file", str(token_file))
    async with running_server(db_path, *args, "--auth-cache-seconds", "1") as server:
        yield server


async def test_token_file_opens_only_the_rooms_it_names(
    token_server: ServerProcess,
) -> None:
    """A token opens its globbed rooms; other rooms 403, bad tokens 401."""
    url = token_server.url
    async with (
        YClient.connect(url, f"notes/a?token={ALICE}") as alice,
        YClient.connect(
            url, "notes/a", additional_headers={"Authorization": f"Bearer {ALICE}"}
        ) as again,
    ):
        alice.text.insert(0, "from alice")
        await again.wait_content({**EMPTY, "text": "from alice"})
    assert await refusal(f"{url}/board?token={ALICE}") == 403
    assert await refusal(f"{url}/notes/a?token=not-a-token") == 401
    assert await refusal(f"{url}/notes/a") == 401
    assert (
        await refusal(f"{url}/notes/a", additional_headers={"Authorization": "Basic x"})
        == 401
    )
    # bob's entry holds only the SHA-256 of his token.
    async with YClient.connect(url, f"board?token={BOB}") as bob:
        bob.map["k"] = "v"
        await bob.wait_confirmed()
    assert (await stored_content(url, f"board?token={BOB}"))["map"] == {"k": "v"}


async def test_token_file_changes_apply_without_restart(
    token_server: ServerProcess, token_file: Path
) -> None:
    """Rewriting the file revokes a token: new connections get 401, and open
    ones are closed with 4403 within --auth-cache-seconds."""
    url = token_server.url
    async with YClient.connect(url, f"notes/b?token={ALICE}") as open_one:
        replace_in_file(token_file, ALICE, "rotated-" + ALICE)
        assert await refusal(f"{url}/notes/b?token={ALICE}") == 401
        assert await open_one.wait_closed(timeout=10) == 4403
    async with YClient.connect(url, f"notes/b?token=rotated-{ALICE}"):
        pass


async def test_read_only_js_client_sees_edits_but_cannot_make_them(
    token_server: ServerProcess,
) -> None:
    """The real y-websocket client with a read-only token: its edits go nowhere."""
    require_node()
    url = token_server.url
    async with (
        JsClient.start(url, "notes/ro", params={"token": VIEWER}) as viewer,
        YClient.connect(url, f"notes/ro?token={ALICE}") as editor,
    ):
        await viewer.call("wait_synced")
        editor.text.insert(0, "editor")
        await viewer.call("wait_content", expect={"text": "editor"})
        await viewer.call("insert_text", text="VIEWER ", index=0)
        await viewer.wait_event("permission-denied")
        # A later edit from the editor reaches both, so anything the viewer's
        # edit could have done to the editor would have arrived before it.
        editor.map["after"] = 1
        await viewer.call("wait_content", expect={"map": {"after": 1}})
        assert str(editor.text) == "editor"
        await editor.wait_confirmed()
    stored = await stored_content(url, f"notes/ro?token={ALICE}")
    assert stored == {"text": "editor", "map": {"after": 1}, "array": []}


def hs256(secret: bytes, **claims: Any) -> str:
    claims.setdefault("exp", datetime.datetime.now(datetime.UTC).timestamp() + 600)
    return jwt.encode(claims, secret, algorithm="HS256")


async def test_jwt_hs256_claims_decide(db_path: Path, tmp_path: Path) -> None:
    """Valid claims open their rooms; expired, forged and out-of-claims do not."""
    secret = os.urandom(32).hex().encode()
    (tmp_path / "secret").write_bytes(secret)
    args = ("--auth", "jwt", "--jwt-secret-file", str(tmp_path / "secret"))
    async with running_server(db_path, *args) as server:
        url = server.url
        good = hs256(secret, sub="carol", rooms=["docs/*"])
        async with (
            YClient.connect(url, f"docs/1?token={good}") as a,
            YClient.connect(
                url, "docs/1", additional_headers={"Authorization": f"Bearer {good}"}
            ) as b,
        ):
            a.text.insert(0, "signed")
            await b.wait_content({**EMPTY, "text": "signed"})
        expired = hs256(secret, rooms=["docs/*"], exp=1_000_000)
        forged = hs256(b"x" * 32, rooms=["docs/*"])
        no_expiry = jwt.encode({"rooms": ["docs/*"]}, secret, algorithm="HS256")
        assert await refusal(f"{url}/docs/1?token={expired}") == 401
        assert await refusal(f"{url}/docs/1?token={forged}") == 401
        assert await refusal(f"{url}/docs/1?token={no_expiry}") == 401
        assert await refusal(f"{url}/other?token={good}") == 403
        assert await refusal(f"{url}/docs/1?token={good[:-4]}") == 401


async def test_jwt_rs256_and_read_only_claim(db_path: Path, tmp_path: Path) -> None:
    """RS256 with a PEM public key; read_only makes a viewer; HS256 tricks fail."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(public)
    args = ("--auth", "jwt", "--jwt-public-key-file", str(tmp_path / "key.pem"))
    exp = datetime.datetime.now(datetime.UTC).timestamp() + 600

    def rs256(**claims: Any) -> str:
        return jwt.encode({"exp": exp, **claims}, key, algorithm="RS256")

    async with running_server(db_path, *args) as server:
        url = server.url
        writer, viewer = rs256(rooms=["r"]), rs256(rooms=["r"], read_only=True)
        async with (
            YClient.connect(url, f"r?token={writer}") as w,
            YClient.connect(url, f"r?token={viewer}") as v,
        ):
            v.text.insert(0, "viewer")
            w.text.insert(0, "writer")
            await v.wait(lambda: "writer" in str(v.text), "the writer's edit")
            await w.wait_confirmed()
        assert (await stored_content(url, f"r?token={writer}"))["text"] == "writer"
        # The public key used as an HMAC secret must not verify anything.
        assert await refusal(f"{url}/r?token={hmac_signed(public, exp)}") == 401


def hmac_signed(secret: bytes, exp: float) -> str:
    """An HS256 token keyed by ``secret`` (PyJWT refuses a PEM as HMAC key)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"exp": exp, "rooms": ["r"]}).encode())
    mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(mac)}"


async def test_tls_serves_wss_with_a_self_signed_certificate(
    db_path: Path, tmp_path: Path
) -> None:
    """--certfile/--keyfile serve wss://; a client trusting the test CA syncs."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    args = ("--certfile", str(tmp_path / "server.pem"))
    async with running_server(db_path, *args) as server:
        assert server.url.startswith("wss://")
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
        async with (
            YClient.connect(server.url, "secure", ssl=client_tls) as a,
            YClient.connect(server.url, "secure", ssl=client_tls) as b,
        ):
            a.text.insert(0, "over tls")
            await b.wait_content({**EMPTY, "text": "over tls"})
        # Without the CA the certificate is not trusted; plain ws:// is no TLS.
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(server.url + "/secure", open_timeout=scaled(10)):
                pass


async def test_origin_allow_list(db_path: Path) -> None:
    """A browser origin not listed in --allowed-origins gets 403."""
    args = ("--allowed-origins", "https://ok.example, https://also.example")
    async with running_server(db_path, *args) as server:
        url = f"{server.url}/room"
        assert await refusal(url, origin="https://evil.example") == 403
        async with connect(url, origin="https://also.example"):
            pass
        async with connect(url):  # not a browser: no Origin header
            pass


async def test_no_token_text_in_the_logs(db_path: Path, token_file: Path) -> None:
    """Debug logs (request lines, headers, refusals) never show a token."""
    args = ("--auth", "token", "--token-file", str(token_file), "--log-level", "debug")
    secret_bad = "wrong-0123456789abcdefghijklmnop"
    server = ServerProcess(db_path, *args)
    await server.start()
    try:
        async with YClient.connect(server.url, f"notes/x?token={ALICE}"):
            pass
        headers = {"Authorization": f"token {BOB}", "Cookie": f"session={VIEWER}"}
        async with YClient.connect(server.url, "board", additional_headers=headers):
            pass
        assert await refusal(f"{server.url}/notes/x?token={secret_bad}") == 401
        assert await refusal(f"{server.url}/board?token={ALICE}") == 403
    finally:
        assert await server.stop() == 0
    log = "".join(server.log)
    # The logs did record these requests, at debug level and as refusals.
    assert "GET /notes/x?token=[redacted]" in log
    assert "refused a connection with HTTP 401" in log
    for secret in (ALICE, BOB, VIEWER, secret_bad):
        assert secret not in log
        assert secret[:16] not in log


async def test_a_token_read_from_an_escaped_parameter_name_is_redacted(
    db_path: Path, token_file: Path
) -> None:
    """``?tok%65n=`` is read as ``?token=``, so its value is redacted too."""
    args = ("--auth", "token", "--token-file", str(token_file), "--log-level", "debug")
    server = ServerProcess(db_path, *args)
    await server.start()
    try:
        for escaped in ("tok%65n", "%74oken", "%74%6F%6B%65%6E"):
            async with YClient.connect(server.url, f"notes/x?{escaped}={ALICE}"):
                pass
        bad = "wrong-0123456789abcdefghijklmnop"
        assert await refusal(f"{server.url}/notes/x?tok%65n={bad}") == 401
    finally:
        assert await server.stop() == 0
    log = "".join(server.log)
    assert "GET /notes/x?tok%65n=[redacted]" in log
    for secret in (ALICE, bad):
        assert secret not in log and secret[:16] not in log


def test_other_interfaces_need_auth_or_an_explicit_flag(tmp_path: Path) -> None:
    """--host 0.0.0.0 with --auth none refuses to start, naming the way out."""
    result = subprocess.run(
        [sys.executable, "-m", "ysyncd", "serve", "--host", "0.0.0.0", "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=scaled(30),
        env={k: v for k, v in os.environ.items() if not k.startswith("YSYNCD_")},
    )
    assert result.returncode == 2
    assert "--allow-unauthenticated" in result.stderr
    assert not (tmp_path / "ysyncd.db").exists()


async def test_misconfigured_auth_is_a_usage_error(tmp_path: Path) -> None:
    """A provider without its settings stops at start-up with a clear message."""
    cases = [
        (["--auth", "token"], "--token-file"),
        (["--auth", "jwt"], "--jwt-secret-file"),
        (["--auth", "jupyterhub", "--hub-api-url", ""], "--hub-api-url"),
        (["--auth", "delegate"], "--delegate-url"),
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("YSYNCD_", "JUPYTERHUB_"))
    }
    for args, needs in cases:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ysyncd",
            "serve",
            "--port",
            "0",
            *args,
            cwd=tmp_path,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), scaled(30))
        assert proc.returncode == 2, args
        assert needs in err.decode(), (args, err.decode())


async def test_refusals_are_counted(token_server: ServerProcess) -> None:
    """/metrics counts refusals by status."""
    assert await refusal(f"{token_server.url}/board") == 401
    assert await refusal(f"{token_server.url}/nope?token={ALICE}") == 403

    def metrics() -> str:
        with urllib.request.urlopen(token_server.http_url + "/metrics") as r:
            return str(r.read().decode())

    await wait_until(
        lambda: 'ysyncd_auth_refusals_total{status="403"} 1' in metrics(),
        "the refusal counters",
    )
    assert 'ysyncd_auth_refusals_total{status="401"} 1' in metrics()


async def test_glue_secret_admits_the_extension_with_its_write_flag(
    db_path: Path, tmp_path: Path
) -> None:
    """--auth glue: the shared secret admits; X-Ysyncd-Write decides writing."""
    secret = os.urandom(32).hex()
    (tmp_path / "glue").write_text(secret + "\n")
    args = ("--auth", "glue", "--glue-secret-file", str(tmp_path / "glue"))
    async with running_server(db_path, *args) as server:
        url = server.url
        writer = {"Authorization": f"Bearer {secret}", "X-Ysyncd-Write": "1"}
        reader = {"Authorization": f"Bearer {secret}", "X-Ysyncd-User": "bob"}
        async with (
            YClient.connect(url, "glued", additional_headers=writer) as w,
            YClient.connect(url, "glued", additional_headers=reader) as r,
        ):
            r.text.insert(0, "reader ")
            w.text.insert(0, "writer")
            await r.wait(lambda: "writer" in str(r.text), "the writer's edit")
            await w.wait_confirmed()
            assert str(w.text) == "writer"
        wrong = {"Authorization": "Bearer " + "x" * 64, "X-Ysyncd-Write": "1"}
        assert await refusal(f"{url}/glued", additional_headers=wrong) == 401
        assert await refusal(f"{url}/glued") == 401


async def test_namespace_glue_secrets_open_their_own_server_only(
    db_path: Path, tmp_path: Path
) -> None:
    """A secret derived for alice's default server opens its rooms, and not
    those of her other servers, of bob's, or rooms outside any namespace."""
    master = os.urandom(32).hex()
    (tmp_path / "glue").write_text(master + "\n")
    args = ("--auth", "glue", "--glue-secret-file", str(tmp_path / "glue"))
    alices = namespace_secret(master, "alice")
    as_alice = {"Authorization": f"Bearer {alices}", "X-Ysyncd-Write": "1"}
    async with running_server(db_path, *args) as server:
        url = server.url
        room = "api/collaboration/room/JupyterLab:globalAwareness"
        async with (
            YClient.connect(url, f"user/alice/{room}", additional_headers=as_alice),
            YClient.connect(
                url, f"prefix/user/alice/{room}", additional_headers=as_alice
            ),
        ):
            pass
        for elsewhere in (f"user/bob/{room}", f"user/alice/srv2/{room}", "glued"):
            status = await refusal(f"{url}/{elsewhere}", additional_headers=as_alice)
            assert status == 401, elsewhere
        srv2 = namespace_secret(master, "alice", "srv2")
        as_srv2 = {"Authorization": f"Bearer {srv2}"}
        async with YClient.connect(
            url, f"user/alice/srv2/{room}", additional_headers=as_srv2
        ):
            pass
