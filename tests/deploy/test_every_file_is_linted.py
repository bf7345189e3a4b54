"""Every file in deploy/ and infra/ goes through the linter for its kind, and a file of a kind with no linter fails
here until one is chosen. The dedicated tests (test_compose, test_infra, test_alerts, ...) check meaning; this one
makes sure nothing is left out of the lint."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.deploy.compose_model import read_env_file
from tests.deploy.linters import (
    ROOT,
    hadolint,
    nginx_errors,
    powershell_syntax_errors,
    shellcheck,
    tool,
)

LINTED_FOLDERS = ("deploy", "infra")
# Markdown links: [text](target); only relative targets are checked.
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _tracked_or_new(folder: str) -> list[Path]:
    """The folder's files as a fresh clone has them: tracked plus new ones git does not ignore (never deploy/.env)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", folder],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return sorted(ROOT / name for name in listed if (ROOT / name).is_file())


def _ruff(path: Path) -> list[str]:
    done = subprocess.run(
        [tool("ruff"), "check", "--quiet", "--output-format=concise", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.splitlines() if done.returncode else []


def _yaml(path: Path) -> list[str]:
    try:
        list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        return [f"{path.name}: {exc}"]
    return []


def _env_file(path: Path) -> list[str]:
    try:
        values = read_env_file(path)
    except AssertionError as exc:
        return [f"{path.name}: {exc}"]
    names = [key for key in values if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key)]
    return [f"{path.name}: {key!r} is not a variable name" for key in names]


def _markdown_links(path: Path) -> list[str]:
    problems = []
    for target in _LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (path.parent / target.split("#", 1)[0]).exists():
            problems.append(f"{path.name}: broken link {target}")
    return problems


def _ignore_file(path: Path) -> list[str]:
    return [f"{path.name}: empty ignore file"] if not path.read_text(encoding="utf-8").strip() else []


def linter_for(path: Path) -> Callable[[Path], list[str]]:
    """The check a file of this kind goes through; fails the test for a kind nobody chose a linter for."""
    name = path.name
    if name == "Dockerfile" or (name.startswith("Dockerfile.") and not name.endswith(".dockerignore")):
        return hadolint
    if name.endswith((".dockerignore", ".gitignore")):
        return _ignore_file
    if name.endswith(".sh"):
        return shellcheck
    if name.endswith(".ps1"):
        return powershell_syntax_errors
    if name.endswith(".py"):
        return _ruff
    if name.endswith((".yaml", ".yml")):
        return _yaml
    if name.endswith(".md"):
        return _markdown_links
    if name == "env.example":
        return _env_file
    if "nginx" in path.parts and name.endswith((".conf", ".template")):
        return nginx_errors
    raise AssertionError(f"{path.relative_to(ROOT)} has no linter: add one to {Path(__file__).name}")


FILES = [path for folder in LINTED_FOLDERS for path in _tracked_or_new(folder)]


def test_the_folders_hold_the_three_deployment_paths() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in FILES}
    for expected in (
        "deploy/worker/Dockerfile",
        "deploy/compose.yaml",
        "deploy/windows/install.ps1",
        "infra/cloud-init/user-data.yaml",
    ):
        assert expected in names


@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(ROOT).as_posix() for p in FILES])
def test_each_file_passes_the_linter_for_its_kind(path: Path) -> None:
    assert linter_for(path)(path) == []
