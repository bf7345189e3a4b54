"""What a write-back decides to put into a file, without touching one: keywords, regions, append and replace."""

from __future__ import annotations

import pytest

from gpu_worker.tagging.keywords import TagMode, XmpField
from orchestrator.writeback.archive import ArchiveEntry, safe_name, unique_names
from orchestrator.writeback.plan import FaceBox, plan_asset, plan_file_edit, region_for, unsupported_reason


def test_a_region_is_the_centre_and_size_of_the_box_normalized_to_the_picture() -> None:
    region = region_for((100, 50, 300, 250), width=400, height=500)

    assert region is not None
    assert (region.x, region.y, region.w, region.h) == pytest.approx((0.5, 0.3, 0.5, 0.4))
    assert region_for((0.1, 0.2, 0.3, 0.6), width=None, height=None) == region_for(
        (40, 100, 120, 300), width=400, height=500
    )
    assert region_for((10, 10, 5, 20), width=100, height=100) is None
    assert region_for((10, 10, 50, 50), width=None, height=None) is None


def test_tags_below_the_threshold_are_left_out_and_people_go_under_ai_people() -> None:
    plan = plan_asset(
        tags=[("animal/cat", 0.9), ("scene/beach", 0.1)],
        people=["Ada Lovelace", "AC/DC", "-rm"],
        faces=None,
        mime="image/jpeg",
        width=10,
        height=10,
        min_score=0.5,
    )

    assert plan.keywords[XmpField.TAGS_LIST] == ["AI/Animal/cat", "AI/People/Ada Lovelace"]
    assert plan.keywords[XmpField.HIERARCHICAL_SUBJECT] == ["AI|Animal|cat", "AI|People|Ada Lovelace"]
    assert plan.keywords[XmpField.SUBJECT] == ["cat", "Ada Lovelace"]
    assert {r.tag for r in plan.rejected} == {"AC/DC", "-rm"}
    assert plan.regions is None


def test_videos_get_keywords_but_no_regions_and_audio_is_unsupported() -> None:
    plan = plan_asset(
        tags=[("vehicle/bus", 0.9)],
        people=[],
        faces=[FaceBox((0.1, 0.1, 0.2, 0.2))],
        mime="video/mp4",
        width=640,
        height=360,
        min_score=0.0,
    )

    assert plan.regions is None and plan.keywords[XmpField.SUBJECT] == ["bus"]
    assert unsupported_reason("video/mp4") is None
    assert "audio/wav" in (unsupported_reason("audio/wav") or "")


def test_append_adds_to_what_the_file_has_and_replace_swaps_only_our_keywords_and_all_regions() -> None:
    existing = {
        XmpField.TAGS_LIST: ["Places/Paris", "AI/Animal/dog"],
        XmpField.SUBJECT: ["Holiday", "dog"],
        XmpField.HIERARCHICAL_SUBJECT: ["AI|Animal|dog"],
    }
    theirs = {"RegionList": [{"Area": {"X": 0.5, "Y": 0.5, "W": 0.1, "H": 0.1, "Unit": "normalized"}, "Name": "Me"}]}
    plan = plan_asset(
        tags=[("animal/cat", 0.9)],
        people=[],
        faces=[FaceBox((0.0, 0.0, 0.2, 0.2), "Bo")],
        mime="image/png",
        width=100,
        height=100,
        min_score=0.0,
    )

    appended = plan_file_edit(plan, existing_keywords=existing, existing_region_info=theirs, mode=TagMode.APPEND)
    replaced = plan_file_edit(plan, existing_keywords=existing, existing_region_info=theirs, mode=TagMode.REPLACE)

    assert appended.set_keywords[XmpField.TAGS_LIST] == ["Places/Paris", "AI/Animal/dog", "AI/Animal/cat"]
    assert [r.get("Name") for r in appended.region_info["RegionList"]] == ["Me", "Bo"]  # type: ignore[index]
    assert replaced.set_keywords[XmpField.TAGS_LIST] == ["Places/Paris", "AI/Animal/cat"]
    assert replaced.set_keywords[XmpField.SUBJECT] == ["Holiday", "cat"]
    assert [r.get("Name") for r in replaced.region_info["RegionList"]] == ["Bo"]  # type: ignore[index]
    assert replaced.region_info["AppliedToDimensions"] == {"W": 100, "H": 100, "Unit": "pixel"}  # type: ignore[index]
    again = plan_file_edit(
        plan,
        existing_keywords={f: sorted(v) for f, v in appended.expected_keywords.items()},
        existing_region_info=appended.region_info,
        mode=TagMode.APPEND,
    )
    assert not again.changed


def test_archive_names_stay_inside_the_folder_and_are_unique() -> None:
    assert safe_name("../../etc/passwd", "id") == "passwd"
    assert safe_name("..", "id") == "id" and safe_name(".jpg", "id") == "id.jpg"
    assert safe_name("C:\\photos\\a\nb.jpg", "id") == "a_b.jpg"
    entries = [ArchiveEntry(n, "k", 1, f"f{i}") for i, n in enumerate(["a.jpg", "A.jpg", "sub/a.jpg", "x"])]
    assert [n for n, _ in unique_names(entries)] == ["a.jpg", "A (2).jpg", "a (3).jpg", "x"]
