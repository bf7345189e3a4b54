"""The orchestrator runs on a small CPU-only VPS: none of its modules may import the inference stack."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "torchvision", "open_clip", "ultralytics", "facenet_pytorch", "faster_whisper", "onnxruntime")
MODULES = (
    "orchestrator.api.main",
    "orchestrator.tasks.jobs",
    "orchestrator.cli",
    "orchestrator.backends.router",
    "orchestrator.backends.local",
    "orchestrator.embedded",
)


def test_importing_every_orchestrator_entry_point_loads_no_inference_library() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in MODULES)
        + f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert loaded.stdout.strip() == "", f"the orchestrator imported {loaded.stdout.strip()}"
