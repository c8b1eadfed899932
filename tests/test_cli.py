"""The click CLI: options and environment variables come from Settings."""

from __future__ import annotations

import asyncio
import errno
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from ysyncd import __version__, cli, logs
from ysyncd.cli import main, settings_options
from ysyncd.config import Settings, describe


@click.command()
@settings_options
def capture(**options: Any) -> None:
    click.echo(repr(Settings(**options)))


def test_every_setting_is_an_option_with_an_env_var() -> None:
    """serve --help lists each setting's flag and environment variable."""
    result = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for setting in describe():
        assert setting.flag in result.output
        assert setting.env in result.output


def test_defaults_equal_the_settings_defaults() -> None:
    """With no options, the CLI builds the default Settings."""
    result = CliRunner().invoke(capture, [], env={})
    assert result.output.strip() == repr(Settings())


def test_environment_variables_and_flags_set_settings() -> None:
    """YSYNCD_* variables set options; flags win over variables."""
    env = {"YSYNCD_PORT": "4321", "YSYNCD_COMPACT_AFTER": "77", "YSYNCD_DB": "x.db"}
    result = CliRunner().invoke(capture, ["--port", "999"], env=env)
    assert result.exit_code == 0, result.output
    assert "port=999" in result.output
    assert "compact_after=77" in result.output
    assert "db='x.db'" in result.output


def test_out_of_range_values_are_refused() -> None:
    """Bounds from the Settings metadata are enforced by click."""
    result = CliRunner().invoke(capture, ["--port", "70000"])
    assert result.exit_code == 2
    result = CliRunner().invoke(capture, ["--sqlite-synchronous", "off"])
    assert result.exit_code == 2


def test_version_via_python_dash_m() -> None:
    """``python -m ysyncd --version`` prints the package version."""
    out = subprocess.run(
        [sys.executable, "-m", "ysyncd", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert __version__ in out.stdout


def test_only_failures_to_start_are_one_liners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError before the server listens is one line (exit 2); after, a crash."""
    raised_after_listening = False

    async def fake_server(
        settings: Settings,
        stop: asyncio.Event,
        *,
        on_listening: Callable[[str, int], None],
        **_: Any,
    ) -> None:
        if raised_after_listening:
            on_listening(settings.host, settings.port)
        raise OSError(errno.EADDRINUSE, "error while attempting to bind")

    # The real ones would bind a port and set up this process's logging and GC.
    monkeypatch.setattr(cli, "run_server", fake_server)
    monkeypatch.setattr(cli, "_tune_gc", lambda: None)
    monkeypatch.setattr(logs, "configure", lambda level: None)
    args = ["serve", "--port", "1234", "--loop", "asyncio"]
    args += ["--db", str(tmp_path / "y.db")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.stderr == "ysyncd: --port 1234: address already in use (127.0.0.1)\n"
    raised_after_listening = True
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert isinstance(result.exception, OSError)


def test_db_names_a_url_or_a_path_as_given() -> None:
    """``memory://`` and ``postgresql://`` reach the store as written (a path
    type once read ``memory://`` as the file ``memory:``)."""
    for db in ("memory://", "postgresql://ysyncd@db:5432/y", "data/y.db"):
        result = CliRunner().invoke(capture, ["--db", db], env={})
        assert result.exit_code == 0, result.output
        assert f"db={db!r}" in result.output
