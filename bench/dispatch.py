"""Does the orchestrator keep a GPU fed? Batches/s one Celery dispatcher sustains, the per-batch overhead of the
dispatch path broken into its steps, and a worker's busy fraction with one and two batches in flight.

    python bench/dispatch.py                                  # both parts, small sizes, local worker backend
    python bench/dispatch.py --batch-sizes 16,64,256 --batches 40 --concurrency 1,2 --pool prefork,threads
    python bench/dispatch.py --part inflight --backend cloud --gpu-img-s 2000 --batch-sizes 64,256 --json d.json

Everything real but the GPU: a scratch PostgreSQL database (``bench/scratch_db.py``), a private redis-server, and
one production Celery worker process consuming the ``analyze`` queue, started through ``bench/dispatch_worker.py``
(which only adds timing wrappers around the dispatch path's functions). The worker is a fake HTTP server in this
process that speaks the real API (``/healthz``, ``/v1/analyze`` with the bearer token) and answers every manifest
with a valid ``BatchResult`` built from ``gpu_worker.contract`` (one CLIP-like output per item: 10 tags and a
512-d embedding), either at once or after a simulated GPU time (``items / --gpu-img-s``) during which a lock, "the
GPU", is held. It does not fetch the signed URLs. ``--backend local`` reaches it as ``ORCH_LOCAL_WORKER_URL``;
``--backend cloud`` as a READY rented-instance row over TLS with its pinned certificate, so each batch also takes
and gives back one of the instance's ``MAX_IN_FLIGHT`` slots.

1. throughput: ``--batches`` batches of each size, enqueued at once, instant worker: batches/s and images/s
   between the first claim and the last completion, and the mean time of each dispatch step per batch, as a
   percentage of the GPU time that batch would take at ``--target-img-s`` (the issue's target: under 5 %).
2. inflight: with the simulated GPU time, Celery concurrency 1 and 2 (one and two batches in flight on the
   worker); the fake worker's utilisation (time "the GPU" was held / wall time between its first and last batch).
   At the target speed a slow machine's dispatcher may never get a second batch there in time; a slower simulated
   GPU (``--gpu-img-s 2000,100``) shows what the second slot buys once the GPU time exceeds the dispatch time.

Nothing is asserted; record the figures with the command, machine and date.
"""

from __future__ import annotations

import argparse
import http.server
import itertools
import json
import os
import platform
import secrets
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from dispatch_worker import OTHER, PHASES, TIMINGS_ENV  # noqa: E402

from bench.loadgen.redis_server import private_redis  # noqa: E402
from bench.scratch_db import DEFAULT_ADMIN_URL, scratch_postgres  # noqa: E402
from gpu_worker.contract import AnalyzerOutput, BatchManifest, TagScore  # noqa: E402
from tests.fixtures.deployment import free_port  # noqa: E402
from tests.fixtures.processes import ManagedProcess, wait_until  # noqa: E402

TOKEN = "bench-dispatch-worker-token"
EMBEDDING_DIM = 512
TAGS_PER_ITEM = 10
WAIT_TIMEOUT_S = 600.0


