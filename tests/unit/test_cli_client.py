"""The CLI and its API client: local file selection, upload requests, result formats, and whole commands against a
fake REST API that speaks HTTP through ``httpx.MockTransport``."""

from __future__ import annotations

import csv
import email.parser
import email.policy
import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from gpu_worker.sniff import sniff
from orchestrator import cli
from orchestrator.client import (
    ApiClient,
    ApiConnectionError,
    ApiError,
    AssetPublic,
    AssetTag,
    JobPublic,
    LocalFile,
    UploadStatus,
)
from orchestrator.client_config import ClientConfig
from orchestrator.enums import AssetStatus, JobStatus

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
KEY = "tenant-key"


# -- a fake REST API v1 ---------------------------------------------------------------------------------------------


def parse_multipart(request: httpx.Request) -> list[tuple[str, str, bytes]]:
    """(field name, filename, content) of each part of a multipart/form-data request."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.read())
    parts = []
    for part in message.iter_parts():
        disposition = part.get("Content-Disposition", "")
        name = disposition.split('name="', 1)[1].split('"', 1)[0]
        parts.append((name, part.get_filename() or "", part.get_payload(decode=True) or b""))
    return parts


@dataclass
class FakeApi:
    """Jobs, uploads, sealing and assets, judged like the real server: by bytes, by hash, never by name."""

    polls_until_done: int = 2
    notices: dict[str, str] = field(default_factory=dict)
    asset_count_override: int | None = None
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    assets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    hashes: set[str] = field(default_factory=set)
    upload_requests: list[list[str]] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return error(401, "unauthorized", "missing or invalid API key")
        path = request.url.path.removeprefix("/api/v1")
        parts = path.strip("/").split("/")
        if request.method == "POST" and parts == ["jobs"]:
            return self.create_job(json.loads(request.content or b"{}"))
        if request.method == "GET" and parts == ["jobs"]:
            jobs = list(self.jobs.values())
            return httpx.Response(200, json={"data": [self.public(j) for j in jobs], "count": len(jobs)})
        if parts[0] == "jobs" and parts[1] not in self.jobs:
            return error(404, "not_found", "job not found")
        if request.method == "GET" and len(parts) == 2:
            return self.poll(parts[1])
        if request.method == "POST" and parts[2:] == ["files"]:
            return self.upload(parts[1], request)
        if request.method == "POST" and parts[2:] == ["seal"]:
            self.jobs[parts[1]]["status"] = "queued"
            return httpx.Response(200, json=self.public(self.jobs[parts[1]]))
        if request.method == "GET" and parts[2:] == ["assets"]:
            limit, offset = int(request.url.params["limit"]), int(request.url.params["offset"])
            items = self.assets[parts[1]]
            count = self.asset_count_override if self.asset_count_override is not None else len(items)
            return httpx.Response(200, json={"data": items[offset : offset + limit], "count": count})
        return error(404, "not_found", "no such route")

    def create_job(self, body: dict[str, Any]) -> httpx.Response:
        job_id = str(uuid.uuid4())
        self.jobs[job_id] = {
            "id": job_id,
            "name": body.get("name", ""),
            "status": "open",
            "analyzers": body.get("analyzers", ["clip"]),
            "created_at": "2025-01-02T03:04:05Z",
            "sealed_at": None,
            "finished_at": None,
            "polls": 0,
        }
        self.assets[job_id] = []
        return httpx.Response(201, json=self.public(self.jobs[job_id]))

    def public(self, job: dict[str, Any]) -> dict[str, Any]:
        assets = self.assets[job["id"]]
        done = sum(a["status"] == "done" for a in assets)
        failed = sum(a["status"] == "failed" for a in assets)
        progress = {"total": len(assets), "uploaded": 0, "prepared": 0, "analyzing": len(assets) - done - failed}
        progress |= {"done": done, "failed": failed}
        public = {k: v for k, v in job.items() if k != "polls"}
        return public | {"progress": progress, "notices": dict(self.notices)}

    def poll(self, job_id: str) -> httpx.Response:
        job = self.jobs[job_id]
        job["polls"] += 1
        if job["status"] in ("queued", "running"):
            job["status"] = "running"
            if job["polls"] >= self.polls_until_done:
                job["status"] = "done"
                job["finished_at"] = "2025-01-02T03:05:00Z"
                for asset in self.assets[job_id]:
                    broken = asset["name"].startswith("broken")
                    asset["status"] = "failed" if broken else "done"
                    if broken:
                        asset["error_code"], asset["error_message"] = "decode_error", "cannot decode image data"
                    else:
                        asset["tags"] = [
                            {"tag": "scene/beach", "score": 0.91, "analyzer": "clip"},
                            {"tag": f"object/{asset['name'][:3]}", "score": 0.5, "analyzer": "yolo"},
                        ]
        return httpx.Response(200, json=self.public(job))

    def upload(self, job_id: str, request: httpx.Request) -> httpx.Response:
        parts = parse_multipart(request)
        self.upload_requests.append([filename for _, filename, _ in parts])
        # The real server keeps only the last path component of a part's filename.
        parts = [(field_name, filename.rsplit("/", 1)[-1], content) for field_name, filename, content in parts]
        verdicts = []
        for field_name, filename, content in parts:
            assert field_name == "files"
            digest = hashlib.sha256(content).hexdigest()
            base = {"name": filename, "size": len(content)}
            if not content:
                verdicts.append(base | reject(422, "empty_file", "the file is empty"))
            elif (kind := sniff(content[:4096])) is None:
                verdicts.append(base | reject(415, "not_media", "not an image, video or audio file"))
            elif digest in self.hashes:
                verdicts.append(
                    base | reject(409, "duplicate", "the same bytes were already uploaded to this job", "duplicate")
                )
            else:
                self.hashes.add(digest)
                asset_id = str(uuid.uuid4())
                self.assets[job_id].append(asset_row(asset_id, job_id, filename, len(content), digest, str(kind.kind)))
                verdicts.append(base | {"status": "accepted", "status_code": 201, "asset_id": asset_id})
        accepted = sum(v["status"] == "accepted" for v in verdicts)
        rejected = len(verdicts) - accepted  # like the real server, duplicates count as rejected
        codes = {v["status_code"] for v in verdicts}
        status = 201 if rejected == 0 else codes.pop() if accepted == 0 and len(codes) == 1 else 207
        return httpx.Response(status, json={"files": verdicts, "accepted": accepted, "rejected": rejected})


def reject(status_code: int, code: str, message: str, status: str = "rejected") -> dict[str, Any]:
    return {"status": status, "status_code": status_code, "code": code, "message": message}


def asset_row(asset_id: str, job_id: str, name: str, size: int, digest: str, kind: str) -> dict[str, Any]:
    return {
        "id": asset_id,
        "job_id": job_id,
        "name": name,
        "media_kind": kind,
        "mime_type": "image/jpeg",
        "size": size,
        "sha256": digest,
        "status": "uploaded",
        "error_code": None,
        "error_message": None,
        "width": 64,
        "height": 48,
        "duration_s": None,
        "tags": [],
        "results": {},
    }


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"detail": {"code": code, "message": message}})


# -- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated_client_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No ORCH_API_* from the developer's shell; the login file and ./data live in tmp_path."""
    for name in ("ORCH_API_URL", "ORCH_API_KEY", "ORCH_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ORCH_CLIENT_CONFIG", str(tmp_path / "client.toml"))
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    """A fake API that every CLI command in the test talks to."""
    api = FakeApi()

    def make_client(config: ClientConfig) -> ApiClient:
        return ApiClient(config.api_url, config.api_key, transport=api.transport())

    monkeypatch.setattr(cli, "make_client", make_client)
    monkeypatch.setattr(cli, "POLL_INTERVAL_S", 0.0)
    return api


