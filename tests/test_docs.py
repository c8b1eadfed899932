"""The README's contracts: the settings table and the two set-up commands;
and the reference deployment files, which no test runs, name real settings."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from ysyncd.auth.glue import namespace_secret
from ysyncd.config import describe, settings_table

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


#: What the ysyncd.jupyter extension reads from the environment.
EXTENSION_ENV = {"YSYNCD_URL", "YSYNCD_GLUE_SECRET_FILE", "YSYNCD_GLUE_SECRET"}
REFERENCE_FILES = [
    "examples/jupyterhub/compose.yaml",
    "examples/jupyterhub/kubernetes-sidecar.yaml",
    "examples/jupyterhub/kubernetes-objects.yaml",
]


def test_reference_deployments_parse_and_name_real_settings() -> None:
    """compose.yaml and the Kubernetes files are YAML, and every YSYNCD_*
    variable in them is a setting of ysyncd or of its Jupyter extension."""
    known = {env for s in describe() for env in s.envvars} | EXTENSION_ENV
    named = set()
    for name in REFERENCE_FILES:
        text = (ROOT / name).read_text()
        assert list(yaml.safe_load_all(text)), name
        named |= set(re.findall(r"\bYSYNCD_[A-Z_]+\b", text))
    assert named, "no settings found: the pattern is wrong"
    assert named - {"YSYNCD_HUB_TOKEN"} <= known  # that one is compose's own


def test_the_kubernetes_snippet_derives_the_same_glue_secrets(tmp_path: Path) -> None:
    """Its Hub config inlines ysyncd.auth.glue.namespace_secret (the Hub
    image has no ysyncd): both give the same secret for a server."""
    values = yaml.safe_load(
        (ROOT / "examples/jupyterhub/kubernetes-sidecar.yaml").read_text()
    )
    code = values["hub"]["extraConfig"]["ysyncd"]
    master = tmp_path / "glue.secret"
    master.write_text("m" * 64 + "\n")
    code = code.replace("/etc/ysyncd/glue.secret", str(master))
    environment: dict[str, Any] = {}
    config = SimpleNamespace(KubeSpawner=SimpleNamespace(environment=environment))
    exec(code, {"c": config})
    derive = environment["YSYNCD_GLUE_SECRET"]
    for owner, server in [("alice", ""), ("bob", "gpu")]:
        spawner = SimpleNamespace(user=SimpleNamespace(name=owner), name=server)
        assert derive(spawner) == namespace_secret("m" * 64, owner, server)