class FakeWorker:
    """A ``gpu-worker serve`` stand-in on 127.0.0.1 that answers manifests instantly or after a simulated GPU time.

    The GPU is a lock held for ``items / gpu_img_s`` seconds per batch; receiving the manifest and writing the
    answer happen outside it, as the real worker decodes and serialises around its model thread. ``busy_s`` and
    the first/last GPU times give the utilisation the worker itself saw.
    """

    def __init__(self, *, gpu_img_s: float = 0.0, tls: tuple[str, str] | None = None) -> None:
        self.gpu_img_s = gpu_img_s
        self.gpu = threading.Lock()
        self.stats_lock = threading.Lock()
        self.busy_s = 0.0
        self.first_gpu: float | None = None
        self.last_gpu: float | None = None
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.answered: list[str] = []
        output = AnalyzerOutput(
            model_id="bench/fake-clip",
            tags=[TagScore(tag=f"bench/tag-{i}", score=0.9 - i * 0.05) for i in range(TAGS_PER_ITEM)],
            embedding=[((i * 37) % 101) / 101.0 - 0.5 for i in range(EMBEDDING_DIM)],
            payload={"top": "bench/tag-0"},
        )
        # The answer is the contract's JSON; the per-item output is rendered once so that the fake's own CPU (which
        # shares this machine with the dispatcher) stays small.
        self._output_json = output.model_dump_json()
        handler = type("Handler", (_Handler,), {"worker": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            cert_pem, key_pem = tls
            folder = Path(tempfile.mkdtemp(prefix="bench-dispatch-tls-"))
            (folder / "cert.pem").write_text(cert_pem)
            (folder / "key.pem").write_text(key_pem)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-worker", daemon=True)

    def __enter__(self) -> FakeWorker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self, gpu_img_s: float) -> None:
        """Start a new measurement with another simulated GPU speed (0: answer at once)."""
        with self.stats_lock:
            self.gpu_img_s = gpu_img_s
            self.busy_s, self.first_gpu, self.last_gpu = 0.0, None, None
            self.requests = self.max_in_flight = 0
            self.answered = []

    def utilisation(self) -> float:
        """Time the GPU lock was held / wall time from the first GPU start to the last GPU end."""
        if self.first_gpu is None or self.last_gpu is None or self.last_gpu <= self.first_gpu:
            return 0.0
        return self.busy_s / (self.last_gpu - self.first_gpu)

    def answer(self, manifest: BatchManifest) -> bytes:
        """Hold the GPU for the batch's simulated time, then render a valid BatchResult for its items."""
        if self.gpu_img_s > 0:
            with self.gpu:
                began = time.perf_counter()
                time.sleep(len(manifest.items) / self.gpu_img_s)
                ended = time.perf_counter()
            with self.stats_lock:
                self.busy_s += ended - began
                self.first_gpu = began if self.first_gpu is None else min(self.first_gpu, began)
                self.last_gpu = ended if self.last_gpu is None else max(self.last_gpu, ended)
        items = ",".join(
            f'{{"asset_id":"{item.asset_id}","outputs":{{"clip":{self._output_json}}},"errors":{{}}}}'
            for item in manifest.items
        )
        elapsed = len(manifest.items) / self.gpu_img_s if self.gpu_img_s > 0 else 0.0
        return (
            f'{{"batch_id":"{manifest.batch_id}","items":[{items}],"unavailable":{{}},'
            f'"device":"fake","elapsed_s":{elapsed}}}'
        ).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    worker: FakeWorker
    protocol_version = "HTTP/1.1"
    # uvicorn's asyncio sockets send without Nagle's delay; without this, headers and body as two writes would wait
    # for the client's delayed ACK (40 ms) on every answer.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if self.path != "/healthz":
            self._send(404, b'{"detail":"not found"}')
            return
        self._send(200, b'{"status":"ready","device":"fake","models":{"clip":"bench/fake-clip"},"expected":["clip"]}')

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/v1/analyze":
            self._send(404, b'{"detail":"not found"}')
            return
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(401, b'{"code":"unauthorized"}')
            return
        worker = self.worker
        with worker.stats_lock:
            worker.requests += 1
            worker.in_flight += 1
            worker.max_in_flight = max(worker.max_in_flight, worker.in_flight)
        try:
            manifest = BatchManifest.model_validate_json(body)
            answer = worker.answer(manifest)
        finally:
            with worker.stats_lock:
                worker.in_flight -= 1
        with worker.stats_lock:
            worker.answered.append(manifest.batch_id)
        self._send(200, answer)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Stack:
    """A migrated database, a broker, a fake worker reachable through ``backend``, and one tenant."""

    env: dict[str, str]
    worker: FakeWorker
    tenant_id: uuid.UUID
    backend: str
    folder: Path
    celery: Any
    instance_id: uuid.UUID | None = None


def _configure(env: dict[str, str]) -> dict[str, str]:
    """Point this process at ``env``'s settings (the bench writes and checks the batches in the stack's database);
    returns the ``ORCH_``/``GPUW_`` variables it replaced, for :func:`_configure` to put back."""
    from orchestrator.db.session import reset_engines
    from orchestrator.settings import get_settings

    replaced = {k: v for k, v in os.environ.items() if k.startswith(("ORCH_", "GPUW_"))}
    for key in replaced:
        del os.environ[key]
    os.environ.update({k: v for k, v in env.items() if k.startswith(("ORCH_", "GPUW_"))})
    get_settings.cache_clear()
    reset_engines()
    return replaced


@contextmanager
def dispatch_stack(database_url: str, broker_url: str, folder: Path, *, backend: str = "local") -> Iterator[Stack]:
    """Migrate ``database_url``, start the fake worker, configure the backend, make a tenant; undo it after."""
    from orchestrator.cloud.tls import new_instance_identity
    from orchestrator.db.migrate import upgrade

    folder.mkdir(parents=True, exist_ok=True)
    identity = new_instance_identity() if backend == "cloud" else None
    with FakeWorker(tls=(identity.cert_pem, identity.key_pem) if identity else None) as worker:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "GPUW_"))}
        env.update(
            {
                "ORCH_ENVIRONMENT": "production",
                "ORCH_LOG_FORMAT": "json",
                "ORCH_SECRET_KEY": secrets.token_urlsafe(32),
                "ORCH_ADMIN_TOKEN": secrets.token_urlsafe(32),
                "ORCH_DATA_DIR": str(folder / "data"),
                "ORCH_DATABASE_URL": database_url,
                "ORCH_BROKER_URL": broker_url,
                "ORCH_PUBLIC_URL": "http://127.0.0.1:9",  # signed URLs are made, never fetched by the fake
                "ORCH_BATCH_LEASE_S": "600",
            }
        )
        if backend == "local":
            env.update({"ORCH_LOCAL_WORKER_URL": worker.url, "ORCH_LOCAL_WORKER_TOKEN": TOKEN})
        previous = _configure(env)
        try:
            upgrade(database_url)
            yield _make_stack(env, worker, backend, folder, identity_pem=identity.cert_pem if identity else None)
        finally:
            _configure(previous)


