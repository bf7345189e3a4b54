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
DEFAULT_TRANSCRIBE_MODEL = "faster-whisper-small"
DEFAULT_NSFW_MODEL = "open-nsfw"
DEFAULT_FACES_MODEL = "inception-resnet-v1-vggface2"
DEFAULT_FACE_DETECTOR_MODEL = "mtcnn-facenet"
DEFAULT_OBJECTS_MODEL = "yolo11n"


class DeviceChoice(StrEnum):
    """Where inference runs; ``auto`` takes CUDA when torch sees a GPU, else the CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Precision(StrEnum):
    """Arithmetic of the image models' forward passes (CLIP's image and text towers, FaceNet, YOLO).

    ``auto`` is half precision (float16) on CUDA and float32 on the CPU; ``full`` keeps float32 everywhere (for a
    card or driver whose float16 results look wrong); ``half`` uses float16 on the CPU too, which is slow there and
    exists to check half-precision results against float32 on a machine without a GPU.
    """

    AUTO = "auto"
    FULL = "full"
    HALF = "half"


def uses_half_precision(precision: Precision, device: str) -> bool:
    """Whether the image models compute in float16 on ``device`` ("cuda", "cuda:1", "cpu") under ``precision``."""
    if precision is Precision.AUTO:
        return device.split(":")[0] == "cuda"
    return precision is Precision.HALF


def default_models_dir() -> Path:
    """The per-user model cache: ``~/.cache/ai-media-analysis/models``."""
    return Path.home() / ".cache" / "ai-media-analysis" / "models"


def default_config_dir() -> Path:
    """The repository's ``config/`` folder, which holds ``models.toml`` and ``vocabularies/``."""
    return Path(__file__).resolve().parents[1] / "config"


class WorkerSettings(BaseSettings):
    """Worker settings. Tests construct one directly: ``WorkerSettings(models_dir=tmp_path, ...)``."""

    model_config = SettingsConfigDict(
        env_prefix="GPUW_", env_nested_delimiter="__", toml_file=CONFIG_FILE, extra="ignore", hide_input_in_errors=True
    )

    models_dir: Path = Field(default_factory=default_models_dir)
    config_dir: Path = Field(default_factory=default_config_dir)
    # Merged over ``config_dir/models.toml`` in order; a later entry replaces an earlier one with the same id.
    catalog_paths: list[Path] = Field(default_factory=list)
    clip_model: str = DEFAULT_CLIP_MODEL
    transcribe_model: str = DEFAULT_TRANSCRIBE_MODEL
    # The dedicated NSFW classifier the clip analyzer adds to its prompt-based score; "" turns it off.
    nsfw_model: str = DEFAULT_NSFW_MODEL
    # The faces analyzer's model is its embedder; every embedder shares this detector.
    faces_model: str = DEFAULT_FACES_MODEL
    face_detector_model: str = DEFAULT_FACE_DETECTOR_MODEL
    objects_model: str = DEFAULT_OBJECTS_MODEL
    device: DeviceChoice = DeviceChoice.AUTO
    precision: Precision = Precision.AUTO
    # "json": one JSON object per log line with the batch id (the worker image sets it); "text" for a terminal.
    log_format: str = "text"

    # Hub and URL downloads happen only when allowed here or asked for with `gpu-worker models fetch`.
    allow_download: bool = False
    download_timeout_s: float = 60.0
    # Tries per source before the next source is used; each try resumes the partial file.
    download_attempts: int = 4

    # Checked from the image header before any pixel is decoded.
    max_image_pixels: int = 100_000_000
    # Decoded images are shrunk to this longest side (see gpu_worker.decode.DEFAULT_MAX_SIDE_PX for why 960).
    max_decode_side_px: int = 960
    video_frames: int = 4
    # Extra frames taken where the picture changes most (scene cuts between the grid's frames).
    video_scene_frames: int = 4
    # Sound beyond this is not decoded (16 kHz float32 mono: 230 MB per hour, held while one item is transcribed).
    max_audio_duration_s: float = 2 * 3600.0
    # Items given by URL (rented instances) are fetched to a temp file under these limits.
    item_download_timeout_s: float = 30.0
    max_item_bytes: int = 2 * 1024**3
    # Items decoded and analyzed together; bounds the memory held by decoded pixels. While one chunk is analyzed,
    # the decode pool prepares the next.
    decode_chunk_items: int = 32
    # Threads that fetch and decode items (0: one per core on a GPU, at most 8 on the CPU).
    decode_workers: int = 0
    # torch intra-op threads for CPU work (0: one per core). On a GPU only when set: torch's own default stays.
    cpu_threads: int = 0
    # Run one small input through each analyzer right after loading it (always on CUDA, where the first batch pays
    # for kernel selection and memory pools).
    warm_up_on_load: bool = False

    # `gpu-worker serve`: analyzers loaded and warmed up before /healthz answers 200 (`--analyzers` overrides).
    serve_analyzers: list[str] = Field(default_factory=lambda: ["clip"])
    # Where `gpu-worker serve` listens unless --host/--port say otherwise (a rented instance sets GPUW_SERVE_HOST and
    # GPUW_SERVE_PORT in its environment).
    serve_host: str = "127.0.0.1"
    serve_port: int = 8700
    # Concurrent requests with the same analyzers and options share one run of at most this many items; the first
    # waits this long for others (a few ms is little next to a run, and merges requests that arrive together).
    serve_max_batch_items: int = 64
    serve_max_wait_ms: float = 5.0
    # Beyond this many queued items a request is refused with 503, so that the caller tries another backend.
    serve_max_queue_items: int = 4096
    serve_max_manifest_bytes: int = 8 * 1024**2
    serve_warmup_images: int = 4

    @property
    def catalog_files(self) -> list[Path]:
        """The default catalog, then catalogs imported with offline bundles, then the extra ones, in merge order."""
        imported = (
            sorted((self.models_dir / "catalogs").glob("*.json")) if (self.models_dir / "catalogs").is_dir() else []
        )
        return [self.config_dir / "models.toml", *imported, *self.catalog_paths]

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
