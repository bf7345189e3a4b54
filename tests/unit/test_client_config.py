"""Where the CLI's API URL and key come from: option > env > client config file > local defaults."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from orchestrator.client_config import (
    DEFAULT_API_URL,
    ClientConfigError,
    config_path,
    load_config_file,
    normalise_api_url,
    resolve_client_config,
    save_client_config,
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment whose client config file lives in tmp_path and has no ORCH_API_* values."""
    return {"ORCH_CLIENT_CONFIG": str(tmp_path / "client.toml")}


def write_config(env: dict[str, str], text: str) -> None:
    Path(env["ORCH_CLIENT_CONFIG"]).write_text(text, encoding="utf-8")


def write_first_key(cwd: Path, key: str) -> None:
    (cwd / "data").mkdir(exist_ok=True)
    (cwd / "data" / "first-api-key.txt").write_text(key + "\n", encoding="utf-8")


def test_config_path_prefers_orch_client_config() -> None:
    path = config_path({"ORCH_CLIENT_CONFIG": "/etc/x/client.toml", "XDG_CONFIG_HOME": "/xdg"}, "linux")
    assert path == Path("/etc/x/client.toml")


def test_config_path_on_windows_is_under_appdata() -> None:
    path = config_path({"APPDATA": "C:/Users/ann/AppData/Roaming"}, "win32")
    assert path == Path("C:/Users/ann/AppData/Roaming") / "ai-media-analysis" / "client.toml"


def test_config_path_elsewhere_uses_xdg_config_home_or_dot_config() -> None:
    assert config_path({"XDG_CONFIG_HOME": "/xdg"}, "linux") == Path("/xdg/ai-media-analysis/client.toml")
    assert config_path({}, "darwin") == Path.home() / ".config" / "ai-media-analysis" / "client.toml"
    # A relative XDG_CONFIG_HOME is invalid by the XDG spec and ignored.
    assert config_path({"XDG_CONFIG_HOME": "rel"}, "linux") == Path.home() / ".config/ai-media-analysis/client.toml"


def test_nothing_configured_gives_local_default_url_and_no_key(env: dict[str, str], tmp_path: Path) -> None:
    config = resolve_client_config(environ=env, cwd=tmp_path)
    assert config.api_url == DEFAULT_API_URL
    assert config.api_key is None
    assert config.url_source == "default"


def test_option_beats_env_beats_file(env: dict[str, str], tmp_path: Path) -> None:
    write_config(env, 'api_url = "http://file:8000"\napi_key = "file-key"\n')
    assert resolve_client_config(environ=env, cwd=tmp_path).api_key == "file-key"
    assert resolve_client_config(environ=env, cwd=tmp_path).api_url == "http://file:8000"

    env = {**env, "ORCH_API_URL": "http://env:8000", "ORCH_API_KEY": "env-key"}
    config = resolve_client_config(environ=env, cwd=tmp_path)
    assert (config.api_url, config.api_key) == ("http://env:8000", "env-key")
    assert (config.url_source, config.key_source) == ("ORCH_API_URL", "ORCH_API_KEY")

    config = resolve_client_config("https://opt.example", "opt-key", environ=env, cwd=tmp_path)
    assert (config.api_url, config.api_key) == ("https://opt.example", "opt-key")
    assert (config.url_source, config.key_source) == ("--api-url", "--api-key")


def test_each_value_is_resolved_on_its_own(env: dict[str, str], tmp_path: Path) -> None:
    write_config(env, 'api_key = "file-key"\n')
    config = resolve_client_config(
        "http://other:9000", None, environ={**env, "ORCH_API_URL": "http://env"}, cwd=tmp_path
    )
    assert (config.api_url, config.api_key) == ("http://other:9000", "file-key")


def test_first_api_key_from_up_is_used_for_the_local_default(env: dict[str, str], tmp_path: Path) -> None:
    write_first_key(tmp_path, "first-key")
    config = resolve_client_config(environ=env, cwd=tmp_path)
    assert config.api_key == "first-key"
    assert config.key_source == str(tmp_path / "data" / "first-api-key.txt")
    # Any loopback URL counts as local (``orchestrator up --port 9000``).
    assert resolve_client_config("http://localhost:9000", environ=env, cwd=tmp_path).api_key == "first-key"


def test_first_api_key_follows_orch_data_dir(env: dict[str, str], tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "first-api-key.txt").write_text("# written by orchestrator up\nother-key\n", encoding="utf-8")
    config = resolve_client_config(environ={**env, "ORCH_DATA_DIR": str(elsewhere)}, cwd=tmp_path)
    assert config.api_key == "other-key"


def test_first_api_key_is_never_sent_to_a_remote_server(env: dict[str, str], tmp_path: Path) -> None:
    write_first_key(tmp_path, "first-key")
    config = resolve_client_config(environ={**env, "ORCH_API_URL": "https://media.example.com"}, cwd=tmp_path)
    assert config.api_key is None


def test_a_configured_key_wins_over_first_api_key(env: dict[str, str], tmp_path: Path) -> None:
    write_first_key(tmp_path, "first-key")
    write_config(env, 'api_key = "file-key"\n')
    assert resolve_client_config(environ=env, cwd=tmp_path).api_key == "file-key"
    assert resolve_client_config(environ={**env, "ORCH_API_KEY": "env-key"}, cwd=tmp_path).api_key == "env-key"


def test_blank_values_count_as_unset(env: dict[str, str], tmp_path: Path) -> None:
    write_config(env, 'api_url = "  "\napi_key = ""\n')
    config = resolve_client_config("", None, environ={**env, "ORCH_API_KEY": " "}, cwd=tmp_path)
    assert (config.api_url, config.api_key) == (DEFAULT_API_URL, None)


def test_urls_are_normalised_and_must_be_http() -> None:
    assert normalise_api_url("http://host:8000/") == "http://host:8000"
    assert normalise_api_url("https://host/prefix/api/v1/") == "https://host/prefix"
    with pytest.raises(ClientConfigError, match="http"):
        normalise_api_url("127.0.0.1:8000")
    with pytest.raises(ClientConfigError):
        normalise_api_url("ftp://host")


def test_malformed_file_is_a_readable_error(env: dict[str, str], tmp_path: Path) -> None:
    write_config(env, "api_url = \n")
    with pytest.raises(ClientConfigError, match="not valid TOML"):
        resolve_client_config(environ=env, cwd=tmp_path)
    write_config(env, "api_key = 42\n")
    with pytest.raises(ClientConfigError, match="must be a string"):
        resolve_client_config(environ=env, cwd=tmp_path)


def test_save_round_trips_awkward_characters(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "client.toml"
    key = 'k"ey\\with\tstuff-ü'
    assert save_client_config("http://host:8000/", key, path) == path
    assert load_config_file(path) == {"api_url": "http://host:8000", "api_key": key}
    assert not path.with_name("client.toml.tmp").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_saved_file_is_readable_by_the_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text("old", encoding="utf-8")
    path.chmod(0o644)
    save_client_config("http://host:8000", "secret", path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_save_refuses_an_empty_key_or_bad_url(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError):
        save_client_config("http://host", "  ", tmp_path / "c.toml")
    with pytest.raises(ClientConfigError):
        save_client_config("host", "key", tmp_path / "c.toml")
    assert not (tmp_path / "c.toml").exists()
