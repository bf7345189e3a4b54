"""The executor's throughput mechanics: decoding overlapped with inference, and splitting a batch that runs out of
GPU memory instead of failing it."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import gpu_worker.executor as executor_module
from gpu_worker.contract import AnalyzerOutput, BatchManifest, ManifestItem, MediaKind
from gpu_worker.executor import OUT_OF_MEMORY, InProcessExecutor
from gpu_worker.models import ANALYZERS
from gpu_worker.models.clip import ClipAnalyzer
from gpu_worker.settings import WorkerSettings
from tests.fixtures.tiny_models import TINY_CLIP_ID


class MemoryBoundClip(ClipAnalyzer):
    """The real tiny CLIP on a device that fits at most ``CAPACITY`` images per call, as a small GPU would."""

    name = "memory-bound-clip"
    CAPACITY = 3
    calls: list[int] = []

    def _run(self, images: Sequence[Image.Image], options: Mapping[str, Any]) -> list[AnalyzerOutput]:
        MemoryBoundClip.calls.append(len(images))
        if len(images) > self.CAPACITY:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._run(images, options)


def _settings(tmp_path: Path, catalog: Path, **extra: Any) -> WorkerSettings:
    return WorkerSettings(
        models_dir=tmp_path / "models", catalog_paths=[catalog], clip_model=TINY_CLIP_ID, device="cpu", **extra
    )


def _photos(tmp_path: Path, count: int) -> list[ManifestItem]:
    items = []
    for index in range(count):
        path = tmp_path / f"p{index}.jpg"
        Image.new("RGB", (640, 480), (index * 20 % 255, 80, 160)).save(path, quality=90)
        items.append(ManifestItem(asset_id=f"a{index}", media_kind=MediaKind.IMAGE, path=str(path)))
    return items


def test_a_batch_that_runs_out_of_gpu_memory_is_split_and_every_item_still_gets_its_result(
    tmp_path: Path, tiny_clip_catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ANALYZERS, MemoryBoundClip.name, f"{__name__}:MemoryBoundClip")
    MemoryBoundClip.calls = []
    executor = InProcessExecutor(_settings(tmp_path, tiny_clip_catalog))

    result = executor.run(BatchManifest(batch_id="b", analyzers=[MemoryBoundClip.name], items=_photos(tmp_path, 10)))

    assert all(MemoryBoundClip.name in item.outputs for item in result.items), result.items
    assert MemoryBoundClip.calls == [10, 5, 2, 3, 5, 2, 3], "whole batch first, then halves until they fit"
    plain = InProcessExecutor(_settings(tmp_path, tiny_clip_catalog)).run(
        BatchManifest(batch_id="c", analyzers=["clip"], items=_photos(tmp_path, 10))
    )
    for split, whole in zip(result.items, plain.items, strict=True):
        assert split.outputs[MemoryBoundClip.name].embedding == pytest.approx(whole.outputs["clip"].embedding, abs=1e-5)


def test_an_item_too_large_for_gpu_memory_alone_fails_alone_with_out_of_memory(
    tmp_path: Path, tiny_clip_catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ANALYZERS, MemoryBoundClip.name, f"{__name__}:MemoryBoundClip")
    monkeypatch.setattr(MemoryBoundClip, "CAPACITY", 0)
    result = InProcessExecutor(_settings(tmp_path, tiny_clip_catalog)).run(
        BatchManifest(batch_id="b", analyzers=[MemoryBoundClip.name], items=_photos(tmp_path, 2))
    )
    assert [item.errors[MemoryBoundClip.name].code for item in result.items] == [OUT_OF_MEMORY, OUT_OF_MEMORY]


def test_the_next_chunk_is_decoded_on_pool_threads_while_the_current_one_is_analyzed(
    tmp_path: Path, tiny_clip_catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str, float]] = []
    real_decode = executor_module.decode_item

    def recording_decode(path: Path, *args: Any, **kwargs: Any) -> Any:
        events.append(("decode", threading.current_thread().name, time.perf_counter()))
        return real_decode(path, *args, **kwargs)

    real_run = ClipAnalyzer._run

    def slow_run(self: ClipAnalyzer, images: Sequence[Image.Image], options: Mapping[str, Any]) -> Any:
        events.append(("run-start", threading.current_thread().name, time.perf_counter()))
        time.sleep(0.3)  # stands for GPU time, during which the pool must be decoding the next chunk
        out = real_run(self, images, options)
        events.append(("run-end", threading.current_thread().name, time.perf_counter()))
        return out

    monkeypatch.setattr(executor_module, "decode_item", recording_decode)
    monkeypatch.setattr(ClipAnalyzer, "_run", slow_run)
    executor = InProcessExecutor(_settings(tmp_path, tiny_clip_catalog, decode_chunk_items=4, decode_workers=2))
    executor.analyzer("clip")
    events.clear()

    result = executor.run(BatchManifest(batch_id="b", analyzers=["clip"], items=_photos(tmp_path, 12)))

    assert all("clip" in item.outputs for item in result.items)
    decodes = [e for e in events if e[0] == "decode"]
    assert decodes and all(name.startswith("gpuw-decode") for _, name, _ in decodes)
    first_run_start = next(t for kind, _, t in events if kind == "run-start")
    first_run_end = next(t for kind, _, t in events if kind == "run-end")
    overlapped = [t for _, _, t in decodes[4:8] if first_run_start <= t <= first_run_end]
    assert len(decodes) == 12
    assert all(t < first_run_end for _, _, t in decodes[4:8]), "chunk 2 must be decoded before chunk 1 finishes"
    assert overlapped or all(t < first_run_start for _, _, t in decodes[4:8])