def run(*args: str) -> Any:
    """Invoke the CLI; stdout and stderr both end up in ``result.output``."""
    return CliRunner().invoke(cli.app, list(args), catch_exceptions=False)


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


# -- choosing local files -------------------------------------------------------------------------------------------


def test_folders_are_walked_recursively_in_sorted_order(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path / "photos",
        {"b.jpg": JPEG, "a.png": PNG, "z/2.jpg": JPEG + b"2", "m/1.jpg": JPEG + b"1", "m/deeper/0.jpg": JPEG + b"0"},
    )
    scan = cli.collect_media([root])
    assert [f.name for f in scan.files] == ["a.png", "b.jpg", "m/1.jpg", "m/deeper/0.jpg", "z/2.jpg"]
    assert scan.files[0].path == root / "a.png"
    assert scan.files[0].size == len(PNG)
    assert scan.skipped == []
    assert cli.collect_media([root]) == scan


def test_non_media_is_skipped_with_a_reason_but_a_media_extension_is_always_sent(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path / "in",
        {
            "notes.txt": b"shopping list",
            "README": b"hello",
            "empty": b"",
            "fake.jpg": b"this is text, not a JPEG",
            "EMPTY.JPG": b"",
            "camera_dump": JPEG,
        },
    )
    scan = cli.collect_media([root])
    assert sorted(f.name for f in scan.files) == ["EMPTY.JPG", "camera_dump", "fake.jpg"]
    assert {s.name: s.reason for s in scan.skipped} == {
        "README": cli.SKIP_NOT_MEDIA,
        "empty": "empty file",
        "notes.txt": cli.SKIP_NOT_MEDIA,
    }


