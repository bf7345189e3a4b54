"""The dashboard's upload and job pages, signed in as a tenant's member, on SQLite and PostgreSQL.

The pages are server-rendered; these tests read the HTML for the stable hooks the browser test and live.js rely on
(ids, classes, data attributes), drive the POST forms with and without the session's CSRF token, and use the REST
API with the dashboard's cookie exactly as upload.js does.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from orchestrator.api.main import create_app
from orchestrator.clock import utcnow
from orchestrator.db.models import Asset, Batch, Instance, Job
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, BatchStatus, JobStatus
from orchestrator.jobs import create_job, seal_job
from orchestrator.settings import get_settings
from orchestrator.tenant_settings import set_tenant_settings
from tests.fixtures.factories import jpeg_bytes, make_tenant
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.web import SignedInClient, signed_in_client

pytestmark = pytest.mark.integration


@pytest.fixture
def app(orch_env: OrchestratorEnv):  # type: ignore[no-untyped-def]
    get_settings.cache_clear()
    return create_app()


@pytest.fixture
def client(app) -> SignedInClient:  # type: ignore[no-untyped-def]
    return signed_in_client(app, tenant_name=f"acme-{uuid.uuid4().hex[:6]}")


def _tenant_of(client: SignedInClient) -> uuid.UUID:
    assert client.tenant_id is not None
    return client.tenant_id


def _job(
    tenant_id: uuid.UUID, *, name: str, done: int = 0, failed: int = 0, pending: int = 0, rejected: int = 0
) -> uuid.UUID:
    """A sealed job: ``done`` files analyzed in one in-process batch, ``failed`` that failed in it with a reason,
    ``pending`` files in a batch waiting for a backend, and ``rejected`` uploads without bytes."""
    with session_scope() as session:
        job = create_job(session, tenant_id=tenant_id, name=name, analyzers=["clip"], default_analyzers=["clip"])
        seal_job(session, tenant_id=tenant_id, job_id=job.id)
        now = utcnow()
        if done or failed:
            batch = Batch(
                tenant_id=tenant_id,
                job_id=job.id,
                status=BatchStatus.DONE,
                backend="in_process",
                attempts=1,
                started_at=now - timedelta(seconds=20),
                finished_at=now,
            )
            session.add(batch)
            session.flush()
            for n in range(done + failed):
                session.add(
                    Asset(
                        tenant_id=tenant_id,
                        job_id=job.id,
                        batch_id=batch.id,
                        sha256=uuid.uuid4().hex * 2,
                        media_kind="image",
                        storage_key=f"k/{uuid.uuid4().hex}",
                        original_name=f"{name}-{n}.jpg",
                        status=AssetStatus.DONE if n < done else AssetStatus.FAILED,
                        error_code=None if n < done else "decode_failed",
                        error_message=None if n < done else "the decoder gave up",
                    )
                )
        if pending:
            batch = Batch(tenant_id=tenant_id, job_id=job.id, status=BatchStatus.PENDING)
            session.add(batch)
            session.flush()
            for n in range(pending):
                session.add(
                    Asset(
                        tenant_id=tenant_id,
                        job_id=job.id,
                        batch_id=batch.id,
                        sha256=uuid.uuid4().hex * 2,
                        media_kind="image",
                        storage_key=f"k/{uuid.uuid4().hex}",
                        original_name=f"{name}-waiting-{n}.jpg",
                        status=AssetStatus.ANALYZING,
                    )
                )
        for n in range(rejected):
            session.add(
                Asset(
                    tenant_id=tenant_id,
                    job_id=job.id,
                    original_name=f"{name}-notes-{n}.txt",
                    status=AssetStatus.FAILED,
                    error_code="not_media",
                    error_message="the file's bytes are not a supported image, video or audio format",
                )
            )
        job.status = JobStatus.RUNNING if pending else JobStatus.DONE
        return job.id


def _status_badge(html: str) -> str:
    match = re.search(r'id="job-status"[^>]*>([^<]*)<', html)
    assert match, html
    return match.group(1).strip()


def _job_status(job_id: uuid.UUID) -> str:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return str(job.status)


# --- jobs list ------------------------------------------------------------------------------------------------


def test_the_jobs_page_lists_the_tenants_jobs_with_status_progress_and_where_they_ran(client: SignedInClient) -> None:
    tenant = _tenant_of(client)
    finished = _job(tenant, name="holiday", done=3, failed=1)
    running = _job(tenant, name="archive", done=1, pending=4)
    other = make_tenant()
    _job(other.id, name="someone-elses", done=1)

    page = client.get("/jobs")
    live = client.get("/jobs/live?page=1")

    assert page.status_code == 200
    assert f'href="/jobs/{finished}"' in page.text and f'href="/jobs/{running}"' in page.text
    assert "someone-elses" not in page.text
    assert f'data-job-id="{finished}" data-status="done"' in page.text
    assert f'data-job-id="{running}" data-status="running"' in page.text
    assert "in-process (CPU)" in page.text and "1 batch waiting" in page.text
    assert 'data-live-url="/jobs/live?page=1"' in page.text and 'data-live-interval-ms="3000"' in page.text
    assert '<script src="/static/live.js"' in page.text
    assert live.status_code == 200 and "<html" not in live.text, "the live answer is a fragment"
    assert 'data-live-final="false"' in live.text, "a job is still running"


def test_the_jobs_fragment_is_final_once_every_job_is_done_or_cancelled(client: SignedInClient) -> None:
    tenant = _tenant_of(client)
    _job(tenant, name="a", done=1)
    _job(tenant, name="b", done=2)

    assert 'data-live-final="true"' in client.get("/jobs/live").text


def test_a_bad_page_number_shows_the_first_page_with_a_message(client: SignedInClient) -> None:
    _job(_tenant_of(client), name="only", done=1)

    answer = client.get("/jobs?page=abc")

    assert answer.status_code == 200 and "not a number" in answer.text and "only" in answer.text


# --- one job --------------------------------------------------------------------------------------------------


def test_the_job_page_shows_live_status_backends_cost_and_failed_files_with_reasons(client: SignedInClient) -> None:
    tenant = _tenant_of(client)
    job_id = _job(tenant, name="shoot", done=2, failed=1, pending=2, rejected=1)
    start = utcnow() - timedelta(minutes=30)
    with session_scope() as session:
        instance = Instance(
            tenant_id=tenant,
            provider="vast",
            label=f"mam-test-{uuid.uuid4().hex[:8]}",
            offer_id="1",
            machine_id=1,
            gpu_name="RTX 4090",
            price_per_h_musd=360_000,
            state="ready",
            worker_token="t",
            tls_cert_pem="",
            created_at=start - timedelta(minutes=5),
            ready_at=start - timedelta(minutes=4),
        )
        session.add(instance)
        session.flush()
        session.execute(
            update(Batch)
            .where(Batch.job_id == job_id, Batch.status == BatchStatus.DONE)
            .values(
                backend="cloud", instance_id=instance.id, started_at=start, finished_at=start + timedelta(minutes=10)
            )
        )

    page = client.get(f"/jobs/{job_id}")

    assert page.status_code == 200
    assert _status_badge(page.text) == "running"
    assert f'data-live-url="/jobs/{job_id}/live"' in page.text
    assert "cloud instance (RTX 4090)" in page.text
    assert 'id="job-cost">$0.0600<' in page.text, "10 minutes at $0.36/h"
    assert page.text.count('class="failed-row"') == 2
    assert 'data-code="decode_failed"' in page.text and "the decoder gave up" in page.text
    assert 'data-code="not_media"' in page.text and "upload again" in page.text
    assert 'id="cancel-job"' in page.text
    assert re.search(r'id="retry-failed"[^>]*>Retry 1 failed file<', page.text), "only the file with bytes"
    assert f'href="/jobs/{job_id}/results.csv"' in page.text and f'href="/jobs/{job_id}/results.json"' in page.text


def test_the_job_fragment_follows_the_job_and_is_final_when_done(client: SignedInClient) -> None:
    job_id = _job(_tenant_of(client), name="x", done=1, pending=1)
    first = client.get(f"/jobs/{job_id}/live")
    with session_scope() as session:
        session.execute(update(Batch).where(Batch.job_id == job_id).values(status=BatchStatus.DONE))
        session.execute(update(Asset).where(Asset.job_id == job_id).values(status=AssetStatus.DONE))
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.DONE))

    second = client.get(f"/jobs/{job_id}/live")

    assert (_status_badge(first.text), 'data-live-final="false"' in first.text) == ("running", True)
    assert (_status_badge(second.text), 'data-live-final="true"' in second.text) == ("done", True)
    assert 'id="cancel-job"' not in second.text


def test_cancel_from_the_page_needs_the_csrf_token_then_cancels(client: SignedInClient) -> None:
    job_id = _job(_tenant_of(client), name="stop-me", done=1, pending=3)

    forged = client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": "not-it"}, follow_redirects=False)
    assert forged.status_code == 403 and _job_status(job_id) == "running"

    answer = client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": client.csrf_token}, follow_redirects=False)

    assert answer.status_code == 303 and answer.headers["location"] == f"/jobs/{job_id}?notice=cancelled"
    shown = client.get(answer.headers["location"])
    assert _status_badge(shown.text) == "cancelled" and "The job was cancelled" in shown.text
    assert _job_status(job_id) == "cancelled"
    with session_scope() as session:
        assert session.scalars(select(Batch.status).where(Batch.job_id == job_id)).all().count(BatchStatus.PENDING) == 0


def test_cancelling_a_done_job_from_the_page_explains_why_not(client: SignedInClient) -> None:
    job_id = _job(_tenant_of(client), name="finished", done=1)

    answer = client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": client.csrf_token})

    assert answer.status_code == 409 and "already done" in answer.text and _status_badge(answer.text) == "done"


def test_retry_from_the_page_sends_the_failed_files_back(client: SignedInClient) -> None:
    job_id = _job(_tenant_of(client), name="again", done=1, failed=2, rejected=1)

    answer = client.post(f"/jobs/{job_id}/retry", data={"csrf_token": client.csrf_token}, follow_redirects=False)

    assert answer.status_code == 303 and answer.headers["location"] == f"/jobs/{job_id}?notice=retried"
    assert _job_status(job_id) == "queued"
    with session_scope() as session:
        statuses = sorted(str(s) for s in session.scalars(select(Asset.status).where(Asset.job_id == job_id)))
    assert statuses == ["done", "failed", "prepared", "prepared"], "the rejected upload stays failed"
    nothing = client.post(f"/jobs/{job_id}/retry", data={"csrf_token": client.csrf_token})
    assert "No failed file can be retried" in nothing.text


def test_result_downloads_from_the_page(client: SignedInClient) -> None:
    job_id = _job(_tenant_of(client), name="dl", done=2, failed=1)

    as_csv = client.get(f"/jobs/{job_id}/results.csv")
    as_json = client.get(f"/jobs/{job_id}/results.json")

    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.text.splitlines()[0].startswith("asset_id,name,status,media_kind,tags")
    assert len(as_csv.text.strip().splitlines()) == 4
    assert "attachment" in as_csv.headers["content-disposition"]
    assert as_json.status_code == 200 and len(as_json.json()["assets"]) == 3


def test_job_pages_answer_404_for_another_tenants_job_a_bad_id_or_a_missing_one(client: SignedInClient) -> None:
    other = make_tenant()
    theirs = _job(other.id, name="private-name", done=1, pending=1)
    problems = []

    for job_id in (str(theirs), "not-a-uuid", str(uuid.uuid4())):
        for method, path in (
            ("GET", f"/jobs/{job_id}"),
            ("GET", f"/jobs/{job_id}/live"),
            ("GET", f"/jobs/{job_id}/results.csv"),
            ("GET", f"/jobs/{job_id}/results.json"),
            ("POST", f"/jobs/{job_id}/cancel"),
            ("POST", f"/jobs/{job_id}/retry"),
        ):
            data = {"csrf_token": client.csrf_token} if method == "POST" else None
            answer = client.request(method, path, data=data)
            if (
                answer.status_code != 404
                or "private-name" in answer.text
                or "text/html" not in answer.headers["content-type"]
            ):
                problems.append(f"{method} {path}: {answer.status_code}")

    assert problems == []
    assert _job_status(theirs) == "running"


def test_job_pages_send_a_browser_without_a_session_to_sign_in(app) -> None:  # type: ignore[no-untyped-def]
    anonymous = TestClient(app)

    for path in ("/jobs", "/upload", f"/jobs/{uuid.uuid4()}"):
        answer = anonymous.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")


# --- upload ---------------------------------------------------------------------------------------------------


def test_the_upload_page_has_labelled_pickers_a_keyboard_drop_zone_and_the_tenants_analyzers(
    client: SignedInClient,
) -> None:
    with session_scope() as session:
        set_tenant_settings(
            session, tenant_id=_tenant_of(client), analyzers=["clip", "faces"], vocabulary=None, nsfw_threshold=0.5
        )

    page = client.get("/upload")

    assert page.status_code == 200
    for hook in (
        '<label for="file-input">',
        'id="file-input" type="file" multiple',
        '<label for="folder-input">',
        'id="folder-input" type="file" webkitdirectory',
        '<button type="button" id="drop-zone"',
        'id="start-analysis"',
        'class="upload-row" data-status="queued"',
        '<script src="/static/upload.js"',
        'data-max-parallel="3"',
    ):
        assert hook in page.text, hook
    assert f'<meta name="csrf-token" content="{client.csrf_token}">' in page.text
    checked = set(re.findall(r'value="(\w+)" checked', page.text))
    assert checked == {"clip", "faces"}


def test_the_upload_flow_of_upload_js_works_with_the_session_cookie(client: SignedInClient) -> None:
    """What upload.js sends: create the job (JSON), one multipart request per file, then seal; all with the cookie
    and the X-CSRF-Token header."""
    csrf = {"X-CSRF-Token": client.csrf_token}

    refused = client.post("/api/v1/jobs", json={"name": "no token"})
    created = client.post("/api/v1/jobs", json={"name": "from the page", "analyzers": ["clip"]}, headers=csrf)
    job_id = created.json()["id"]
    accepted = client.post(
        f"/api/v1/jobs/{job_id}/files", files={"files": ("holiday/beach.jpg", jpeg_bytes(), "image/jpeg")}, headers=csrf
    )
    duplicate = client.post(
        f"/api/v1/jobs/{job_id}/files", files={"files": ("again.jpg", jpeg_bytes(), "image/jpeg")}, headers=csrf
    )
    not_media = client.post(
        f"/api/v1/jobs/{job_id}/files", files={"files": ("notes.txt", b"hello", "text/plain")}, headers=csrf
    )
    sealed = client.post(f"/api/v1/jobs/{job_id}/seal", headers=csrf)

    assert refused.status_code == 403 and refused.json()["detail"]["code"] == "csrf_failed"
    assert created.status_code == 201
    assert accepted.status_code == 201 and accepted.json()["files"][0]["name"] == "beach.jpg"
    assert (duplicate.status_code, duplicate.json()["files"][0]["code"]) == (409, "duplicate")
    assert (not_media.status_code, not_media.json()["files"][0]["code"]) == (415, "not_media")
    assert not_media.json()["files"][0]["message"]
    assert sealed.status_code == 200 and sealed.json()["status"] == "queued"
    assert _status_badge(client.get(f"/jobs/{job_id}").text) == "queued"


def test_new_jobs_take_the_tenants_analyzers_vocabulary_and_nsfw_threshold(client: SignedInClient) -> None:
    csrf = {"X-CSRF-Token": client.csrf_token}
    plain = client.post("/api/v1/jobs", json={}, headers=csrf).json()
    with session_scope() as session:
        set_tenant_settings(
            session,
            tenant_id=_tenant_of(client),
            analyzers=["clip", "nsfw"],
            vocabulary={"pets": ["cat", "dog"]},
            nsfw_threshold=0.3,
        )

    defaulted = client.post("/api/v1/jobs", json={}, headers=csrf).json()
    own = client.post(
        "/api/v1/jobs",
        json={"analyzers": ["clip"], "options": {"clip": {"vocabulary": {"cars": ["red"]}}}},
        headers=csrf,
    ).json()

    assert plain["analyzers"] == get_settings().default_analyzers, "no saved settings: the deployment's default"
    with session_scope() as session:
        stored = {
            j.id: j
            for j in session.scalars(select(Job).where(Job.id.in_([uuid.UUID(defaulted["id"]), uuid.UUID(own["id"])])))
        }
    first = stored[uuid.UUID(defaulted["id"])]
    assert first.analyzers == ["clip", "nsfw"]
    assert first.options == {"clip": {"vocabulary": {"pets": ["cat", "dog"]}}, "nsfw": {"threshold": 0.3}}
    assert stored[uuid.UUID(own["id"])].options == {"clip": {"vocabulary": {"cars": ["red"]}}}, "the request wins"
