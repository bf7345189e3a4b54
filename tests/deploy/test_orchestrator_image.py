"""deploy/orchestrator/Dockerfile: hadolint-clean, a pinned slim base, the project without the worker extra (no torch
on the VPS), the backup and write-back tools, a non-root user, and the API as the default command."""

from __future__ import annotations

import re
from pathlib import Path

from tests.deploy.compose_model import DEPLOY, load_compose
from tests.deploy.linters import hadolint

DOCKERFILE = DEPLOY / "orchestrator" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "orchestrator" / "Dockerfile.dockerignore"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in logical.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            pairs.append((keyword.upper(), " ".join(rest.split())))
    return pairs


def test_the_dockerfile_is_hadolint_clean() -> None:
    assert hadolint(DOCKERFILE) == []


def test_the_base_image_is_a_pinned_slim_python_311_and_the_build_has_two_stages() -> None:
    steps = instructions(DOCKERFILE)
    base = next(args for keyword, args in steps if keyword == "ARG" and args.startswith("PYTHON_IMAGE="))

    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm", base)
    stages = [args for keyword, args in steps if keyword == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]


def test_the_project_is_installed_without_the_worker_extra_so_torch_never_lands() -> None:
    runs = [args for keyword, args in instructions(DOCKERFILE) if keyword == "RUN"]
    installs = [run for run in runs if "pip install" in run]

    assert installs == ["pip install --no-cache-dir ."]
    assert "torch" not in " ".join(runs) and "[worker]" not in DOCKERFILE.read_text()


def test_the_runtime_has_pg_tools_of_the_compose_postgres_major_and_exiftool() -> None:
    apt = next(args for keyword, args in instructions(DOCKERFILE) if keyword == "RUN" and "apt-get install" in args)
    postgres_image = load_compose()["services"]["postgres"]["image"]

    assert "postgresql-client" in apt and "libimage-exiftool-perl" in apt and "--no-install-recommends" in apt
    assert "rm -rf /var/lib/apt/lists/*" in apt
    # Debian bookworm's postgresql-client is 15; pg_dump refuses a server newer than itself.
    assert re.fullmatch(r"postgres:15(\.\d+)?-bookworm", postgres_image)


def test_it_runs_as_an_unprivileged_user_and_serves_the_api_by_default() -> None:
    steps = instructions(DOCKERFILE)
    users = [args for keyword, args in steps if keyword == "USER"]
    command = [args for keyword, args in steps if keyword == "CMD"]

    assert users == ["orchestrator"]
    assert [keyword for keyword, _ in steps].index("USER") > [keyword for keyword, _ in steps].index("COPY")
    assert len(command) == 1
    assert '"uvicorn", "--factory", "orchestrator.api.main:create_app"' in command[0]
    assert "ORCH_DATA_DIR=/data" in next(args for keyword, args in steps if keyword == "ENV" and "ORCH_" in args)


def test_the_build_context_carries_only_what_the_image_installs() -> None:
    rules = [line for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")]

    assert rules[0] == "*"
    kept = {rule.removeprefix("!").rstrip("/") for rule in rules if rule.startswith("!")}
    assert kept == {"pyproject.toml", "README.md", "LICENSE", "orchestrator", "gpu_worker", "config"}
    copied = {
        source.rstrip("/")
        for keyword, args in instructions(DOCKERFILE)
        if keyword == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    }
    assert copied <= kept