def _make_stack(
    env: dict[str, str], worker: FakeWorker, backend: str, folder: Path, *, identity_pem: str | None
) -> Stack:
    """The tenant (and, for the cloud backend, its READY instance pinned to the fake worker's certificate)."""
    from orchestrator.clock import utcnow
    from orchestrator.db.models import Instance, Tenant
    from orchestrator.db.session import session_scope
    from orchestrator.enums import InstanceStatus
    from orchestrator.tasks.app import create_celery_app

    with session_scope() as session:
        tenant = Tenant(name=f"bench-{uuid.uuid4().hex[:8]}")
        session.add(tenant)
        session.flush()
        tenant_id = tenant.id
        instance_id = None
        if identity_pem is not None:
            row = Instance(
                tenant_id=tenant_id,
                provider="vast",
                provider_instance_id=str(free_port()),
                label=f"mam-bench-{uuid.uuid4().hex[:12]}",
                offer_id="1",
                machine_id=1,
                gpu_name="fake",
                price_per_h_musd=400_000,
                state=InstanceStatus.READY,
                worker_url=worker.url,
                worker_token=TOKEN,
                tls_cert_pem=identity_pem,
                ready_at=utcnow(),
            )
            session.add(row)
            session.flush()
            instance_id = row.id
    return Stack(env, worker, tenant_id, backend, folder, create_celery_app(), instance_id)


def make_batches(stack: Stack, *, batches: int, batch_size: int) -> list[uuid.UUID]:
    """A sealed job of ``batches * batch_size`` prepared, stored images, planned into batches by the production
    planner (``plan_batches``); the asset rows are those the upload path leaves after preparation."""
    from orchestrator.batching import plan_batches
    from orchestrator.db.models import Asset
    from orchestrator.db.session import session_scope
    from orchestrator.enums import AssetStatus
    from orchestrator.jobs import create_job, seal_job

    with session_scope() as session:
        job = create_job(session, tenant_id=stack.tenant_id, analyzers=["clip"], default_analyzers=["clip"])
        rows = []
        for _ in range(batches * batch_size):
            sha = secrets.token_hex(32)
            rows.append(
                Asset(
                    tenant_id=stack.tenant_id,
                    job_id=job.id,
                    sha256=sha,
                    media_kind="image",
                    mime_type="image/jpeg",
                    size_bytes=250_000,
                    width=1920,
                    height=1080,
                    storage_key=f"tenants/{stack.tenant_id.hex}/blobs/{sha[:2]}/{sha}",
                    original_name=f"{sha[:12]}.jpg",
                    status=AssetStatus.PREPARED,
                )
            )
        session.add_all(rows)
        session.flush()
        seal_job(session, tenant_id=stack.tenant_id, job_id=job.id)
        planned = plan_batches(session, job_id=job.id, batch_size=batch_size, max_attempts=3)
    return list(planned or [])


