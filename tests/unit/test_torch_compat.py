"""torchvision's NMS on a CPU-only torch: the pure-PyTorch kernel agrees with the compiled one's algorithm exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_worker import torch_compat
from gpu_worker.torch_compat import TorchvisionOps, ensure_torchvision_ops, nms_pure_torch
from tests.conftest import REPO_ROOT

ensure_torchvision_ops()
import torchvision  # noqa: E402  (importable only after the call above on a CPU-only install)

# The scalar type the CPU kernel computes in; it has no float16 kernel, and float16 is computed in float32 (as
# torchvision's autocast wrapper does).
NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float32}
COMPILED_DTYPES = (torch.float64, torch.float32)


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> list[int]:
    """torchvision's CPU kernel (csrc/ops/cpu/nms_kernel.cpp) line by line, in scalars of its compute type."""
    kind = NUMPY_DTYPES[boxes.dtype]
    dets = [[kind(v) for v in row] for row in boxes.tolist()]
    # The kernel's own order: scores.sort(0, /*descending=*/true), which is not stable.
    order = torch.sort(scores, dim=0, descending=True).indices.tolist()
    areas = [(d[2] - d[0]) * (d[3] - d[1]) for d in dets]
    suppressed = [False] * len(dets)
    keep = []
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[position + 1 :]:
            if suppressed[j]:
                continue
            w = max(kind(0), min(dets[i][2], dets[j][2]) - max(dets[i][0], dets[j][0]))
            h = max(kind(0), min(dets[i][3], dets[j][3]) - max(dets[i][1], dets[j][1]))
            inter = w * h
            overlap = inter / (areas[i] + areas[j] - inter)
            if float(overlap) > iou_threshold:
                suppressed[j] = True
    return keep


def torchvision_accepts(dtype: torch.dtype) -> bool:
    """The compiled CPU kernel refuses float16; ours computes it in float32."""
    return dtype in COMPILED_DTYPES or ensure_torchvision_ops() is TorchvisionOps.PURE_TORCH


