"""Secrets stay where they belong.

- Nothing the orchestrator holds (provider key aside, in its own Authorization header) reaches the provider: not
  the database or broker URL, the admin, metrics or local-worker token, the secret key; in no request of a rental,
  in no part of it (path, query, body, other headers). Builds on tests/deploy/test_vast_create_contract.py.
- A rented instance's token opens that instance's real worker and no other, and dies with the instance: after the
  destroy the row holds no token, the worker is gone, and the orchestrator accepts the token nowhere.
- Logs never print secrets: a realistic flow (rent two instances, analyze on them, destroy, sign in right and wrong,
  a refused production settings load) with every record captured at DEBUG through the orchestrator's text and JSON
  formatters, and the workers' own logs (one worker in JSON, one in text), holds none of the secret values.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from gpu_worker.logs import make_handler  # what orchestrator.logs installs for ORCH_LOG_FORMAT
from orchestrator.clock import utcnow
from orchestrator.cloud.teardown import destroy_instance
from orchestrator.cloud.tls import pinned_ssl_context
from orchestrator.db.models import Batch, Instance
from orchestrator.db.session import get_sessionmaker, session_scope
from orchestrator.enums import BatchStatus, InstanceStatus
from orchestrator.providers.vast.provider import VastProvider
from orchestrator.settings import Settings, get_settings
from orchestrator.tasks.jobs import analyze_batch
from tests.deploy.test_vast_create_contract import rent_one
from tests.fakes.vast_server import FakeInstance
from tests.fixtures.cloud_harness import CloudHarness
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.web import TEST_PASSWORD, make_user
from tests.integration.cloud_stack import SECRET, World, cloud_tenant, cloud_world, instance_rows, jpeg, run_ticks
from tests.integration.cloud_stack import upload_and_plan as upload

pytestmark = pytest.mark.integration

BOOT_DEADLINE_S = 120.0
_LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]+)"')


def _secret(name: str) -> str:
    return f"{name}-{secrets.token_urlsafe(24)}"


def test_no_secret_of_the_orchestrator_is_in_any_request_to_the_provider(cloud_sqlite: CloudHarness) -> None:
    own = {
        "admin_token": _secret("admin"),
        "secret_key": _secret("signing"),
        "metrics_token": _secret("metrics"),
        "local_worker_token": _secret("local-worker"),
        "broker_url": f"redis://:{_secret('broker')}@redis.internal:6379/0",
        "result_backend": f"redis://:{_secret('results')}@redis.internal:6379/1",
    }
    h = dataclasses.replace(cloud_sqlite, settings=cloud_sqlite.settings.model_copy(update=own))

    rent_one(h)

    values = [*own.values(), h.settings.database_url]
    for request in h.fake.requests:
        others = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        raw = json.dumps([request.method, request.path, request.query, request.body, others])
        assert [v for v in values if v in raw] == [], f"{request.method} {request.path}"
        assert request.headers.get("authorization") == f"Bearer {h.fake.api_key}"
        assert h.fake.api_key not in raw, "the provider key travels only in its Authorization header"
    assert {r.path.split("/")[3] for r in h.fake.requests} >= {"bundles", "asks"}, "search and create were seen"


@dataclasses.dataclass
class CapturedLogs:
    """Every record of this process at DEBUG, formatted as text and as JSON, and the raw messages."""

    text: io.StringIO
    json: io.StringIO
    raw: list[str]


class _RawMessages(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@pytest.fixture
def captured_logs() -> Iterator[CapturedLogs]:
    """Both of the orchestrator's formats on the root logger at DEBUG for the test's duration."""
    logs = CapturedLogs(io.StringIO(), io.StringIO(), [])
    handlers = [make_handler("text", logs.text), make_handler("json", logs.json), _RawMessages(logs.raw)]
    for handler in handlers:
        handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    level = root.level
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield logs
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(level)


ADMIN_TOKEN = _secret("admin")
METRICS_TOKEN = _secret("metrics")
LOCAL_WORKER_TOKEN = _secret("local-worker")


@pytest.fixture
def world(
    pg_redis_env: OrchestratorEnv, tiny_clip_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """The cloud world (fake Vast.ai whose instances are real workers) with every secret setting given a value."""
    monkeypatch.setenv("ORCH_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("ORCH_METRICS_TOKEN", METRICS_TOKEN)
    monkeypatch.setenv("ORCH_LOCAL_WORKER_TOKEN", LOCAL_WORKER_TOKEN)
    with cloud_world(tiny_clip_catalog, tmp_path, monkeypatch) as world:
        world.fake.add_offer(102, machine_id=12, gpu_name="RTX 4090", dph_base=0.36)
        yield world


def _info(row: Instance, token: str) -> int:
    """The status of the instance's worker /v1/info with ``token`` (over TLS pinned to the instance's cert)."""
    assert row.worker_url is not None
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(verify=pinned_ssl_context(row.tls_cert_pem), timeout=10.0) as client:
        return client.get(f"{row.worker_url}/v1/info", headers=headers).status_code


def _ready_row(tenant_id: uuid.UUID) -> Instance | None:
    rows = [r for r in instance_rows(tenant_id) if r.state == InstanceStatus.READY]
    return rows[0] if rows else None


def _workers_log_in_turn(world: World, formats: list[str]) -> dict[int, str]:
    """Start the next instances' workers with these GPUW_LOG_FORMATs in turn; returns fake id -> format."""
    started: dict[int, str] = {}
    start = world.fake.on_create
    assert start is not None

    def start_with_format(instance: FakeInstance) -> object:
        log_format = formats[len(started) % len(formats)]
        world.hook.model_env["GPUW_LOG_FORMAT"] = log_format
        started[instance.id] = log_format
        return start(instance)

    world.fake.on_create = start_with_format
    return started


