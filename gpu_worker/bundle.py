"""Offline bundles: one tar archive with a catalog and the verified files of some models.

``export_bundle`` packs models that are present in the cache (for an offline machine, or to bake into the worker
image); ``import_bundle`` checks every file against the bundle's sha256 while installing it into the cache and
registers the bundle's catalog, so the models resolve without any network.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from gpu_worker.errors import WorkerError
from gpu_worker.store import (
    BUNDLE_MODELS_DIR,
    ModelEntry,
    ModelState,
    ModelStore,
    ProgressCallback,
    read_bundle_member,
)

BUNDLE_CATALOG = "catalog.json"
MAX_CATALOG_BYTES = 4 * 1024 * 1024


class BundleError(WorkerError):
    """A bundle cannot be written or is not acceptable."""

    code = "bundle_invalid"


@dataclass(frozen=True)
class BundleContents:
    """What a bundle holds: its catalog entries, with every file's sha256 known."""

    entries: tuple[ModelEntry, ...]


def export_bundle(store: ModelStore, model_ids: list[str], dest: Path) -> BundleContents:
    """Write ``dest`` (a tar file) with the given models, which must be present and verified in the cache."""
    entries: list[ModelEntry] = []
    for model_id in model_ids:
        status = store.status(model_id)
        if status.state is not ModelState.PRESENT:
            raise BundleError(f"model {model_id!r} is {status.state}; fetch it first (gpu-worker models fetch)")
        files = tuple(
            model_file.model_copy(update={"sha256": model_file.sha256 or store.sha256_in_cache(model_id, model_file)})
            for model_file in status.entry.files
        )
        entries.append(status.entry.model_copy(update={"files": files}))
    catalog = json.dumps({"model": [e.model_dump(mode="json") for e in entries]}, indent=2).encode()
    tmp = dest.with_name(f".{dest.name}.part")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo(BUNDLE_CATALOG)
        info.size = len(catalog)
        archive.addfile(info, io.BytesIO(catalog))
        for entry in entries:
            folder = store.status(entry.id).folder
            for model_file in entry.files:
                archive.add(folder / model_file.name, arcname=f"{BUNDLE_MODELS_DIR}/{entry.id}/{model_file.name}")
    tmp.replace(dest)
    return BundleContents(entries=tuple(entries))


def read_bundle_catalog(bundle: Path) -> BundleContents:
    """The catalog inside a bundle, validated; every file must carry a sha256."""
    try:
        with tarfile.open(bundle, mode="r:*") as archive:
            member = archive.getmember(BUNDLE_CATALOG)
            handle = archive.extractfile(member) if member.isfile() and member.size <= MAX_CATALOG_BYTES else None
            if handle is None:
                raise BundleError(f"{bundle}: {BUNDLE_CATALOG} is missing, too large or not a regular file")
            raw = json.loads(handle.read())
    except (OSError, tarfile.TarError, KeyError, json.JSONDecodeError) as exc:
        raise BundleError(f"{bundle} is not a readable model bundle: {exc}") from exc
    try:
        entries = tuple(ModelEntry.model_validate(item) for item in raw.get("model", []))
    except (ValidationError, AttributeError) as exc:
        raise BundleError(f"{bundle}: invalid catalog: {exc}") from exc
    for entry in entries:
        if not entry.pinned:
            raise BundleError(f"{bundle}: model {entry.id!r} has files without a sha256")
    return BundleContents(entries=entries)


def import_bundle(store: ModelStore, bundle: Path, progress: ProgressCallback | None = None) -> BundleContents:
    """Install every model of a bundle into the cache, each file verified, and register the bundle's catalog.

    A model already in the catalog must have the same sha256s (a bundle cannot replace known weights).
    """
    contents = read_bundle_catalog(bundle)
    known = {entry.id: entry for entry in store.catalog()}
    for entry in contents.entries:
        current = known.get(entry.id)
        if current is not None:
            _check_consistent(current, entry)
        for model_file in entry.files:
            store.install_file(
                entry.id, model_file, read_bundle_member(bundle, entry.id, model_file.name), progress=progress
            )
    catalogs = store.root / "catalogs"
    catalogs.mkdir(parents=True, exist_ok=True)
    catalog = json.dumps({"model": [e.model_dump(mode="json") for e in contents.entries]}, indent=2)
    target = catalogs / f"{bundle.stem}.json"
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_text(catalog, encoding="utf-8")
    tmp.replace(target)
    store.reload_catalog()
    return contents


def _check_consistent(current: ModelEntry, bundled: ModelEntry) -> None:
    expected = {f.name: f.sha256 for f in current.files if f.sha256}
    for model_file in bundled.files:
        want = expected.get(model_file.name)
        if want is not None and want != model_file.sha256:
            raise BundleError(
                f"model {current.id!r}: the bundle's {model_file.name} has sha256 {model_file.sha256}, "
                f"the catalog says {want}"
            )
