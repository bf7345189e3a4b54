"""The model store: catalog, local and download sources, sha256 verification, pinning, fallback and invalidation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gpu_worker.errors import ModelUnavailableError, UnknownModelError
from gpu_worker.settings import DEFAULT_CLIP_MODEL, WorkerSettings
from gpu_worker.store import (
    CatalogError,
    HfSource,
    ModelState,
    ModelStore,
    PinState,
    UrlSource,
    load_catalog,
    sha256_of,
)
from tests.fixtures.tiny_models import (
    TINY_CLIP_ID,
    TINY_CLIP_WEIGHTS_FILE,
    catalog_toml_for,
    serve_folder,
)


def make_store(tmp_path: Path, catalog_text: str, *, allow_download: bool = False) -> ModelStore:
    tmp_path.mkdir(parents=True, exist_ok=True)
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(catalog_text, encoding="utf-8")
    settings = WorkerSettings(
        models_dir=tmp_path / "models", catalog_paths=[catalog], allow_download=allow_download, download_timeout_s=10
    )
    return ModelStore(settings)


def no_part_files(folder: Path) -> bool:
    return not folder.exists() or not [p for p in folder.iterdir() if p.name.endswith(".part")]


def test_local_source_is_copied_into_the_cache_and_verified(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    store = make_store(tmp_path, catalog_toml_for(TINY_CLIP_ID, tiny_clip_dir, tiny_clip_files))
    assert store.status(TINY_CLIP_ID).state is ModelState.MISSING

    folder = store.resolve(TINY_CLIP_ID)

    assert folder == tmp_path / "models" / TINY_CLIP_ID
    assert {name: sha256_of(folder / name) for name in tiny_clip_files} == tiny_clip_files
    status = store.status(TINY_CLIP_ID)
    assert status.state is ModelState.PRESENT
    assert status.pin is PinState.CATALOG
    assert no_part_files(folder)


def test_sha256_mismatch_is_rejected_and_nothing_is_left_under_the_final_name(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    wrong = dict(tiny_clip_files, **{TINY_CLIP_WEIGHTS_FILE: "0" * 64})
    store = make_store(tmp_path, catalog_toml_for(TINY_CLIP_ID, tiny_clip_dir, wrong))

    with pytest.raises(ModelUnavailableError) as caught:
        store.resolve(TINY_CLIP_ID)

    folder = tmp_path / "models" / TINY_CLIP_ID
    assert not (folder / TINY_CLIP_WEIGHTS_FILE).exists()
    assert no_part_files(folder)
    assert "0" * 64 in caught.value.message


def test_url_download_happens_only_when_downloads_are_allowed(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    with serve_folder(tiny_clip_dir) as server:
        text = catalog_toml_for(TINY_CLIP_ID, server.base_url, tiny_clip_files, "url")
        offline = make_store(tmp_path / "off", text)
        with pytest.raises(ModelUnavailableError) as caught:
            offline.resolve(TINY_CLIP_ID)
        assert "downloads are off" in caught.value.message
        assert server.requests == []

        progress: list[tuple[str, int, int | None]] = []
        online = make_store(tmp_path / "on", text, allow_download=True)
        folder = online.resolve(TINY_CLIP_ID, progress=lambda name, done, total: progress.append((name, done, total)))

    assert {name: sha256_of(folder / name) for name in tiny_clip_files} == tiny_clip_files
    assert sorted(server.requests) == sorted(f"/{name}" for name in tiny_clip_files)
    weights_size = (tiny_clip_dir / TINY_CLIP_WEIGHTS_FILE).stat().st_size
    assert (TINY_CLIP_WEIGHTS_FILE, weights_size, weights_size) in progress


def test_fetch_call_may_allow_a_download_that_settings_forbid(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    with serve_folder(tiny_clip_dir) as server:
        store = make_store(tmp_path, catalog_toml_for(TINY_CLIP_ID, server.base_url, tiny_clip_files, "url"))
        folder = store.resolve(TINY_CLIP_ID, allow_download=True)
    assert store.status(TINY_CLIP_ID).state is ModelState.PRESENT
    assert (folder / TINY_CLIP_WEIGHTS_FILE).is_file()


def test_a_failing_source_falls_back_to_the_next(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    served = tmp_path / "served"
    shutil.copytree(tiny_clip_dir, served / "good")
    shutil.copytree(tiny_clip_dir, served / "tampered")
    (served / "tampered" / TINY_CLIP_WEIGHTS_FILE).write_bytes(b"not the weights")
    with serve_folder(served) as server:
        sources = [
            ("local", tmp_path / "nowhere"),
            ("url", f"{server.base_url}/absent"),
            ("url", f"{server.base_url}/tampered"),
            ("url", f"{server.base_url}/good"),
        ]
        store = make_store(tmp_path, catalog_toml_for(TINY_CLIP_ID, sources, tiny_clip_files), allow_download=True)
        folder = store.resolve(TINY_CLIP_ID)

    assert {name: sha256_of(folder / name) for name in tiny_clip_files} == tiny_clip_files
    assert f"/tampered/{TINY_CLIP_WEIGHTS_FILE}" in server.requests
    assert no_part_files(folder)


def test_corrupt_cached_file_is_removed_and_fetched_again(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    text = catalog_toml_for(TINY_CLIP_ID, tiny_clip_dir, tiny_clip_files)
    folder = make_store(tmp_path, text).resolve(TINY_CLIP_ID)
    (folder / TINY_CLIP_WEIGHTS_FILE).write_bytes(b"garbage")

    store = make_store(tmp_path, text)  # a new process knows nothing of earlier hashes
    assert store.status(TINY_CLIP_ID).state is ModelState.CORRUPT
    store.resolve(TINY_CLIP_ID)

    assert sha256_of(folder / TINY_CLIP_WEIGHTS_FILE) == tiny_clip_files[TINY_CLIP_WEIGHTS_FILE]


def test_verified_files_are_not_hashed_again_until_they_change(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, catalog_toml_for(TINY_CLIP_ID, tiny_clip_dir, tiny_clip_files))
    folder = store.resolve(TINY_CLIP_ID)
    hashed: list[Path] = []
    import gpu_worker.store as store_module

    real = store_module.sha256_of
    monkeypatch.setattr(store_module, "sha256_of", lambda path: hashed.append(path) or real(path))

    store.resolve(TINY_CLIP_ID)
    assert hashed == []
    weights = folder / TINY_CLIP_WEIGHTS_FILE
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    store.resolve(TINY_CLIP_ID)
    assert hashed == [weights]


def test_unpinned_file_is_pinned_at_its_first_download(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    unpinned = dict(tiny_clip_files, **{TINY_CLIP_WEIGHTS_FILE: None})
    store = make_store(tmp_path, catalog_toml_for(TINY_CLIP_ID, tiny_clip_dir, unpinned))
    assert store.pin_state(TINY_CLIP_ID) is PinState.UNPINNED

    folder = store.resolve(TINY_CLIP_ID)

    pin = folder / f"{TINY_CLIP_WEIGHTS_FILE}.sha256"
    assert pin.read_text().strip() == tiny_clip_files[TINY_CLIP_WEIGHTS_FILE]
    assert store.pin_state(TINY_CLIP_ID) is PinState.RECORDED
    (folder / TINY_CLIP_WEIGHTS_FILE).write_bytes(b"changed")
    assert (
        make_store(tmp_path, catalog_toml_for(TINY_CLIP_ID, tiny_clip_dir, unpinned)).status(TINY_CLIP_ID).state
        is ModelState.CORRUPT
    )


def test_invalidate_deletes_cached_files_and_recorded_pins(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    unpinned = dict(tiny_clip_files, **{TINY_CLIP_WEIGHTS_FILE: None})
    store = make_store(tmp_path, catalog_toml_for(TINY_CLIP_ID, tiny_clip_dir, unpinned))
    folder = store.resolve(TINY_CLIP_ID)

    store.invalidate(TINY_CLIP_ID)

    assert sorted(p.name for p in folder.iterdir()) == []
    assert store.status(TINY_CLIP_ID).state is ModelState.MISSING


def test_in_place_local_source_is_used_without_copying(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    text = catalog_toml_for(TINY_CLIP_ID, tiny_clip_dir, tiny_clip_files).replace(
        'kind = "local"', 'kind = "local"\nin_place = true'
    )
    store = make_store(tmp_path, text)
    assert store.resolve(TINY_CLIP_ID) == tiny_clip_dir
    assert not (tmp_path / "models" / TINY_CLIP_ID).exists()


def test_unavailable_message_tells_the_user_how_to_provide_the_weights(tmp_path: Path) -> None:
    digest = "ab" * 32
    text = catalog_toml_for(
        "big-clip", "https://example.invalid/models", {"weights.pt": digest}, "url", config_file=None, arch="ViT-B-32"
    )
    store = make_store(tmp_path, text)

    with pytest.raises(ModelUnavailableError) as caught:
        store.resolve("big-clip")

    message = caught.value.message
    assert caught.value.model_id == "big-clip"
    assert "weights.pt" in message
    assert digest in message
    assert str(tmp_path / "models" / "big-clip") in message
    assert "gpu-worker models fetch big-clip" in message
    assert "https://example.invalid/models/weights.pt" in message
    assert "GPUW_ALLOW_DOWNLOAD=1" in message


def test_unknown_model_names_the_known_ones(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    store = make_store(tmp_path, catalog_toml_for(TINY_CLIP_ID, tiny_clip_dir, tiny_clip_files))
    with pytest.raises(UnknownModelError) as caught:
        store.resolve("no-such-model")
    assert TINY_CLIP_ID in caught.value.message


def test_later_catalogs_replace_entries_with_the_same_id(tmp_path: Path) -> None:
    first = tmp_path / "a.toml"
    second = tmp_path / "b.toml"
    first.write_text(
        catalog_toml_for("m", "https://a.invalid", {"w.pt": None}, "url", config_file=None), encoding="utf-8"
    )
    second.write_text(catalog_toml_for("m", "org/repo", {"w.pt": None}, "hf", config_file=None), encoding="utf-8")

    entries = load_catalog([first, tmp_path / "missing.toml", second])

    (source,) = entries["m"].sources
    assert isinstance(source, HfSource)
    assert source.url_for("w.pt") == "https://huggingface.co/org/repo/resolve/main/w.pt"


def test_invalid_catalog_entry_is_reported_with_its_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[model]]\nid = "x"\nfamily = "clip"\nformat = "open_clip"\n', encoding="utf-8")
    with pytest.raises(CatalogError, match=r"bad\.toml"):
        load_catalog([bad])


def test_default_catalog_offers_openai_and_laion_clip_models() -> None:
    entries = load_catalog(WorkerSettings().catalog_files[:1])

    assert DEFAULT_CLIP_MODEL in entries
    b32 = entries["clip-vit-b-32-openai"]
    l14 = entries["clip-vit-l-14-openai"]
    for entry, name in ((b32, "ViT-B-32.pt"), (l14, "ViT-L-14.pt")):
        (source,) = entry.sources
        assert isinstance(source, UrlSource)
        assert entry.pinned
        # OpenAI publishes each file under a folder named by its sha256.
        assert source.url_for(name) == f"https://openaipublic.azureedge.net/clip/models/{entry.files[0].sha256}/{name}"
    laion = entries["clip-vit-b-32-laion2b"]
    assert not laion.pinned
    assert laion.arch == "ViT-B-32"
    assert isinstance(laion.sources[0], HfSource)


def test_settings_come_from_gpuw_env_vars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUW_MODELS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPUW_CATALOG_PATHS", f'["{tmp_path / "extra.toml"}"]')
    monkeypatch.setenv("GPUW_CLIP_MODEL", TINY_CLIP_ID)
    monkeypatch.setenv("GPUW_ALLOW_DOWNLOAD", "1")
    monkeypatch.setenv("GPUW_DEVICE", "cpu")

    settings = WorkerSettings()

    assert settings.models_dir == tmp_path / "cache"
    assert settings.catalog_files[1:] == [tmp_path / "extra.toml"]
    assert settings.catalog_files[0].name == "models.toml"
    assert settings.clip_model == TINY_CLIP_ID
    assert settings.allow_download is True
    assert settings.device == "cpu"
