"""The CLIP analyzer on the tiny trained CLIP: zero-shot tags, embeddings, vocabularies, formats and load retry."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import pytest
from PIL import Image

from gpu_worker.models.base import InvalidOptionsError
from gpu_worker.models.clip import ClipAnalyzer
from gpu_worker.settings import WorkerSettings
from gpu_worker.store import ModelStore, sha256_of
from tests.fixtures.tiny_models import (
    TINY_CLIP_CONFIG,
    TINY_CLIP_CONFIG_FILE,
    TINY_CLIP_ID,
    TINY_CLIP_WEIGHTS_FILE,
    catalog_toml_for,
    draw_shape,
)

SHAPES_VOCABULARY = {"shape": ["red square", "blue circle"]}
EMBED_DIM = TINY_CLIP_CONFIG["model_cfg"]["embed_dim"]


def tiny_store(tmp_path: Path, catalog_text: str) -> ModelStore:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(catalog_text, encoding="utf-8")
    return ModelStore(WorkerSettings(models_dir=tmp_path / "models", catalog_paths=[catalog]))


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory: pytest.TempPathFactory, tiny_clip_catalog: Path) -> ClipAnalyzer:
    store = ModelStore(WorkerSettings(models_dir=tmp_path_factory.mktemp("models"), catalog_paths=[tiny_clip_catalog]))
    clip = ClipAnalyzer(store, TINY_CLIP_ID)
    clip.load("cpu")
    return clip


def red_square() -> Image.Image:
    return draw_shape("red", "square", size=160)


def scores(output_tags: list[tuple[str, float]]) -> dict[str, float]:
    return dict(output_tags)


def test_red_square_scores_red_square_above_blue_circle(analyzer: ClipAnalyzer) -> None:
    (output,) = analyzer.run([red_square()], {"vocabulary": SHAPES_VOCABULARY, "threshold": 0.0})

    tags = {tag.tag: tag.score for tag in output.tags}
    assert tags["shape/red square"] > tags["shape/blue circle"]
    assert tags["shape/red square"] > 0.5
    assert output.model_id == TINY_CLIP_ID
    assert output.payload["categories"]["shape"][0]["label"] == "red square"


def test_blue_circle_scores_blue_circle_above_red_square(analyzer: ClipAnalyzer) -> None:
    (output,) = analyzer.run([draw_shape("blue", "circle", size=160)], {"vocabulary": SHAPES_VOCABULARY})

    assert output.tags[0].tag == "shape/blue circle"


def test_embedding_is_l2_normalised_with_the_model_dimension(analyzer: ClipAnalyzer) -> None:
    (output,) = analyzer.run([red_square()], {"vocabulary": SHAPES_VOCABULARY})

    assert output.embedding is not None
    assert len(output.embedding) == EMBED_DIM == analyzer.embed_dim
    assert math.isclose(math.fsum(x * x for x in output.embedding), 1.0, rel_tol=1e-5)


def test_same_image_gives_equal_embeddings_within_and_across_batches(analyzer: ClipAnalyzer) -> None:
    first, second = analyzer.run([red_square(), red_square()], {"vocabulary": SHAPES_VOCABULARY, "batch_size": 1})
    (third,) = analyzer.run([red_square()], {"vocabulary": SHAPES_VOCABULARY})

    assert first.embedding == pytest.approx(second.embedding, abs=1e-6)
    assert first.embedding == pytest.approx(third.embedding, abs=1e-6)


def test_threshold_and_top_k_bound_the_tags_of_each_category(analyzer: ClipAnalyzer) -> None:
    vocabulary = {
        "shape": ["square", "circle", "triangle"],
        "colour": {"labels": ["red", "green", "blue"], "templates": ["a {} shape", "a photo of something {}."]},
    }
    (output,) = analyzer.run([red_square()], {"vocabulary": vocabulary, "top_k": 1, "threshold": 0.0})
    assert sorted(tag.tag.split("/")[0] for tag in output.tags) == ["colour", "shape"]

    (strict,) = analyzer.run([red_square()], {"vocabulary": vocabulary, "threshold": 1.0})
    assert strict.tags == []
    assert len(strict.payload["categories"]["shape"]) == 3


def test_default_vocabulary_gives_hierarchical_tags_and_an_nsfw_score(analyzer: ClipAnalyzer) -> None:
    (output,) = analyzer.run([red_square()], {"top_k": 2, "threshold": 0.0})

    categories = output.payload["categories"]
    assert output.payload["vocabulary"] == "default"
    assert {"scene", "objects", "people", "style", "colour"} <= set(categories)
    assert all(len(labels) == 2 for labels in categories.values())
    assert all(tag.tag.count("/") >= 1 and tag.tag.split("/")[0] in categories for tag in output.tags)
    assert 0.0 <= output.payload["nsfw_score"] <= 1.0


def test_invalid_options_are_rejected_with_a_reason(analyzer: ClipAnalyzer) -> None:
    with pytest.raises(InvalidOptionsError, match="top_k"):
        analyzer.run([red_square()], {"top_k": 0})
    with pytest.raises(InvalidOptionsError, match="no-such-vocabulary"):
        analyzer.run([red_square()], {"vocabulary": "no-such-vocabulary"})
    with pytest.raises(InvalidOptionsError, match="exactly one"):
        analyzer.run([red_square()], {"vocabulary": {"shape": {"labels": ["a"], "templates": ["no slot"]}}})


def test_openai_style_torchscript_archive_loads_like_the_state_dict(
    analyzer: ClipAnalyzer, tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    import torch

    model = analyzer.clip.model
    image = torch.zeros(1, 3, 64, 64)
    text = torch.zeros(1, 16, dtype=torch.long)
    archive_dir = tmp_path / "jit"
    archive_dir.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates TorchScript and warns about tracing
        traced = torch.jit.trace_module(model, {"encode_image": (image,), "encode_text": (text,)})
        torch.jit.save(traced, str(archive_dir / "tiny.pt"))
    (archive_dir / TINY_CLIP_CONFIG_FILE).write_bytes((tiny_clip_dir / TINY_CLIP_CONFIG_FILE).read_bytes())
    files = {
        TINY_CLIP_CONFIG_FILE: tiny_clip_files[TINY_CLIP_CONFIG_FILE],
        "tiny.pt": sha256_of(archive_dir / "tiny.pt"),
    }
    store = tiny_store(tmp_path, catalog_toml_for("tiny-jit", archive_dir, files, weights_file="tiny.pt"))
    jit_clip = ClipAnalyzer(store, "tiny-jit")

    jit_clip.load("cpu")

    (expected,) = analyzer.run([red_square()], {"vocabulary": SHAPES_VOCABULARY})
    (actual,) = jit_clip.run([red_square()], {"vocabulary": SHAPES_VOCABULARY})
    assert actual.embedding == pytest.approx(expected.embedding, abs=1e-5)


def test_load_clears_a_cache_that_went_bad_and_retries_once(
    tmp_path: Path, tiny_clip_dir: Path, tiny_clip_files: dict[str, str]
) -> None:
    store = tiny_store(tmp_path, catalog_toml_for(TINY_CLIP_ID, tiny_clip_dir, tiny_clip_files))
    weights = store.resolve(TINY_CLIP_ID) / TINY_CLIP_WEIGHTS_FILE
    # Damage the header without changing size or mtime: the store's in-memory record still calls it verified.
    stat = weights.stat()
    with weights.open("r+b") as handle:
        handle.write(b"\xff" * 8)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    clip = ClipAnalyzer(store, TINY_CLIP_ID)
    clip.load("cpu")

    assert clip.loaded
    assert sha256_of(weights) == tiny_clip_files[TINY_CLIP_WEIGHTS_FILE]
