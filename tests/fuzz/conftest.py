"""The seeded API the fuzz tests share: built once per module on its own SQLite database (the embedded default)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.api.main import create_app
from orchestrator.db.session import reset_engines
from orchestrator.settings import get_settings
from tests.fixtures.services import OrchestratorEnv, _activate
from tests.fuzz.seeded_api import SeededApi, seed_api
from tests.fuzz.tally import TALLY

FUZZ_SECRET_KEY = "fuzz-tests-media-signing-key"  # a test-only key, so that /media tokens can be signed


@pytest.fixture(scope="module")
def seeded_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeededApi]:
    """One app on a migrated SQLite database with a tenant's job, assets, people and write-back in it."""
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    env = OrchestratorEnv(
        data_dir=data_dir,
        database_url=f"sqlite:///{(data_dir / 'orchestrator.sqlite').as_posix()}",
        broker_url=f"sqla+sqlite:///{(data_dir / 'queue.sqlite').as_posix()}",
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("ORCH_SECRET_KEY", FUZZ_SECRET_KEY)
        _activate(env, monkeypatch)
        yield seed_api(create_app(), media_dir=data_dir / "media", admin_token=env.admin_token)
        reset_engines()
        get_settings.cache_clear()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fuzz figures (operations, requests, status codes) when the fuzz tests ran."""
    if TALLY.requests:
        terminalreporter.write_line(TALLY.summary())
        for operation, count in sorted(TALLY.requests.items()):
            terminalreporter.write_line(f"  {count:5d}  {operation}", light=True)
