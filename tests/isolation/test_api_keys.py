"""API keys and the deployment's admin token as the database and the comparisons see them.

Keys are stored as their sha256 only (the row holds no plaintext, and no column holds the key); a key is found by
that digest through a unique index, so a near-miss key (same prefix, one character off at the end) finds nothing.
Raw secrets that are compared directly (the admin token, on the REST API and on the sign-in form) go through
``constant_time_equals``, which is ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

import orchestrator.api.dashboard.auth_pages as auth_pages
import orchestrator.api.deps as deps
from orchestrator.api.main import create_app
from orchestrator.db.models import ApiKey
from orchestrator.db.session import session_scope
from tests.fixtures.factories import make_tenant
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.web import login_token

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("orch_env", ["sqlite"], indirect=True)]


def _spy(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[tuple[object, ...]]:
    """Record the calls of ``module.name`` while still running the real function."""
    calls: list[tuple[object, ...]] = []
    real: Callable[..., object] = getattr(module, name)

    def recorded(*args: object) -> object:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(module, name, recorded)
    return calls


def test_keys_are_stored_as_sha256_only(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant("hashed")

    with session_scope() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)).one()
        stored = json.dumps([getattr(row, c.key) for c in ApiKey.__table__.columns], default=str)
        digest, prefix = row.key_hash, row.prefix

    assert digest == hashlib.sha256(tenant.key.encode()).hexdigest()
    secret_part = tenant.key.rsplit("_", 1)[1]
    assert tenant.key not in stored and secret_part not in stored, "no plaintext, not even its random part"
    assert tenant.key.startswith(f"mak_{prefix}_"), "only the public lookup prefix is kept in clear"


def test_a_key_that_differs_only_at_the_end_is_refused(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant("near-miss")
    client = TestClient(create_app())
    last = tenant.key[-1]
    near_misses = [tenant.key[:-1] + ("A" if last != "A" else "B"), tenant.key + "x", tenant.key[:-1]]

    answers = [client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {k}"}) for k in near_misses]

    assert [(a.status_code, a.json()["detail"]["code"]) for a in answers] == [(401, "unauthorized")] * 3
    assert client.get("/api/v1/jobs", headers=tenant.headers).status_code == 200


def test_the_admin_token_is_compared_in_constant_time_on_the_api_and_the_sign_in_form(
    orch_env: OrchestratorEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_calls = _spy(monkeypatch, deps, "constant_time_equals")
    form_calls = _spy(monkeypatch, auth_pages, "constant_time_equals")
    digest_calls = _spy(monkeypatch, hmac, "compare_digest")
    client = TestClient(create_app())
    near_miss = orch_env.admin_token[:-1] + "X"

    refused = client.get("/api/v1/admin/tenants", headers={"Authorization": f"Bearer {near_miss}"})
    accepted = client.get("/api/v1/admin/tenants", headers={"Authorization": f"Bearer {orch_env.admin_token}"})
    form = {"login_token": login_token(client), "api_key": near_miss}
    signed_in = client.post("/login", data=form, follow_redirects=False)

    assert refused.status_code == 403 and accepted.status_code == 200 and signed_in.status_code == 401
    assert (near_miss, orch_env.admin_token) in api_calls
    assert (orch_env.admin_token, orch_env.admin_token) in api_calls
    assert (near_miss, orch_env.admin_token) in form_calls
    assert (near_miss.encode(), orch_env.admin_token.encode()) in digest_calls, "constant_time_equals is hmac's"
