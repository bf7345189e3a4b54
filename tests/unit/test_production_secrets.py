"""Production refuses to start with the placeholders of deploy/env.example: the environment the API container gets
from an unedited copy is refused, naming every variable, and one made by deploy/make-env.sh starts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.production_secrets import production_refusals, url_password_refusal
from orchestrator.settings import Settings
from tests.deploy.compose_model import DEPLOY, ENV_EXAMPLE, container_environment, load_compose, read_env_file

STRONG = "s" * 40


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ORCH_ variable and no config/orchestrator.toml of the developer's machine leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("ORCH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def api_container_env(env_file: Path) -> dict[str, str]:
    """The ORCH_ variables the api service of deploy/compose.yaml runs with, for this env file."""
    api = load_compose(read_env_file(env_file))["services"]["api"]
    return {k: v for k, v in container_environment(api).items() if k.startswith("ORCH_")}


def test_an_unedited_env_example_is_refused_naming_every_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in api_container_env(ENV_EXAMPLE).items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError) as refused:
        Settings()

    message = str(refused.value)
    for name in (
        "ORCH_DATABASE_URL",
        "ORCH_BROKER_URL",
        "ORCH_SECRET_KEY",
        "ORCH_ADMIN_TOKEN",
        "ORCH_VAST_API_KEY",
        "ORCH_LOCAL_WORKER_TOKEN",
    ):
        assert name in message
    assert "change-me" not in message.split("refusing to start in production:", 1)[1].split("[type=")[0]


def test_an_env_file_from_make_env_starts_in_production(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "deploy.env"
    subprocess.run([str(DEPLOY / "make-env.sh"), str(env_file)], check=True, capture_output=True)
    for name, value in api_container_env(env_file).items():
        monkeypatch.setenv(name, value)

    settings = Settings()

    assert settings.environment == "production"
    assert settings.database_url.startswith("postgresql://orchestrator:") and settings.vast_api_key == ""


def test_a_pasted_vast_key_is_accepted_and_a_placeholder_one_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"environment": "production", "secret_key": STRONG, "admin_token": STRONG}

    assert Settings(**base, vast_api_key="0123abcd" * 8).vast_api_key
    with pytest.raises(ValidationError, match="ORCH_VAST_API_KEY is a placeholder"):
        Settings(**base, vast_api_key="CHANGEME")


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        ("postgresql://orchestrator:change-me@postgres:5432/orchestrator", "placeholder"),
        ("postgresql://orchestrator:my%2Dchange%2Dme@postgres/db", "placeholder"),
        ("redis://:@redis:6379/0", "empty"),
        ("redis://:ChangeMe@redis:6379/0", "placeholder"),
    ],
)
def test_connection_urls_with_a_placeholder_or_empty_password_are_refused(url: str, refusal: str) -> None:
    answer = url_password_refusal("ORCH_DATABASE_URL", url)

    assert answer is not None and refusal in answer and answer.startswith("ORCH_DATABASE_URL")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://orchestrator:9f2c4e1ab8d7@postgres:5432/orchestrator",
        "redis://127.0.0.1:6379/0",  # no password at all: a local broker without auth
        "postgresql://postgres@127.0.0.1/db",  # trust or peer authentication
        "sqlite:////data/orchestrator.sqlite",
        "",
    ],
)
def test_connection_urls_with_a_real_or_no_password_pass(url: str) -> None:
    assert url_password_refusal("ORCH_DATABASE_URL", url) is None


def test_every_problem_is_reported_at_once_without_the_secret_values() -> None:
    refusals = production_refusals(
        required_secrets={"ORCH_SECRET_KEY": "short-but-secret", "ORCH_ADMIN_TOKEN": STRONG},
        optional_secrets={"ORCH_VAST_API_KEY": "", "ORCH_LOCAL_WORKER_TOKEN": "change-me"},
        urls={"ORCH_BROKER_URL": "redis://:change-me@redis:6379/0", "ORCH_RESULT_BACKEND": ""},
        min_secret_chars=32,
    )

    assert [r.split(" ", 1)[0].rstrip(":") for r in refusals] == [
        "ORCH_SECRET_KEY",
        "ORCH_LOCAL_WORKER_TOKEN",
        "ORCH_BROKER_URL",
    ]
    assert not any("short-but-secret" in r for r in refusals)


def test_a_refused_setting_never_prints_the_other_secrets_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-" + "x" * 40
    monkeypatch.setenv("ORCH_ENVIRONMENT", "production")
    monkeypatch.setenv("ORCH_SECRET_KEY", secret)
    monkeypatch.setenv("ORCH_ADMIN_TOKEN", "change-me")

    with pytest.raises(ValueError) as refused:
        Settings()

    assert "ORCH_ADMIN_TOKEN" in str(refused.value)
    # pydantic would otherwise echo a (truncated) dict of every setting it was given, secrets included.
    assert "input_value" not in str(refused.value)
    assert secret not in str(refused.value) and "s3cr3t" not in str(refused.value)