def test_files_and_folders_given_together_are_sent_once_in_argument_order(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "p", {"a.jpg": JPEG, "b.jpg": JPEG + b"b"})
    single = make_tree(tmp_path, {"single.png": PNG}) / "single.png"
    scan = cli.collect_media([single, root, root / "a.jpg"])
    assert [f.name for f in scan.files] == ["single.png", "a.jpg", "b.jpg"]


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and symlinks")
def test_special_files_and_symlinked_folders_are_not_followed(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "p", {"a.jpg": JPEG})
    os.mkfifo(root / "pipe.mp4")  # opening it would block forever
    (root / "loop").symlink_to(root, target_is_directory=True)
    scan = cli.collect_media([root])
    assert [f.name for f in scan.files] == ["a.jpg"]
    assert [(s.name, s.reason) for s in scan.skipped] == [("pipe.mp4", "not a regular file")]


# -- upload requests ------------------------------------------------------------------------------------------------


def fake_files(*sizes: int) -> list[LocalFile]:
    return [LocalFile(path=Path(f"f{i}"), name=f"f{i}", size=size) for i, size in enumerate(sizes)]


def test_small_files_go_several_to_a_request() -> None:
    batches = cli.plan_upload_batches(fake_files(*[1000] * 20))
    assert [len(b) for b in batches] == [cli.UPLOAD_BATCH_MAX_FILES, cli.UPLOAD_BATCH_MAX_FILES, 4]
    assert [f.name for b in batches for f in b] == [f"f{i}" for i in range(20)]


def test_requests_stay_under_the_byte_cap_and_a_big_file_goes_alone() -> None:
    mib = 1024**2
    batches = cli.plan_upload_batches(fake_files(10 * mib, 10 * mib, 10 * mib, 5 * mib, 100 * mib, 1 * mib))
    assert [[f.name for f in b] for b in batches] == [["f0", "f1", "f2"], ["f3"], ["f4"], ["f5"]]
    assert all(sum(f.size for f in b) <= cli.UPLOAD_BATCH_MAX_BYTES for b in batches if len(b) > 1)
    assert cli.plan_upload_batches([]) == []


def test_upload_streams_each_file_from_disk_in_chunks(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(JPEG + os.urandom(300 * 1024))
    small = make_tree(tmp_path, {"small.png": PNG}) / "small.png"
    api = FakeApi()
    job_id = api.create_job({}).json()["id"]
    reads: list[int] = []
    files = [LocalFile(big, "big.jpg", big.stat().st_size), LocalFile(small, "sub/small.png", len(PNG))]
    with ApiClient("http://api.test", KEY, transport=api.transport()) as client:
        result = client.upload_files(job_id, files, on_bytes=reads.append)
    assert [f.status for f in result.files] == [UploadStatus.ACCEPTED, UploadStatus.ACCEPTED]
    assert api.upload_requests == [["big.jpg", "sub/small.png"]]
    assert sum(reads) == big.stat().st_size + len(PNG)
    assert max(reads) <= 64 * 1024 and len(reads) > 5
    upload = api.requests[-1]
    assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert int(upload.headers["content-length"]) > big.stat().st_size  # length known up front, not chunked


def test_a_file_that_vanished_is_reported_in_its_place_without_sending_it(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"a.jpg": JPEG + b"a", "c.jpg": JPEG + b"c"})
    api = FakeApi()
    job_id = api.create_job({}).json()["id"]
    files = [LocalFile(root / n, n, 10) for n in ("a.jpg", "gone.jpg", "c.jpg")]
    with ApiClient("http://api.test", KEY, transport=api.transport()) as client:
        result = client.upload_files(job_id, files)
        assert [(f.name, f.status, f.code) for f in result.files] == [
            ("a.jpg", UploadStatus.ACCEPTED, None),
            ("gone.jpg", UploadStatus.REJECTED, "unreadable"),
            ("c.jpg", UploadStatus.ACCEPTED, None),
        ]
        assert api.upload_requests == [["a.jpg", "c.jpg"]]
        result = client.upload_files(job_id, files[1:2])
    assert [(f.status, f.code) for f in result.files] == [(UploadStatus.REJECTED, "unreadable")]
    assert len(api.upload_requests) == 1


