"""Settings and the Celery configuration that makes work survive a killed worker.

Redis re-delivers an unacknowledged message after the visibility timeout. If that timeout were shorter than a task
may run, or than a retry countdown, the same work would be delivered twice while the first delivery still counts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.settings import PLACEHOLDER_SECRET, Settings
from orchestrator.tasks import constants
from orchestrator.tasks.app import celery_config

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ORCH_ variable and no config/orchestrator.toml of the developer's machine leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("ORCH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_celery_acks_late_rejects_on_worker_loss_and_prefetches_one(tmp_path: Path) -> None:
    config = celery_config(Settings(data_dir=tmp_path, broker_url=REDIS))

    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1


def test_redis_visibility_timeout_outlasts_the_hard_task_time_limit(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=REDIS)

    config = celery_config(settings)

    visibility_s = config["broker_transport_options"]["visibility_timeout"]
    assert visibility_s == settings.visibility_timeout_s
    assert visibility_s > config["task_time_limit"] == settings.task_hard_time_limit_s
    assert config["task_soft_time_limit"] < config["task_time_limit"]
    assert config["result_backend_transport_options"]["visibility_timeout"] > config["task_time_limit"]


def test_the_embedded_queue_gets_no_redis_transport_options_and_keeps_its_results_under_data_dir(
    tmp_path: Path,
) -> None:
    config = celery_config(Settings(data_dir=tmp_path))

    assert config["broker_transport_options"] == {}
    assert config["result_backend"] == f"db+sqlite:///{(tmp_path / 'celery-results.sqlite').as_posix()}"


def test_analyze_tasks_have_their_own_queue(tmp_path: Path) -> None:
    config = celery_config(Settings(data_dir=tmp_path, broker_url=REDIS))

    queues = {q.name for q in config["task_queues"]}
    assert set(constants.ALL_QUEUES) <= queues
    assert config["task_routes"][constants.TASK_ANALYZE_BATCH] == {"queue": constants.QUEUE_ANALYZE}
    assert config["task_routes"][constants.TASK_PREPARE_ASSET] == {"queue": constants.QUEUE_INGEST}


@pytest.mark.parametrize("visibility_s", [1800, 1799, 60])
def test_settings_refuse_a_visibility_timeout_not_above_the_hard_limit(tmp_path: Path, visibility_s: int) -> None:
    with pytest.raises(ValidationError, match="visibility_timeout_s"):
        Settings(data_dir=tmp_path, task_hard_time_limit_s=1800, visibility_timeout_s=visibility_s)


def test_the_refusal_also_applies_to_values_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_TASK_HARD_TIME_LIMIT_S", "4000")

    with pytest.raises(ValidationError, match="visibility_timeout_s"):
        Settings(data_dir=tmp_path)


@pytest.mark.parametrize(
    ("secret_key", "admin_token"),
    [(PLACEHOLDER_SECRET, "t" * 40), ("s" * 40, PLACEHOLDER_SECRET), ("s" * 40, "short")],
)
def test_production_refuses_placeholder_or_short_secrets(tmp_path: Path, secret_key: str, admin_token: str) -> None:
    with pytest.raises(ValidationError, match="real secret"):
        Settings(data_dir=tmp_path, environment="production", secret_key=secret_key, admin_token=admin_token)


def test_production_starts_with_real_secrets(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, environment="production", secret_key="s" * 40, admin_token="t" * 40, broker_url=REDIS
    )

    assert settings.environment == "production"


def test_production_refuses_an_empty_secret_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, environment="production", secret_key="", admin_token="t" * 40)


def test_development_accepts_the_placeholder_secret(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).secret_key == PLACEHOLDER_SECRET


def test_every_countdown_constant_is_far_below_the_default_visibility_timeout() -> None:
    countdowns = {name: value for name, value in vars(constants).items() if name.endswith("_S")}
    default_visibility_s = Settings.model_fields["visibility_timeout_s"].default

    assert {"PLAN_RETRY_S", "BACKEND_RETRY_S", "MAX_COUNTDOWN_S"} <= set(countdowns)
    for name, value in countdowns.items():
        assert 0 < value < default_visibility_s, name
    assert max(countdowns.values()) == constants.MAX_COUNTDOWN_S


def test_embedded_urls_default_to_sqlite_files_under_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "my data"

    settings = Settings(data_dir=data_dir)

    assert settings.database_url == f"sqlite:///{(data_dir / 'orchestrator.sqlite').as_posix()}"
    assert settings.broker_url == f"sqla+sqlite:///{(data_dir / 'queue.sqlite').as_posix()}"
    assert settings.media_dir == data_dir / "media"
    assert settings.is_embedded


def test_data_dir_defaults_to_data_under_the_current_directory(isolated_settings: Path) -> None:
    settings = Settings()

    assert settings.data_dir == isolated_settings / "data"
    assert settings.database_url.endswith(f"{isolated_settings.as_posix()}/data/orchestrator.sqlite")


def test_explicit_urls_win_over_the_embedded_defaults(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://db/orch", broker_url=REDIS)

    assert settings.database_url == "postgresql://db/orch"
    assert settings.broker_url == REDIS
    assert not settings.is_embedded


def test_env_vars_override_the_toml_file_and_constructor_arguments_override_both(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = isolated_settings / "config"
    config.mkdir()
    (config / "orchestrator.toml").write_text(
        "batch_size = 7\nbatch_lease_s = 90.0\napi_port = 9001\n", encoding="utf-8"
    )
    monkeypatch.setenv("ORCH_BATCH_SIZE", "9")

    from_file_and_env = Settings()
    explicit = Settings(batch_size=3)

    assert (from_file_and_env.batch_size, from_file_and_env.batch_lease_s, from_file_and_env.api_port) == (
        9,
        90.0,
        9001,
    )
    assert explicit.batch_size == 3
