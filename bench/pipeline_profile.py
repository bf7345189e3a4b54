"""Where the worker's image pipeline spends its time: bytes to BatchResult JSON, stage by stage, per 1000 images.

    python bench/pipeline_profile.py                                  # CPU, 32 generated 1080p JPEGs + shared photos
    python bench/pipeline_profile.py --images 64 --analyzers clip,objects
    python bench/pipeline_profile.py --device cuda --images 512 --batch-size 64 --json gpu.json

The corpus is served by a local HTTP server and fetched the way a rented worker fetches its signed URLs (the
executor's own download code, sha256 checked). Three measurements over the same items, with the real executor and
analyzers (offline, seeded full-size architectures from ``bench/bench_models.py``):

1. breakdown: each batch fetched, decoded and analyzed one stage after another on one thread (no overlap), with
   timing wrappers put around the executor's and analyzers' own functions by this script alone (nothing in
   ``gpu_worker`` is timed). Time inside a nested stage counts for that stage only, so the rows add up to the pass.
   Each model call is run a second time right away on the same, already normalised input: that is its forward-only
   time, which the breakdown does not count.
2. pipeline: ``InProcessExecutor.run`` on one manifest of all the items, as ``gpu-worker serve`` runs it (fetch and
   decode of the next chunk overlapping the analysis of this one), plus the BatchResult's JSON as the server sends it.
   It is compared with the sum of the forward-only times: the issue's target is a pipeline within 20 % of it.
3. sequential: one manifest per item through the same loaded models; batched/sequential is the gain of batching.

On CUDA every timed stage synchronises the device, and host-to-device copies that go through ``Tensor.to`` or
``pin_memory`` get their own row; onnxruntime's copies stay inside its forward time. On a CPU that row is "n/a".
Nothing is asserted: record the figures with the command, machine and date.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import sys
import tempfile
import threading
import time
import types
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from worker_throughput import IMAGE_ANALYZERS, shared_corpus, start_executor  # noqa: E402

from gpu_worker.benchmark import generate_corpus  # noqa: E402

PER_IMAGES = 1000
H2D = "host-to-device copies"
FETCH = "media fetch (HTTP, sha256)"
DECODE = "decode (JPEG, EXIF, shrink to the decode size)"
SERIALISE = "result serialisation (BatchResult JSON)"
GLUE = "executor: batching and merging"
# Stages whose time is the model itself; their replays make the forward-only sum.
FORWARD = "forward"


class StageClock:
    """Exclusive wall time per stage: time spent in a nested stage is counted for the inner stage only."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.forward_only: dict[str, float] = defaultdict(float)
        self.analyzer = "-"
        self._children: list[float] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the body as ``name``; ``{a}`` in the name is replaced by the analyzer being run."""
        name = name.format(a=self.analyzer)
        self.sync()
        started = time.perf_counter()
        self._children.append(0.0)
        try:
            yield
        finally:
            self.sync()
            elapsed = time.perf_counter() - started
            self.seconds[name] += elapsed - self._children.pop()
            if self._children:
                self._children[-1] += elapsed

    def replay(self, name: str, call: Callable[[], Any]) -> None:
        """Run a model call again, on the same input; its time is forward-only and stays out of the breakdown."""
        name = name.format(a=self.analyzer)
        self.sync()
        started = time.perf_counter()
        call()
        self.sync()
        elapsed = time.perf_counter() - started
        self.forward_only[name] += elapsed
        if self._children:
            self._children[-1] += elapsed


class _Timed:
    """A model (torch module, onnxruntime session) whose calls are timed, and replayed for forward-only time."""

    def __init__(self, clock: StageClock, target: Any, stage: str, method: str | None = None) -> None:
        self._clock, self._target, self._stage, self._method = clock, target, stage, method

    def __getattr__(self, name: str) -> Any:
        if name == self._method:
            return functools.partial(self._call, getattr(self._target, name))
        return getattr(self._target, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self._target, *args, **kwargs)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._clock.stage(self._stage):
            out = fn(*args, **kwargs)
        self._clock.replay(self._stage, lambda: fn(*args, **kwargs))
        return out


class Patches:
    """Attribute replacements made by this benchmark, undone in reverse order."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any, bool]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        """Replace ``owner.name`` (an instance's own attribute, a module's or a class's) until ``undo``."""
        own = name in getattr(owner, "__dict__", {})
        self._undo.append((owner, name, getattr(owner, name), own))
        setattr(owner, name, value)

    def wrap(self, clock: StageClock, owner: Any, name: str, stage: str) -> None:
        """Time every call of ``owner.name`` as ``stage``."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with clock.stage(stage):
                return original(*args, **kwargs)

        self.set(owner, name, timed)

    def undo(self) -> None:
        """Put every replaced attribute back."""
        while self._undo:
            owner, name, value, own = self._undo.pop()
            if own or isinstance(owner, type | types.ModuleType):
                setattr(owner, name, value)
            else:
                delattr(owner, name)


def instrument(clock: StageClock, executor: Any, active: dict[str, Any], device: str) -> Patches:
    """Put timing wrappers around the functions of the executor and of the active analyzers."""
    import gpu_worker.executor as executor_module
    import gpu_worker.models.faces as faces_module
    import gpu_worker.models.nsfw as nsfw_module
    import gpu_worker.models.objects as objects_module
    from gpu_worker.models.faces import MtcnnNets

    patches = Patches()
    patches.wrap(clock, executor, "_download_item", FETCH)
    patches.wrap(clock, executor_module, "decode_item", DECODE)
    patches.wrap(clock, executor, "_analyze_chunk", GLUE)
    nsfw_preprocessing = "{a}: resize and normalise (open_nsfw: 256 px, JPEG round trip, crop)"
    patches.wrap(clock, nsfw_module, "preprocess", nsfw_preprocessing)
    for name, analyzer in active.items():
        run = analyzer.run

        def run_as(*args: Any, _name: str = name, _run: Callable[..., Any] = run, **kwargs: Any) -> Any:
            previous, clock.analyzer = clock.analyzer, _name
            try:
                with clock.stage("{a}: post-processing (scores, tags, outputs)"):
                    return _run(*args, **kwargs)
            finally:
                clock.analyzer = previous

        patches.set(analyzer, "run", run_as)
        if name == "clip":
            loaded = analyzer.clip
            patches.wrap(clock, loaded, "preprocess", "clip: resize and normalise (224 px crop)")
            model = loaded.model
            patches.set(model, "encode_image", _Timed(clock, model.encode_image, f"clip: {FORWARD} (image tower)"))
            patches.wrap(clock, analyzer, "category_scores", "clip: tag scoring")
            if analyzer.nsfw_classifier is not None:
                session = analyzer.nsfw_classifier._session
                stage = f"clip: {FORWARD} (open_nsfw classifier score)"
                patches.set(analyzer.nsfw_classifier, "_session", _Timed(clock, session, stage, "run"))
        elif name == "nsfw":
            patches.set(analyzer, "_session", _Timed(clock, analyzer._session, f"nsfw: {FORWARD} (open_nsfw)", "run"))
        elif name == "objects":
            patches.wrap(clock, objects_module, "letterbox", "objects: resize and normalise (letterbox 640 px)")
            patches.wrap(clock, analyzer, "_forward", "objects: resize and normalise (to float)")
            patches.set(analyzer, "_model", _Timed(clock, analyzer._model, f"objects: {FORWARD} (YOLO)"))
        elif name == "faces":
            patches.wrap(clock, faces_module, "detect_faces", "faces: MTCNN pyramid, candidate crops and NMS")
            patches.wrap(clock, faces_module, "face_pixels", "faces: resize and normalise (160 px crops)")
            patches.wrap(clock, analyzer, "_embed_pixels", "faces: resize and normalise (160 px crops)")
            nets = analyzer._detector
            stage = f"faces: {FORWARD} (MTCNN P/R/O-nets)"
            timed = [_Timed(clock, net, stage) for net in (nets.pnet, nets.rnet, nets.onet)]
            timed_nets = MtcnnNets(*timed)  # type: ignore[arg-type]  # called like the modules they stand for
            patches.set(analyzer, "_detector", timed_nets)
            patches.set(analyzer, "_embedder", _Timed(clock, analyzer._embedder, f"faces: {FORWARD} (FaceNet)"))
    if device == "cuda":
        _time_host_to_device(clock, patches)
    return patches


def _time_host_to_device(clock: StageClock, patches: Patches) -> None:
    import torch

    to, pin = torch.Tensor.to, torch.Tensor.pin_memory

    def timed_to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        target = torch._C._nn._parse_to(*args, **kwargs)[0]
        if self.is_cuda or target is None or target.type != "cuda":
            return to(self, *args, **kwargs)
        with clock.stage(H2D):
            return to(self, *args, **kwargs)

    def timed_pin(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with clock.stage(H2D):
            return pin(self, *args, **kwargs)

    patches.set(torch.Tensor, "to", timed_to)
    patches.set(torch.Tensor, "pin_memory", timed_pin)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1, as the orchestrator serves signed media URLs; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="media-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def url_items(paths: list[Path], base_url: str, root: Path) -> list[Any]:
    """Manifest items for ``paths`` as signed-URL items: a URL under ``base_url`` and the file's sha256."""
    import hashlib

    from gpu_worker.contract import ManifestItem, MediaKind

    items = []
    for index, path in enumerate(paths):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        url = f"{base_url}/{path.relative_to(root).as_posix()}"
        items.append(ManifestItem(asset_id=str(index), media_kind=MediaKind.IMAGE, url=url, sha256=digest))
    return items


def serialise(result: Any) -> bytes:
    """The BatchResult's body as ``gpu-worker serve`` answers it."""
    from gpu_worker.server import answer_body

    return answer_body(result)


def _check(result: Any) -> None:
    failed = [item.errors for item in result.items if item.errors]
    if failed or result.unavailable:
        raise RuntimeError(f"benchmark run failed: {failed[:2]} {result.unavailable}")


def breakdown(
    executor: Any, active: dict[str, Any], manifest: Any, batch_size: int, device: str, sync: Callable[[], None]
) -> tuple[StageClock, float, list[Any]]:
    """One stage after another, batch by batch, on this thread; returns the clock, the pass's seconds, the results."""
    from gpu_worker.contract import BatchManifest, BatchResult, ItemResult

    clock = StageClock(sync)
    patches = instrument(clock, executor, active, device)
    results: list[Any] = []
    started = time.perf_counter()
    try:
        for start in range(0, len(manifest.items), batch_size):
            batch = BatchManifest(
                batch_id=f"profile-{start}",
                analyzers=manifest.analyzers,
                options=manifest.options,
                items=manifest.items[start : start + batch_size],
            )
            items = [ItemResult(asset_id=item.asset_id) for item in batch.items]
            with (
                tempfile.TemporaryDirectory(prefix="pipeline-profile-") as tmp,
                executor._http_client(batch) as client,
            ):
                prepared = {
                    index: executor._prepare(item, index, Path(tmp), decode_frames=True, client=client)
                    for index, item in enumerate(batch.items)
                }
                executor._analyze_chunk(batch, prepared, active, items)
            result = BatchResult(batch_id=batch.batch_id, items=items, device=device)
            with clock.stage(SERIALISE):
                serialise(result)
            _check(result)
            results.extend(items)
    finally:
        patches.undo()
    return clock, time.perf_counter() - started, results


def best_of(repeat: int, fn: Callable[[], Any]) -> float:
    """Best wall time of ``repeat`` runs (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def fetch_clients(executor: Any, items: list[Any]) -> dict[str, float]:
    """Seconds per item to fetch ``items`` one after another with the executor's download code: a new HTTP client
    per item (as before one client per batch was shared), and one shared client."""
    import httpx

    with tempfile.TemporaryDirectory(prefix="pipeline-fetch-") as tmp:
        dest = Path(tmp) / "item"
        started = time.perf_counter()
        for item in items:
            executor._download_item(item, dest)
        new_client_s = (time.perf_counter() - started) / len(items)
        with httpx.Client(timeout=executor.settings.item_download_timeout_s, follow_redirects=True) as client:
            started = time.perf_counter()
            for item in items:
                executor._download_item(item, dest, client)
            shared_s = (time.perf_counter() - started) / len(items)
    return {"new_client_per_item_s": new_client_s, "shared_client_per_item_s": shared_s}


def profile_corpus(
    executor: Any, analyzers: list[str], paths: list[Path], root: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The three measurements of one corpus."""
    from gpu_worker.contract import BatchManifest

    device = executor.device
    sync = _synchronizer(device)
    options = {name: {"batch_size": args.batch_size} for name in analyzers}
    active = {name: executor.analyzer(name) for name in analyzers}
    with serve(root) as base_url:
        items = url_items(paths, base_url, root)
        manifest = BatchManifest(batch_id="profile", analyzers=analyzers, options=options, items=items)
        # Vocabulary text embeddings, kernels and memory pools, once, outside every measurement.
        serialise(executor.run(BatchManifest(batch_id="warm", analyzers=analyzers, options=options, items=items[:2])))

        clock, pass_s, _ = breakdown(executor, active, manifest, args.batch_size, device, sync)

        def batched() -> None:
            _check(executor.run(manifest))

        def sequential() -> None:
            for item in items:
                one = BatchManifest(batch_id="seq", analyzers=analyzers, options=options, items=[item])
                _check(executor.run(one))

        result_holder: list[Any] = []

        def pipeline() -> None:
            result = executor.run(manifest)
            _check(result)
            serialise(result)
            result_holder.append(result)

        pipeline_s = best_of(args.repeat, pipeline)
        sequential_s = best_of(args.repeat, sequential) if args.sequential else None
        fetch = fetch_clients(executor, items[: min(len(items), 16)])
    scale = PER_IMAGES / len(items)
    stages = {name: seconds * scale for name, seconds in sorted(clock.seconds.items())}
    forward_only = {name: seconds * scale for name, seconds in sorted(clock.forward_only.items())}
    forward_sum = sum(forward_only.values())
    body = serialise(result_holder[-1])
    return {
        "images": len(items),
        "batch_size": args.batch_size,
        "analyzers": analyzers,
        "breakdown_s_per_1000": stages,
        # The replays ran inside the pass; they are not part of the pipeline.
        "breakdown_total_s_per_1000": pass_s * scale - forward_sum,
        "forward_only_s_per_1000": forward_only,
        "forward_sum_s_per_1000": forward_sum,
        "pipeline_s_per_1000": pipeline_s * scale,
        "pipeline_images_per_s": len(items) / pipeline_s,
        "pipeline_over_forward_sum": pipeline_s * scale / forward_sum if forward_sum else None,
        "sequential_s_per_1000": sequential_s * scale if sequential_s is not None else None,
        "batched_over_sequential": sequential_s / pipeline_s if sequential_s is not None else None,
        "result_json_bytes_per_image": len(body) / len(items),
        "fetch_per_image_s": fetch,
    }


def _synchronizer(device: str) -> Callable[[], None]:
    if device != "cuda":
        return lambda: None
    import torch

    return torch.cuda.synchronize


def category(stage: str) -> str:
    """The issue's stage a breakdown row belongs to."""
    if f": {FORWARD}" in stage:
        return "forward"
    if "resize and normalise" in stage:
        return "resize and normalise"
    if "post-processing" in stage or "tag scoring" in stage or "MTCNN" in stage:
        return "post-processing"
    return stage


def print_corpus(name: str, row: dict[str, Any], device: str) -> None:
    """The breakdown table and the two checks of one corpus."""
    stages: dict[str, float] = row["breakdown_s_per_1000"]
    total = row["breakdown_total_s_per_1000"]
    print(f"\n== {name}: {row['images']} images, batches of {row['batch_size']}, {', '.join(row['analyzers'])}")
    print(f"{'stage':<62} {'s / 1000 img':>12} {'%':>6}")
    order = sorted(stages, key=lambda s: -stages[s])
    if device != "cuda":
        print(f"{H2D:<62} {'n/a':>12} {'':>6}")
    for stage in order:
        print(f"{stage:<62} {stages[stage]:>12.2f} {100 * stages[stage] / total:>6.1f}")
    unaccounted = total - sum(stages.values())
    print(f"{'(between stages: loops, temp files)':<62} {unaccounted:>12.2f} {100 * unaccounted / total:>6.1f}")
    print(f"{'breakdown pass, one stage after another':<62} {total:>12.2f} {100.0:>6.1f}")
    by_category: dict[str, float] = defaultdict(float)
    for stage, seconds in stages.items():
        by_category[category(stage)] += seconds
    print("by stage of the issue: " + ", ".join(f"{c} {100 * s / total:.1f} %" for c, s in by_category.items()))
    print("forward-only (same inputs, run again):")
    for stage, seconds in row["forward_only_s_per_1000"].items():
        print(f"  {stage:<60} {seconds:>12.2f}")
    ratio = row["pipeline_over_forward_sum"]
    print(
        f"pipeline (executor.run + JSON, overlapped): {row['pipeline_s_per_1000']:.2f} s / 1000 images "
        f"({row['pipeline_images_per_s']:.2f} img/s); sum of forward-only: {row['forward_sum_s_per_1000']:.2f} s; "
        f"ratio {ratio:.2f} ({'within' if ratio <= 1.2 else 'not within'} 20 %)"
    )
    if row["batched_over_sequential"] is not None:
        print(
            f"sequential (one manifest per image): {row['sequential_s_per_1000']:.2f} s / 1000 images; "
            f"batched/sequential {row['batched_over_sequential']:.2f}x"
        )
    fetch = row["fetch_per_image_s"]
    print(
        f"fetch per image, one after another: new HTTP client each {1000 * fetch['new_client_per_item_s']:.1f} ms, "
        f"one shared client {1000 * fetch['shared_client_per_item_s']:.1f} ms; "
        f"result JSON {row['result_json_bytes_per_image'] / 1024:.1f} KiB per image"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="images per corpus")
    parser.add_argument("--batch-size", type=int, default=32, help="items per chunk and per analyzer batch")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--analyzers", default=",".join(IMAGE_ANALYZERS))
    parser.add_argument("--corpus", default="both", choices=("generated", "shared", "both"))
    parser.add_argument("--repeat", type=int, default=1, help="timed pipeline runs (the best is kept)")
    parser.add_argument("--no-sequential", dest="sequential", action="store_false", help="skip the sequential run")
    parser.add_argument("--catalog", type=Path, help="measure this catalog's default models instead")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mam-bench")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    executor, figures = start_executor(
        args.work, args.device, args.catalog, {"GPUW_DECODE_CHUNK_ITEMS": str(args.batch_size)}
    )
    device = executor.device
    analyzers = [a for a in args.analyzers.split(",") if a]
    corpora: dict[str, tuple[list[Path], Path]] = {}
    if args.corpus in ("generated", "both"):
        corpora["generated 1080p"] = (generate_corpus(args.work / "corpus-1080p", args.images), args.work)
    if args.corpus in ("shared", "both"):
        corpora["shared photos"] = (shared_corpus(args.work / "corpus-shared", args.images), args.work)
    figures.update({"decode_workers": executor._decode_workers(), "corpora": {}})
    print(f"device: {figures['device_name']} ({device}), {os.cpu_count()} cores, {args.images} images per corpus")
    for name, (paths, root) in corpora.items():
        if not paths:
            continue
        row = profile_corpus(executor, analyzers, paths, root, args)
        figures["corpora"][name] = row
        print_corpus(name, row, device)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
