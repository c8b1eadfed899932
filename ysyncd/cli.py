"""The ``ysyncd`` command line: a thin click layer over :class:`Settings`.

Options are generated from the Settings fields, so the CLI, the ``YSYNCD_*``
environment variables and the README table cannot drift apart.

A failure to start that a person can fix (a port in use, a database that is
not ysyncd's) is printed as one line naming the flag, with exit status 2; see
:func:`_startup_message`. A crash once the server listens keeps its traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import gc
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import click

from ysyncd import __version__, logs, offline
from ysyncd.api import read_admin_token
from ysyncd.auth import Authorizer, build_authorizer
from ysyncd.config import Setting, Settings, describe, settings_table
from ysyncd.errors import BackplaneError, StoreOpenError
from ysyncd.jupyter.files import open_files
from ysyncd.server import serve as run_server
from ysyncd.server import tls_context
from ysyncd.supervisor import inherited_socket, supervise
from ysyncd.webhooks import read_webhook_secret

__all__ = ["main"]

log = logging.getLogger("ysyncd")

F = Callable[..., Any]


def _click_type(setting: Setting) -> Any:
    if setting.choices:
        return click.Choice(setting.choices, case_sensitive=False)
    if setting.type is int:
        return click.IntRange(
            None if setting.minimum is None else int(setting.minimum),
            None if setting.maximum is None else int(setting.maximum),
        )
    if setting.type is float:
        return click.FloatRange(setting.minimum, setting.maximum)
    if setting.type in (Path, Path | None):
        return click.Path(path_type=Path, dir_okay=False)
    return str


def _option(setting: Setting) -> Callable[[F], F]:
    flag = setting.type is bool
    return click.option(
        setting.flag,
        setting.name,
        is_flag=flag,
        type=None if flag else _click_type(setting),
        default=setting.default,
        show_default=setting.default is not None,
        envvar=setting.envvars,
        show_envvar=True,
        help=setting.help,
    )


def settings_options(func: F) -> F:
    """Decorate a command with one option per setting."""
    for setting in reversed(describe()):
        func = _option(setting)(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ysyncd")
def main() -> None:
    """ysyncd: a durable Yjs sync server for y-websocket and JupyterLab clients."""


@main.command()
@settings_options
def serve(**options: Any) -> None:
    """Serve y-websocket rooms, storing every update in SQLite."""
    settings = _as_hub_service(Settings(**options), click.get_current_context())
    logs.configure(settings.log_level)
    if settings.auth == "none" and not _is_loopback(settings.host):
        if not settings.allow_unauthenticated:
            raise click.UsageError(
                f"--host {settings.host} serves other machines, and --auth none lets "
                "anyone read and edit every room: choose an --auth provider, or pass "
                "--allow-unauthenticated"
            )
        log.warning(
            "serving %s with no authentication: anyone who reaches it can read "
            "and edit every room",
            settings.host,
        )
    try:
        _check_jupyter_files(settings)
        read_admin_token(settings.admin_token_file)  # refused now, not later
        read_webhook_secret(settings.webhook_url, settings.webhook_secret_file)
        authorizer = build_authorizer(settings)
        tls = tls_context(settings)
    except (ValueError, OSError) as exc:
        raise click.UsageError(str(exc)) from exc
    if settings.workers > 1:
        sys.exit(_supervise(settings))
    sys.exit(_run(_serve(settings, authorizer, tls), settings.loop))


def _supervise(settings: Settings) -> int:
    if not settings.backplane:
        raise click.UsageError(
            f"--workers {settings.workers} needs --backplane (and a shared "
            "--db postgresql://...): each worker is a node"
        )
    # Each worker runs this command's own options (and environment).
    args = sys.argv[sys.argv.index("serve") + 1 :] if "serve" in sys.argv else []
    try:
        return supervise(
            settings.host,
            settings.port,
            settings.workers,
            args,
            settings.shutdown_timeout + 5,
        )
    except OSError as exc:
        message = _startup_message(exc, settings)
        if message is None:
            raise
        raise StartupError(message) from exc


def _check_jupyter_files(settings: Settings) -> None:
    """Refuse unusable --jupyter-* settings now, in one line, rather than in a
    traceback from inside the server (which opens them again)."""
    files = open_files(settings)
    if files is not None:
        asyncio.run(files.aclose())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or "" (every interface)


def _as_hub_service(settings: Settings, ctx: click.Context) -> Settings:
    """Listen where JupyterHub says, when it runs ysyncd as a managed service.

    The Hub sets ``JUPYTERHUB_SERVICE_URL`` for the services it starts; an
    explicit --host or --port still wins.
    """
    url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    if not url:
        return settings
    given = {
        name
        for name in ("host", "port")
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }
    parts = urlsplit(url)
    changes: dict[str, Any] = {}
    if "host" not in given and parts.hostname:
        changes["host"] = parts.hostname
    if "port" not in given and parts.port:
        changes["port"] = parts.port
    return dataclasses.replace(settings, **changes)


# The offline commands take the store as `serve` does: the same --db setting
# (and whatever other setting they need).
for _command, _names in offline.commands:
    for _setting in describe():
        if _setting.name in ("db", *_names):
            _option(_setting)(_command)
    main.add_command(_command)
for _command in offline.own_stores:
    main.add_command(_command)


@main.command("settings")
def show_settings() -> None:
    """Print the settings table (Markdown), as the README shows it."""
    click.echo(settings_table(), nl=False)


class StartupError(click.ClickException):
    """ysyncd cannot start, for a reason the person starting it can fix.

    Shown as one line, ``ysyncd: --flag value: reason``, with click's exit
    status for bad usage (2): nothing crashed, so there is no traceback.
    """

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"ysyncd: {self.format_message()}", file=file, err=file is None)


def _startup_message(exc: BaseException, settings: Settings) -> str | None:
    """The one line for a failure to start, or None if it is not one we know.

    Binding errors come from websockets' ``serve`` (asyncio's ``create_server``)
    and store errors from its open, perhaps wrapped in a task group's
    exception group.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    host = settings.host or "every interface"
    if isinstance(exc, StoreOpenError):
        return f"--db {exc.path}: {exc.reason}"
    if isinstance(exc, BackplaneError):
        return f"--backplane {exc.url}: {exc.reason}"
    if isinstance(exc, socket.gaierror):
        reason = (exc.strerror or str(exc)).lower()
        return f"--host {settings.host}: does not resolve ({reason})"
    if not isinstance(exc, OSError):
        return None
    if exc.errno == errno.EADDRINUSE:
        return f"--port {settings.port}: address already in use ({host})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {settings.host}: address not available on this machine"
    if exc.errno == errno.EACCES:
        hint = "; ports below 1024 need privileges" if settings.port < 1024 else ""
        return f"--port {settings.port}: permission denied ({host}){hint}"
    return None


def _run(main: Coroutine[Any, Any, int], choice: str) -> int:
    """Run ``main`` on the chosen event loop; uvloop's sockets cost less per send."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise click.UsageError(
                    "--loop uvloop needs uvloop: pip install uvloop"
                ) from None
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def _tune_gc() -> None:
    # Modules and startup objects never die: freezing them keeps every full
    # collection from walking them again. Rooms and peers are few, long-lived
    # objects, so young collections can run far less often than every 700
    # allocations. (pycrdt-websocket's 1 s p99 stalls were full collections.)
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def _serve(
    settings: Settings, authorizer: Authorizer, tls: ssl.SSLContext | None
) -> int:
    _tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()

    listening = False

    def on_listening(host: str, port: int) -> None:
        nonlocal listening
        listening = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await run_server(
            settings,
            stop,
            on_listening=on_listening,
            authorizer=authorizer,
            tls=tls,
            sock=inherited_socket(),
        )
    except Exception as exc:
        message = None if listening else _startup_message(exc, settings)
        if message is None:
            raise
        raise StartupError(message) from exc
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0
