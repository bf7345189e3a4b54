"""One settings object per worker process: defaults in code, overridden by ``config/gpu_worker.toml`` then ``GPUW_``
env vars (``__`` nests; lists are JSON, e.g. ``GPUW_CATALOG_PATHS='["/srv/extra-models.toml"]'``)."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE = Path("config/gpu_worker.toml")
DEFAULT_CLIP_MODEL = "clip-vit-b-32-openai"


class DeviceChoice(StrEnum):
    """Where inference runs; ``auto`` takes CUDA when torch sees a GPU, else the CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def default_models_dir() -> Path:
    """The per-user model cache: ``~/.cache/ai-media-analysis/models``."""
    return Path.home() / ".cache" / "ai-media-analysis" / "models"


def default_config_dir() -> Path:
    """The repository's ``config/`` folder, which holds ``models.toml`` and ``vocabularies/``."""
    return Path(__file__).resolve().parents[1] / "config"


class WorkerSettings(BaseSettings):
    """Worker settings. Tests construct one directly: ``WorkerSettings(models_dir=tmp_path, ...)``."""

    model_config = SettingsConfigDict(
        env_prefix="GPUW_", env_nested_delimiter="__", toml_file=CONFIG_FILE, extra="ignore"
    )

    models_dir: Path = Field(default_factory=default_models_dir)
    config_dir: Path = Field(default_factory=default_config_dir)
    # Merged over ``config_dir/models.toml`` in order; a later entry replaces an earlier one with the same id.
    catalog_paths: list[Path] = Field(default_factory=list)
    clip_model: str = DEFAULT_CLIP_MODEL
    device: DeviceChoice = DeviceChoice.AUTO

    # Hub and URL downloads happen only when allowed here or asked for with `gpu-worker models fetch`.
    allow_download: bool = False
    download_timeout_s: float = 60.0

    # Checked from the image header before any pixel is decoded.
    max_image_pixels: int = 100_000_000
    # Decoded images are shrunk to this longest side; the analyzers of this milestone look at 224-448 px.
    max_decode_side_px: int = 1024
    video_frames: int = 4
    # Items given by URL (rented instances) are fetched to a temp file under these limits.
    item_download_timeout_s: float = 30.0
    max_item_bytes: int = 2 * 1024**3
    # Items decoded and analyzed together; bounds the memory held by decoded pixels.
    decode_chunk_items: int = 32

    @property
    def catalog_files(self) -> list[Path]:
        """The default catalog followed by the extra ones, in merge order."""
        return [self.config_dir / "models.toml", *self.catalog_paths]

    @property
    def vocabularies_dir(self) -> Path:
        """Folder of the named tag vocabularies (``<name>.toml``)."""
        return self.config_dir / "vocabularies"

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
def get_settings() -> WorkerSettings:
    """The process-wide settings, read once; tests call ``get_settings.cache_clear()`` after changing env vars."""
    return WorkerSettings()