@contextmanager
def dispatcher(stack: Stack, *, pool: str, concurrency: int, name: str) -> Iterator[Path]:
    """One Celery worker on the ``analyze`` queue, with the bench's timing wrappers; yields its timings folder."""
    timings = stack.folder / f"timings-{name}"
    timings.mkdir(parents=True, exist_ok=True)
    env = {**stack.env, TIMINGS_ENV: str(timings)}
    args = [
        sys.executable,
        str(REPO / "bench" / "dispatch_worker.py"),
        "-A",
        "orchestrator.tasks.app:celery_app",
        "worker",
        "--loglevel=INFO",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        "--queues=analyze",
        f"--hostname=bench-{name}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    process = ManagedProcess(args, env, stack.folder / f"celery-{name}.log", cwd=REPO)
    try:
        process.wait_for_log("ready.", timeout_s=120)
        yield timings
    finally:
        process.stop()


def _done(batch_ids: list[uuid.UUID]) -> int:
    from sqlalchemy import func, select

    from orchestrator.db.models import Batch
    from orchestrator.db.session import session_scope
    from orchestrator.enums import BatchStatus

    with session_scope() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Batch).where(Batch.id.in_(batch_ids), Batch.status == BatchStatus.DONE)
            )
            or 0
        )


def dispatch(stack: Stack, batch_ids: list[uuid.UUID], timings: Path) -> list[dict[str, Any]]:
    """Enqueue an analyze message per batch, wait until every batch is done; the dispatcher's rows for them."""
    from orchestrator.tasks.constants import TASK_ANALYZE_BATCH

    for batch_id in batch_ids:
        stack.celery.send_task(TASK_ANALYZE_BATCH, args=[str(batch_id)])
    wait_until(lambda: _done(batch_ids) == len(batch_ids), WAIT_TIMEOUT_S, "every batch to be done", interval_s=0.2)
    wanted = {str(b) for b in batch_ids}

    def collected() -> list[dict[str, Any]]:
        rows = []
        for path in timings.glob("*.jsonl"):
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if row["batch_id"] in wanted:
                    rows.append(row)
        return rows

    # The row is written just after the task returns, a moment after its commit made the batch DONE.
    wait_until(lambda: len(collected()) >= len(batch_ids), 30, "the dispatcher's timing rows", interval_s=0.1)
    return collected()


@dataclass
class Check:
    """What the database says after a round: every batch done, every asset done with exactly one result."""

    batches: int
    batches_done: int
    assets: int
    assets_done: int
    results: int
    assets_with_one_result: int

    @property
    def ok(self) -> bool:
        """Every batch done and every asset done with one result."""
        return (
            self.batches == self.batches_done
            and self.assets == self.assets_done == self.results == self.assets_with_one_result
        )


def check(batch_ids: list[uuid.UUID]) -> Check:
    """Count what the round left in the database."""
    from sqlalchemy import func, select

    from orchestrator.db.models import Asset, Result
    from orchestrator.db.session import session_scope
    from orchestrator.enums import AssetStatus

    with session_scope() as session:
        assets = list(session.scalars(select(Asset).where(Asset.batch_id.in_(batch_ids))))
        ids = [a.id for a in assets]
        per_asset = dict(
            session.execute(
                select(Result.asset_id, func.count()).where(Result.asset_id.in_(ids)).group_by(Result.asset_id)
            ).all()
        )
    return Check(
        batches=len(batch_ids),
        batches_done=_done(batch_ids),
        assets=len(assets),
        assets_done=sum(a.status == AssetStatus.DONE for a in assets),
        results=sum(per_asset.values()),
        assets_with_one_result=sum(1 for n in per_asset.values() if n == 1),
    )


