"""The load: several tenants at once, each uploading small JPEGs in multi-file requests and polling what a client or
the dashboard polls (job status, job list, the job's assets, the gallery, one asset, search), with one async httpx
client per tenant, for a fixed duration.

Every request is recorded with its kind, status and latency. Outcomes are judged strictly: a 5xx or a transport
error is an error; a 429 is counted as throttled (and the client waits out its ``Retry-After``); any other status
that the request should not get (a 404 for the tenant's own job, a 409 for a unique file) is unexpected.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.fixtures.factories import TenantWithKey
from tests.fixtures.tiny_models import COLOURS, SHAPES, draw_shape

REQUEST_TIMEOUT_S = 60.0
MAX_RETRY_AFTER_S = 5.0
SEARCH_QUERIES = ("", "red", "circle", "photo", "blue square", "green")
POLL_KINDS = ("job_status", "job_list", "job_assets", "assets_page", "asset_detail", "search")
EXPECTED_STATUS = {"create_job": {201}, "upload": {201}, "seal": {200}}
THROTTLED = 429


@dataclass(frozen=True)
class LoadConfig:
    """The shape of the load: how long, how many clients per tenant, how much each upload carries."""

    duration_s: float
    pollers_per_tenant: int = 2
    files_per_request: int = 4
    requests_per_job: int = 2
    # Each uploader waits this long between jobs, which bounds the work the Celery worker must drain.
    job_interval_s: float = 2.0
    # A poller's pause between requests: a dashboard or script polls, it does not spin.
    think_s: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class Sample:
    """One request: its kind, HTTP status (0 for a transport error), latency in seconds, and whether it was judged
    an error, throttled or unexpected."""

    kind: str
    status: int
    latency_s: float
    outcome: str  # "ok", "error", "throttled", "unexpected"
    detail: str = ""


@dataclass
class TenantLoad:
    """What one tenant did: its jobs (in creation order), the sealed ones, and every accepted asset id."""

    tenant: TenantWithKey
    jobs: list[str] = field(default_factory=list)
    sealed_jobs: list[str] = field(default_factory=list)
    asset_ids: list[str] = field(default_factory=list)


@dataclass
class LoadRun:
    """Everything the driver saw."""

    config: LoadConfig
    tenants: list[TenantLoad]
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0

    @property
    def wall_s(self) -> float:
        """Seconds from the first request to the last answer."""
        return self.finished - self.started

    @property
    def asset_ids(self) -> list[str]:
        """Every asset the API accepted, across tenants."""
        return [a for t in self.tenants for a in t.asset_ids]


def unique_jpeg(label: str, rng: random.Random) -> bytes:
    """A 64-pixel JPEG of a coloured shape (what the tiny CLIP knows), made unique by a comment naming ``label`` so
    that per-tenant deduplication never rejects it."""
    image = draw_shape(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng=rng)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, comment=f"load {label}".encode())
    return buffer.getvalue()


def _judge(kind: str, status: int) -> str:
    if status == 0 or status >= 500:
        return "error"
    if status == THROTTLED:
        return "throttled"
    allowed = EXPECTED_STATUS.get(kind, {200})
    return "ok" if status in allowed else "unexpected"


class _Client:
    """One tenant's HTTP client that records a sample per request."""

    def __init__(self, http: httpx.AsyncClient, run: LoadRun) -> None:
        self.http = http
        self.run = run

    async def request(self, kind: str, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """Send one request; None on a transport error. A 429 is waited out for its Retry-After (capped)."""
        start = time.perf_counter()
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.run.samples.append(Sample(kind, 0, time.perf_counter() - start, "error", repr(exc)[:200]))
            return None
        latency = time.perf_counter() - start
        outcome = _judge(kind, response.status_code)
        detail = "" if outcome == "ok" else f"{method} {path}: {response.text[:200]}"
        self.run.samples.append(Sample(kind, response.status_code, latency, outcome, detail))
        if outcome == "throttled":
            await asyncio.sleep(min(MAX_RETRY_AFTER_S, float(response.headers.get("Retry-After", "1") or 1)))
        return response


async def _pause_until(seconds: float, deadline: float) -> None:
    """Sleep ``seconds``, but not past ``deadline`` (a ``time.monotonic()`` value)."""
    await asyncio.sleep(max(0.0, min(seconds, deadline - time.monotonic())))


async def _uploader(client: _Client, load: TenantLoad, config: LoadConfig, deadline: float, seq: int) -> None:
    rng = random.Random(config.seed * 1000 + seq)
    job_no = 0
    while time.monotonic() < deadline:
        job_no += 1
        created = await client.request("create_job", "POST", "/api/v1/jobs", json={"name": f"load {seq}.{job_no}"})
        if created is None or created.status_code != 201:
            await _pause_until(config.job_interval_s, deadline)
            continue
        job_id = str(created.json()["id"])
        load.jobs.append(job_id)
        accepted = 0
        for part in range(config.requests_per_job):
            files = [
                ("files", (f"{job_no:04d}-{part}-{i}.jpg", unique_jpeg(f"{load.tenant.id} {job_id} {part} {i}", rng)))
                for i in range(config.files_per_request)
            ]
            answer = await client.request("upload", "POST", f"/api/v1/jobs/{job_id}/files", files=files)
            if answer is not None and answer.status_code in (201, 207):
                ids = [f["asset_id"] for f in answer.json()["files"] if f["status"] == "accepted"]
                load.asset_ids.extend(ids)
                accepted += len(ids)
        if accepted:
            sealed = await client.request("seal", "POST", f"/api/v1/jobs/{job_id}/seal")
            if sealed is not None and sealed.status_code == 200:
                load.sealed_jobs.append(job_id)
        await _pause_until(config.job_interval_s, deadline)


async def _poller(client: _Client, load: TenantLoad, config: LoadConfig, deadline: float, seq: int) -> None:
    rng = random.Random(config.seed * 1000 + 500 + seq)
    turn = seq
    while time.monotonic() < deadline:
        kind = POLL_KINDS[turn % len(POLL_KINDS)]
        turn += 1
        if kind in ("job_status", "job_assets") and not load.jobs:
            kind = "job_list"
        if kind == "asset_detail" and not load.asset_ids:
            kind = "assets_page"
        if kind == "job_status":
            await client.request(kind, "GET", f"/api/v1/jobs/{rng.choice(load.jobs)}")
        elif kind == "job_list":
            await client.request(kind, "GET", "/api/v1/jobs", params={"limit": 20})
        elif kind == "job_assets":
            await client.request(kind, "GET", f"/api/v1/jobs/{rng.choice(load.jobs)}/assets", params={"limit": 50})
        elif kind == "assets_page":
            await client.request(kind, "GET", "/api/v1/assets", params={"limit": 50})
        elif kind == "asset_detail":
            await client.request(kind, "GET", f"/api/v1/assets/{rng.choice(load.asset_ids)}")
        else:
            await client.request(kind, "GET", "/api/v1/search", params={"q": rng.choice(SEARCH_QUERIES)})
        await asyncio.sleep(config.think_s)


async def drive(base_url: str, tenants: list[TenantWithKey], config: LoadConfig) -> LoadRun:
    """Run the load against ``base_url`` for ``config.duration_s``; an uploader finishes (and seals) the job it is in
    when time is up, so every accepted file belongs to a sealed job."""
    run = LoadRun(config=config, tenants=[TenantLoad(tenant=t) for t in tenants])
    limits = httpx.Limits(max_connections=config.pollers_per_tenant + 2, max_keepalive_connections=8)
    clients = [
        httpx.AsyncClient(base_url=base_url, headers=t.headers, timeout=REQUEST_TIMEOUT_S, limits=limits)
        for t in tenants
    ]
    run.started = time.perf_counter()
    deadline = time.monotonic() + config.duration_s
    try:
        workers = []
        for n, (http, load) in enumerate(zip(clients, run.tenants, strict=True)):
            client = _Client(http, run)
            workers.append(_uploader(client, load, config, deadline, n))
            workers.extend(
                _poller(client, load, config, deadline, n * config.pollers_per_tenant + p)
                for p in range(config.pollers_per_tenant)
            )
        await asyncio.gather(*workers)
    finally:
        run.finished = time.perf_counter()
        for http in clients:
            await http.aclose()
    return run
