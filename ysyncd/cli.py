"""The ``ysyncd`` command line: a thin click layer over :class:`Settings`.

Options are generated from the Settings fields, so the CLI, the ``YSYNCD_*``
environment variables and the README table cannot drift apart.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click

from ysyncd import __version__
from ysyncd.config import Setting, Settings, describe, settings_table
from ysyncd.server import serve as run_server

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
    if setting.type is Path:
        return click.Path(path_type=Path, dir_okay=False)
    return str


def settings_options(func: F) -> F:
    """Decorate a command with one option per setting."""
    for setting in reversed(describe()):
        func = click.option(
            setting.flag,
            setting.name,
            type=_click_type(setting),
            default=setting.default,
            show_default=True,
            envvar=setting.env,
            show_envvar=True,
            help=setting.help,
        )(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ysyncd")
def main() -> None:
    """ysyncd: a durable Yjs sync server for y-websocket and JupyterLab clients."""


@main.command()
@settings_options
def serve(**options: Any) -> None:
    """Serve y-websocket rooms, storing every update in SQLite."""
    settings = Settings(**options)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # websockets logs every handshake at INFO; ours says what matters.
    if settings.log_level != "debug":
        logging.getLogger("websockets").setLevel(logging.WARNING)
    sys.exit(_run(_serve(settings), settings.loop))


@main.command("settings")
def show_settings() -> None:
    """Print the settings table (Markdown), as the README shows it."""
    click.echo(settings_table(), nl=False)


def _run(main: Coroutine[Any, Any, int], choice: str) -> int:
    """Run ``main`` on the chosen event loop; uvloop's sockets cost less per send."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise click.UsageError(
                    "--loop uvloop needs uvloop: pip install 'ysyncd[uvloop]'"
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


async def _serve(settings: Settings) -> int:
    _tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await run_server(settings, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0
