"""Settings: the one source of truth for the CLI, environment variables and docs.

Each field carries its help text and bounds in its metadata. :mod:`ysyncd.cli`
turns the fields into click options (``--room-idle-seconds``) read also from
``YSYNCD_*`` environment variables (``YSYNCD_ROOM_IDLE_SECONDS``), and
:func:`settings_table` renders the README's settings table, which a test keeps
in step. Nothing here reads the environment.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ysyncd.namespaces import DEFAULT_PATTERN

__all__ = ["ENV_PREFIX", "Setting", "Settings", "describe", "settings_table"]

ENV_PREFIX = "YSYNCD_"

MiB = 2**20


def _setting(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    fallback_env: str | None = None,
) -> Any:
    return field(
        default=default,
        metadata={
            "help": help,
            "min": minimum,
            "max": maximum,
            "choices": choices,
            "fallback_env": fallback_env,
        },
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """How one ysyncd server runs. Every field is a CLI option and a variable."""

    host: str = _setting(
        "127.0.0.1",
        "Interface to listen on. Use 0.0.0.0 to serve other machines.",
    )
    port: int = _setting(
        1234, "TCP port to listen on; 0 picks a free one.", minimum=0, maximum=65535
    )
    db: str = _setting(
        "ysyncd.db",
        "Where updates are stored: a SQLite file (created if missing), or a "
        "postgresql://USER@HOST:PORT/DBNAME URL shared by many nodes.",
    )
    backplane: str | None = _setting(
        None,
        "redis://HOST:PORT/DB: share rooms with other nodes on the same "
        "PostgreSQL --db through this Redis (see Scaling out).",
    )
    workers: int = _setting(
        1,
        "Processes serving on the one port, to use every core; more than 1 "
        "needs --backplane. A worker that exits is started again.",
        minimum=1,
        maximum=256,
    )
    log_level: str = _setting(
        "info",
        "Logging threshold.",
        choices=("debug", "info", "warning", "error"),
    )
    loop: str = _setting(
        "auto",
        "Event loop. auto uses uvloop when it is installed (a default "
        "dependency wherever it builds), else asyncio's own.",
        choices=("auto", "asyncio", "uvloop"),
    )
    room_idle_seconds: float = _setting(
        30.0,
        "Keep a room with no peers in memory this long before dropping it "
        "(after its updates are on disk).",
        minimum=0,
    )
    compact_after: int = _setting(
        1000,
        "Compact a room's log into one snapshot once it holds this many update rows.",
        minimum=2,
    )
    sqlite_synchronous: str = _setting(
        "full",
        "SQLite synchronous mode. full survives power loss; normal survives a "
        "process crash only.",
        choices=("full", "normal"),
    )
    sqlite_busy_timeout: float = _setting(
        5.0,
        "Seconds to wait for another process's lock on the database before "
        "giving up; at start-up, before refusing to start.",
        minimum=0,
    )
    history_retention: float = _setting(
        7 * 86400.0,
        "Seconds of history compactions keep, so that any moment within it "
        "can be read or restored (/api/rooms/{room}/json?at=); older history "
        "is thinned to one checkpoint. 0 keeps none.",
        minimum=0,
    )
    commit_batch_max: int = _setting(
        4096,
        "Most updates committed in one SQLite transaction (group commit).",
        minimum=1,
        maximum=8000,
    )
    commit_queue_max: int = _setting(
        65536,
        "Updates waiting for their commit before readers pause (backpressure).",
        minimum=1,
    )
    max_rooms: int = _setting(
        50_000,
        "Most rooms in memory at once; a connection that would load one more gets "
        "HTTP 503.",
        minimum=1,
    )
    max_peers_per_room: int = _setting(
        1000,
        "Most connections in one room; one more gets HTTP 503.",
        minimum=1,
    )
    max_connections: int = _setting(
        16_384,
        "Most WebSocket connections in total; one more gets HTTP 503.",
        minimum=1,
    )
    max_room_name_bytes: int = _setting(
        512,
        "Longest room name (UTF-8 bytes) accepted; longer ones get HTTP 400.",
        minimum=1,
    )
    max_message_bytes: int = _setting(
        32 * MiB,
        "Largest WebSocket message accepted; bigger ones close with 1009.",
        minimum=1024,
    )
    send_buffer_bytes: int = _setting(
        16 * MiB,
        "Close a peer with 1013 once this many bytes wait unsent to it.",
        minimum=1024,
    )
    drain_timeout: float = _setting(
        30.0,
        "Seconds a peer has to receive what waits unsent to it; one that does "
        "not (it stopped reading) is dropped, and its buffer freed.",
        minimum=0.5,
    )
    max_handshakes: int = _setting(
        256,
        "Most connections in their opening handshake at once; more are dropped "
        "unread, so half-open handshakes cannot pin memory.",
        minimum=1,
    )
    max_nesting_depth: int = _setting(
        64,
        "Deepest nesting an update may hold: JSON and Any values, and shared "
        "types that one update nests; deeper closes the peer with 1008.",
        minimum=8,
        maximum=10_000,
    )
    apply_seconds_per_mib: float = _setting(
        2.0,
        "CPU seconds applying one update may take, per MiB of it (1 s at "
        "least); a costlier one is undone and closes its peer with 1008.",
        minimum=0.1,
    )
    awareness_timeout: float = _setting(
        30.0,
        "Drop an awareness state (a cursor) that is not renewed within this many "
        "seconds, and tell the room.",
        minimum=1,
    )
    max_awareness_bytes: int = _setting(
        64 * 1024,
        "Largest awareness state (JSON bytes) one client may set; bigger closes "
        "with 1009.",
        minimum=64,
    )
    awareness_rate: float = _setting(
        30.0,
        "Awareness updates per second relayed at once for one peer; faster ones "
        "are merged and relayed within a second. Ten times this rate closes the "
        "peer with 1008.",
        minimum=1,
    )
    max_awareness_clients: int = _setting(
        16,
        "Most awareness client IDs one connection may control; more closes it "
        "with 1008.",
        minimum=1,
    )
    ping_interval: float = _setting(
        20.0, "Seconds between WebSocket pings; 0 disables them.", minimum=0
    )
    ping_timeout: float = _setting(
        20.0, "Seconds to wait for a pong before dropping the peer.", minimum=0
    )
    close_timeout: float = _setting(
        5.0,
        "Seconds to wait for a peer's closing handshake before dropping the TCP "
        "connection (after a ping timeout, too).",
        minimum=0,
    )
    shutdown_timeout: float = _setting(
        10.0,
        "Seconds a graceful shutdown may take to flush and close before it gives up.",
        minimum=0,
    )
    auth: str = _setting(
        "none",
        "Who may connect: none (anyone), token (--token-file), jwt, jupyterhub "
        "(JupyterHub tokens and server-access scopes) or delegate (ask a Jupyter "
        "server, for cookie sign-in) or glue (the ysyncd Jupyter server "
        "extension, with --glue-secret-file). See Access control.",
        choices=("none", "token", "jwt", "jupyterhub", "delegate", "glue"),
    )
    allow_unauthenticated: bool = _setting(
        False,
        "Allow --auth none on an address other than loopback (prints a warning).",
    )
    token_file: Path | None = _setting(
        None, "TOML file mapping tokens to room globs and read/write (--auth token)."
    )
    admin_token_file: Path | None = _setting(
        None,
        "File holding the admin token, which opens every room of the HTTP "
        "API (/api/), as Authorization: Bearer; 32 bytes or more.",
    )
    webhook_url: str = _setting(
        "",
        "POST a signed JSON notice here for each room that changed (debounced "
        "per room); empty sends none. Needs --webhook-secret-file.",
    )
    webhook_secret_file: Path | None = _setting(
        None,
        "File holding the secret that signs each webhook (HMAC-SHA256 in "
        "Ysyncd-Signature), 32 bytes or more.",
    )
    webhook_debounce: float = _setting(
        2.0,
        "Send a room's webhook once it has been quiet this long (seconds), or "
        "five times this long into a busy stretch.",
        minimum=0.05,
    )
    glue_secret_file: Path | None = _setting(
        None,
        "File holding the secret the ysyncd Jupyter server extension presents "
        "(--auth glue), 32 bytes or more.",
    )
    jwt_secret_file: Path | None = _setting(
        None, "File holding the raw HS256 secret, 32 bytes or more (--auth jwt)."
    )
    jwt_public_key_file: Path | None = _setting(
        None, "PEM RSA public key that verifies RS256 tokens (--auth jwt)."
    )
    hub_api_url: str = _setting(
        "",
        "JupyterHub API URL, e.g. http://127.0.0.1:8081/hub/api (--auth "
        "jupyterhub); $JUPYTERHUB_API_URL when unset.",
        fallback_env="JUPYTERHUB_API_URL",
    )
    delegate_url: str = _setting(
        "",
        "Base URL of the Jupyter server whose /api/me decides (--auth delegate); "
        "{owner} and {server} are filled from the room's namespace.",
    )
    auth_cache_seconds: float = _setting(
        30.0,
        "Remember JupyterHub's or the Jupyter server's verdict on a token this "
        "long; a revoked token stops working within it.",
        minimum=0,
    )
    allowed_origins: str = _setting(
        "",
        "Comma-separated browser origins allowed to connect (e.g. "
        "https://hub.example.org); empty allows any origin, except for cookie "
        "sign-in, which needs one listed.",
    )
    room_pattern: str = _setting(
        DEFAULT_PATTERN,
        "Regular expression over the room name whose 'owner' and 'server' groups "
        "name the Jupyter server (namespace) a room belongs to.",
    )
    jupyter_files: str = _setting(
        "none",
        "Where Jupyter document rooms keep their files: fs (--fs-root), contents "
        "(the Jupyter server's Contents API), or none (rooms live in ysyncd only).",
        choices=("none", "fs", "contents"),
    )
    fs_root: str = _setting(
        "",
        "Directory holding each Jupyter server's files (--jupyter-files fs); "
        "{owner} and {server} are filled from the room's namespace.",
    )
    jupyter_url: str = _setting(
        "",
        "Base URL of the Jupyter server a room's file ids belong to (its fileid "
        "and Contents APIs); {owner} and {server} are filled from the namespace.",
    )
    jupyter_token: str = _setting(
        "",
        "Token ysyncd presents to --jupyter-url (--jupyter-credentials token). "
        "Never taken from $JUPYTERHUB_API_TOKEN: a service's Hub token must not "
        "reach a server that runs a user's code.",
    )
    jupyter_credentials: str = _setting(
        "token",
        "What ysyncd presents to --jupyter-url: token (--jupyter-token, for "
        "one Jupyter server with its own token; refused when the URL names a "
        "server per namespace) or glue (each server's own glue secret, derived "
        "from --glue-secret-file; needs the ysyncd.jupyter extension on every "
        "server).",
        choices=("token", "glue"),
    )
    jupyter_allow_hidden: bool = _setting(
        False,
        "Let --jupyter-files fs read and write hidden files (a name starting "
        "with a dot, anywhere in the path), as Jupyter's "
        "ContentsManager.allow_hidden does; off, they are missing files.",
    )
    save_delay: float = _setting(
        1.0,
        "Save a Jupyter document this many seconds after its last change.",
        minimum=0,
    )
    poll_interval: float = _setting(
        1.0,
        "Check a Jupyter document's file for outside edits this often (seconds).",
        minimum=0.05,
    )
    skip_session_check: bool = _setting(
        False,
        "Accept Jupyter clients whose sessionId is not this store's epoch "
        "(when another server hands out session ids).",
    )
    certfile: Path | None = _setting(
        None, "PEM certificate chain: serve wss:// (TLS) with --keyfile."
    )
    keyfile: Path | None = _setting(None, "PEM private key for --certfile.")


@dataclass(frozen=True, slots=True)
class Setting:
    """One field of :class:`Settings`, described for the CLI and docs."""

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None
    maximum: float | None
    choices: tuple[str, ...] | None
    fallback_env: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def envvars(self) -> list[str]:
        """The variables read, first found wins."""
        return [self.env] + ([self.fallback_env] if self.fallback_env else [])


def describe() -> list[Setting]:
    """Every setting, in declaration order."""
    hints = typing.get_type_hints(Settings)
    return [
        Setting(
            name=f.name,
            type=hints[f.name],
            default=f.default,
            help=f.metadata["help"],
            minimum=f.metadata["min"],
            maximum=f.metadata["max"],
            choices=f.metadata["choices"],
            fallback_env=f.metadata["fallback_env"],
        )
        for f in dataclasses.fields(Settings)
    ]


def settings_table() -> str:
    """The Markdown table of settings that the README embeds."""
    rows = [
        "| Option | Environment variable | Default | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for s in describe():
        meaning = s.help
        if s.choices:
            meaning += " One of: " + ", ".join(f"`{c}`" for c in s.choices) + "."
        env = " ".join(f"`{e}`" for e in s.envvars)
        default = "" if s.default is None else f"`{s.default}`"
        rows.append(f"| `{s.flag}` | {env} | {default} | {meaning} |")
    return "\n".join(rows) + "\n"