def random_boxes(count: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes in clusters (so that many overlap), scores from a few values (so that many tie)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(1, count // 8), 2, generator=generator) * 200
    picked = centres[torch.randint(0, len(centres), (count,), generator=generator)]
    xy = picked + torch.randn(count, 2, generator=generator) * 6
    wh = 10 + torch.rand(count, 2, generator=generator) * 40
    boxes = torch.cat((xy, xy + wh), dim=1).to(dtype)
    scores = (torch.randint(0, 12, (count,), generator=generator).to(torch.float64) / 11).to(dtype)
    return boxes, scores


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("iou_threshold", [0.2, 0.5, 0.7])
def test_nms_matches_the_reference_algorithm_on_clustered_boxes(dtype: torch.dtype, iou_threshold: float) -> None:
    for seed, count in [(0, 60), (1, 300)]:
        boxes, scores = random_boxes(count, seed, dtype)
        expected = reference_nms(boxes, scores, iou_threshold)
        assert nms_pure_torch(boxes, scores, iou_threshold).tolist() == expected
        if torchvision_accepts(dtype):
            # Whichever kernel serves torchvision here (compiled or ours) gives the same answer.
            assert torchvision.ops.nms(boxes, scores, iou_threshold).tolist() == expected


def test_nms_blocks_and_chunks_give_the_same_answer_as_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    boxes, scores = random_boxes(400, 7, torch.float32)
    expected = reference_nms(boxes, scores, 0.4)
    monkeypatch.setattr(torch_compat, "BLOCK", 7)
    monkeypatch.setattr(torch_compat, "LATER_CHUNK", 33)
    assert nms_pure_torch(boxes, scores, 0.4).tolist() == expected


def test_an_iou_equal_to_the_threshold_does_not_suppress() -> None:
    # Intersection 2, union 4: the IoU is exactly 0.5 in every dtype.
    for dtype in NUMPY_DTYPES:
        boxes = torch.tensor([[0, 0, 4, 1], [0, 0, 2, 1]], dtype=dtype)
        scores = torch.tensor([0.9, 0.8], dtype=dtype)
        assert nms_pure_torch(boxes, scores, 0.5).tolist() == [0, 1]
        assert nms_pure_torch(boxes, scores, 0.49).tolist() == [0]
        if torchvision_accepts(dtype):
            assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [0, 1]
            assert torchvision.ops.nms(boxes, scores, 0.49).tolist() == [0]


def test_the_threshold_is_compared_in_double_precision() -> None:
    # 1/3 in float32 is 0.3333333432674408, above the double 1/3 a tensor comparison would round up to it.
    boxes = torch.tensor([[0.0, 0, 3, 1], [0, 0, 1, 1]])
    scores = torch.tensor([0.9, 0.8])
    assert float(torch.tensor(1 / 3, dtype=torch.float32)) > 1 / 3
    assert torchvision.ops.nms(boxes, scores, 1 / 3).tolist() == [0] == reference_nms(boxes, scores, 1 / 3)


def test_equal_scores_follow_the_kernels_sort_and_a_suppressed_box_suppresses_nothing() -> None:
    # b overlaps a and c; c does not overlap a. Whichever of a, b comes first in the sort decides the rest.
    boxes = torch.tensor([[0.0, 0, 10, 10], [4, 0, 14, 10], [10, 0, 20, 10]])
    scores = torch.tensor([0.5, 0.5, 0.7])
    first_tied = int(torch.sort(scores, dim=0, descending=True).indices[1])
    expected = [2, 0] if first_tied == 0 else [2, 1]
    assert torchvision.ops.nms(boxes, scores, 0.3).tolist() == expected == reference_nms(boxes, scores, 0.3)
    identical = torch.tensor([[1.0, 1, 5, 5]] * 40)
    tied = torch.full((40,), 0.5)
    assert (
        torchvision.ops.nms(identical, tied, 0.5).tolist()
        == torch.sort(tied, dim=0, descending=True).indices[:1].tolist()
    )


def test_empty_input_and_a_single_box() -> None:
    empty = torchvision.ops.nms(torch.zeros((0, 4)), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    one = torchvision.ops.nms(torch.tensor([[1.0, 2, 3, 4]]), torch.tensor([0.3]), 0.5)
    assert one.tolist() == [0] and one.dtype == torch.int64


def test_float16_boxes_give_the_float32_answer() -> None:
    # These half-precision boxes overlap by IoU 0.49998 in float32, but 0.50049 if computed in float16.
    boxes = torch.tensor([[44.34375, 10.0703125, 79.4375, 39.90625], [46.5, 17.984375, 74.75, 46.6875]])
    scores = torch.tensor([0.9, 0.8])
    assert nms_pure_torch(boxes.half(), scores.half(), 0.5).tolist() == [0, 1]
    assert nms_pure_torch(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms_pure_torch(boxes.half(), scores.half(), 0.49).tolist() == [0]
    if torchvision_accepts(torch.float16):
        assert torchvision.ops.nms(boxes.half(), scores.half(), 0.5).tolist() == [0, 1]


def test_batched_nms_never_suppresses_across_classes() -> None:
    boxes, scores = random_boxes(120, 3, torch.float32)
    classes = torch.arange(120) % 3
    expected: list[int] = []
    for label in range(3):
        members = (classes == label).nonzero().flatten()
        expected += [int(members[i]) for i in reference_nms(boxes[members], scores[members], 0.5)]
    kept = torchvision.ops.batched_nms(boxes, scores, classes, 0.5)
    assert sorted(kept.tolist()) == sorted(expected)
    assert scores[kept].tolist() == sorted(scores[kept].tolist(), reverse=True)


def test_malformed_input_is_refused_like_the_compiled_kernel() -> None:
    with pytest.raises(RuntimeError, match="2d tensor"):
        nms_pure_torch(torch.zeros(4), torch.zeros(1), 0.5)
    with pytest.raises(RuntimeError, match="4 elements"):
        nms_pure_torch(torch.zeros(2, 3), torch.zeros(2), 0.5)
    with pytest.raises(RuntimeError, match="same number"):
        nms_pure_torch(torch.zeros(2, 4), torch.zeros(3), 0.5)


def test_facenet_detector_finds_the_face_in_grace_hopper(shared_media: Path) -> None:
    from facenet_pytorch import MTCNN
    from PIL import Image

    # MTCNN's weights ship in the facenet-pytorch wheel; its three stages call torchvision's batched_nms.
    detector = MTCNN(keep_all=True, device="cpu")
    boxes, probabilities = detector.detect(Image.open(shared_media / "grace_hopper.jpg").convert("RGB"))
    assert boxes is not None
    assert sum(p >= 0.9 for p in probabilities) == 1


def _run_fresh(script: str) -> dict[str, object]:
    """Run ``script`` in a new interpreter (nothing imported or registered yet); it prints one JSON line last."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def test_a_fresh_process_gets_working_nms_and_one_log_line() -> None:
    result = _run_fresh(
        """
        import json, logging
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("gpu_worker.torch_compat").addHandler(handler)
        logging.getLogger("gpu_worker.torch_compat").setLevel(logging.INFO)
        import torch
        from gpu_worker.torch_compat import ensure_torchvision_ops
        first, second = ensure_torchvision_ops(), ensure_torchvision_ops()
        import torchvision
        import open_clip, ultralytics.nn.tasks, facenet_pytorch
        kept = torchvision.ops.nms(torch.tensor([[0, 0, 4, 1], [0, 0, 2, 1.0]]), torch.tensor([0.9, 0.8]), 0.4)
        print(json.dumps({
            "first": first, "second": second, "compiled": torchvision.extension._has_ops(),
            "logged": len(records), "kept": kept.tolist(),
        }))
        """
    )
    assert result["first"] == result["second"]
    # Our kernel exactly where torchvision's compiled ops did not load; on a CUDA install nothing changes.
    expected = TorchvisionOps.NATIVE if result["compiled"] else TorchvisionOps.PURE_TORCH
    assert result["first"] == expected
    assert result["logged"] == (0 if result["compiled"] else 1)
    assert result["kept"] == [0]


def test_an_existing_nms_kernel_is_left_alone() -> None:
    result = _run_fresh(
        """
        import json
        import torch
        # Stands where torchvision's compiled library would register its kernels.
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            library.impl(op, lambda dets, scores, iou_threshold: torch.arange(dets.shape[0]).flip(0), "CPU")
        from gpu_worker.torch_compat import ensure_torchvision_ops
        state = ensure_torchvision_ops()
        boxes, scores = torch.tensor([[0, 0, 4, 1], [0, 0, 2, 1.0]]), torch.tensor([0.9, 0.8])
        print(json.dumps({"state": state, "direct": torch.ops.torchvision.nms(boxes, scores, 0.4).tolist()}))
        """
    )
    assert result == {"state": TorchvisionOps.NATIVE, "direct": [1, 0]}


def test_operators_declared_without_a_kernel_get_ours() -> None:
    result = _run_fresh(
        """
        import json
        import torch
        # What a workaround that only declares the operators (so that torchvision imports) leaves behind.
        library = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        from gpu_worker.torch_compat import ensure_torchvision_ops
        state = ensure_torchvision_ops()
        import torchvision
        boxes, scores = torch.tensor([[0, 0, 4, 1], [0, 0, 2, 1.0], [5, 5, 6, 6]]), torch.tensor([0.9, 0.8, 0.7])
        print(json.dumps({"state": state, "kept": torchvision.ops.nms(boxes, scores, 0.4).tolist()}))
        """
    )
    assert result == {"state": TorchvisionOps.PURE_TORCH, "kept": [0, 2]}
