"""The GPU self-check that ``gpu-worker serve`` runs before it loads a model: can this torch drive this GPU?

The classic failure it catches: an RTX 5090 (compute capability 12.0, ``sm_120``) under a torch built for CUDA 12.4,
whose kernels stop at ``sm_90``. torch imports, ``torch.cuda.is_available()`` is true, and the first real kernel dies
with "no kernel image is available for execution on the device" deep inside model loading. Here the worker refuses
to become ready instead, with one message that names the GPU, its capability, the torch and CUDA versions, the
build's architectures, and the fix.

The compatibility rule (NVIDIA's CUDA compatibility guide, "binary compatibility"):

- a cubin ``sm_XY`` runs on capability ``X.Z`` for every ``Z >= Y`` of the same major ``X``, never across majors
  (``sm_90`` does not run on 10.0 or 12.0);
- PTX ``compute_XY`` is compiled by the driver at load time for any capability ``>= X.Y``, majors included;
- an ``a`` suffix (``sm_90a``, ``compute_90a``) is architecture-specific: that exact capability only; an ``f``
  suffix (``sm_100f``) is family-specific: the same major, minor at least ``Y``.

A GPU reached only through PTX passes with a warning (the driver JIT-compiles every kernel at first use; libraries
that ship only cubins for older GPUs fail there), and then the tiny kernel has to run as on any GPU.

The decisions are pure functions of plain data (:class:`TorchFacts`); :func:`probe_torch` and
:func:`run_tiny_kernel` are the only parts that touch torch, and :func:`check_gpu` joins them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from gpu_worker.settings import DeviceChoice

CU128_INDEX_URL = "https://download.pytorch.org/whl/cu128"
# The oldest CUDA toolkit whose compiler targets each capability (CUDA 12.8 added Blackwell, sm_100 and sm_120).
MIN_CUDA_FOR_CAPABILITY: Mapping[tuple[int, int], str] = {
    (12, 0): "12.8",
    (10, 0): "12.8",
    (9, 0): "11.8",
    (8, 9): "11.8",
    (8, 6): "11.1",
    (8, 0): "11.0",
    (7, 5): "10.0",
    (7, 0): "9.0",
}
# The oldest Linux driver branch that runs each CUDA runtime (NVIDIA's CUDA toolkit release notes, table 3).
MIN_DRIVER_FOR_CUDA: Mapping[str, str] = {
    "13.0": "580",
    "12.9": "575",
    "12.8": "570",
    "12.6": "560",
    "12.4": "550",
    "12.1": "530",
    "11.8": "520",
}
TINY_KERNEL_SIDE = 64
# The test product is compared with the CPU's; TF32 or a different summation order moves it by far less than this.
TINY_KERNEL_REL_TOLERANCE = 1e-2


class CheckStatus(StrEnum):
    """The self-check's verdict: the worker may go on (``ok``, ``warning``, ``skipped``) or must not (``failed``)."""

    OK = "ok"
    WARNING = "warning"
    FAILED = "failed"
    SKIPPED = "skipped"


class ArchSupport(StrEnum):
    """How a torch build reaches a GPU: its own kernels, PTX the driver compiles, or not at all."""

    NATIVE = "native"
    PTX_JIT = "ptx_jit"
    NONE = "none"


