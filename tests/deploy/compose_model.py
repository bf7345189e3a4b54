"""deploy/compose.yaml as `docker compose config` sees it, without Docker: the env file's variables, Compose's
``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` and ``$$`` interpolation, and the services of a profile set."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "env.example"

_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariableError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset or empty, as Compose refuses it."""


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file (comments and blank lines skipped, surrounding quotes removed)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, separator, value = stripped.partition("=")
        assert separator, f"not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip().strip("'\"")
    return values


def referenced_variables(text: str) -> set[str]:
    """Every variable the text refers to with ``${...}`` or ``$NAME``."""
    return {m["braced"] or m["bare"] for m in _REFERENCE.finditer(text) if not m["escaped"]}


def interpolate_text(text: str, env: Mapping[str, str]) -> str:
    """Substitute the references in one string the way Compose does."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in ("?", ":?") and unset_or_empty:
            raise MissingVariableError(f"required variable {name} is missing a value: {arg}")
        if op in ("-", ":-") and unset_or_empty:
            return arg
        return value or ""

    return _REFERENCE.sub(substitute, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string of a loaded YAML document."""
    if isinstance(node, str):
        return interpolate_text(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose document, interpolated with ``env`` when given (raw otherwise)."""
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return interpolate(document, env) if env is not None else document


def services_in(document: dict[str, Any], profiles: frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """The services that ``docker compose --profile ...`` starts: those without profiles, and those of ``profiles``."""
    return {
        name: service
        for name, service in document["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & profiles
    }


def memory_bytes(limit: str | int) -> int:
    """A memory size as Compose or Redis write it (``512m``, ``1g``, ``256mb``, bytes) in bytes."""
    if isinstance(limit, int):
        return limit
    match = re.fullmatch(r"(\d+)([bkmg]?)b?", str(limit).strip().lower())
    assert match, f"unreadable memory size {limit!r}"
    return int(match[1]) * {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match[2]]


def container_environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a mapping of strings (list form accepted)."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(key): "" if value is None else str(value) for key, value in environment.items()}
