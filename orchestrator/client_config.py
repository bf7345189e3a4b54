"""Where the ``orchestrator`` CLI finds the API URL and key, so that a user types them once.

Each value is taken from the first place that has it:

1. the command-line option (``--api-url``, ``--api-key``);
2. the environment (``ORCH_API_URL``, ``ORCH_API_KEY``);
3. the client config file, TOML with ``api_url`` and ``api_key``, written by ``orchestrator login``: at
   ``$ORCH_CLIENT_CONFIG`` if set, else ``%APPDATA%\\ai-media-analysis\\client.toml`` on Windows, else
   ``$XDG_CONFIG_HOME/ai-media-analysis/client.toml`` or ``~/.config/ai-media-analysis/client.toml``;
4. the URL default ``http://127.0.0.1:8000``; for the key, when the URL points at this machine, the first key that
   ``orchestrator up`` wrote to ``<data dir>/first-api-key.txt`` (``$ORCH_DATA_DIR``, else ``./data``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.errors import MediaAnalysisError

DEFAULT_API_URL = "http://127.0.0.1:8000"
APP_DIR_NAME = "ai-media-analysis"
CONFIG_FILE_NAME = "client.toml"
FIRST_API_KEY_FILE_NAME = "first-api-key.txt"

ENV_API_URL = "ORCH_API_URL"
ENV_API_KEY = "ORCH_API_KEY"
ENV_CLIENT_CONFIG = "ORCH_CLIENT_CONFIG"
ENV_DATA_DIR = "ORCH_DATA_DIR"

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ClientConfigError(MediaAnalysisError):
    """The client configuration is unusable (unreadable file, malformed TOML, a URL that is not http(s))."""

    code = "client_config_invalid"


@dataclass(frozen=True)
class ClientConfig:
    """The resolved API URL and key, and where each came from (for messages such as "key from ORCH_API_KEY")."""

    api_url: str
    api_key: str | None
    url_source: str
    key_source: str | None


def config_path(environ: Mapping[str, str] | None = None, platform: str | None = None) -> Path:
    """The client config file for this user and platform (it need not exist)."""
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if explicit := environ.get(ENV_CLIENT_CONFIG):
        return Path(explicit).expanduser()
    if platform == "win32":
        appdata = environ.get("APPDATA")
        base = Path(appdata) if appdata else Path.home() / "AppData" / "Roaming"
    else:
        xdg = environ.get("XDG_CONFIG_HOME", "")
        # The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / APP_DIR_NAME / CONFIG_FILE_NAME


def normalise_api_url(url: str) -> str:
    """``url`` without trailing slashes or a trailing ``/api/v1``; raises :class:`ClientConfigError` unless http(s)."""
    url = url.strip().rstrip("/")
    url = url.removesuffix("/api/v1").rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientConfigError(f"API URL {url!r} must start with http:// or https:// and name a host")
    return url


def is_local_url(url: str) -> bool:
    """True when ``url`` points at this machine (a loopback host on any port)."""
    return (urlsplit(url).hostname or "") in _LOOPBACK_HOSTS


def load_config_file(path: Path) -> dict[str, str]:
    """The ``api_url``/``api_key`` strings in the TOML file at ``path``; empty if the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ClientConfigError(f"cannot read client config {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClientConfigError(f"client config {path} is not valid TOML: {exc}") from exc
    values: dict[str, str] = {}
    for key in ("api_url", "api_key"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ClientConfigError(f"client config {path}: {key} must be a string")
        if value.strip():
            values[key] = value.strip()
    return values


def first_api_key_path(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """Where ``orchestrator up`` leaves the first tenant's key: ``$ORCH_DATA_DIR`` or ``./data``."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    data_dir = Path(environ[ENV_DATA_DIR]).expanduser() if environ.get(ENV_DATA_DIR) else Path("data")
    return (cwd / data_dir) / FIRST_API_KEY_FILE_NAME


def read_first_api_key(path: Path) -> str | None:
    """The key in ``path`` (its first non-blank line that is not a ``#`` comment), or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    return None


def resolve_client_config(
    api_url: str | None = None,
    api_key: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    platform: str | None = None,
) -> ClientConfig:
    """Resolve the API URL and key by the precedence in this module's docstring."""
    environ = os.environ if environ is None else environ
    path = config_path(environ, platform)
    file_values = load_config_file(path)

    url_candidates = (
        (api_url, "--api-url"),
        (environ.get(ENV_API_URL), ENV_API_URL),
        (file_values.get("api_url"), str(path)),
    )
    url, url_source = next(((v, s) for v, s in url_candidates if v and v.strip()), (DEFAULT_API_URL, "default"))
    url = normalise_api_url(url)

    key_candidates = (
        (api_key, "--api-key"),
        (environ.get(ENV_API_KEY), ENV_API_KEY),
        (file_values.get("api_key"), str(path)),
    )
    key, key_source = next(((v.strip(), s) for v, s in key_candidates if v and v.strip()), (None, None))
    if key is None and is_local_url(url):
        key_file = first_api_key_path(environ, cwd)
        key = read_first_api_key(key_file)
        key_source = str(key_file) if key else None
    return ClientConfig(api_url=url, api_key=key, url_source=url_source, key_source=key_source)


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string: both escape quotes, backslashes and control characters alike.
    return json.dumps(value, ensure_ascii=False)


def save_client_config(api_url: str, api_key: str, path: Path | None = None) -> Path:
    """Write the URL and key to the client config file, readable by the owner only where the OS supports it."""
    path = config_path() if path is None else path
    url = normalise_api_url(api_url)
    if not api_key.strip():
        raise ClientConfigError("the API key must not be empty")
    text = f"api_url = {_toml_string(url)}\napi_key = {_toml_string(api_key.strip())}\n"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        # Created 0600 from the start so the key is never readable by others, not even between write and chmod.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if os.name != "nt":
            tmp.chmod(0o600)  # an older leftover .tmp keeps its mode through O_TRUNC
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.with_name(path.name + ".tmp").unlink()
        raise ClientConfigError(f"cannot write client config {path}: {exc.strerror or exc}") from exc
    return path
