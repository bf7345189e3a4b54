"""The embedded default (SQLite, no Redis) limits in-process with the same rule and answer; the Redis limiter lets
requests through when Redis is down rather than failing them."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from orchestrator.api.main import create_app
from orchestrator.rate_limits import MemoryRateLimiter, RedisRateLimiter, Rule, limiter_for
from orchestrator.settings import get_settings
from tests.fixtures.factories import make_tenant
from tests.fixtures.services import OrchestratorEnv
from tests.isolation.api_processes import free_port
from tests.isolation.conftest import RATE_LIMIT_BURST, RATE_LIMIT_PER_MINUTE

pytestmark = pytest.mark.integration

BURST = RATE_LIMIT_BURST


@pytest.mark.parametrize("orch_env", ["sqlite"], indirect=True)
def test_the_embedded_default_limits_each_tenant_in_process(
    orch_env: OrchestratorEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_RATE_LIMIT_PER_MINUTE", str(RATE_LIMIT_PER_MINUTE))
    monkeypatch.setenv("ORCH_RATE_LIMIT_BURST", str(BURST))
    get_settings.cache_clear()
    a, b = make_tenant("embedded-a"), make_tenant("embedded-b")
    app = create_app()
    client = TestClient(app)

    statuses = [client.get("/api/v1/jobs", headers=a.headers).status_code for _ in range(BURST + 3)]
    refused = client.get("/api/v1/jobs", headers=a.headers)

    assert orch_env.broker_url.startswith("sqla+sqlite") and isinstance(app.state.rate_limiter, MemoryRateLimiter)
    assert statuses[:BURST] == [200] * BURST and 429 in statuses[BURST:]
    assert refused.status_code == 429
    assert refused.json()["detail"]["code"] == "rate_limited"
    assert refused.headers["retry-after"].isdigit() and int(refused.headers["retry-after"]) >= 1
    assert client.get("/api/v1/jobs", headers=b.headers).status_code == 200, "another tenant is not slowed"


def test_the_redis_limiter_lets_requests_through_while_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    limiter = limiter_for(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    rule = Rule(per_minute=1, burst=1)

    with caplog.at_level(logging.WARNING, logger="orchestrator.rate_limits"):
        decisions = [limiter.take("tenant:x", rule) for _ in range(3)]

    assert isinstance(limiter, RedisRateLimiter)
    assert all(d.allowed for d in decisions)
    assert len([r for r in caplog.records if "rate limits are off" in r.getMessage()]) == 1, "one warning, no flood"
