"""Shared test setup: offline switches, private caches, and databases (SQLite and a fresh PostgreSQL database)."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Libraries that reach for hubs or write into the home folder are pointed at private, offline places before any
# of them is imported.
_PRIVATE = Path(tempfile.mkdtemp(prefix="mam-tests-"))
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "YOLO_OFFLINE": "1",
    "YOLO_CONFIG_DIR": str(_PRIVATE / "yolo"),
    "MPLCONFIGDIR": str(_PRIVATE / "mpl"),
    "TORCH_HOME": str(_PRIVATE / "torch"),
    "HF_HOME": str(_PRIVATE / "hf"),
    "XDG_CONFIG_HOME": str(_PRIVATE / "config"),
}.items():
    os.environ[_name] = _value

# pytest-xdist's worker processes inherit COLUMNS=80, which rich would freeze into the CLI's console at import; a
# plain pytest run has none, and the CLI tests pass the width they need with CliRunner's env.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

pytest_plugins = [
    "tests.fixtures.pytest_fixtures",
    "tests.fixtures.services",
    "tests.fakes.vast_server",
    "tests.fixtures.cloud_harness",
    "tests.fixtures.deployment",
    "tests.fixtures.cpu_models",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SHARED_MEDIA = SHARED / "media"
SHARED_MODELS = SHARED / "models"


# Folders whose tests time real processes and kill them; with the browser and end-to-end tests they run alone.
SERIAL_FOLDERS = frozenset({"chaos", "load"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that must not share the machine with other tests as ``serial`` (see scripts/test.sh)."""
    for item in items:
        folder = item.path.relative_to(REPO_ROOT / "tests").parts[0]
        if folder in SERIAL_FOLDERS or item.get_closest_marker("browser") or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.serial)


@pytest.fixture
def shared_media() -> Path:
    """The real photos, speech and video in ../shared/media; skips when a fresh clone has no such folder."""
    if not (SHARED_MEDIA / "bus.jpg").exists():
        pytest.skip("../shared/media is absent (it ships beside the repository on development machines)")
    return SHARED_MEDIA


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A temporary folder removed after the test."""
    with tempfile.TemporaryDirectory(prefix="mam-") as folder:
        yield Path(folder)


def unique_name(prefix: str) -> str:
    """A short unique name for tenants and databases."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def tiny_clip_worker_env(tiny_clip_catalog: Path, tmp_path: Path) -> dict[str, str]:
    """Env vars that make a worker process (or ``orchestrator up``) find the tiny CLIP through its model store."""
    from tests.fixtures.tiny_models import TINY_CLIP_ID

    return {
        "GPUW_CATALOG_PATHS": json.dumps([str(tiny_clip_catalog)]),
        "GPUW_CLIP_MODEL": TINY_CLIP_ID,
        "GPUW_MODELS_DIR": str(tmp_path / "worker-models"),
    }
