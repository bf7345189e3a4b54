"""`orchestrator instances list|destroy` and `orchestrator scheduler` against the fake Vast.ai (real HTTP, real clock)
on SQLite: what is rented is listed, a destroy settles the reservation and stops the bill, and the scheduler loop
rents for a pending job and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from orchestrator import budgets
from orchestrator.cli import app
from orchestrator.clock import utcnow
from orchestrator.cloud.actuator import tick
from orchestrator.db.models import BudgetHold, Instance
from orchestrator.db.session import get_sessionmaker, session_scope
from orchestrator.enums import InstanceStatus
from orchestrator.providers.vast.provider import VastProvider
from orchestrator.settings import get_settings
from tests.fakes.vast_server import FakeVast
from tests.fixtures.cloud_harness import (
    THROUGHPUT,
    WORKER_PORT,
    HealthResponders,
    add_pending_batch,
    configure_database,
)
from tests.fixtures.factories import make_tenant

POLICY = {"daily_cap_usd": 10, "monthly_cap_usd": 100, "soft_cap_usd": 80, "scale_up_wait_s": 0, "max_instances": 1}
BOOT_S = 0.3
SCHEDULER_WAIT_S = 30.0


@dataclass
class Cli:
    """The fake market, the env the CLI reads, and the SQLite database it points at."""

    fake: FakeVast
    env: dict[str, str]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """SQLite migrated, the fake on 127.0.0.1 whose instances answer /healthz over their pinned TLS, ORCH_ env set."""
    url = f"sqlite:///{(tmp_path / 'orch.sqlite').as_posix()}"
    configure_database(url, tmp_path, monkeypatch)
    responders = HealthResponders()
    fake = FakeVast(boot_s=BOOT_S, on_create=responders.on_create, on_destroy=responders.on_destroy)
    fake.add_offer(101, machine_id=11, gpu_name="RTX 4090", dph_base=0.35)
    with fake.serve():
        env = {
            "ORCH_ENVIRONMENT": "test",
            "ORCH_DATA_DIR": str(tmp_path),
            "ORCH_DATABASE_URL": url,
            "ORCH_VAST_API_URL": fake.url,
            "ORCH_VAST_API_KEY": fake.api_key,
            "ORCH_CLOUD_DEPLOYMENT": "clitest",
            "ORCH_CLOUD_WORKER_PORT": str(WORKER_PORT),
            "ORCH_DEFAULT_ANALYZERS": '["clip"]',
            "ORCH_SCHEDULER_TICK_S": "0.5",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        try:
            yield Cli(fake, env)
        finally:
            for left in fake.live_instances():  # never leak, whatever the test did
                VastProvider.from_settings(get_settings()).destroy(str(left.id))
            get_settings.cache_clear()


def _tenant_with_work() -> uuid.UUID:
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=tenant.id, changes=POLICY, now=utcnow())
    add_pending_batch(tenant.id, assets=4, created_at=utcnow())
    return tenant.id


def _rows() -> list[Instance]:
    with session_scope() as session:
        rows = list(session.scalars(select(Instance)))
        session.expunge_all()
        return rows


def test_instances_list_shows_the_rented_instance_and_destroy_settles_it_and_stops_the_bill(cli: Cli) -> None:
    tenant_id = _tenant_with_work()
    settings = get_settings()
    report = tick(
        get_sessionmaker(), VastProvider.from_settings(settings), now=utcnow(), settings=settings, throughput=THROUGHPUT
    )
    assert len(report.rented) == 1, report.errors
    (row,) = _rows()

    listed = CliRunner().invoke(app, ["instances", "list"], env={"COLUMNS": "250"})

    assert listed.exit_code == 0, listed.output
    assert "1 instances" in listed.output
    assert str(row.id) in listed.output and row.provider_instance_id in listed.output
    assert "RTX 4090" in listed.output and "booting" in listed.output.lower()

    time.sleep(0.5)  # some seconds of billing
    destroyed = CliRunner().invoke(app, ["instances", "destroy", str(row.id)])

    assert destroyed.exit_code == 0, destroyed.output
    assert f"instance {row.id} destroyed and settled" in destroyed.output
    assert cli.fake.live_instances() == []
    (after,) = _rows()
    assert after.state == InstanceStatus.DESTROYED and after.destroyed_at is not None
    with session_scope() as session:
        assert session.get(BudgetHold, str(row.id)) is None, "the reservation is settled"
        spent = budgets.summary(session, tenant_id=tenant_id, now=utcnow())
    assert spent.reserved_usd == 0 and spent.live_instances == 0
    bill = cli.fake.spent_usd
    time.sleep(0.3)
    assert cli.fake.spent_usd == bill, "a destroyed instance bills nothing more"
    # We charge from the tick that reserved to the destroy; the fake from its create to its destroy.
    assert spent.total_spent_usd == pytest.approx(bill, abs=0.36 / 3600 * 2)

    history = CliRunner().invoke(app, ["instances", "list"], env={"COLUMNS": "250"})
    assert "0 instances" in history.output
    assert "1 instances" in CliRunner().invoke(app, ["instances", "list", "--all"], env={"COLUMNS": "250"}).output


def test_instances_destroy_of_an_unknown_id_fails_with_a_reason(cli: Cli) -> None:
    missing = uuid.uuid4()
    result = CliRunner().invoke(app, ["instances", "destroy", str(missing)])
    assert result.exit_code == 1 and f"no instance {missing}" in result.output
    result = CliRunner().invoke(app, ["instances", "destroy", "not-an-id"])
    assert result.exit_code == 1 and "is not an instance id" in result.output


def test_the_scheduler_command_rents_for_a_pending_job_and_stops_cleanly_on_ctrl_c(cli: Cli, tmp_path: Path) -> None:
    _tenant_with_work()
    log_path = tmp_path / "scheduler.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "scheduler"],
            env={**os.environ, **cli.env, "COLUMNS": "200"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + SCHEDULER_WAIT_S
            while time.monotonic() < deadline and process.poll() is None:
                rows = _rows()
                if rows and rows[0].state == InstanceStatus.READY:
                    break
                time.sleep(0.2)
            rows = _rows()
            assert process.poll() is None, log_path.read_text()
            assert len(rows) == 1 and rows[0].state == InstanceStatus.READY, log_path.read_text()
            assert [str(i.id) for i in cli.fake.live_instances()] == [rows[0].provider_instance_id]

            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert "rented 1" in output and "scheduler stopped" in output
    assert "Traceback" not in output