def test_a_proxy_413_marks_every_file_of_the_request_rejected(tmp_path: Path) -> None:
    path = make_tree(tmp_path, {"a.jpg": JPEG})
    html = httpx.Response(413, text="<html>413 Request Entity Too Large</html>")
    with ApiClient("http://api.test", KEY, transport=httpx.MockTransport(lambda r: html)) as client:
        result = client.upload_files("j", [LocalFile(path / "a.jpg", "a.jpg", len(JPEG))] * 2)
    assert [(f.status, f.code, f.status_code) for f in result.files] == [
        (UploadStatus.REJECTED, "request_too_large", 413)
    ] * 2


def test_all_rejected_alike_with_a_4xx_still_reports_each_file(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"a.jpg": b"text", "b.jpg": b"more text"})
    api = FakeApi()
    job_id = api.create_job({}).json()["id"]
    files = [LocalFile(root / n, n, 4) for n in ("a.jpg", "b.jpg")]
    with ApiClient("http://api.test", KEY, transport=api.transport()) as client:
        result = client.upload_files(job_id, files)
    assert [(f.name, f.code) for f in result.files] == [("a.jpg", "not_media"), ("b.jpg", "not_media")]


# -- request shaping and errors -------------------------------------------------------------------------------------


def test_create_job_sends_the_key_and_only_the_given_fields() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "j1", "status": "open"})

    with ApiClient("http://api.test/", "k1", transport=httpx.MockTransport(handler)) as client:
        job = client.create_job(name="holiday", analyzers=["clip", "yolo"])
        client.create_job()
    assert job.id == "j1" and job.progress.total == 0
    assert seen[0].url == "http://api.test/api/v1/jobs"
    assert seen[0].headers["authorization"] == "Bearer k1"
    assert json.loads(seen[0].content) == {"name": "holiday", "analyzers": ["clip", "yolo"]}
    assert json.loads(seen[1].content) == {}


def test_a_base_url_with_a_path_prefix_is_kept() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"data": [], "count": 0})

    with ApiClient("https://host/media", "k", transport=httpx.MockTransport(handler)) as client:
        client.list_jobs(limit=5, offset=10)
    assert seen == ["https://host/media/api/v1/jobs?limit=5&offset=10"]


@pytest.mark.parametrize(
    ("response", "code", "message"),
    [
        (error(409, "job_sealed", "the job is sealed"), "job_sealed", "the job is sealed"),
        (httpx.Response(404, json={"detail": "Not Found"}), "http_404", "Not Found"),
        (
            httpx.Response(422, json={"detail": [{"loc": ["query", "limit"], "msg": "too big"}]}),
            "validation_error",
            "query.limit: too big",
        ),
        (httpx.Response(502, text="<html>Bad Gateway</html>"), "http_502", "Bad Gateway"),
    ],
)
def test_error_responses_become_api_errors_with_code_and_message(
    response: httpx.Response, code: str, message: str
) -> None:
    transport = httpx.MockTransport(lambda r: response)
    with ApiClient("http://api.test", "k", transport=transport) as client, pytest.raises(ApiError) as caught:
        client.get_job("j")
    assert (caught.value.code, caught.value.message, caught.value.status_code) == (code, message, response.status_code)


def test_an_unreachable_api_is_a_connection_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with (
        ApiClient("http://api.test", "k", transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(ApiConnectionError, match=r"cannot reach the API at http://api\.test: .*refused"),
    ):
        client.list_jobs()


def test_a_malformed_answer_is_a_bad_response_error() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={}))
    with ApiClient("http://api.test", "k", transport=transport) as client, pytest.raises(ApiError) as caught:
        client.get_job("j")
    assert caught.value.code == "bad_response"


def test_download_streams_the_original_bytes() -> None:
    payload = JPEG * 100

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/assets/a1/download":
            return httpx.Response(200, content=payload)
        return error(404, "not_found", "asset not found")

    sink = io.BytesIO()
    with ApiClient("http://api.test", "k", transport=httpx.MockTransport(handler)) as client:
        assert client.download_asset("a1", sink) == len(payload)
        with pytest.raises(ApiError, match="asset not found"):
            client.download_asset("other", io.BytesIO())
    assert sink.getvalue() == payload


