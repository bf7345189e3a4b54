"""Model set for benchmarks on machines without internet: the real architectures with weights that need no hub.

Throughput depends on the architecture, not on what the weights learned, so the CLIP (ViT-B-32), YOLO (yolo11n)
and FaceNet models are built offline at full size with seeded weights; MTCNN comes from the facenet-pytorch wheel;
Whisper tiny.en, open_nsfw and the YOLOv8s person detector are the real files from ../shared/models when present.
With internet, pass ``--catalog`` instead and the default catalog's pretrained models are measured.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"


def _sha(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _entry(model_id: str, family: str, fmt: str, folder: Path, files: list[str], **extra: str) -> str:
    lines = [
        "[[model]]",
        f"id = {json.dumps(model_id)}",
        f"family = {json.dumps(family)}",
        f"format = {json.dumps(fmt)}",
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    for name in files:
        lines += ["[[model.files]]", f"name = {json.dumps(name)}", f"sha256 = {json.dumps(_sha(folder / name))}"]
    lines += ["[[model.sources]]", 'kind = "local"', f"path = {json.dumps(str(folder))}", "in_place = true"]
    return "\n".join(lines) + "\n"


def build_bench_catalog(work: Path) -> tuple[Path, dict[str, str]]:
    """Write the models and a catalog under ``work``; returns the catalog path and GPUW_* settings to use them."""
    sys.path.insert(0, str(REPO))
    import torch
    from safetensors.torch import save_file

    from gpu_worker.models.objects import import_ultralytics
    from gpu_worker.models.open_clip_loader import import_open_clip
    from gpu_worker.settings import WorkerSettings

    open_clip = import_open_clip()  # through the worker, which makes torchvision importable on CPU-only installs

    work.mkdir(parents=True, exist_ok=True)
    entries: list[str] = []
    env: dict[str, str] = {}

    clip_dir = work / "clip-vit-b-32-seeded"
    if not (clip_dir / "model.safetensors").exists():
        clip_dir.mkdir(exist_ok=True)
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32", pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(clip_dir / "model.safetensors"))
    entries.append(_entry("bench-clip-vit-b-32", "clip", "open_clip", clip_dir, ["model.safetensors"], arch="ViT-B-32"))
    env["GPUW_CLIP_MODEL"] = "bench-clip-vit-b-32"

    yolo_dir = work / "yolo11n-seeded"
    if not (yolo_dir / "yolo11n.pt").exists():
        import_ultralytics(WorkerSettings())  # offline switches, NMS, and Pillow's Image.open left alone
        from ultralytics import YOLO

        yolo_dir.mkdir(exist_ok=True)
        torch.manual_seed(0)
        YOLO("yolo11n.yaml", task="detect").save(str(yolo_dir / "yolo11n.pt"))
    entries.append(_entry("bench-yolo11n", "objects", "ultralytics", yolo_dir, ["yolo11n.pt"]))
    env["GPUW_OBJECTS_MODEL"] = "bench-yolo11n"

    face_dir = work / "facenet-seeded"
    if not any(face_dir.glob("*.pt")):
        from tests.fixtures.tiny_faces import build_tiny_facenet

        build_tiny_facenet(face_dir)
    face_file = next(face_dir.glob("*.pt")).name
    entries.append(_entry("bench-facenet", "faces", "facenet_inception_resnet_v1", face_dir, [face_file]))
    env["GPUW_FACES_MODEL"] = "bench-facenet"

    whisper = SHARED_MODELS / "whisper-tiny.en-ct2"
    if whisper.is_dir():
        names = ["model.bin", "config.json", "tokenizer.json", "vocabulary.txt"]
        entries.append(_entry("bench-whisper-tiny-en", "transcribe", "ctranslate2_whisper", whisper, names))
        env["GPUW_TRANSCRIBE_MODEL"] = "bench-whisper-tiny-en"
    person_detector = SHARED_MODELS / "person-detector-yolov8"
    if (person_detector / "person_states_yolov8s.pt").exists():
        # Not the default objects model (that is the yolo11n architecture above); bench/half_precision.py picks it
        # for its real weights. Its two classes, a person standing and fallen, are both people.
        files = ["person_states_yolov8s.pt"]
        entry = _entry("bench-person-detector", "objects", "ultralytics", person_detector, files)
        people = '[model.options]\nlabels = { "0" = "person", "1" = "person" }\nperson_classes = [0, 1]\n'
        entries.append(entry + people)
    nsfw = SHARED_MODELS / "open-nsfw"
    if nsfw.is_dir():
        entries.append(_entry("bench-open-nsfw", "nsfw", "onnx", nsfw, ["open-nsfw.onnx"]))
        env["GPUW_NSFW_MODEL"] = "bench-open-nsfw"
    else:
        env["GPUW_NSFW_MODEL"] = ""

    catalog = work / "bench-catalog.toml"
    catalog.write_text("\n".join(entries), encoding="utf-8")
    env["GPUW_CATALOG_PATHS"] = json.dumps([str(catalog)])
    return catalog, env
