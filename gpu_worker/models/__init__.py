"""Analyzers, one per model family, behind the :class:`~gpu_worker.models.base.Analyzer` base class.

Analyzer modules import torch; this package maps names to them lazily so that importing it stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpu_worker.models.base import Analyzer

# name -> "module:class"; later milestones add objects, faces and transcribe.
ANALYZERS: dict[str, str] = {
    "clip": "gpu_worker.models.clip:ClipAnalyzer",
    "faces": "gpu_worker.models.faces:FacesAnalyzer",
    "objects": "gpu_worker.models.objects:ObjectsAnalyzer",
    "transcribe": "gpu_worker.models.transcribe:TranscribeAnalyzer",
    "nsfw": "gpu_worker.models.nsfw:NsfwAnalyzer",
}


def analyzer_class(name: str) -> type[Analyzer]:
    """The analyzer class registered under ``name``; ``KeyError`` when there is none."""
    module_name, _, class_name = ANALYZERS[name].partition(":")
    cls: type[Analyzer] = getattr(importlib.import_module(module_name), class_name)
    return cls
