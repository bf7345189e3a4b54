"""The model store: a catalog of models, their files and sources, and a verified cache of their weights.

``resolve(model_id)`` returns a folder holding every file of the model, each checked against its sha256. Missing
files come from the entry's sources, in order: a local folder (copied, or used in place), then URLs and the Hugging
Face hub, which are used only when downloads are allowed. A download goes to a ``.part`` file, is hashed while it
streams and only a verified file is renamed to its final name, so a cut download never looks like a good file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import tarfile
import tempfile
import threading
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpu_worker.download import DownloadError, TransientDownloadError, download_resumable
from gpu_worker.errors import ChecksumMismatchError, ModelUnavailableError, UnknownModelError, WorkerError
from gpu_worker.settings import WorkerSettings

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
HF_ENDPOINT = "https://huggingface.co"
FETCH_COMMAND = "gpu-worker models fetch"
PIN_SUFFIX = ".sha256"
PARTIAL_SUFFIX = ".download"
BUNDLE_MODELS_DIR = "models"

ProgressCallback = Callable[[str, int, int | None], None]
"""Called as ``progress(file_name, bytes_done, bytes_total_or_None)`` while a file is copied or downloaded."""


class ModelFamily(StrEnum):
    """What a model does; each analyzer loads models of one family."""

    CLIP = "clip"
    OBJECTS = "objects"
    FACES = "faces"
    TRANSCRIBE = "transcribe"
    NSFW = "nsfw"


class ModelState(StrEnum):
    """Whether a model's files are in the cache and match their sha256."""

    PRESENT = "present"
    MISSING = "missing"
    CORRUPT = "corrupt"


class PinState(StrEnum):
    """Where the expected sha256 of a model's files comes from."""

    CATALOG = "catalog"  # every file has a sha256 in the catalog
    RECORDED = "recorded"  # some files were pinned at their first good download
    UNPINNED = "unpinned"  # some files have no sha256 yet; the first download will pin them


class CatalogError(WorkerError):
    """A catalog file cannot be read or holds an invalid entry."""

    code = "catalog_invalid"


class SourceError(WorkerError):
    """One source could not deliver a file; the store goes on with the next source."""

    code = "source_failed"


class ModelFile(BaseModel):
    """One file of a model, by name inside the model's folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    size: int | None = None
    sha256: str | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value in {".", ".."}:
            raise ValueError(f"file name {value!r} must be a plain name without folders")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError(f"sha256 {value!r} is not 64 hex digits")
        return value


class LocalSource(BaseModel):
    """A folder on this machine (a USB disk, a share, an unpacked offline bundle)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["local"] = "local"
    path: Path
    in_place: bool = False

    def describe(self) -> str:
        """A short human-readable name of the source."""
        return f"local folder {self.path}"


class UrlSource(BaseModel):
    """Plain HTTPS: a file's URL is ``base_url + "/" + name``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["url"] = "url"
    base_url: str

    def url_for(self, name: str) -> str:
        """The URL of one file."""
        return f"{self.base_url.rstrip('/')}/{name}"

    def describe(self) -> str:
        """A short human-readable name of the source."""
        return f"url {self.base_url}"


class HfSource(BaseModel):
    """A Hugging Face hub repository at a revision (a branch, tag or commit)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["hf"] = "hf"
    repo: str
    revision: str = "main"

    def url_for(self, name: str) -> str:
        """The URL of one file; ``HF_ENDPOINT`` points at a mirror when set."""
        endpoint = os.environ.get("HF_ENDPOINT", HF_ENDPOINT).rstrip("/")
        return f"{endpoint}/{self.repo}/resolve/{self.revision}/{name}"

    def describe(self) -> str:
        """A short human-readable name of the source."""
        return f"hf {self.repo}@{self.revision}"