@dataclass(frozen=True)
class TorchFacts:
    """What torch reports about itself and device 0; ``cuda_version`` is None for a CPU-only build."""

    torch_version: str
    cuda_version: str | None
    cuda_available: bool
    arch_list: tuple[str, ...] = ()
    gpu_name: str | None = None
    capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class GpuCheck:
    """The self-check's outcome: ``device`` is what the worker will run on (None when it must not start)."""

    status: CheckStatus
    message: str
    device: str | None
    facts: TorchFacts
    support: ArchSupport | None = None

    @property
    def failed(self) -> bool:
        """True when the worker must not become ready."""
        return self.status is CheckStatus.FAILED

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``/v1/info`` and ``gpu-worker selfcheck --json``."""
        return {
            "status": str(self.status),
            "message": self.message,
            "device": self.device,
            "support": str(self.support) if self.support else None,
            "facts": {**asdict(self.facts), "arch_list": list(self.facts.arch_list)},
        }


@dataclass(frozen=True)
class ArchEntry:
    """One entry of ``torch.cuda.get_arch_list()``: ``sm_86`` (cubin), ``compute_90`` (PTX), ``sm_90a``..."""

    ptx: bool
    capability: tuple[int, int]
    suffix: str  # "" for portable code, "a" architecture-specific, "f" family-specific

    def runs_on(self, capability: tuple[int, int]) -> bool:
        """Whether code built for this entry runs on a GPU of ``capability`` (see the module's rule)."""
        major, minor = capability
        if self.suffix == "a":
            return capability == self.capability
        if self.suffix == "f" or not self.ptx:
            return major == self.capability[0] and minor >= self.capability[1]
        return capability >= self.capability


def parse_arch(entry: str) -> ArchEntry | None:
    """``sm_120`` -> cubin 12.0; ``compute_90`` -> PTX 9.0; ``sm_90a`` -> 9.0 only; None for what is not an arch."""
    prefix, _, rest = entry.strip().lower().partition("_")
    if prefix not in ("sm", "compute"):
        return None
    digits = rest.rstrip("af")
    suffix = rest[len(digits) :]
    if len(digits) < 2 or not digits.isdigit() or len(suffix) > 1:
        return None
    return ArchEntry(ptx=prefix == "compute", capability=(int(digits[:-1]), int(digits[-1])), suffix=suffix)


def arch_support(capability: tuple[int, int], arch_list: Iterable[str]) -> tuple[ArchSupport, str | None]:
    """How a build with ``arch_list`` reaches ``capability``, and the entry that does it (native beats PTX)."""
    entries = [(raw, parsed) for raw in arch_list if (parsed := parse_arch(raw)) is not None]
    for raw, entry in entries:
        if not entry.ptx and entry.runs_on(capability):
            return ArchSupport.NATIVE, raw
    for raw, entry in entries:
        if entry.ptx and entry.runs_on(capability):
            return ArchSupport.PTX_JIT, raw
    return ArchSupport.NONE, None


def sm_name(capability: tuple[int, int]) -> str:
    """``(12, 0)`` -> ``sm_120``."""
    return f"sm_{capability[0]}{capability[1]}"


def describe_build(facts: TorchFacts) -> str:
    """``torch 2.5.1+cu124 (CUDA 12.4)``, or ``(CPU-only build)``."""
    cuda = f"CUDA {facts.cuda_version}" if facts.cuda_version else "CPU-only build"
    return f"torch {facts.torch_version} ({cuda})"


def describe_gpu(facts: TorchFacts) -> str:
    """``NVIDIA GeForce RTX 5090, compute capability 12.0``."""
    name = facts.gpu_name or "the GPU"
    if facts.capability is None:
        return name
    return f"{name}, compute capability {facts.capability[0]}.{facts.capability[1]}"


def upgrade_hint(capability: tuple[int, int], arch_list: Iterable[str]) -> str:
    """What to install so that a GPU of ``capability`` gets kernels."""
    target = sm_name(capability)
    if capability >= (10, 0):
        return (
            f"use a CUDA 12.8+ torch build (torch 2.7 or newer lists {target}), e.g. the worker image's default, "
            f"or pip install torch from {CU128_INDEX_URL}"
        )
    known = [e.capability for raw in arch_list if (e := parse_arch(raw)) is not None]
    if known and capability < min(known):
        return (
            f"this build has dropped GPUs this old (its oldest is {sm_name(min(known))}): use a torch build for an "
            f"older CUDA whose torch.cuda.get_arch_list() still has {target}, or a newer GPU"
        )
    needed = next((cuda for cap, cuda in MIN_CUDA_FOR_CAPABILITY.items() if capability >= cap), None)
    toolkit = f" (CUDA {needed} or newer)" if needed else ""
    return f"use a torch build{toolkit} whose torch.cuda.get_arch_list() has {target}"


def _no_cuda_message(facts: TorchFacts) -> str:
    fallback = "or set GPUW_DEVICE=auto (or cpu) to run on the CPU"
    if facts.cuda_version is None:
        return (
            f"GPUW_DEVICE=cuda, but this is a CPU-only torch build (torch {facts.torch_version}): install a CUDA "
            f"build, e.g. the worker image's default, or pip install torch from {CU128_INDEX_URL}; {fallback}"
        )
    cuda_series = ".".join(facts.cuda_version.split(".")[:2])
    driver = MIN_DRIVER_FOR_CUDA.get(cuda_series)
    driver_text = f"driver {driver} or newer" if driver else "a driver new enough for it"
    return (
        f"GPUW_DEVICE=cuda, but {describe_build(facts)} sees no CUDA device: check that nvidia-smi works here, that "
        f"the container was given the GPUs (docker run --gpus all), and that the NVIDIA driver runs CUDA "
        f"{facts.cuda_version} ({driver_text}); {fallback}"
    )


def judge_environment(choice: DeviceChoice, facts: TorchFacts) -> GpuCheck:
    """Whether the worker may start on ``choice`` given ``facts``, before any kernel has run.

    ``cpu`` is skipped; ``auto`` without a GPU is skipped (the CPU is what auto means then); ``cuda`` without one
    fails. With a GPU, its capability must be reachable from the build's arch list: natively (ok), through PTX
    (warning), or not at all (failed, with the fix). A GPU that ``auto`` would pick but this build cannot drive
    fails too: silently falling back would hide a 20-50x slower worker behind a "ready".
    """
    if choice is DeviceChoice.CPU:
        return GpuCheck(CheckStatus.SKIPPED, "GPUW_DEVICE=cpu: no GPU to check", "cpu", facts)
    if not facts.cuda_available:
        if choice is DeviceChoice.CUDA:
            return GpuCheck(CheckStatus.FAILED, _no_cuda_message(facts), None, facts)
        return GpuCheck(
            CheckStatus.SKIPPED, f"no CUDA device for {describe_build(facts)}: running on the CPU", "cpu", facts
        )
    capability = facts.capability
    if capability is None:
        return GpuCheck(CheckStatus.FAILED, "torch sees a CUDA device but reports no compute capability", None, facts)
    support, entry = arch_support(capability, facts.arch_list)
    archs = " ".join(facts.arch_list) or "(none)"
    target = sm_name(capability)
    if support is ArchSupport.NATIVE:
        message = f"{describe_gpu(facts)}: {describe_build(facts)} has kernels for it ({entry})"
        return GpuCheck(CheckStatus.OK, message, "cuda", facts, support)
    if support is ArchSupport.PTX_JIT:
        message = (
            f"{describe_gpu(facts)} has no native kernels in {describe_build(facts)} (arch list: {archs}); it runs "
            f"through PTX {entry}, compiled by the driver at first use: slow first batches, and libraries without "
            f"PTX for it may fail. Better: {upgrade_hint(capability, facts.arch_list)}"
        )
        return GpuCheck(CheckStatus.WARNING, message, "cuda", facts, support)
    message = (
        f"this torch build does not support {target} ({describe_gpu(facts)}): {describe_build(facts)} has kernels "
        f"for {archs} and no PTX it could compile for {capability[0]}.{capability[1]}. To fix: "
        f"{upgrade_hint(capability, facts.arch_list)}"
    )
    return GpuCheck(CheckStatus.FAILED, message, None, facts, support)


def judge_kernel(environment: GpuCheck, error: str | None) -> GpuCheck:
    """The verdict after the tiny kernel ran on a GPU ``environment`` passed: ``error`` None means it worked."""
    if error is None:
        return environment
    facts = environment.facts
    archs = " ".join(facts.arch_list) or "(none)"
    if "no kernel image" in error.lower() and facts.capability is not None:
        fix = upgrade_hint(facts.capability, facts.arch_list)
    else:
        fix = "check the GPU with nvidia-smi (driver, ECC errors, another process holding it) and try another machine"
    message = (
        f"a test kernel failed on {describe_gpu(facts)} with {describe_build(facts)} (arch list: {archs}): "
        f"{error}. To fix: {fix}"
    )
    return GpuCheck(CheckStatus.FAILED, message, None, facts, environment.support)


def probe_torch() -> TorchFacts:
    """Read the facts from torch (device 0, the one the executor uses)."""
    import torch

    available = torch.cuda.is_available()
    name: str | None = None
    capability: tuple[int, int] | None = None
    if available:
        name = str(torch.cuda.get_device_properties(0).name)
        major, minor = torch.cuda.get_device_capability(0)
        capability = (int(major), int(minor))
    return TorchFacts(
        torch_version=str(torch.__version__),
        cuda_version=torch.version.cuda,
        cuda_available=available,
        arch_list=tuple(torch.cuda.get_arch_list()),
        gpu_name=name,
        capability=capability,
    )


def run_tiny_kernel(device: str = "cuda") -> str | None:
    """Multiply two small matrices on ``device`` and compare with the CPU; the error text, or None when it worked."""
    import torch

    side = TINY_KERNEL_SIDE
    host = torch.arange(side * side, dtype=torch.float32).reshape(side, side) / (side * side)
    expected = float((host @ host.T).sum())
    try:
        on_device = host.to(device)
        got = float((on_device @ on_device.T).sum().item())  # .item() waits for the kernel
    # A missing kernel image is a RuntimeError (torch.AcceleratorError subclasses it); a torch without CUDA support
    # raises AssertionError ("Torch not compiled with CUDA enabled").
    except (RuntimeError, AssertionError) as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'}"
    if not math.isclose(got, expected, rel_tol=TINY_KERNEL_REL_TOLERANCE):
        return f"wrong result: a {side}x{side} matmul summed to {got}, the CPU says {expected}"
    return None


def check_gpu(choice: DeviceChoice) -> GpuCheck:
    """Probe torch, judge the environment, and when a GPU is to be used, run the tiny kernel on it."""
    environment = judge_environment(choice, probe_torch())
    if environment.device != "cuda" or environment.failed:
        return environment
    return judge_kernel(environment, run_tiny_kernel("cuda"))


def report_lines(report: Mapping[str, Any]) -> list[str]:
    """Human-readable lines of a ``gpu-worker selfcheck`` report (see the command for its keys)."""
    gpu = report["gpu_check"]
    lines = [f"GPU check: {gpu['status']}: {gpu['message']}" if gpu else "GPU check: not run"]
    lines.append(f"worker: {report['status']} on {report.get('device') or 'no device'}")
    for name, model_id in sorted(report.get("models", {}).items()):
        lines.append(f"  loaded {name}: {model_id}")
    for name, error in sorted(report.get("errors", {}).items()):
        lines.append(f"  error {name}: {error}")
    warmup = report.get("warmup") or {}
    if warmup:
        lines.append(
            f"warm-up: {int(warmup['items'])} items, first run {warmup['first_run_s']} s, "
            f"then {warmup['seconds']} s ({warmup['items_per_s']} items/s)"
        )
    return lines
