"""Choose the inference device once and set torch up for it.

On CUDA: TF32 matmuls and convolutions (Ampere and newer lose no accuracy that matters for tagging), cuDNN's
autotuner (input sizes repeat batch after batch). On the CPU: one intra-op thread per core, since the decode pool
runs in other threads and oversubscription slows everything down.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from gpu_worker.errors import WorkerError
from gpu_worker.settings import DeviceChoice, WorkerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceInfo:
    """What the worker runs on, for logs and ``/v1/info``."""

    device: str
    name: str
    memory_bytes: int | None = None
    compute_capability: str | None = None
    torch_version: str = ""
    cuda_version: str | None = None
    threads: int | None = None


def choose_device(choice: DeviceChoice) -> str:
    """``cuda`` when asked for or when ``auto`` finds a GPU, else ``cpu``."""
    if choice is DeviceChoice.CPU:
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if choice is DeviceChoice.CUDA:
        raise WorkerError("GPUW_DEVICE=cuda, but torch sees no CUDA device")
    return "cpu"


def configure_torch(device: str, settings: WorkerSettings) -> DeviceInfo:
    """Apply the per-device torch settings once and describe the device."""
    import torch

    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        if settings.cpu_threads:
            # The decode threads also run torch's CPU ops (preparing inputs); fewer intra-op threads each can keep
            # a many-core host from oversubscribing.
            torch.set_num_threads(settings.cpu_threads)
        props = torch.cuda.get_device_properties(0)
        info = DeviceInfo(
            device=device,
            name=props.name,
            memory_bytes=int(props.total_memory),
            compute_capability=f"{props.major}.{props.minor}",
            torch_version=torch.__version__,
            cuda_version=torch.version.cuda,
        )
    else:
        threads = settings.cpu_threads or max(1, os.cpu_count() or 1)
        torch.set_num_threads(threads)
        info = DeviceInfo(device=device, name="cpu", torch_version=torch.__version__, threads=threads)
    log.info("inference on %s (%s)", info.device, info.name)
    return info
