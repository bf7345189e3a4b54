"""The figures of chaos scenarios, printed and appended as JSON lines to ``test-artifacts/chaos/<scenario>.jsonl``
so that CI output and the artifacts folder both show them (docs/reliability.md quotes the latest ones)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.chaos.invariants import Counts

REPO_ROOT = Path(__file__).resolve().parents[2]
# The lines recorded in this pytest session, for the terminal summary (``conftest.pytest_terminal_summary``).
RECORDED: list[str] = []


def artifacts_dir() -> Path:
    """Where the figures go: ``$CHAOS_ARTIFACTS_DIR``, else ``test-artifacts/chaos`` in the repository."""
    folder = Path(os.environ.get("CHAOS_ARTIFACTS_DIR") or REPO_ROOT / "test-artifacts" / "chaos")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def record(counts: Counts) -> Path:
    """Print ``counts`` as one JSON line and append it to the scenario's file; returns that file."""
    line = json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **counts.as_dict()}, sort_keys=True)
    print(f"CHAOS {line}")
    RECORDED.append(line)
    path = artifacts_dir() / f"{counts.scenario or 'unnamed'}.jsonl"
    with path.open("a", encoding="utf-8") as out:
        out.write(line + "\n")
    return path
