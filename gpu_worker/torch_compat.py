"""Make torchvision's NMS work on a CPU-only install, where PyPI's torchvision cannot load its compiled ops.

PyPI has no CPU build of torchvision. Beside the CPU torch wheel, its CUDA build cannot load ``torchvision/_C`` and
then fails to import at all (``operator torchvision::nms does not exist``), because it registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` unconditionally. open_clip, ultralytics and facenet-pytorch import
torchvision, and the latter two call ``torchvision.ops.nms`` / ``batched_nms``.

:func:`ensure_torchvision_ops` is called before any of them is imported. Where the compiled ops load it does nothing.
Otherwise it defines both operators with a pure-PyTorch kernel that reproduces the compiled CPU kernel, index for
index (the same descending sort, the same arithmetic in the input's dtype, the same strict ``IoU > threshold``),
and lets ``torchvision.ops.nms`` call it. Every other torchvision op still fails loudly when called.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from enum import StrEnum
from types import ModuleType

import numpy as np
import torch

log = logging.getLogger(__name__)

NAMESPACE = "torchvision"
NMS_SCHEMA = "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
QNMS_SCHEMA = "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
# Boxes compared with each other at once: a block's IoU matrix is BLOCK x BLOCK, its suppression of later boxes
# BLOCK x LATER_CHUNK (a few MB in float64), so memory stays bounded however many boxes come in.
BLOCK = 128
LATER_CHUNK = 4096
# Dispatch keys under which a kernel serves CPU tensors: torchvision's own or a backend-independent one.
KERNEL_KEYS = ("CPU", "QuantizedCPU", "CompositeExplicitAutograd", "CompositeImplicitAutograd")


class TorchvisionOps(StrEnum):
    """Where ``torchvision::nms`` comes from in this process."""

    NATIVE = "native"  # it already had a kernel (torchvision's compiled ops loaded); nothing was registered
    PURE_TORCH = "pure_torch"  # this module registered its pure-PyTorch kernel


_lock = threading.Lock()
_state: TorchvisionOps | None = None
# A torch.library.Library drops its definitions when it is garbage-collected.
_libraries: list[torch.library.Library] = []


def ensure_torchvision_ops() -> TorchvisionOps:
    """Make ``import torchvision`` and ``torchvision.ops.nms``/``batched_nms`` work; idempotent and thread-safe.

    Returns where ``torchvision::nms`` comes from. Raises ``ImportError`` when torchvision is not installed and
    re-raises an import failure that has nothing to do with its compiled ops.
    """
    global _state
    with _lock:
        if _state is None:
            _state = _ensure()
        return _state


def _ensure() -> TorchvisionOps:
    registered = False
    try:
        torchvision = importlib.import_module("torchvision")
    except RuntimeError as exc:
        if f"{NAMESPACE}::" not in str(exc):
            raise
        _forget_partial_import()
        registered = _provide_pure_torch_nms()
        torchvision = importlib.import_module("torchvision")
    else:
        if _has_compiled_ops(torchvision):
            return TorchvisionOps.NATIVE
        # Older torchvision releases import without their ops; the operators are then simply missing.
        registered = _provide_pure_torch_nms()
    _let_torchvision_call_registered_nms(torchvision)
    if registered:
        log.warning(
            "torchvision %s cannot load its compiled ops beside torch %s (a CUDA build of torchvision next to a "
            "CPU-only torch); using a pure-PyTorch NMS for torchvision.ops.nms and batched_nms",
            getattr(torchvision, "__version__", "?"),
            torch.__version__,
        )
        return TorchvisionOps.PURE_TORCH
    return TorchvisionOps.NATIVE


def _has_compiled_ops(torchvision: ModuleType) -> bool:
    return bool(torchvision.extension._has_ops())


def has_kernel(op_name: str) -> bool:
    """Whether ``torchvision::<op_name>`` exists and has a kernel that runs on CPU tensors."""
    if not hasattr(torch.ops.torchvision, op_name):
        return False
    qualified = f"{NAMESPACE}::{op_name}"
    return any(torch._C._dispatch_has_kernel_for_dispatch_key(qualified, key) for key in KERNEL_KEYS)


def _forget_partial_import() -> None:
    """Drop the submodules a failed ``import torchvision`` left behind, so the next import starts afresh."""
    for name in [m for m in sys.modules if m == NAMESPACE or m.startswith(f"{NAMESPACE}.")]:
        del sys.modules[name]


def _provide_pure_torch_nms() -> bool:
    """Define ``nms``/``qnms`` where missing and give them our kernel where they have none; True if anything was."""
    library: torch.library.Library | None = None
    for op_name, schema, kernel in (("nms", NMS_SCHEMA, nms_pure_torch), ("qnms", QNMS_SCHEMA, _qnms_pure_torch)):
        if has_kernel(op_name):
            continue
        if library is None:
            library = torch.library.Library(NAMESPACE, "FRAGMENT")  # type: ignore[no-untyped-call]
        if not hasattr(torch.ops.torchvision, op_name):
            library.define(schema)  # type: ignore[no-untyped-call]
        # CompositeExplicitAutograd: one kernel for every backend (CPU, and CUDA should it ever be needed).
        library.impl(op_name, kernel, "CompositeExplicitAutograd")  # type: ignore[no-untyped-call]
    if library is None:
        return False
    _libraries.append(library)
    return True


def _let_torchvision_call_registered_nms(torchvision: ModuleType) -> None:
    """``torchvision.ops.nms`` refuses to run without the compiled library; let it call the registered operator.

    Only ``torchvision/ops/boxes.py`` is changed, so roi_align, deform_conv and the rest keep their clear error.
    """
    boxes = importlib.import_module("torchvision.ops.boxes")

    def assert_nms_registered() -> None:
        if not has_kernel("nms"):
            torchvision.extension._assert_has_ops()

    vars(boxes)["_assert_has_ops"] = assert_nms_registered


def nms_pure_torch(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS as torchvision's CPU kernel does it: indices of the kept boxes, by decreasing score.

    ``dets`` is ``[N, 4]`` (x1, y1, x2, y2), ``scores`` ``[N]``. Scores are ordered by the same sort call as the
    C++ kernel's, so equal scores come in the same order; a box is dropped when its IoU with a kept box is strictly
    greater than ``iou_threshold``; IoU is computed operation by operation in the boxes' dtype. float16 and
    bfloat16, which the CPU kernel refuses, are computed in float32, as torchvision's autocast wrapper does.
    """
    _check_inputs(dets, scores)
    if dets.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=dets.device)
    # Not a stable sort: the C++ kernel calls scores.sort(0, true), and equal scores must come out as there.
    order = torch.sort(scores, dim=0, descending=True).indices
    boxes = dets[order]
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    count = boxes.shape[0]
    alive = torch.ones(count, dtype=torch.bool, device=dets.device)
    kept: list[torch.Tensor] = []
    for start in range(0, count, BLOCK):
        stop = min(start + BLOCK, count)
        members = alive[start:stop].nonzero().flatten() + start
        if members.numel() == 0:
            continue
        overlaps = _overlaps(boxes, areas, members, members, iou_threshold).cpu().numpy()
        # Boxes of one block are settled in score order, each against the boxes of the block kept before it.
        suppressed = np.zeros(len(members), dtype=bool)
        keep_local: list[int] = []
        for row in range(len(members)):
            if suppressed[row]:
                continue
            keep_local.append(row)
            suppressed |= overlaps[row]
        block_kept = members[keep_local]
        kept.append(block_kept)
        for later in range(stop, count, LATER_CHUNK):
            positions = torch.arange(later, min(later + LATER_CHUNK, count), device=dets.device)
            hit = _overlaps(boxes, areas, block_kept, positions, iou_threshold).any(dim=0)
            alive[positions] &= ~hit
    return order[torch.cat(kept)]


