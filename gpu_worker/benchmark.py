"""Measure the worker's throughput on this machine: images/s batched and one by one, transcription real-time factor.

Used by ``gpu-worker bench`` (figures for the scheduler's GPU table) and by ``bench/worker_throughput.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

SPEECH_SAMPLE_S = 7.625  # duration of ../shared/media/speech_en.wav


class DispatchedOps(TorchDispatchMode):
    """Counts the ATen operations dispatched while active (``with DispatchedOps() as ops: ...; ops.count``).

    On a GPU each one is a kernel launch, so the count shows where per-call overhead rather than arithmetic bounds a
    stage, and it can be taken on a CPU.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.count = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def generate_corpus(folder: Path, count: int, width: int = 1920, height: int = 1080) -> list[Path]:
    """``count`` textured 1080p JPEGs (noise, gradients and shapes, so that decoding costs what a photo costs)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
        base = (x * rng.uniform(0.2, 1.0, 3) + y * rng.uniform(0.2, 1.0, 3)) / 2
        noise = rng.normal(0, 18, (height, width, 3))
        image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, width - 200)), int(rng.integers(0, height - 200))
            size = int(rng.integers(60, 400))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.ellipse((x0, y0, x0 + size, y0 + size), fill=colour)
        path = folder / f"gen{index:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``repeat`` runs (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure_images(executor: Any, analyzers: list[str], paths: list[Path], repeat: int) -> dict[str, float]:
    """Images/s batched (one manifest) and sequential (one manifest per image) for the same analyzers."""
    from gpu_worker.contract import BatchManifest, ManifestItem, MediaKind

    items = [ManifestItem(asset_id=str(i), media_kind=MediaKind.IMAGE, path=str(p)) for i, p in enumerate(paths)]
    executor.run(BatchManifest(batch_id="warm", analyzers=analyzers, items=items[:2]))

    def batched() -> None:
        result = executor.run(BatchManifest(batch_id="b", analyzers=analyzers, items=items))
        failed = [i.errors for i in result.items if i.errors]
        if failed or result.unavailable:
            raise RuntimeError(f"benchmark run failed: {failed[:2]} {result.unavailable}")

    def sequential() -> None:
        for item in items:
            executor.run(BatchManifest(batch_id="s", analyzers=analyzers, items=[item]))

    batched_s = timed(batched, repeat)
    sequential_s = timed(sequential, repeat)
    return {
        "images": len(items),
        "batched_images_per_s": len(items) / batched_s,
        "sequential_images_per_s": len(items) / sequential_s,
        "ratio": sequential_s / batched_s,
    }


def measure_transcription(executor: Any, speech: Path, duration_s: float, repeat: int) -> dict[str, float] | None:
    """Real-time factor (processing time / audio duration) on a speech file, one clip and four at once."""
    from gpu_worker.contract import BatchManifest, ManifestItem, MediaKind

    if not speech.exists():
        return None
    items = [ManifestItem(asset_id=str(i), media_kind=MediaKind.AUDIO, path=str(speech)) for i in range(4)]
    executor.run(BatchManifest(batch_id="warm", analyzers=["transcribe"], items=items[:1]))
    one_s = timed(lambda: executor.run(BatchManifest(batch_id="t", analyzers=["transcribe"], items=items[:1])), repeat)
    four_s = timed(lambda: executor.run(BatchManifest(batch_id="t", analyzers=["transcribe"], items=items)), repeat)
    return {"audio_s": duration_s, "rtf_one": one_s / duration_s, "rtf_four": four_s / (4 * duration_s)}