def test_iter_assets_reads_every_page() -> None:
    api = FakeApi()
    job_id = api.create_job({}).json()["id"]
    api.assets[job_id] = [asset_row(f"a{i}", job_id, f"{i}.jpg", 1, "x", "image") for i in range(250)]
    with ApiClient("http://api.test", KEY, transport=api.transport()) as client:
        assets = list(client.iter_assets(job_id))
    assert [a.id for a in assets] == [f"a{i}" for i in range(250)]
    offsets = [r.url.params["offset"] for r in api.requests if r.url.path.endswith("/assets")]
    assert offsets == ["0", "100", "200"]


def test_iter_assets_stops_on_an_empty_page_even_if_count_says_more() -> None:
    api = FakeApi(asset_count_override=1000)
    job_id = api.create_job({}).json()["id"]
    api.assets[job_id] = [asset_row("a0", job_id, "0.jpg", 1, "x", "image")]
    with ApiClient("http://api.test", KEY, transport=api.transport()) as client:
        assert [a.id for a in client.iter_assets(job_id)] == ["a0"]


# -- waiting --------------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_gives_up_at_the_deadline_and_returns_the_last_state() -> None:
    api = FakeApi(polls_until_done=10**6)
    job = api.create_job({}).json()
    api.jobs[job["id"]]["status"] = "queued"
    clock = FakeClock()
    with ApiClient("http://api.test", KEY, transport=api.transport()) as client:
        last = cli.wait_for_job(
            client, client.get_job(job["id"]), timeout_s=5, poll_interval_s=2, clock=clock, sleep=clock.sleep
        )
    assert last.status == "running"
    assert clock.sleeps == [2, 2, 1]
    assert clock.now == 105.0


def test_wait_rides_out_a_restarting_api_but_not_a_client_error() -> None:
    answers = [httpx.Response(503, text="starting"), httpx.Response(502), {"id": "j", "status": "done"}]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        return answer if isinstance(answer, httpx.Response) else httpx.Response(200, json=answer)

    clock = FakeClock()
    start = JobPublic(id="j", status=JobStatus.QUEUED)
    with ApiClient("http://api.test", "k", transport=httpx.MockTransport(handler)) as client:
        assert cli.wait_for_job(client, start, timeout_s=None, clock=clock, sleep=clock.sleep).status == "done"
        answers[:] = [error(404, "not_found", "job not found")]
        with pytest.raises(ApiError, match="job not found"):
            cli.wait_for_job(client, start, timeout_s=None, clock=clock, sleep=clock.sleep)


# -- result formats -------------------------------------------------------------------------------------------------


def sample_assets() -> list[AssetPublic]:
    return [
        AssetPublic(
            id="a1",
            name="beach, day.jpg",
            status=AssetStatus.DONE,
            tags=[AssetTag(tag="scene/beach", score=0.9134, analyzer="clip"), AssetTag(tag="person", score=0.5)],
            results={"clip": {"embedding_dim": 512}},
        ),
        AssetPublic(id="a2", name="b.jpg", status=AssetStatus.FAILED, error_code="decode_error", error_message="bad"),
        AssetPublic(id="a3", name="c.jpg", status=AssetStatus.DONE, tags=[AssetTag(tag="person", score=0.7)]),
    ]


def test_csv_has_one_row_per_asset_with_tags_as_tag_score_pairs() -> None:
    rows = list(csv.reader(io.StringIO(cli.format_results_csv(sample_assets()))))
    assert rows == [
        ["id", "name", "status", "error_code", "tags"],
        ["a1", "beach, day.jpg", "done", "", "scene/beach:0.913;person:0.500"],
        ["a2", "b.jpg", "failed", "decode_error", ""],
        ["a3", "c.jpg", "done", "", "person:0.700"],
    ]


def test_json_lists_assets_with_tags_and_results() -> None:
    data = json.loads(cli.format_results_json(sample_assets()))
    assert [a["id"] for a in data] == ["a1", "a2", "a3"]
    assert data[0]["tags"][0] == {"tag": "scene/beach", "score": 0.9134, "analyzer": "clip"}
    assert data[0]["results"] == {"clip": {"embedding_dim": 512}}
    assert data[1]["error_code"] == "decode_error"


def test_server_fields_unknown_to_the_client_pass_through_to_json() -> None:
    asset = AssetPublic.model_validate({"id": "a", "status": "done", "thumbnail_url": "/t/a"})
    assert json.loads(cli.format_results_json([asset]))[0]["thumbnail_url"] == "/t/a"