def _overlaps(
    boxes: torch.Tensor, areas: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """``IoU(rows[i], cols[j]) > iou_threshold`` as a bool matrix, with the C++ kernel's operations and rounding."""
    a, b = boxes[rows][:, None, :], boxes[cols][None, :, :]
    xx1 = torch.maximum(a[..., 0], b[..., 0])
    yy1 = torch.maximum(a[..., 1], b[..., 1])
    xx2 = torch.minimum(a[..., 2], b[..., 2])
    yy2 = torch.minimum(a[..., 3], b[..., 3])
    inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
    iou = inter / (areas[rows][:, None] + areas[cols][None, :] - inter)
    # C++ compares the dtype's value with a double threshold; a tensor-scalar comparison would round the threshold.
    return iou.to(torch.float64) > iou_threshold


def _qnms_pure_torch(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    # torchvision passes the integer representation of quantized tensors; IoU and order do not depend on scale or
    # zero point, so the float values of the integers give the same result.
    as_float = [t.dequantize() if t.is_quantized else t.to(torch.float32) for t in (dets, scores)]
    return nms_pure_torch(as_float[0], as_float[1], iou_threshold)


def _check_inputs(dets: torch.Tensor, scores: torch.Tensor) -> None:
    # The compiled kernel's checks and messages; like any operator, it raises RuntimeError.
    if dets.dim() != 2:
        raise RuntimeError(f"boxes should be a 2d tensor, got {dets.dim()}D")
    if dets.size(1) != 4:
        raise RuntimeError(f"boxes should have 4 elements in dimension 1, got {dets.size(1)}")
    if scores.dim() != 1:
        raise RuntimeError(f"scores should be a 1d tensor, got {scores.dim()}D")
    if dets.size(0) != scores.size(0):
        raise RuntimeError(
            "boxes and scores should have same number of elements in dimension 0, got "
            f"{dets.size(0)} and {scores.size(0)}"
        )
    if dets.dtype != scores.dtype:
        raise RuntimeError("dets should have the same type as scores")
