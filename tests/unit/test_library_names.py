"""Names in an exported library: whatever a user named a file, the exported name is one safe, short, visible path
component, unique within its folder; and vectors and faces survive the trip through a sidecar."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.library.documents import clean_text, float32_bytes, float32_values
from orchestrator.library.names import MAX_NAME_BYTES, asset_file_name, job_folder_name, safe_component

JOB_ID = uuid.UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("bus.jpg", "bus.jpg"),
        ("../x", "x"),
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("C:\\Users\\me\\photo.jpg", "photo.jpg"),
        ("a\x00b.jpg", "ab.jpg"),
        ("line\nbreak.jpg", "linebreak.jpg"),
        ("..", "unnamed"),
        ("", "unnamed"),
        (None, "unnamed"),
        (".hidden.jpg", "hidden.jpg"),
        ("CON.jpg", "_CON.jpg"),
        ("what?.jpg", "what_.jpg"),
        ("photo.jpg.ai.json", "photo.jpg.ai.json_"),
        ("photo.jpg.xmp", "photo.jpg.xmp_"),
        ("  spaced   out .jpg ", "spaced out .jpg"),
    ],
)
def test_a_display_name_becomes_one_safe_component(raw: str | None, expected: str) -> None:
    assert safe_component(raw) == expected


def test_a_long_name_is_cut_to_the_byte_limit_keeping_its_extension() -> None:
    name = safe_component("é" * 400 + ".jpeg")

    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.endswith(".jpeg") and name.startswith("éé")


@given(st.text(max_size=300))
def test_no_name_can_leave_its_folder_or_hide(raw: str) -> None:
    name = safe_component(raw)

    assert name and name not in (".", "..")
    assert not name.startswith(".")
    assert not any(ch in name for ch in "/\\\x00:")
    assert all(ord(ch) >= 32 for ch in name)
    assert len(name.encode()) <= MAX_NAME_BYTES + 1


def test_equal_names_in_one_folder_are_numbered_ignoring_case() -> None:
    taken: set[str] = set()

    names = [asset_file_name(raw, taken) for raw in ("a.jpg", "A.JPG", "a.jpg", "../a.jpg", "noext", "noext")]

    assert names == ["a.jpg", "A (2).JPG", "a (3).jpg", "a (4).jpg", "noext", "noext (2)"]


def test_a_job_folder_is_named_after_the_job_or_its_day_and_its_id() -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)

    assert job_folder_name("Holiday 2026", at, JOB_ID) == "Holiday 2026-7c9e6679"
    assert job_folder_name("", at, JOB_ID) == "2026-03-01-7c9e6679"
    assert job_folder_name("../../../evil", at, JOB_ID) == "evil-7c9e6679"
    assert job_folder_name("x" * 500, at, JOB_ID) == "x" * 60 + "-7c9e6679"


def test_a_float32_vector_survives_json_exactly() -> None:
    vector = np.random.default_rng(3).standard_normal(512).astype("<f4")
    vector /= np.linalg.norm(vector)

    values = float32_values(vector.tobytes())

    assert float32_bytes(values) == vector.tobytes()


def test_text_from_a_document_loses_control_characters_before_it_reaches_a_column() -> None:
    assert clean_text("Ada\x00 Lovelace\x07", 200) == "Ada Lovelace"
    assert clean_text("line one\nline two", 200) == "line one\nline two"
    assert clean_text("\x00", 200) is None
    assert clean_text("x" * 300, 8) == "x" * 8
    assert clean_text(None, 8) is None