def test_summary_counts_distinct_tags() -> None:
    assert cli.summarize_assets(sample_assets()) == cli.JobSummary(files=3, done=2, failed=1, tags=2)


# -- whole commands -------------------------------------------------------------------------------------------------


def table_rows(output: str) -> list[list[str]]:
    """The words of each line of a rich table, without its borders."""
    return [line.translate(str.maketrans("│┃", "  ")).split() for line in output.splitlines()]


def photo_folder(root: Path) -> Path:
    return make_tree(
        root / "photos",
        {
            "a.jpg": JPEG + b"a",
            "broken.jpg": JPEG + b"broken",
            "notes.txt": b"not a photo",
            "fake.jpg": b"plain text with a .jpg name",
            "sub/c.png": PNG,
            "sub/d.jpg": JPEG + b"d",
            "sub/again.jpg": JPEG + b"a",  # same bytes as a.jpg
        },
    )


def test_submit_wait_uploads_seals_waits_and_summarises(tmp_path: Path, fake_api: FakeApi) -> None:
    fake_api.notices = {"clip": "CLIP weights are missing.\nTo provide them:\n  - run `gpu-worker models fetch clip`"}
    folder = photo_folder(tmp_path)
    result = run("submit", str(folder), "--wait", "--api-key", KEY, "-a", "clip", "-a", "yolo")
    out = result.output
    assert result.exit_code == cli.EXIT_OK, out
    assert "skipped notes.txt: not an image, video or audio file" in out
    assert "rejected fake.jpg (not_media): not an image, video or audio file" in out
    assert "duplicate sub/again.jpg: the same bytes were already uploaded to this job" in out
    assert "uploaded: 4 accepted, 1 rejected, 1 duplicate" in out
    assert "failed broken.jpg (decode_error): cannot decode image data" in out
    assert "warning: clip: CLIP weights are missing.\n    To provide them:\n      - run `gpu-worker models fetch" in out
    assert ["files", "done", "failed", "tags", "found"] in table_rows(out)
    assert ["4", "3", "1", "4"] in table_rows(out)  # scene/beach is on all 3 done files, plus one tag each
    job = next(iter(fake_api.jobs.values()))
    assert job["name"] == "photos" and job["analyzers"] == ["clip", "yolo"] and job["status"] == "done"
    assert fake_api.upload_requests == [["a.jpg", "broken.jpg", "fake.jpg", "sub/again.jpg", "sub/c.png", "sub/d.jpg"]]


def test_submit_splits_uploads_into_several_requests(
    tmp_path: Path, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path / "many", {f"{i:02}.jpg": JPEG + bytes([i]) for i in range(5)})
    monkeypatch.setattr(cli, "plan_upload_batches", functools.partial(cli.plan_upload_batches, max_files=2))
    result = run("submit", "many", "--api-key", KEY)
    assert result.exit_code == 0, result.output
    assert fake_api.upload_requests == [["00.jpg", "01.jpg"], ["02.jpg", "03.jpg"], ["04.jpg"]]
    assert f"follow it with: orchestrator status {next(iter(fake_api.jobs))}" in result.output


def test_submit_without_wait_prints_notices_after_sealing(tmp_path: Path, fake_api: FakeApi) -> None:
    fake_api.notices = {"faces": "face weights are missing"}
    make_tree(tmp_path, {"one.jpg": JPEG})
    result = run("submit", "one.jpg", "--api-key", KEY, "--name", "single")
    assert result.exit_code == 0, result.output
    assert "warning: faces: face weights are missing" in result.output
    assert next(iter(fake_api.jobs.values()))["status"] == "queued"


def test_submit_wait_timeout_exits_2(tmp_path: Path, fake_api: FakeApi) -> None:
    fake_api.polls_until_done = 10**6
    make_tree(tmp_path, {"one.jpg": JPEG})
    result = run("submit", "one.jpg", "--wait", "--timeout", "0", "--api-key", KEY)
    assert result.exit_code == cli.EXIT_TIMEOUT, result.output
    assert "is still running after 0 s" in result.output


def test_submit_uses_the_first_api_key_written_by_up(tmp_path: Path, fake_api: FakeApi) -> None:
    make_tree(tmp_path, {"data/first-api-key.txt": f"{KEY}\n".encode(), "photos/a.jpg": JPEG})
    result = run("submit", "photos", "--wait")
    assert result.exit_code == 0, result.output
    assert {r.headers["authorization"] for r in fake_api.requests} == {f"Bearer {KEY}"}
    assert all(str(r.url).startswith("http://127.0.0.1:8000/api/v1/") for r in fake_api.requests)