@dataclass
class Round:
    """One measured round: a batch size on one dispatcher configuration."""

    part: str
    backend: str
    pool: str
    concurrency: int
    batch_size: int
    batches: int
    gpu_img_s: float
    wall_s: float
    phases_ms: dict[str, float]
    task_ms: float
    gap_ms: float
    worker_utilisation: float | None
    worker_max_in_flight: int
    check: Check
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batches_per_s(self) -> float:
        """Batches finished per second between the first task's start and the last task's end."""
        return self.batches / self.wall_s if self.wall_s > 0 else 0.0


def run_round(
    stack: Stack,
    *,
    part: str,
    pool: str,
    concurrency: int,
    batch_size: int,
    batches: int,
    warmup: int,
    gpu_img_s: float,
) -> Round:
    """Start a dispatcher, warm it up, dispatch ``batches`` batches of ``batch_size``, and measure them."""
    name = f"{part}-{pool}-c{concurrency}-b{batch_size}-{uuid.uuid4().hex[:6]}"
    with dispatcher(stack, pool=pool, concurrency=concurrency, name=name) as timings:
        if warmup:
            stack.worker.reset(gpu_img_s)
            dispatch(stack, make_batches(stack, batches=warmup, batch_size=batch_size), timings)
        batch_ids = make_batches(stack, batches=batches, batch_size=batch_size)
        stack.worker.reset(gpu_img_s)
        rows = dispatch(stack, batch_ids, timings)
    start, end = min(r["start"] for r in rows), max(r["end"] for r in rows)
    phases = {p: 1000 * statistics.fmean(r["phases"].get(p, 0.0) for r in rows) for p in PHASES}
    gaps = []
    for key in {(r["pid"], r["thread"]) for r in rows}:
        mine = sorted((r for r in rows if (r["pid"], r["thread"]) == key), key=lambda r: r["start"])
        gaps += [b["start"] - a["end"] for a, b in itertools.pairwise(mine)]
    return Round(
        part=part,
        backend=stack.backend,
        pool=pool,
        concurrency=concurrency,
        batch_size=batch_size,
        batches=batches,
        gpu_img_s=gpu_img_s,
        wall_s=end - start,
        phases_ms=phases,
        task_ms=1000 * statistics.fmean(r["total"] for r in rows),
        gap_ms=1000 * statistics.fmean(gaps) if gaps else 0.0,
        worker_utilisation=stack.worker.utilisation() if gpu_img_s > 0 else None,
        worker_max_in_flight=stack.worker.max_in_flight,
        check=check(batch_ids),
        extra={"outcomes": sorted({r["outcome"] for r in rows})},
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _print_throughput(rounds: list[Round], target_img_s: float) -> None:
    print(f"\n1. One dispatcher, instant fake worker; overhead as % of a batch's GPU time at {target_img_s:.0f} img/s")
    for r in rounds:
        gpu_ms = 1000 * r.batch_size / target_img_s
        overhead = r.task_ms + r.gap_ms
        print(
            f"\n  {r.backend}, {r.pool} x{r.concurrency}, {r.batches} batches of {r.batch_size}: "
            f"{r.batches_per_s:.1f} batches/s, {r.batches_per_s * r.batch_size:.0f} img/s; "
            f"task {r.task_ms:.1f} ms + {r.gap_ms:.1f} ms between tasks = {overhead:.1f} ms per batch = "
            f"{100 * overhead / gpu_ms:.0f} % of {gpu_ms:.0f} ms GPU time "
            f"({'ok' if r.check.ok else 'CHECK FAILED: ' + repr(r.check)})"
        )
        for phase, ms in r.phases_ms.items():
            if ms or phase == OTHER:
                share = 100 * ms / gpu_ms
                print(f"    {phase:<44} {ms:8.2f} ms  {share:6.1f} %  {1000 * ms / r.batch_size:8.1f} us/img")
        print(f"    {'celery: between tasks (receive, ack)':<44} {r.gap_ms:8.2f} ms  {100 * r.gap_ms / gpu_ms:6.1f} %")


def _print_inflight(rounds: list[Round]) -> None:
    print("\n2. Batches in flight: fake worker utilisation (GPU-lock time / wall time, measured by the worker)")
    for r in rounds:
        gpu_ms = 1000 * r.batch_size / r.gpu_img_s
        print(
            f"  {r.backend}, {r.pool} x{r.concurrency} (max {r.worker_max_in_flight} in flight at the worker), "
            f"{r.batches} batches of {r.batch_size} ({gpu_ms:.0f} ms GPU each): utilisation "
            f"{100 * (r.worker_utilisation or 0):.1f} %, {r.batches_per_s * r.batch_size:.0f} img/s of "
            f"{r.gpu_img_s:.0f} ({'ok' if r.check.ok else 'CHECK FAILED: ' + repr(r.check)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "throughput", "inflight"), default="all")
    parser.add_argument("--backend", choices=("local", "cloud"), default="local")
    parser.add_argument("--batch-sizes", default="16,64", help="comma-separated batch sizes")
    parser.add_argument("--batches", type=int, default=10, help="measured batches per round")
    parser.add_argument("--warmup", type=int, default=2, help="batches dispatched before each measured round")
    parser.add_argument("--pool", default="prefork", help="Celery pools for part 1, comma-separated")
    parser.add_argument("--concurrency", default="1", help="Celery concurrencies for part 1, comma-separated")
    parser.add_argument("--target-img-s", type=float, default=2000.0, help="the GPU speed overhead is compared with")
    parser.add_argument(
        "--gpu-img-s", default="2000,100", help="simulated GPU speeds of part 2's worker (img/s), comma-separated"
    )
    parser.add_argument("--inflight", default="1,2", help="batches in flight (Celery concurrency) for part 2")
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL, help="PostgreSQL server for the scratch database")
    parser.add_argument("--broker-url", help="use this Redis instead of a private redis-server")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mam-bench-dispatch")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    sizes = _ints(args.batch_sizes)
    work = args.work / uuid.uuid4().hex[:8]
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
        f"python {platform.python_version()}; backend {args.backend}; the GPU worker is simulated"
    )
    throughput: list[Round] = []
    inflight: list[Round] = []
    with ExitStack() as stack_cm:
        database_url = stack_cm.enter_context(scratch_postgres(args.admin_url))
        broker = args.broker_url or stack_cm.enter_context(private_redis(work))
        stack = stack_cm.enter_context(dispatch_stack(database_url, broker, work, backend=args.backend))
        if args.part in ("all", "throughput"):
            for pool in [p for p in args.pool.split(",") if p]:
                for concurrency in _ints(args.concurrency):
                    for size in sizes:
                        throughput.append(
                            run_round(
                                stack,
                                part="throughput",
                                pool=pool,
                                concurrency=concurrency,
                                batch_size=size,
                                batches=args.batches,
                                warmup=args.warmup,
                                gpu_img_s=0.0,
                            )
                        )
            _print_throughput(throughput, args.target_img_s)
        if args.part in ("all", "inflight"):
            for gpu_img_s in [float(x) for x in args.gpu_img_s.split(",") if x]:
                for size in sizes:
                    for concurrency in _ints(args.inflight):
                        inflight.append(
                            run_round(
                                stack,
                                part="inflight",
                                pool="prefork",
                                concurrency=concurrency,
                                batch_size=size,
                                batches=args.batches,
                                warmup=args.warmup,
                                gpu_img_s=gpu_img_s,
                            )
                        )
            _print_inflight(inflight)
    if args.json:
        data = {
            "machine": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "target_img_s": args.target_img_s,
            "rounds": [
                {
                    **{k: v for k, v in vars(r).items() if k not in ("check",)},
                    "check": vars(r.check),
                    "batches_per_s": r.batches_per_s,
                }
                for r in throughput + inflight
            ],
        }
        args.json.write_text(json.dumps(data, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
