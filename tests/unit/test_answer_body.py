"""The worker's answer body: pydantic's encoder, the same JSON the standard library wrote before, faster."""

from __future__ import annotations

import json
import math
import random

from gpu_worker.contract import AnalyzerOutput, BatchResult, ItemError, ItemResult, TagScore
from gpu_worker.server import answer_body


def _result() -> BatchResult:
    rng = random.Random(7)
    items = [
        ItemResult(
            asset_id=f"asset-{index}",
            outputs={
                "clip": AnalyzerOutput(
                    model_id="clip-vit-b-32",
                    tags=[TagScore(tag="scene/beach", score=rng.random()), TagScore(tag="été/plage ☀", score=0.5)],
                    embedding=[rng.uniform(-1, 1) for _ in range(512)],
                    payload={"scores": {"scene/beach": 1e-7, "x": 123456789.125}, "nested": [[1, 2.5], {"a": None}]},
                )
            },
            errors={"faces": ItemError(code="decode_failed", message='bad "quote" \\ and\nnewline')},
        )
        for index in range(3)
    ]
    return BatchResult(
        batch_id="batch-1", items=items, unavailable={"nsfw": "no weights"}, device="cuda", elapsed_s=0.25
    )


def test_the_body_holds_the_same_json_as_the_standard_librarys_encoding() -> None:
    result = _result()
    before = json.dumps(result.model_dump(mode="json"), ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    body = answer_body(result)

    assert json.loads(body) == json.loads(before)
    assert BatchResult.model_validate_json(body) == result


def test_a_float_that_is_not_finite_is_written_as_null_not_a_failed_batch() -> None:
    result = _result()
    result.items[0].outputs["clip"].payload["scores"]["scene/beach"] = math.nan

    decoded = json.loads(answer_body(result))

    assert decoded["items"][0]["outputs"]["clip"]["payload"]["scores"]["scene/beach"] is None