def _sign_in(api_url: str, **fields: str) -> int:
    with httpx.Client(base_url=api_url) as client:
        token = _LOGIN_TOKEN.search(client.get("/login").text)
        assert token is not None
        return client.post("/login", data={"login_token": token.group(1), **fields}).status_code


def test_instance_tokens_open_only_their_instance_die_with_it_and_no_log_prints_a_secret(
    world: World, captured_logs: CapturedLogs
) -> None:
    a, b = cloud_tenant(), cloud_tenant()
    log_formats = _workers_log_in_turn(world, ["json", "text"])
    job_a = upload(world.api_url, a, {"a.jpg": jpeg("red", "square", 1)})
    job_b = upload(world.api_url, b, {"b.jpg": jpeg("blue", "circle", 2)})
    run_ticks(lambda _: _ready_row(a.id) is not None and _ready_row(b.id) is not None, BOOT_DEADLINE_S, "both ready")
    row_a, row_b = _ready_row(a.id), _ready_row(b.id)
    assert row_a is not None and row_b is not None and row_a.worker_token != row_b.worker_token
    for batch_id in [*job_a.batch_ids, *job_b.batch_ids]:
        assert analyze_batch(str(batch_id)) == "done"
    with session_scope() as session:
        batches = session.scalars(select(Batch).where(Batch.id.in_([*job_a.batch_ids, *job_b.batch_ids])))
        assert {(x.status, x.backend) for x in batches} == {(BatchStatus.DONE, "cloud")}

    # Each token opens its own worker only.
    assert (_info(row_a, row_a.worker_token), _info(row_b, row_b.worker_token)) == (200, 200)
    assert (_info(row_b, row_a.worker_token), _info(row_a, row_b.worker_token)) == (401, 401)
    a_worker = int(row_a.provider_instance_id or 0)
    tls_keys = [world.fake.instances[int(r.provider_instance_id or 0)].env["GPUW_TLS_KEY_PEM"] for r in (row_a, row_b)]

    provider = VastProvider.from_settings(get_settings())
    state = destroy_instance(get_sessionmaker(), provider, instance_id=row_a.id, now=utcnow(), reason="test: A done")

    assert state == InstanceStatus.DESTROYED
    with session_scope() as session:
        destroyed = session.get(Instance, row_a.id)
        assert destroyed is not None and destroyed.worker_token == "", "the row keeps no usable token"
    assert a_worker not in world.hook.alive(), "A's worker died with its instance"
    assert _info(row_b, row_a.worker_token) == 401
    token_a = {"Authorization": f"Bearer {row_a.worker_token}"}
    with httpx.Client(base_url=world.api_url) as api:
        refused = [api.get(path, headers=token_a).status_code for path in ("/api/v1/jobs", "/api/v1/admin/tenants")]
        refused.append(api.get("/metrics", headers=token_a).status_code)
    assert refused == [401, 403, 401], "the orchestrator takes a worker token nowhere"

    username, _ = make_user(tenant_name=a.name)
    assert _sign_in(world.api_url, username=username, password="wrong " + TEST_PASSWORD) == 401
    assert _sign_in(world.api_url, username=username, password=TEST_PASSWORD) == 303
    assert _sign_in(world.api_url, api_key=ADMIN_TOKEN) == 303
    weak, db_password, broker_password = _secret("weak"), _secret("pg"), _secret("redis")
    with pytest.raises(ValidationError) as refused_settings:
        Settings(
            environment="production",
            secret_key=weak[:20],
            admin_token=weak,
            database_url=f"postgresql://app:{db_password}@db.internal/media",
            broker_url=f"redis://:{broker_password}@redis.internal:6379/0",
        )
    logging.getLogger("orchestrator.startup").error("start-up refused", exc_info=refused_settings.value)
    destroy_instance(get_sessionmaker(), provider, instance_id=row_b.id, now=utcnow(), reason="test: B done")

    values = {
        "provider key": world.fake.api_key,
        "secret key": SECRET,
        "admin token": ADMIN_TOKEN,
        "metrics token": METRICS_TOKEN,
        "local worker token": LOCAL_WORKER_TOKEN,
        "A's worker token": row_a.worker_token,
        "B's worker token": row_b.worker_token,
        "A's API key": a.key,
        "B's API key": b.key,
        "a password": TEST_PASSWORD,
        "a refused weak secret": weak[:20],
        "a database password": db_password,
        "a broker password": broker_password,
    }
    values |= {f"TLS key {n}": pem.splitlines()[1] for n, pem in enumerate(tls_keys)}
    outputs = {
        "orchestrator text log": captured_logs.text.getvalue(),
        "orchestrator JSON log": captured_logs.json.getvalue(),
    }
    outputs |= {f"worker {i} log ({f})": world.hook.log(i) for i, f in log_formats.items()}
    assert sorted(log_formats.values()) == ["json", "text"]
    assert all(outputs.values()), {name: len(text) for name, text in outputs.items()}
    leaks = [f"{what} in {where}" for where, text in outputs.items() for what, v in values.items() if v in text]
    raw_hits = sorted({what for what, v in values.items() for message in captured_logs.raw if v in message})
    print(f"\nsecrets: {len(values)} values x {len(outputs)} logs, {len(captured_logs.raw)} orchestrator records;")
    print(f"secrets in raw messages before redaction: {raw_hits or 'none'}; in the logs: {len(leaks)}")
    assert leaks == []
