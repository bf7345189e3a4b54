"""The sidecar schema shared by ``gpu-worker tag`` and the library: version 1 documents are upgraded, version 2
round-trips with unknown keys kept, unknown versions are refused with a clear reason, and the published JSON Schema
and example are those of the code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gpu_worker.sidecar_schema import (
    SCHEMA_ID,
    SCHEMA_VERSION,
    SidecarError,
    SidecarVersionError,
    json_schema,
    json_schema_text,
    parse_sidecar,
    read_sidecar,
)

REPO = Path(__file__).resolve().parents[2]
SHA_A = "a" * 64
SHA_B = "b" * 64


def v1_document() -> dict[str, Any]:
    """A sidecar as ``gpu-worker tag`` wrote it before version 2 (flat file fields)."""
    return {
        "schema_version": 1,
        "generator": "ai-media-analysis gpu-worker 0.1.0",
        "file": "bus.jpg",
        "media_kind": "image",
        "mime": "image/jpeg",
        "sha256": SHA_A,
        "file_sha256": SHA_B,
        "analyzed_at": "2026-03-01T12:00:00+00:00",
        "device": "cpu",
        "analyzers": {
            "clip": {
                "model_id": "tiny-clip",
                "tags": [{"tag": "vehicle/bus", "score": 0.91}],
                "embedding": [0.6, 0.8],
                "payload": {"nsfw_score": 0.01},
            }
        },
        "errors": {"objects": {"code": "decode_failed", "message": "no"}},
        "ai_keywords": {"TagsList": ["AI/Vehicle/bus"]},
        "rejected_tags": [{"tag": "x/" * 200, "reason": "too long"}],
        "written": {"target": "xmp", "mode": "append", "keywords_in": "bus.jpg", "keywords": {"TagsList": ["AI/x"]}},
    }


def test_a_version_1_document_is_upgraded_with_every_field_kept() -> None:
    sidecar = parse_sidecar(v1_document())

    assert (sidecar.schema_id, sidecar.schema_version) == (SCHEMA_ID, 2)
    assert sidecar.file.name == "bus.jpg"
    assert (sidecar.file.sha256, sidecar.file.file_sha256) == (SHA_A, SHA_B)
    assert (sidecar.file.media_kind, sidecar.file.mime) == ("image", "image/jpeg")
    assert sidecar.analyzers["clip"].tags[0].tag == "vehicle/bus"
    assert sidecar.analyzers["clip"].embedding == [0.6, 0.8]
    assert sidecar.errors["objects"].code == "decode_failed"
    assert sidecar.written is not None and sidecar.written.keywords_in == "bus.jpg"
    assert sidecar.ai_keywords == {"TagsList": ["AI/Vehicle/bus"]}
    assert sidecar.library is None
    document = sidecar.to_document()
    assert document["schema"] == SCHEMA_ID and document["schema_version"] == SCHEMA_VERSION
    assert "library" not in document and "media_kind" not in document


def test_version_2_round_trips_and_keeps_keys_it_does_not_know() -> None:
    document = parse_sidecar(v1_document()).to_document()
    document["added_by_a_newer_minor"] = {"anything": [1, 2]}
    document["file"]["colour_profile"] = "sRGB"
    document["analyzers"]["clip"]["calibration"] = 0.5
    document["library"] = {
        "asset_id": "5b7f0a53-1111-4222-8333-944445555666",
        "job": {"id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "name": "trip", "created_at": "2026-03-01T12:00:00Z"},
        "created_at": "2026-03-01T12:00:01Z",
        "status": "done",
        "people": [{"face_index": 0, "person_id": None, "person_name": "Ada", "assigned_by": "user", "note": "x"}],
    }

    again = parse_sidecar(json.loads(json.dumps(document))).to_document()

    assert again["added_by_a_newer_minor"] == {"anything": [1, 2]}
    assert again["file"]["colour_profile"] == "sRGB"
    assert again["analyzers"]["clip"]["calibration"] == 0.5
    assert again["library"]["people"][0]["note"] == "x"
    assert parse_sidecar(again).to_document() == again


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": 3}, "newer than this program reads"),
        ({"schema_version": 0}, "not a known version"),
        ({"schema_version": "2"}, "not an integer"),
        ({"schema_version": None}, "not an integer"),
        ({"schema": "someone-else/sidecar"}, "is not 'ai-media-analysis/sidecar'"),
        ({"file": 7}, "file"),
        ({"analyzers": {"clip": {"tags": "nope"}}}, "analyzers.clip"),
    ],
)
def test_documents_it_cannot_read_are_refused_with_the_reason(change: dict[str, Any], message: str) -> None:
    document = {**parse_sidecar(v1_document()).to_document(), **change}

    with pytest.raises(SidecarError, match=re.escape(message)):
        parse_sidecar(document)


def test_a_newer_major_version_is_a_version_error() -> None:
    with pytest.raises(SidecarVersionError, match="upgrade"):
        parse_sidecar({**v1_document(), "schema_version": 7})


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "not valid JSON"), (b"\xff\xfe\x00", "not UTF-8"), (b"[1, 2]", "not a JSON object")],
)
def test_an_unreadable_file_is_refused_with_the_reason(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.jpg.ai.json"
    path.write_bytes(content)

    with pytest.raises(SidecarError, match=message):
        read_sidecar(path)


def test_the_published_json_schema_is_generated_from_the_models() -> None:
    published = (REPO / "docs" / "sidecar.schema.json").read_text(encoding="utf-8")

    assert published == json_schema_text(), "regenerate: python -m gpu_worker.sidecar_schema > docs/sidecar.schema.json"
    schema = json_schema()
    assert {"schema", "schema_version", "file"} <= set(schema["required"])
    assert schema["properties"]["schema_version"]["const"] == 2


def test_the_example_in_the_format_guide_is_a_valid_sidecar() -> None:
    guide = (REPO / "docs" / "library-format.md").read_text(encoding="utf-8")
    example = re.search(r"```json\n(\{.*?\n\})\n```", guide, re.DOTALL)
    assert example is not None, "docs/library-format.md has a ```json example"

    sidecar = parse_sidecar(json.loads(example.group(1)))

    assert sidecar.library is not None and sidecar.library.people
