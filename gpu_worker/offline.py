"""Keep hub libraries from downloading on their own: the model store is the one place weights come from.

Without these switches, huggingface_hub, transformers and ultralytics reach for their hubs (and retry for a minute
on a machine without internet) or write settings into the user's home folder.
"""

from __future__ import annotations

import os

from gpu_worker.settings import WorkerSettings

OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")


def enforce_offline_libraries(settings: WorkerSettings) -> None:
    """Turn the hub libraries' offline switches on, unless the user set them, and give ultralytics a private
    settings folder under the model cache."""
    for name in OFFLINE_SWITCHES:
        os.environ.setdefault(name, "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(settings.models_dir / ".ultralytics"))
