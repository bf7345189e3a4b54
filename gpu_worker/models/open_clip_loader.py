"""Build an open_clip model from a catalog entry and verified local files, without reaching any hub.

Three weight layouts are read: OpenAI's TorchScript archives (``ViT-B-32.pt``), plain state dicts (``.pt``, ``.pth``,
``.bin``) and safetensors. The architecture comes from the entry: an open_clip built-in name (``arch``) or a JSON file
of the entry (``config_file``) with ``model_cfg`` and ``preprocess_cfg``; a TorchScript archive without either is
built from the shapes of its tensors, as OpenAI's own loader does.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import torch
from PIL import Image

from gpu_worker.store import CatalogError, ModelEntry
from gpu_worker.torch_compat import ensure_torchvision_ops

log = logging.getLogger(__name__)

# Entries of OpenAI's archives that are metadata, or buffers open_clip rebuilds, rather than weights.
TORCHSCRIPT_EXTRA_KEYS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})


@dataclass
class LoadedClip:
    """A CLIP model in eval mode with its image preprocessing and tokenizer."""

    # open_clip ships no types; this is a CLIP, CustomTextCLIP or CoCa module with encode_image/encode_text.
    model: Any
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    embed_dim: int
    image_size: int | tuple[int, int]


def import_open_clip() -> ModuleType:
    """Import open_clip offline, after making torchvision importable where its compiled ops cannot load."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ensure_torchvision_ops()
    import open_clip

    return cast(ModuleType, open_clip)


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (it holds compiled code besides tensors), False for other files."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def torchscript_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive, keyed as the module that was scripted named them."""
    with warnings.catch_warnings():
        # OpenAI's releases exist only as TorchScript; torch deprecates the format but still reads it.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        archive = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    return {k: v for k, v in archive.state_dict().items() if k not in TORCHSCRIPT_EXTRA_KEYS}


def _configs(entry: ModelEntry, folder: Path, open_clip: ModuleType) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    preprocess_cfg: dict[str, Any] = {}
    model_cfg: dict[str, Any] | None = None
    if entry.config_file is not None:
        try:
            raw = json.loads((folder / entry.config_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {entry.config_file}: {exc}") from exc
        if "model_cfg" not in raw:
            raise ValueError(f"{entry.config_file} has no model_cfg")
        model_cfg = copy.deepcopy(raw["model_cfg"])
        preprocess_cfg.update(raw.get("preprocess_cfg", {}))
    elif entry.arch is not None:
        model_cfg = open_clip.get_model_config(entry.arch)
        if model_cfg is None:
            raise CatalogError(f"model {entry.id}: open_clip has no architecture {entry.arch!r}")
    preprocess_cfg.update(entry.options.get("preprocess", {}))
    return model_cfg, preprocess_cfg


def _build(model_cfg: dict[str, Any], open_clip: ModuleType) -> Any:
    cfg = copy.deepcopy(model_cfg)
    # Tower weights come from our files only; these flags would otherwise fetch pretrained towers from a hub.
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in cfg.get("text_cfg", {}):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    cls = open_clip.CoCa if "multimodal_cfg" in cfg else open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return cls(**cfg)


def _load_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], open_clip: ModuleType) -> None:
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = open_clip.model.convert_to_custom_text_state_dict(state_dict)
    logit_scale = getattr(model, "logit_scale", None)
    if "logit_scale" in state_dict and logit_scale is not None and logit_scale.ndim != state_dict["logit_scale"].ndim:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(logit_scale.shape)
    model.load_state_dict(state_dict, strict=True)


def _tokenizer(model_cfg: dict[str, Any] | None, model: torch.nn.Module, open_clip: ModuleType) -> Any:
    text_cfg = (model_cfg or {}).get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", getattr(model, "context_length", 77)))
    if text_cfg.get("hf_tokenizer_name"):
        # Works offline only when the tokenizer is already in the local Hugging Face cache.
        return open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length)
    return open_clip.SimpleTokenizer(context_length=context_length, **text_cfg.get("tokenizer_kwargs", {}))


def load_open_clip(entry: ModelEntry, folder: Path, device: str) -> LoadedClip:
    """Build the entry's model from the files in ``folder`` and move it to ``device`` in float32, eval mode."""
    open_clip = import_open_clip()
    model_cfg, preprocess_cfg = _configs(entry, folder, open_clip)
    weights = folder / entry.weights.name
    if is_torchscript(weights):
        state_dict = torchscript_state_dict(weights)
        if model_cfg is None:
            model = open_clip.model.build_model_from_openai_state_dict(state_dict, cast_dtype=None)
        else:
            model = _build(model_cfg, open_clip)
            _load_state_dict(model, state_dict, open_clip)
    else:
        if model_cfg is None:
            raise CatalogError(f"model {entry.id}: a state dict needs `arch` or `config_file` in the catalog")
        model = _build(model_cfg, open_clip)
        open_clip.load_checkpoint(model, str(weights), strict=True, weights_only=True)
    model = model.float().eval().to(device)
    model.requires_grad_(False)

    image_size = model.visual.image_size
    cfg = open_clip.transform.merge_preprocess_dict(open_clip.transform.PreprocessCfg(size=image_size), preprocess_cfg)
    preprocess = open_clip.image_transform(
        image_size,
        is_train=False,
        mean=cfg["mean"],
        std=cfg["std"],
        resize_mode=cfg["resize_mode"],
        interpolation=cfg["interpolation"],
        fill_color=cfg["fill_color"],
    )
    tokenizer = _tokenizer(model_cfg, model, open_clip)
    with torch.inference_mode():
        embed_dim = int(model.encode_text(tokenizer(["a photo."]).to(device)).shape[-1])
    return LoadedClip(
        model=model, preprocess=preprocess, tokenizer=tokenizer, embed_dim=embed_dim, image_size=image_size
    )
