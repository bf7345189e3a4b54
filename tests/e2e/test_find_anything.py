"""Find anything again, end to end on the embedded default (``orchestrator up``) with the CPU models.

A library of the shared photos, speech and video plus generated pictures (red squares, blue circles, a near copy of
bus.jpg) is analyzed; then every kind of search returns the expected assets (tags with AND/OR/NOT and prefixes,
full text over transcripts and file names, kind, date, face and people counts, NSFW range, a named person), text and
"more like this" similarity rank the right pictures first, the copy is grouped with its original, and:

- the library exported, wiped (a new deployment with an empty database and store) and imported answers every query
  with the same assets in the same order;
- tags and a named person's face regions written into a file's XMP by the server read back with exiftool, and undo
  gives back the original bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.fixtures.deployment import Deployment

pytestmark = [pytest.mark.e2e]

SHARED_FILES = ("bus.jpg", "zidane.jpg", "grace_hopper.jpg", "speech_en.wav", "talking_zidane_bus.mp4")
RED_SQUARES = ("red_square_1.png", "red_square_2.png", "red_square_3.png")
BLUE_CIRCLES = ("blue_circle_1.png", "blue_circle_2.png", "blue_circle_3.png")
COPY = "bus_copy.jpg"
PERSON_NAME = "Ada Lovelace"
WRITEBACK_TIMEOUT_S = 60


def _shape(path: Path, *, red_square: bool, variant: int) -> None:
    image = Image.new("RGB", (96, 96), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    lo, hi = 16 + 4 * variant, 78 - 3 * variant
    if red_square:
        draw.rectangle((lo, lo, hi, hi), fill=(220, 30, 30))
    else:
        draw.ellipse((lo, lo, hi, hi), fill=(30, 60, 220))
    image.save(path)


@pytest.fixture
def library(shared_media: Path, tmp_path: Path) -> Path:
    """The folder a user submits: shared media, generated shapes, and bus.jpg re-encoded at 90 % of its size."""
    folder = tmp_path / "library"
    folder.mkdir()
    for name in SHARED_FILES:
        shutil.copy(shared_media / name, folder / name)
    for number, name in enumerate(RED_SQUARES):
        _shape(folder / name, red_square=True, variant=number)
    for number, name in enumerate(BLUE_CIRCLES):
        _shape(folder / name, red_square=False, variant=number)
    with Image.open(shared_media / "bus.jpg") as bus:
        smaller = bus.convert("RGB").resize((bus.width * 9 // 10, bus.height * 9 // 10), Image.Resampling.LANCZOS)
    smaller.save(folder / COPY, quality=80)
    return folder


def _api(deployment: Deployment, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {deployment.api_key}"}
    response = httpx.request(method, f"{deployment.url}/api/v1{path}", headers=headers, timeout=60, **kwargs)
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
    return response


def hits(deployment: Deployment, query: str) -> list[tuple[str, str]]:
    """(asset id, name) of every result of ``query``, best first."""
    body = _api(deployment, "GET", "/search", params={"q": query, "limit": 200}).json()
    assert body["count"] == len(body["data"]), f"{query!r} has more than one page"
    return [(hit["id"], hit["name"]) for hit in body["data"]]


def names(deployment: Deployment, query: str) -> set[str]:
    """The file names ``query`` finds."""
    return {name for _, name in hits(deployment, query)}


def queries(*, objects: bool, speech: bool, nsfw_classifier: bool) -> dict[str, set[str]]:
    """Each query with the names it must find, for the models this machine has."""
    photos = {"bus.jpg", "zidane.jpg", "grace_hopper.jpg"}
    expected = {
        "kind:audio": {"speech_en.wav"},
        "kind:video": {"talking_zidane_bus.mp4"},
        "hopper": {"grace_hopper.jpg"},
        "name:red_square": set(RED_SQUARES),
        "tag:faces/one kind:image": {"grace_hopper.jpg"},
        "faces>=2 kind:image -name:copy": {"bus.jpg", "zidane.jpg"},
        "tag:faces/* -tag:faces/none kind:image -name:copy": photos,
        "tag:faces/one OR kind:audio": {"grace_hopper.jpg", "speech_en.wav"},
        "(kind:audio OR kind:video) -hopper": {"speech_en.wav", "talking_zidane_bus.mp4"},
        f"date:{datetime.now(UTC).date().isoformat()}.. kind:audio": {"speech_en.wav"},
        "date:..2000-01-01": set(),
    }
    if objects:
        expected["people>=4 kind:image -name:copy"] = {"bus.jpg"}
    if speech:
        # Whisper tiny.en hears "the lazy ..." in both, "brown fox" only in the WAV (the video's AAC track comes out
        # as "the quick roundfark stunt").
        expected["transcription lazy"] = {"speech_en.wav", "talking_zidane_bus.mp4"}
        expected['"quick brown fox"'] = {"speech_en.wav"}
    if nsfw_classifier:
        expected["nsfw<0.1 kind:image -name:copy -name:red -name:blue"] = photos
        expected["nsfw>=0.5"] = set()
    return expected


def _exif_json(path: Path) -> dict[str, Any]:
    done = subprocess.run(
        ["exiftool", "-j", "-struct", "-XMP:all", str(path)], capture_output=True, text=True, check=True, timeout=60
    )
    document: dict[str, Any] = json.loads(done.stdout)[0]
    return document


def _download(deployment: Deployment, asset_id: str, dest: Path) -> bytes:
    data = _api(deployment, "GET", f"/assets/{asset_id}/original").content
    dest.write_bytes(data)
    return data


def _wait_for_write(deployment: Deployment, write_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WRITEBACK_TIMEOUT_S
    while True:
        body: dict[str, Any] = _api(deployment, "GET", f"/writeback/{write_id}").json()
        if body["status"] != "running":
            return body
        assert time.monotonic() < deadline, f"the write-back is still running after {WRITEBACK_TIMEOUT_S} s"
        time.sleep(0.5)


def test_every_search_finds_its_assets_and_the_library_survives_export_wipe_import_and_write_back(
    start_deployment: Callable[[dict[str, str]], Deployment],
    cpu_models_with_speech_env: dict[str, str],
    library: Path,
    shared_media: Path,
    tmp_path: Path,
) -> None:
    env = cpu_models_with_speech_env
    analyzers = set(json.loads(env["ORCH_DEFAULT_ANALYZERS"]))
    expected = queries(
        objects="objects" in analyzers, speech="transcribe" in analyzers, nsfw_classifier=bool(env["GPUW_NSFW_MODEL"])
    )
    first = start_deployment(env)
    submitted = first.submit(*sorted(library.iterdir()))
    assert submitted.returncode == 0, f"submit failed:\n{submitted.stdout}{submitted.stderr}\n{first.logs()}"

    # Every kind of search.
    for query, wanted in expected.items():
        assert names(first, query) == wanted, query

    # A person, named, is found by name.
    people = _api(first, "GET", "/people").json()["data"]
    assert people, "clustering made no person of the faces in the shared photos and the video"
    person = max(people, key=lambda p: p["face_count"])
    _api(first, "PATCH", f"/people/{person['id']}", json={"name": PERSON_NAME})
    detail = _api(first, "GET", f"/people/{person['id']}").json()
    person_assets = {a["original_name"] for a in detail["assets"]}
    expected['person:"ada lovelace"'] = person_assets
    assert person_assets and names(first, 'person:"ada lovelace"') == person_assets

    # Similarity: from a query's CLIP text embedding, and from a picture's embedding.
    by_text = _api(first, "GET", "/similar", params={"text": "a red square", "limit": 3}).json()["data"]
    assert {item["name"] for item in by_text} == set(RED_SQUARES)
    red_id = dict((name, asset_id) for asset_id, name in hits(first, "name:red_square_1"))["red_square_1.png"]
    alike = _api(first, "GET", f"/assets/{red_id}/similar", params={"limit": 2}).json()["data"]
    assert {item["name"] for item in alike} == set(RED_SQUARES) - {"red_square_1.png"}

    # The near copy is grouped with its original.
    groups = _api(first, "GET", "/duplicates", params={"kind": "near"}).json()["data"]
    assert any({"bus.jpg", COPY} <= {item["name"] for item in group["items"]} for group in groups), groups

    # The CLI speaks the same language.
    cli = first.cli("search", "kind:audio", "--json")
    assert cli.returncode == 0, cli.stderr
    assert [hit["name"] for hit in json.loads(cli.stdout)["data"]] == ["speech_en.wav"]

    # Export, wipe (a new deployment: empty database and store), import: the same answers, in the same order.
    before = {query: hits(first, query) for query in expected}
    exported = first.cli("library", "export", str(tmp_path / "export"), timeout_s=300)
    assert exported.returncode == 0, f"{exported.stdout}{exported.stderr}"
    second = start_deployment(env)
    assert hits(second, "") == []
    imported = second.cli("library", "import", str(tmp_path / "export"), timeout_s=300)
    assert imported.returncode == 0, f"{imported.stdout}{imported.stderr}"
    after = {query: hits(second, query) for query in expected}
    assert after == before

    # Write-back into zidane.jpg's XMP, read back with exiftool, then undo to the original bytes.
    zidane_id = next(asset_id for asset_id, name in hits(second, "name:zidane kind:image") if name == "zidane.jpg")
    started = _api(second, "POST", "/writeback", json={"asset_ids": [zidane_id], "mode": "append"}).json()
    finished = _wait_for_write(second, started["id"])
    assert finished["status"] == "done", finished
    written = _download(second, zidane_id, tmp_path / "written.jpg")
    original = (shared_media / "zidane.jpg").read_bytes()
    assert written != original
    xmp = _exif_json(tmp_path / "written.jpg")
    assert xmp.get("TagsList") and xmp.get("HierarchicalSubject") and xmp.get("Subject"), xmp
    if "zidane.jpg" in person_assets:
        regions = xmp["RegionInfo"]["RegionList"]
        assert PERSON_NAME in {region.get("Name") for region in regions}, regions
        assert all(0 <= region["Area"]["X"] <= 1 and 0 <= region["Area"]["Y"] <= 1 for region in regions)
    _api(second, "POST", f"/writeback/{started['id']}/undo")
    restored = _download(second, zidane_id, tmp_path / "restored.jpg")
    assert hashlib.sha256(restored).hexdigest() == hashlib.sha256(original).hexdigest()
    assert "TagsList" not in _exif_json(tmp_path / "restored.jpg")
    with Image.open(io.BytesIO(restored)) as picture:
        assert picture.size == (1280, 720)