class BundleSource(BaseModel):
    """An offline bundle made by ``gpu-worker models export-bundle``: one tar file holding ``models/<id>/<file>``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["bundle"] = "bundle"
    path: Path

    def describe(self) -> str:
        """A short human-readable name of the source."""
        return f"bundle {self.path}"


class PackageSource(BaseModel):
    """A folder inside an installed Python package, for weights that ship in a wheel (facenet-pytorch's MTCNN)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["package"] = "package"
    package: str
    path: str = ""

    @field_validator("path")
    @classmethod
    def _inside_package(cls, value: str) -> str:
        posix = value.replace("\\", "/")
        if posix.startswith("/") or ":" in posix or ".." in PurePosixPath(posix).parts:
            raise ValueError(f"package path {value!r} must be a relative folder inside the package")
        return posix

    def folder(self) -> Path:
        """The folder on disk, found without importing a top-level package; ``SourceError`` when not installed."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError) as exc:
            raise SourceError(f"package {self.package} cannot be found: {exc}") from exc
        if spec is None or not spec.submodule_search_locations:
            raise SourceError(f"package {self.package} is not installed")
        return Path(next(iter(spec.submodule_search_locations))) / self.path

    def describe(self) -> str:
        """A short human-readable name of the source."""
        return f"package {self.package}/{self.path}"


Source = Annotated[LocalSource | UrlSource | HfSource | BundleSource | PackageSource, Field(discriminator="kind")]


class ModelEntry(BaseModel):
    """One catalog entry: what the model is, which files it needs and where they come from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    family: ModelFamily
    format: str
    description: str = ""
    license: str = ""
    # open_clip: an architecture built into open_clip, or a JSON file of the entry with model_cfg/preprocess_cfg.
    arch: str | None = None
    config_file: str | None = None
    # The file holding the weights; defaults to the first file that is not the config file.
    weights_file: str | None = None
    # Family-specific settings for later analyzers (class lists, thresholds) that have no field of their own.
    options: dict[str, Any] = Field(default_factory=dict)
    files: tuple[ModelFile, ...] = Field(min_length=1)
    sources: tuple[Source, ...] = ()

    @model_validator(mode="after")
    def _named_files_exist(self) -> ModelEntry:
        names = {f.name for f in self.files}
        for ref in (self.config_file, self.weights_file):
            if ref is not None and ref not in names:
                raise ValueError(f"model {self.id}: {ref!r} is not one of its files {sorted(names)}")
        if len(names) != len(self.files):
            raise ValueError(f"model {self.id}: file names repeat")
        return self

    @property
    def weights(self) -> ModelFile:
        """The weights file."""
        name = self.weights_file or next((f.name for f in self.files if f.name != self.config_file), None)
        if name is None:
            raise CatalogError(f"model {self.id} names no weights file")
        return next(f for f in self.files if f.name == name)

    @property
    def pinned(self) -> bool:
        """True when the catalog gives the sha256 of every file."""
        return all(f.sha256 is not None for f in self.files)


@dataclass(frozen=True)
class ModelStatus:
    """What ``gpu-worker models list`` shows for one model."""

    entry: ModelEntry
    state: ModelState
    pin: PinState
    folder: Path


def load_catalog(paths: list[Path]) -> dict[str, ModelEntry]:
    """Read and merge catalog files (TOML, or JSON as written by bundle import) in order; a later entry
    replaces an earlier one with the same id.

    Missing files among ``paths`` are skipped; relative ``local`` source paths are taken relative to their catalog.
    """
    entries: dict[str, ModelEntry] = {}
    for path in paths:
        if not path.is_file():
            log.debug("model catalog %s does not exist; skipped", path)
            continue
        try:
            text = path.read_text(encoding="utf-8")
            raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise CatalogError(f"cannot read model catalog {path}: {exc}") from exc
        for item in raw.get("model", []):
            for source in item.get("sources", []):
                if source.get("kind") in ("local", "bundle") and "path" in source:
                    source["path"] = (path.parent / Path(source["path"]).expanduser()).resolve()
            try:
                entry = ModelEntry.model_validate(item)
            except ValidationError as exc:
                raise CatalogError(f"invalid model entry {item.get('id', '?')!r} in {path}: {exc}") from exc
            entries[entry.id] = entry
    return entries


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class ModelStore:
    """Catalog plus verified cache under ``settings.models_dir/<model id>/``. Safe to share between threads."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.root = settings.models_dir
        self._catalog: dict[str, ModelEntry] | None = None
        # path -> (size, mtime_ns, sha256): a file is hashed once per process unless it changes on disk.
        self._verified: dict[Path, tuple[int, int, str]] = {}
        self._lock = threading.Lock()
        self._model_locks: dict[str, threading.Lock] = {}

    # catalog

    def catalog(self) -> list[ModelEntry]:
        """Every known model, in catalog order."""
        return list(self._entries().values())

    def entry(self, model_id: str) -> ModelEntry:
        """One catalog entry; ``UnknownModelError`` names the known ids when there is none."""
        entries = self._entries()
        try:
            return entries[model_id]
        except KeyError:
            known = ", ".join(sorted(entries)) or "none"
            files = ", ".join(str(p) for p in self.settings.catalog_files)
            raise UnknownModelError(
                model_id, f"Model {model_id!r} is not in the model catalog ({files}). Known models: {known}."
            ) from None

    def folder(self, model_id: str) -> Path:
        """The cache folder of one model (it may not exist yet)."""
        return self.root / model_id

    def sha256_in_cache(self, model_id: str, model_file: ModelFile) -> str:
        """The sha256 of a present file of a model (hashed once per process)."""
        digest = self._digest(self.status(model_id).folder / model_file.name)
        if digest is None:
            raise ModelUnavailableError(model_id, f"{model_file.name} of {model_id!r} is not in the cache")
        return digest

    def reload_catalog(self) -> None:
        """Read the catalog files again (after a bundle import added one)."""
        with self._lock:
            self._catalog = None

    def install_file(
        self,
        model_id: str,
        model_file: ModelFile,
        chunks: contextlib.AbstractContextManager[tuple[Iterator[bytes], int | None]],
        progress: ProgressCallback | None = None,
    ) -> None:
        """Install one file of a model from a stream, verified against ``model_file.sha256``."""
        if model_file.sha256 is None:
            raise ChecksumMismatchError(model_file.name, "a sha256", "none given")
        with self._model_lock(model_id):
            self._install(self.folder(model_id), model_file, chunks, progress)

    def _entries(self) -> dict[str, ModelEntry]:
        with self._lock:
            if self._catalog is None:
                self._catalog = load_catalog(self.settings.catalog_files)
            return self._catalog

    # state

    def status(self, model_id: str) -> ModelStatus:
        """Whether the model's files are present and verified, missing, or corrupt (hashes the files once)."""
        entry = self.entry(model_id)
        folder = self.folder(model_id)
        state = ModelState.PRESENT
        checks = [self._check(folder, f) for f in entry.files]
        if ModelState.CORRUPT in checks:
            state = ModelState.CORRUPT
        elif ModelState.MISSING in checks:
            state = ModelState.MISSING
        if state is not ModelState.PRESENT:
            in_place = self._in_place_folder(entry)
            if in_place is not None:
                state, folder = ModelState.PRESENT, in_place
        return ModelStatus(entry=entry, state=state, pin=self.pin_state(model_id), folder=folder)

    def pin_state(self, model_id: str) -> PinState:
        """Whether every expected sha256 is known, and from where."""
        entry = self.entry(model_id)
        if entry.pinned:
            return PinState.CATALOG
        folder = self.folder(model_id)
        unknown = [f for f in entry.files if f.sha256 is None and self._read_pin(folder, f) is None]
        return PinState.UNPINNED if unknown else PinState.RECORDED

    # resolve

    def resolve(
        self, model_id: str, *, allow_download: bool | None = None, progress: ProgressCallback | None = None
    ) -> Path:
        """The folder holding every verified file of the model, fetching what is missing.

        ``allow_download`` overrides ``settings.allow_download`` for this call (``gpu-worker models fetch``).
        Raises ``ModelUnavailableError`` with instructions for the user when no source delivers the files.
        """
        entry = self.entry(model_id)
        downloads = self.settings.allow_download if allow_download is None else allow_download
        with self._model_lock(model_id):
            folder = self.folder(model_id)
            missing = self._missing(entry, folder)
            if not missing:
                self._pin_unpinned(entry, folder)
                return folder
            in_place = self._in_place_folder(entry)
            if in_place is not None:
                return in_place
            attempts: list[str] = []
            for source in entry.sources:
                if isinstance(source, LocalSource) and source.in_place:
                    continue
                if isinstance(source, UrlSource | HfSource) and not downloads:
                    attempts.append(f"{source.describe()}: downloads are off")
                    continue
                try:
                    for model_file in missing:
                        self._fetch(folder, model_file, source, progress)
                except (SourceError, ChecksumMismatchError, DownloadError, TransientDownloadError, OSError) as exc:
                    log.warning("model %s: %s failed: %s", model_id, source.describe(), exc)
                    attempts.append(f"{source.describe()}: {exc}")
                missing = self._missing(entry, folder)
                if not missing:
                    return folder
            raise ModelUnavailableError(
                model_id,
                self._unavailable_message(entry, missing, attempts, downloads),
                summary=(
                    f"{entry.family} weights {entry.id!r} are missing ({', '.join(f.name for f in missing)} in "
                    f"{self.folder(entry.id)}); add them with `{FETCH_COMMAND} {entry.id}`"
                    + ("" if downloads else " or set GPUW_ALLOW_DOWNLOAD=1")
                ),
            )

    def verify(self, model_id: str) -> ModelState:
        """Re-hash the cached files of a model, ignoring what this process remembers; corrupt files are removed."""
        entry = self.entry(model_id)
        folder = self.folder(model_id)
        with self._lock:
            for model_file in entry.files:
                self._verified.pop(folder / model_file.name, None)
        state = self.status(model_id).state
        if state is ModelState.CORRUPT:
            with self._model_lock(model_id):
                self._missing(entry, folder)
        return state

    def invalidate(self, model_id: str) -> None:
        """Delete the cached files of a model and the hashes pinned at download, so the next resolve fetches anew."""
        entry = self.entry(model_id)
        folder = self.folder(model_id)
        with self._model_lock(model_id):
            for model_file in entry.files:
                path = folder / model_file.name
                with self._lock:
                    self._verified.pop(path, None)
                path.unlink(missing_ok=True)
                if model_file.sha256 is None:
                    self._pin_path(folder, model_file).unlink(missing_ok=True)
        log.info("model %s: cache cleared", model_id)

    # internals

    def _model_lock(self, model_id: str) -> threading.Lock:
        with self._lock:
            return self._model_locks.setdefault(model_id, threading.Lock())

    @staticmethod
    def _pin_path(folder: Path, model_file: ModelFile) -> Path:
        return folder / f"{model_file.name}{PIN_SUFFIX}"

    def _read_pin(self, folder: Path, model_file: ModelFile) -> str | None:
        try:
            text = self._pin_path(folder, model_file).read_text(encoding="ascii").strip().lower()
        except (OSError, UnicodeDecodeError):
            return None
        return text if len(text) == 64 else None

    def _write_pin(self, folder: Path, model_file: ModelFile, digest: str) -> None:
        pin = self._pin_path(folder, model_file)
        tmp = pin.with_name(f".{pin.name}.{os.getpid()}.part")
        tmp.write_text(digest + "\n", encoding="ascii")
        tmp.replace(pin)
        log.info("%s: pinned sha256 %s at its first good download", model_file.name, digest)

    def _expected(self, folder: Path, model_file: ModelFile) -> str | None:
        return model_file.sha256 or self._read_pin(folder, model_file)

    def _digest(self, path: Path) -> str | None:
        """The file's sha256, from memory while its size and mtime are unchanged; None when it does not exist."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        with self._lock:
            known = self._verified.get(path)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        digest = sha256_of(path)
        with self._lock:
            self._verified[path] = (stat.st_size, stat.st_mtime_ns, digest)
        return digest

    def _check(self, folder: Path, model_file: ModelFile) -> ModelState:
        path = folder / model_file.name
        if not path.is_file():
            return ModelState.MISSING
        if model_file.size is not None and path.stat().st_size != model_file.size:
            return ModelState.CORRUPT
        digest = self._digest(path)
        if digest is None:
            return ModelState.MISSING
        expected = self._expected(folder, model_file)
        if expected is not None and digest != expected:
            return ModelState.CORRUPT
        return ModelState.PRESENT

    def _missing(self, entry: ModelEntry, folder: Path) -> list[ModelFile]:
        """Files that are absent or corrupt; corrupt ones are deleted so that nothing bad stays under a final name."""
        missing = []
        for model_file in entry.files:
            state = self._check(folder, model_file)
            if state is ModelState.CORRUPT:
                log.warning("model %s: cached %s fails its checksum; removed", entry.id, model_file.name)
                path = folder / model_file.name
                with self._lock:
                    self._verified.pop(path, None)
                path.unlink(missing_ok=True)
            if state is not ModelState.PRESENT:
                missing.append(model_file)
        return missing

    def _pin_unpinned(self, entry: ModelEntry, folder: Path) -> None:
        """Record the hash of files that were put into the cache by hand for an entry without sha256."""
        for model_file in entry.files:
            if self._expected(folder, model_file) is None:
                digest = self._digest(folder / model_file.name)
                if digest is not None:
                    self._write_pin(folder, model_file, digest)

    def _in_place_folder(self, entry: ModelEntry) -> Path | None:
        """The first ``in_place`` local source whose files all verify, used without copying."""
        for source in entry.sources:
            if isinstance(source, LocalSource) and source.in_place:
                checks = []
                for model_file in entry.files:
                    path = source.path / model_file.name
                    expected = model_file.sha256 or self._read_pin(self.folder(entry.id), model_file)
                    digest = self._digest(path) if path.is_file() else None
                    checks.append(digest is not None and (expected is None or digest == expected))
                if all(checks):
                    return source.path
        return None

    def _fetch(
        self,
        folder: Path,
        model_file: ModelFile,
        source: LocalSource | UrlSource | HfSource | BundleSource | PackageSource,
        progress: ProgressCallback | None,
    ) -> None:
        if isinstance(source, LocalSource | PackageSource):
            origin = (source.path if isinstance(source, LocalSource) else source.folder()) / model_file.name
            if not origin.is_file():
                raise SourceError(f"{origin} does not exist")
            self._install(folder, model_file, _read_file(origin), progress)
        elif isinstance(source, BundleSource):
            self._install(folder, model_file, read_bundle_member(source.path, folder.name, model_file.name), progress)
        else:
            self._download(folder, model_file, source.url_for(model_file.name), progress)

    def _download(self, folder: Path, model_file: ModelFile, url: str, progress: ProgressCallback | None) -> None:
        """Download into a partial file that survives failures (the next try resumes it), then verify and rename."""
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f".{model_file.name}{PARTIAL_SUFFIX}"
        name = model_file.name
        download_resumable(
            url,
            part,
            timeout_s=self.settings.download_timeout_s,
            attempts=self.settings.download_attempts,
            expected_size=model_file.size,
            progress=(lambda done, total: progress(name, done, total)) if progress is not None else None,
        )
        digest = sha256_of(part)
        expected = self._expected(folder, model_file)
        if expected is not None and digest != expected:
            part.unlink(missing_ok=True)  # bad bytes must not be resumed
            raise ChecksumMismatchError(model_file.name, expected, digest)
        final = folder / model_file.name
        part.replace(final)
        if expected is None:
            self._write_pin(folder, model_file, digest)
        stat = final.stat()
        with self._lock:
            self._verified[final] = (stat.st_size, stat.st_mtime_ns, digest)

    def _install(
        self,
        folder: Path,
        model_file: ModelFile,
        chunks: contextlib.AbstractContextManager[tuple[Iterator[bytes], int | None]],
        progress: ProgressCallback | None,
    ) -> None:
        """Write a stream to a ``.part`` file while hashing it; rename it to its final name only once verified."""
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / model_file.name
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{model_file.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            hasher = hashlib.sha256()
            done = 0
            with os.fdopen(fd, "wb") as out, chunks as (stream, total):
                total = model_file.size or total
                for chunk in stream:
                    done += len(chunk)
                    if model_file.size is not None and done > model_file.size:
                        raise SourceError(f"{model_file.name}: more than the expected {model_file.size} bytes")
                    out.write(chunk)
                    hasher.update(chunk)
                    if progress is not None:
                        progress(model_file.name, done, total)
                out.flush()
                os.fsync(out.fileno())
            if model_file.size is not None and done != model_file.size:
                raise SourceError(f"{model_file.name}: got {done} bytes, expected {model_file.size}")
            digest = hasher.hexdigest()
            expected = self._expected(folder, model_file)
            if expected is not None and digest != expected:
                raise ChecksumMismatchError(model_file.name, expected, digest)
            tmp.replace(final)
            if expected is None:
                self._write_pin(folder, model_file, digest)
            stat = final.stat()
            with self._lock:
                self._verified[final] = (stat.st_size, stat.st_mtime_ns, digest)
        finally:
            tmp.unlink(missing_ok=True)

    def _unavailable_message(
        self, entry: ModelEntry, missing: list[ModelFile], attempts: list[str], downloads: bool
    ) -> str:
        folder = self.folder(entry.id)
        lines = [f"Model {entry.id!r} ({entry.family}) is not available: these files are missing from {folder}:"]
        for model_file in missing:
            facts = [f"sha256 {model_file.sha256}" if model_file.sha256 else "sha256 not published"]
            if model_file.size is not None:
                facts.append(f"{model_file.size} bytes")
            urls = [s.url_for(model_file.name) for s in entry.sources if isinstance(s, UrlSource | HfSource)]
            if urls:
                facts.append("from " + " or ".join(urls))
            lines.append(f"  - {model_file.name} ({'; '.join(facts)})")
        if attempts:
            lines.append("Tried: " + "; ".join(attempts) + ".")
        lines.append("To provide them, either:")
        lines.append(f"  - run `{FETCH_COMMAND} {entry.id}` where a source can be reached (it downloads and verifies),")
        if not downloads:
            lines.append("  - or set GPUW_ALLOW_DOWNLOAD=1 to let the worker download them when needed,")
        lines.append(f"  - or copy the files into {folder}/ and check them with `gpu-worker models verify {entry.id}`.")
        return "\n".join(lines)


@contextlib.contextmanager
def _read_file(path: Path) -> Iterator[tuple[Iterator[bytes], int | None]]:
    with path.open("rb") as handle:
        yield iter(lambda: handle.read(CHUNK_BYTES), b""), path.stat().st_size


@contextlib.contextmanager
def read_bundle_member(bundle: Path, model_id: str, name: str) -> Iterator[tuple[Iterator[bytes], int | None]]:
    """Stream ``models/<model_id>/<name>`` out of an offline bundle; only regular files are read."""
    member_name = f"{BUNDLE_MODELS_DIR}/{model_id}/{name}"
    try:
        archive = tarfile.open(bundle, mode="r:*")  # noqa: SIM115 - closed by the with-block below
    except (OSError, tarfile.TarError) as exc:
        raise SourceError(f"cannot open bundle {bundle}: {exc}") from exc
    with archive:
        try:
            member = archive.getmember(member_name)
        except KeyError:
            raise SourceError(f"bundle {bundle} has no {member_name}") from None
        handle = archive.extractfile(member) if member.isfile() else None
        if handle is None:
            raise SourceError(f"{member_name} in bundle {bundle} is not a regular file")
        with handle:
            yield iter(lambda: handle.read(CHUNK_BYTES), b""), member.size
