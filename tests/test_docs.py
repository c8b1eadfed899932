"""The README's contracts: the settings table and the two set-up commands."""

from __future__ import annotations

import re
from pathlib import Path

from ysyncd.config import settings_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def shell_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, re.S)]


def test_settings_table_is_complete_and_current() -> None:
    """The README shows exactly the table generated from Settings."""
    match = re.search(
        r"<!-- settings:start -->\n(.*?)<!-- settings:end -->", README, re.S
    )
    assert match, "README lacks the settings markers"
    assert match.group(1) == settings_table()


def test_readme_opens_with_the_two_setup_commands() -> None:
    """The first two shell blocks run the server and run the tests."""
    serve, test = shell_blocks(README)[:2]
    assert "ysyncd serve --port 1234" in serve
    assert "pytest" in test and "npm ci --prefix tests/js" in test
    first_heading = re.findall(r"^## (.+)$", README, re.M)[0]
    assert first_heading == "Set up"


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run calls the very command the README gives for the tests."""
    test = shell_blocks(README)[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci_lines