def test_submit_with_no_key_anywhere_says_how_to_set_one(tmp_path: Path, fake_api: FakeApi) -> None:
    make_tree(tmp_path, {"a.jpg": JPEG})
    result = run("submit", "a.jpg")
    assert result.exit_code == cli.EXIT_ERROR
    assert "no API key" in result.output and "orchestrator login" in result.output
    assert fake_api.requests == []


def test_submit_with_nothing_to_send_creates_no_job(tmp_path: Path, fake_api: FakeApi) -> None:
    make_tree(tmp_path / "docs", {"a.txt": b"text"})
    result = run("submit", "docs", "--api-key", KEY)
    assert result.exit_code == cli.EXIT_ERROR
    assert "skipped a.txt" in result.output and "no image, video or audio files" in result.output
    assert fake_api.jobs == {}


def test_submit_where_every_file_is_rejected_does_not_seal(tmp_path: Path, fake_api: FakeApi) -> None:
    make_tree(tmp_path, {"fake.jpg": b"text"})
    result = run("submit", "fake.jpg", "--api-key", KEY)
    assert result.exit_code == cli.EXIT_ERROR
    assert "no file was accepted" in result.output
    assert next(iter(fake_api.jobs.values()))["status"] == "open"


def test_submit_against_an_unreachable_api_is_one_readable_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    monkeypatch.setattr(
        cli, "make_client", lambda c: ApiClient(c.api_url, c.api_key, transport=httpx.MockTransport(refuse))
    )
    make_tree(tmp_path, {"a.jpg": JPEG})
    result = CliRunner().invoke(cli.app, ["submit", "a.jpg", "--api-key", KEY, "--api-url", "http://vps.example:8000"])
    assert result.exit_code == cli.EXIT_ERROR
    assert "error: cannot reach the API at http://vps.example:8000" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_a_rejected_key_says_where_it_came_from(tmp_path: Path, fake_api: FakeApi) -> None:
    result = run("jobs", "--api-key", "wrong")
    assert result.exit_code == cli.EXIT_ERROR
    assert "missing or invalid API key [unauthorized]" in result.output
    assert "API key from --api-key" in result.output


def test_login_stores_url_and_key_for_later_commands(tmp_path: Path, fake_api: FakeApi) -> None:
    result = run("login", "--api-url", "https://media.example.com/", "--api-key", KEY)
    assert result.exit_code == 0, result.output
    assert 'api_url = "https://media.example.com"' in (tmp_path / "client.toml").read_text(encoding="utf-8")
    assert run("jobs").exit_code == 0
    assert str(fake_api.requests[-1].url).startswith("https://media.example.com/api/v1/jobs")


def test_login_prompts_for_the_key_without_echoing_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["login"], input="typed-key\n")
    assert result.exit_code == 0, result.output
    assert "typed-key" not in result.output
    assert 'api_key = "typed-key"' in (tmp_path / "client.toml").read_text(encoding="utf-8")


def test_login_replaces_a_broken_login_file(tmp_path: Path) -> None:
    (tmp_path / "client.toml").write_text("api_url = [unclosed\n", encoding="utf-8")
    result = run("login", "--api-key", "new-key")
    assert result.exit_code == 0, result.output
    assert 'api_key = "new-key"' in (tmp_path / "client.toml").read_text(encoding="utf-8")


def submitted_job(tmp_path: Path, fake_api: FakeApi) -> str:
    assert run("submit", str(photo_folder(tmp_path)), "--wait", "--api-key", KEY).exit_code == 0
    return next(iter(fake_api.jobs))


def test_status_shows_progress_and_notices(tmp_path: Path, fake_api: FakeApi) -> None:
    job_id = submitted_job(tmp_path, fake_api)
    fake_api.notices = {"clip": "CLIP weights are missing"}
    result = run("status", job_id, "--api-key", KEY)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert ["status", "done"] in rows and ["files", "4"] in rows and ["failed", "1"] in rows and ["done", "3"] in rows
    assert "warning: clip: CLIP weights are missing" in result.output


def test_status_of_an_unknown_job_is_a_readable_error(fake_api: FakeApi) -> None:
    result = run("status", "nope", "--api-key", KEY)
    assert result.exit_code == cli.EXIT_ERROR
    assert "error: job not found [not_found]" in result.output


def test_jobs_lists_jobs(tmp_path: Path, fake_api: FakeApi) -> None:
    submitted_job(tmp_path, fake_api)
    result = run("jobs", "--api-key", KEY)
    assert result.exit_code == 0, result.output
    assert "photos" in result.output and "done" in result.output and "of 1" in result.output


