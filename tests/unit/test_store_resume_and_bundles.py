"""Downloads that resume after a cut, retry a busy server, fall back to the next source; offline bundles."""

from __future__ import annotations

import http.server
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gpu_worker.bundle import BundleError, export_bundle, import_bundle
from gpu_worker.download import DownloadError, download_resumable
from gpu_worker.errors import ChecksumMismatchError
from gpu_worker.settings import WorkerSettings
from gpu_worker.store import ModelState, ModelStore, sha256_of
from tests.fixtures.tiny_models import TINY_CLIP_ID, catalog_toml_for

BODY = bytes(range(256)) * 4096  # 1 MiB


@dataclass
class FlakyServer:
    """Serves one body over HTTP with Range support and scripted failures, recording every request it saw."""

    body: bytes
    cut_after: list[int] = field(default_factory=list)  # per request: close the connection after N bytes
    statuses: list[int] = field(default_factory=list)  # per request: answer this status instead
    ranges: list[str | None] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    state = FlakyServer(body=BODY)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state.ranges.append(self.headers.get("Range"))
            if state.statuses:
                self.send_response(state.statuses.pop(0))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(state.body) - 1}/{len(state.body)}")
            else:
                self.send_response(200)
            payload = state.body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if state.cut_after:
                self.wfile.write(payload[: state.cut_after.pop(0)])
                self.wfile.flush()
                self.connection.close()
                return
            self.wfile.write(payload)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/weights.bin"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_a_cut_download_resumes_from_the_bytes_already_received(flaky: FlakyServer, tmp_path: Path) -> None:
    flaky.cut_after = [300_000]
    part = tmp_path / "weights.bin.download"

    size = download_resumable(flaky.url, part, timeout_s=5, attempts=3, max_wait_s=0.01)

    assert size == len(BODY)
    assert part.read_bytes() == BODY
    assert flaky.ranges == [None, "bytes=300000-"]


def test_a_busy_server_is_retried_with_backoff(flaky: FlakyServer, tmp_path: Path) -> None:
    flaky.statuses = [503, 429]
    part = tmp_path / "w.download"

    download_resumable(flaky.url, part, timeout_s=5, attempts=3, max_wait_s=0.01)

    assert part.read_bytes() == BODY
    assert len(flaky.ranges) == 3


def test_a_missing_file_is_not_retried(flaky: FlakyServer, tmp_path: Path) -> None:
    flaky.statuses = [404, 404, 404]
    with pytest.raises(DownloadError):
        download_resumable(flaky.url, tmp_path / "w.download", timeout_s=5, attempts=3, max_wait_s=0.01)
    assert len(flaky.ranges) == 1


def _store_for(tmp_path: Path, files: dict[str, str | None], *sources: str, allow_download: bool = True) -> ModelStore:
    lines = ["[[model]]", 'id = "weights-model"', 'family = "clip"', 'format = "open_clip"', 'arch = "ViT-B-32"']
    for name, sha in files.items():
        lines += ["[[model.files]]", f'name = "{name}"'] + ([f'sha256 = "{sha}"'] if sha else [])
    lines += list(sources)
    catalog = tmp_path / "catalog.toml"
    catalog.write_text("\n".join(lines) + "\n")
    return ModelStore(
        WorkerSettings(
            models_dir=tmp_path / "models",
            catalog_paths=[catalog],
            allow_download=allow_download,
            download_attempts=3,
            download_timeout_s=5,
        )
    )


def test_the_store_resumes_a_cut_download_and_installs_only_verified_bytes(flaky: FlakyServer, tmp_path: Path) -> None:
    import hashlib

    flaky.cut_after = [100_000, 200_000]
    base = flaky.url.rsplit("/", 1)[0]
    store = _store_for(
        tmp_path,
        {"weights.bin": hashlib.sha256(BODY).hexdigest()},
        "[[model.sources]]",
        'kind = "url"',
        f'base_url = "{base}"',
    )

    folder = store.resolve("weights-model")

    assert (folder / "weights.bin").read_bytes() == BODY
    assert flaky.ranges == [None, "bytes=100000-", "bytes=300000-"]
    assert not list(folder.glob(".*.download"))


def test_a_download_with_the_wrong_sha256_is_discarded_and_the_next_source_is_used(
    flaky: FlakyServer, tmp_path: Path
) -> None:
    import hashlib

    good = tmp_path / "good"
    good.mkdir()
    (good / "weights.bin").write_bytes(b"the real weights")
    base = flaky.url.rsplit("/", 1)[0]
    store = _store_for(
        tmp_path,
        {"weights.bin": hashlib.sha256(b"the real weights").hexdigest()},
        "[[model.sources]]",
        'kind = "url"',
        f'base_url = "{base}"',
        "[[model.sources]]",
        'kind = "local"',
        f'path = "{good}"',
    )

    folder = store.resolve("weights-model")

    assert (folder / "weights.bin").read_bytes() == b"the real weights"
    assert not list(folder.glob(".*.download")), "bad bytes must not stay around to be resumed"


def test_export_then_import_a_bundle_on_a_machine_without_any_source(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    online = tmp_path / "online"
    online.mkdir()
    (online / "catalog.toml").write_text(catalog_toml_for(TINY_CLIP_ID, tiny_clip_dir, tiny_clip_files))
    store = ModelStore(WorkerSettings(models_dir=online / "models", catalog_paths=[online / "catalog.toml"]))
    store.resolve(TINY_CLIP_ID)
    bundle = tmp_path / "tiny.tar"

    export_bundle(store, [TINY_CLIP_ID], bundle)

    offline = ModelStore(WorkerSettings(models_dir=tmp_path / "offline-models"))
    contents = import_bundle(offline, bundle)
    assert [e.id for e in contents.entries] == [TINY_CLIP_ID]
    assert offline.status(TINY_CLIP_ID).state is ModelState.PRESENT
    folder = offline.resolve(TINY_CLIP_ID, allow_download=False)
    assert {n: sha256_of(folder / n) for n in tiny_clip_files} == tiny_clip_files


def test_a_tampered_bundle_is_refused_and_installs_nothing(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    online = tmp_path / "online"
    online.mkdir()
    (online / "catalog.toml").write_text(catalog_toml_for(TINY_CLIP_ID, tiny_clip_dir, tiny_clip_files))
    store = ModelStore(WorkerSettings(models_dir=online / "models", catalog_paths=[online / "catalog.toml"]))
    store.resolve(TINY_CLIP_ID)
    bundle = tmp_path / "tiny.tar"
    export_bundle(store, [TINY_CLIP_ID], bundle)
    tampered = tmp_path / "tampered.tar"
    with tarfile.open(bundle) as source, tarfile.open(tampered, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member)
            assert data is not None
            payload = data.read()
            if member.name.endswith(".safetensors"):
                payload = payload[:-4] + b"evil"
            member.size = len(payload)
            import io

            target.addfile(member, io.BytesIO(payload))

    offline = ModelStore(WorkerSettings(models_dir=tmp_path / "offline-models"))
    with pytest.raises(ChecksumMismatchError):
        import_bundle(offline, tampered)
    assert not (tmp_path / "offline-models" / "catalogs").exists()
    weights = next(n for n in tiny_clip_files if n.endswith(".safetensors"))
    assert not (tmp_path / "offline-models" / TINY_CLIP_ID / weights).exists()


def test_a_bundle_without_a_catalog_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "empty.tar"
    with tarfile.open(bundle, "w"):
        pass
    with pytest.raises(BundleError):
        import_bundle(ModelStore(WorkerSettings(models_dir=tmp_path / "m")), bundle)
