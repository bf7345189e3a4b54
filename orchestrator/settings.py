"""One settings object per process: defaults in code, then ``config/orchestrator.toml``, then ``ORCH_`` env vars."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from orchestrator.production_secrets import production_refusals
from orchestrator.sqlite_urls import sqlite_url

PLACEHOLDER_SECRET = "change-me"  # noqa: S105 - the marker that refuses to start outside development
MIN_SECRET_CHARS = 32
CONFIG_FILE = Path("config/orchestrator.toml")


def default_data_dir() -> Path:
    """Where the embedded default keeps its database, queue and media: ``./data`` under the current directory."""
    return Path.cwd() / "data"


class Settings(BaseSettings):
    """Orchestrator settings. Nested values use ``__`` in env names, e.g. ``ORCH_DATABASE_URL``."""

    # hide_input_in_errors: a validation error must never print the settings it was given (they hold secrets).
    model_config = SettingsConfigDict(
        env_prefix="ORCH_",
        env_nested_delimiter="__",
        toml_file=CONFIG_FILE,
        extra="ignore",
        hide_input_in_errors=True,
    )

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""
    broker_url: str = ""
    result_backend: str = ""
    secret_key: str = PLACEHOLDER_SECRET
    admin_token: str = ""
    # GET /metrics demands "Authorization: Bearer <this>" when set; unset, it answers loopback/private peers only.
    metrics_token: str = Field(default="", repr=False)
    # "json" (production): one JSON object per log line with the job/batch/instance/request ids; "text" for people.
    log_format: Literal["text", "json"] = "text"

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # The base URL that workers use to reach this API (signed media URLs); default http://api_host:api_port.
    public_url: str = ""

    # The dashboard's session cookie is Secure when the request came over HTTPS (behind nginx: X-Forwarded-Proto);
    # set this to force it either way.
    session_cookie_secure: bool | None = None

    # Requests per tenant (and per client address for refused credentials): a token bucket of rate_limit_burst
    # requests refilled at rate_limit_per_minute, shared by all API processes through Redis; 0 turns it off.
    rate_limit_per_minute: float = 6000.0
    rate_limit_burst: int = 2000

    max_upload_bytes: int = 2 * 1024**3
    max_image_pixels: int = 100_000_000
    batch_size: int = 16
    default_analyzers: list[str] = Field(default_factory=lambda: ["clip"])

    # A batch lease must outlive the slowest heartbeat gap; the worker renews it every third of its length.
    batch_lease_s: float = 60.0
    batch_max_attempts: int = 5
    task_soft_time_limit_s: int = 1500
    task_hard_time_limit_s: int = 1800
    # Redis re-delivers an unacked message after this long; it must exceed the hard time limit or a task that is
    # still running would be delivered twice.
    visibility_timeout_s: int = 3600
    reaper_interval_s: float = 15.0

    # GPU workers started with `gpu-worker serve` (this machine or the LAN); batches try them, in this order, before
    # the CPU. local_worker_urls is a JSON list in the env; local_worker_url (one URL) is kept and tried first.
    local_worker_url: str = ""
    local_worker_urls: list[str] = Field(default_factory=list)
    local_worker_token: str = ""
    local_worker_timeout_s: float = 900.0
    # A batch on a rented instance: its worker fetches the media over the internet, so allow as long as locally.
    cloud_worker_timeout_s: float = 900.0
    # Signed media URLs handed to workers stay valid this long; the executor fetches a batch's last items near the
    # end of the batch, so this must cover a whole batch, and the task hard time limit bounds that.
    media_url_ttl_s: float = 1800.0

    # Vast.ai REST API; the key stays on this machine and out of reprs, logs and error messages.
    vast_api_url: str = "https://console.vast.ai"
    vast_api_key: str = Field(default="", repr=False)

    # Rented instances: the worker image they run, the container port `gpu-worker serve` listens on, and the
    # deployment name in their labels (several deployments may share one Vast.ai account).
    cloud_worker_image: str = "ghcr.io/ai-media-analysis/gpu-worker:latest"
    cloud_worker_port: int = 8700
    cloud_deployment: str = "default"
    scheduler_tick_s: float = 5.0
    # A create that was never confirmed (a timeout after sending) is given up after this long, unless the
    # reconciler finds its labelled instance first.
    cloud_create_grace_s: float = 120.0
    # Listed rows are judged vanished only when older than this (the provider's list may lag a fresh create).
    cloud_vanish_grace_s: float = 60.0
    # After this many failed destroys an instance is put in the alert state (it may still bill).
    cloud_destroy_max_attempts: int = 5
    cloud_health_timeout_s: float = 5.0
    # A ready instance's measured images/s (its /v1/info) is recorded when it becomes ready and then at most this
    # often while it lives; samples older than the max age no longer replace the table's estimates.
    cloud_throughput_sample_interval_s: float = 900.0
    cloud_throughput_max_age_s: float = 30 * 86400.0

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = sqlite_url(self.data_dir / "orchestrator.sqlite")
        if not self.broker_url:
            self.broker_url = sqlite_url(self.data_dir / "queue.sqlite", scheme="sqla+sqlite")
        if self.environment == "production":
            refusals = production_refusals(
                required_secrets={"ORCH_SECRET_KEY": self.secret_key, "ORCH_ADMIN_TOKEN": self.admin_token},
                optional_secrets={
                    "ORCH_VAST_API_KEY": self.vast_api_key,
                    "ORCH_LOCAL_WORKER_TOKEN": self.local_worker_token,
                },
                urls={
                    "ORCH_DATABASE_URL": self.database_url,
                    "ORCH_BROKER_URL": self.broker_url,
                    "ORCH_RESULT_BACKEND": self.result_backend,
                },
                min_secret_chars=MIN_SECRET_CHARS,
            )
            if refusals:
                raise ValueError("refusing to start in production: " + "; ".join(refusals))
        if self.environment == "production" and self.all_local_worker_urls and not self.local_worker_token:
            raise ValueError("ORCH_LOCAL_WORKER_TOKEN is required with ORCH_LOCAL_WORKER_URL(S) in production")
        if self.media_url_ttl_s <= 0:
            raise ValueError("media_url_ttl_s must be positive")
        if self.visibility_timeout_s <= self.task_hard_time_limit_s:
            raise ValueError("visibility_timeout_s must be larger than task_hard_time_limit_s")
        return self

    @property
    def all_local_worker_urls(self) -> list[str]:
        """Every configured local worker, ``local_worker_url`` first, each once."""
        urls = [self.local_worker_url, *self.local_worker_urls]
        return list(dict.fromkeys(url.rstrip("/") for url in urls if url.strip()))

    @property
    def media_dir(self) -> Path:
        """Root of the local media store."""
        return self.data_dir / "media"

    @property
    def media_base_url(self) -> str:
        """Where workers reach this API: ``public_url``, else the API's own address (loopback for a wildcard)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        # A wildcard is where the API listens, not an address to connect to.
        host = "127.0.0.1" if self.api_host in ("0.0.0.0", "::", "") else self.api_host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.api_port}"

    @property
    def is_embedded(self) -> bool:
        """True when running on SQLite with the embedded queue (``orchestrator up``)."""
        return self.database_url.startswith("sqlite") or self.broker_url.startswith("sqla+")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: constructor arguments, env vars, then the TOML file, then defaults."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls), file_secret_settings)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