def test_results_csv_to_a_file_and_json_to_stdout(tmp_path: Path, fake_api: FakeApi) -> None:
    job_id = submitted_job(tmp_path, fake_api)
    out = tmp_path / "out.csv"
    result = run("results", job_id, "--format", "csv", "--output", str(out), "--api-key", KEY)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert [r["name"] for r in rows] == ["a.jpg", "broken.jpg", "c.png", "d.jpg"]
    assert rows[0]["tags"] == "scene/beach:0.910;object/a.j:0.500"
    assert rows[1]["status"] == "failed" and rows[1]["error_code"] == "decode_error"

    result = run("results", job_id, "--api-key", KEY)
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert len(data) == 4 and data[0]["tags"][0]["tag"] == "scene/beach"


# -- server commands ------------------------------------------------------------------------------------------------


def test_help_lists_every_command_without_importing_the_server_side() -> None:
    probe = (
        "import sys; from typer.testing import CliRunner; from orchestrator.cli import app; "
        "result = CliRunner().invoke(app, ['--help']); print(result.exit_code); print(result.output); "
        "print([m for m in ('orchestrator.tasks.app', 'orchestrator.embedded', 'orchestrator.tenants', "
        "'sqlalchemy', 'celery', 'alembic') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "0" and lines[-1] == "[]"
    for command in ("submit", "status", "jobs", "results", "login", "up", "db", "tenants", "worker", "beat"):
        assert f" {command} " in done.stdout


def test_worker_and_beat_start_celery_with_their_sub_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.tasks.app as tasks_app

    calls: list[tuple[str, list[str]]] = []

    class RecordingCelery:
        def worker_main(self, argv: list[str]) -> None:
            calls.append(("worker_main", argv))

        def start(self, argv: list[str]) -> None:
            calls.append(("start", argv))

    monkeypatch.setattr(tasks_app, "celery_app", RecordingCelery())
    assert run("worker", "--queues", "analyze", "--concurrency", "3", "--pool", "threads").exit_code == 0
    assert run("beat", "--schedule", str(tmp_path / "beat" / "schedule")).exit_code == 0
    assert calls == [
        ("worker_main", ["worker", "--loglevel=INFO", "--queues=analyze", "--concurrency=3", "--pool=threads"]),
        ("start", ["beat", "--loglevel=INFO", f"--schedule={tmp_path / 'beat' / 'schedule'}"]),
    ]
    assert (tmp_path / "beat").is_dir()


def test_up_passes_host_port_and_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.embedded as embedded

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(embedded, "run_up", lambda **kwargs: seen.append(kwargs))
    assert run("up", "--host", "0.0.0.0", "--port", "9001", "--data-dir", str(tmp_path / "d")).exit_code == 0
    assert seen == [{"host": "0.0.0.0", "port": 9001, "data_dir": tmp_path / "d"}]


def test_tenant_commands_act_on_the_configured_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.db.session import reset_engines
    from orchestrator.settings import get_settings

    monkeypatch.setenv("ORCH_ENVIRONMENT", "test")
    monkeypatch.setenv("ORCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ORCH_DATABASE_URL", f"sqlite:///{(tmp_path / 'orch.sqlite').as_posix()}")
    get_settings.cache_clear()
    reset_engines()
    try:
        assert run("db", "upgrade").exit_code == 0
        created = run("tenants", "create", "studio")
        assert created.exit_code == 0, created.output
        assert run("tenants", "create", "studio").exit_code == cli.EXIT_ERROR  # names are unique
        listed = run("tenants", "list")
        assert "studio" in listed.output and "1 tenants" in listed.output
        issued = run("tenants", "issue-key", "studio", "--name", "laptop")
        assert issued.exit_code == 0, issued.output
        key_id = issued.output.split("issued key ", 1)[1].split()[0]
        assert len(issued.output.strip().splitlines()[-1]) > 20  # the plaintext key, on its own line
        assert run("tenants", "issue-key", "nobody").exit_code == cli.EXIT_ERROR
        assert run("tenants", "revoke-key", key_id).exit_code == 0
        missing = run("tenants", "revoke-key", str(uuid.uuid4()))
        assert missing.exit_code == cli.EXIT_ERROR and "not found" in missing.output
        assert run("tenants", "revoke-key", "not-a-uuid").exit_code == cli.EXIT_ERROR
    finally:
        reset_engines()
        get_settings.cache_clear()
