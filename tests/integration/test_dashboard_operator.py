"""The operator view: instances in ALERT first with what to do, tenants with their spend and keys, keys shown once
and revoked, users created — and every bad input answered with a message or a 404 page, never a 500."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from orchestrator import budgets
from orchestrator.accounts import Role
from orchestrator.api.main import create_app
from orchestrator.clock import utcnow
from orchestrator.db.models import ApiKey, Instance, Tenant, User
from orchestrator.db.session import session_scope
from orchestrator.enums import InstanceStatus
from orchestrator.scheduler import ledger
from tests.fixtures.factories import make_tenant
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.web import TEST_PASSWORD, SignedInClient, signed_in_client

pytestmark = pytest.mark.integration

# starlette's TestClient answers with an httpx2 (or, on older versions, httpx) response.
ClientResponse = Any


def _operator() -> SignedInClient:
    return signed_in_client(create_app(), tenant_name=None, role=Role.OPERATOR)


def _post(client: SignedInClient, path: str, data: dict[str, str] | None = None) -> ClientResponse:
    return client.post(path, data={**(data or {}), "csrf_token": client.csrf_token}, follow_redirects=False)


def _instance(tenant_id: uuid.UUID, state: InstanceStatus, *, minutes: float) -> uuid.UUID:
    row_id = uuid.uuid4()
    started = utcnow() - timedelta(minutes=minutes)
    with session_scope() as session:
        budgets.reserve(
            session, tenant_id=tenant_id, instance_id=str(row_id), price_per_h_usd=0.6, amount_usd=0.01, now=started
        )
        session.add(
            Instance(
                id=row_id,
                tenant_id=tenant_id,
                provider="vast",
                provider_instance_id="4242",
                label=f"mam-test-{row_id}",
                offer_id="101",
                machine_id=11,
                gpu_name="RTX 5090",
                price_per_h_musd=ledger.usd_to_musd(0.6),
                state=state,
                worker_token="t",
                tls_cert_pem="pem",
                created_at=started,
                last_error="destroy refused: HTTP 500 <b>" if state is InstanceStatus.ALERT else None,
            )
        )
    return row_id


def test_members_cannot_open_the_operator_view(orch_env: OrchestratorEnv) -> None:
    member = signed_in_client(create_app(), tenant_name="acme")
    assert member.get("/operator").status_code == 403
    assert _post(member, "/operator/tenants", {"tenant_name": "evil"}).status_code == 403
    with session_scope() as session:
        assert session.scalars(select(Tenant).where(Tenant.name == "evil")).first() is None


def test_an_instance_in_alert_is_shown_first_with_the_command_that_destroys_it(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant("studio-a")
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=tenant.id, changes={"daily_cap_usd": 30}, now=utcnow())
    ready = _instance(tenant.id, InstanceStatus.READY, minutes=60)
    alert = _instance(tenant.id, InstanceStatus.ALERT, minutes=5)
    client = _operator()

    page = client.get("/operator").text

    assert page.index('id="alerts"') < page.index('id="instances"') < page.index('id="tenants"')
    assert f"orchestrator instances destroy {alert}" in page and "may still be billing" in page
    assert "destroy refused: HTTP 500 &lt;b&gt;" in page
    table = page[page.index('id="instances-table"') :]
    assert table.index(str(alert)) < table.index(str(ready)), "alerts first"
    tenants = page[page.index('id="tenants-table"') :]
    assert "studio-a" in tenants and "/ $30.00" in tenants
    # 65 minutes at $0.60/h, plus the seconds between making the rows and rendering the page (under load, several).
    figures = [float(x) for x in re.findall(r"\$(\d+\.\d{3})\b", tenants)]
    assert any(0.650 <= x < 0.660 for x in figures), figures


def test_creating_a_tenant_confirms_it_and_a_duplicate_is_refused_with_a_message(orch_env: OrchestratorEnv) -> None:
    client = _operator()
    created = _post(client, "/operator/tenants", {"tenant_name": "  northwind  "})
    assert created.status_code == 303
    page = client.get(created.headers["location"])
    assert "Tenant northwind created." in page.text

    again = _post(client, "/operator/tenants", {"tenant_name": "northwind"})
    assert again.status_code == 422
    assert re.search(r'id="error-tenant_name">[^<]*already exists', again.text)
    empty = _post(client, "/operator/tenants", {"tenant_name": "   "})
    assert empty.status_code == 422 and "must not be empty" in empty.text
    long = _post(client, "/operator/tenants", {"tenant_name": "x" * 300})
    assert long.status_code == 422 and "at most 100 characters" in long.text


def test_an_issued_key_is_shown_once_works_and_stops_working_when_revoked(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant("studio-k")
    client = _operator()

    issued = _post(client, f"/operator/tenants/{tenant.id}/keys", {"key_name": "ingest"})

    assert issued.status_code == 200
    assert issued.headers["cache-control"] == "no-store"
    match = re.search(r'id="issued-key" class="key-once" value="(mak_[^"]+)"', issued.text)
    assert match, issued.text
    plaintext = match.group(1)
    api = TestClient(create_app())
    assert api.get("/api/v1/jobs", headers={"Authorization": f"Bearer {plaintext}"}).status_code == 200
    overview = client.get("/operator").text
    assert plaintext not in overview, "the key is never shown again"
    with session_scope() as session:
        key = session.scalars(select(ApiKey).where(ApiKey.name == "ingest")).one()
    assert f"mak_{key.prefix}_…" in overview

    revoked = _post(client, f"/operator/keys/{key.id}/revoke")

    assert revoked.status_code == 303
    assert "revoked: it stopped working at once" in client.get(revoked.headers["location"]).text
    assert api.get("/api/v1/jobs", headers={"Authorization": f"Bearer {plaintext}"}).status_code == 401


@pytest.mark.parametrize("raw", [str(uuid.UUID(int=7)), "not-an-id", "%00"])
def test_unknown_or_malformed_ids_answer_a_404_page(orch_env: OrchestratorEnv, raw: str) -> None:
    client = _operator()
    for path in (f"/operator/tenants/{raw}/keys", f"/operator/keys/{raw}/revoke"):
        answer = _post(client, path)
        assert answer.status_code == 404, (path, answer.status_code)
        assert "Not found" in answer.text and "<html" in answer.text


def test_a_forged_notice_link_shows_nothing(orch_env: OrchestratorEnv) -> None:
    client = _operator()
    page = client.get("/operator?tenant_created=<script>&key_revoked=" + str(uuid.uuid4()))
    assert page.status_code == 200 and 'id="operator-notice"' not in page.text


def test_operators_create_member_and_operator_users_who_can_sign_in(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant("studio-u")
    client = _operator()

    member = _post(
        client,
        "/operator/users",
        {"username": "Alice", "password": TEST_PASSWORD, "role": "member", "user_tenant": str(tenant.id)},
    )
    operator = _post(client, "/operator/users", {"username": "bob", "password": TEST_PASSWORD, "role": "operator"})

    assert member.status_code == 303 and operator.status_code == 303
    assert "User alice created." in client.get(member.headers["location"]).text
    with session_scope() as session:
        users = {u.username: (u.role, u.tenant_id) for u in session.scalars(select(User))}
    assert users["alice"] == ("member", tenant.id) and users["bob"] == ("operator", None)


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"username": "carol", "password": "short", "role": "member", "user_tenant": "T"}, "password", "at least 10"),
        ({"username": "carol", "password": TEST_PASSWORD, "role": "member"}, "user_tenant", "a member belongs"),
        ({"username": "carol", "password": TEST_PASSWORD, "role": "root"}, "role", "choose one of"),
        ({"username": "c a", "password": TEST_PASSWORD, "role": "operator"}, "username", "letters, digits"),
        ({"username": "d", "password": TEST_PASSWORD, "role": "member", "user_tenant": "xyz"}, "user_tenant", "choose"),
        (
            {"username": "e", "password": TEST_PASSWORD, "role": "member", "user_tenant": str(uuid.UUID(int=3))},
            "user_tenant",
            "no longer exists",
        ),
    ],
)
def test_a_bad_user_form_is_answered_next_to_its_field(
    orch_env: OrchestratorEnv, form: dict[str, str], field: str, message: str
) -> None:
    tenant = make_tenant()
    client = _operator()
    data = {k: (str(tenant.id) if v == "T" else v) for k, v in form.items()}

    answer = _post(client, "/operator/users", data)

    assert answer.status_code == 422
    found = re.search(rf'id="error-{field}">([^<]*)<', answer.text)
    assert found and message in found.group(1), answer.text
    assert TEST_PASSWORD not in answer.text, "a password is never sent back"
    with session_scope() as session:
        assert session.scalars(select(User).where(User.username.in_(["carol", "d", "e"]))).first() is None


def test_a_duplicate_username_is_refused(orch_env: OrchestratorEnv) -> None:
    client = _operator()
    first = {"username": "dave", "password": TEST_PASSWORD, "role": "operator"}
    assert _post(client, "/operator/users", first).status_code == 303
    again = _post(client, "/operator/users", first)
    assert again.status_code == 422 and "already exists" in again.text


def test_operator_forms_without_the_csrf_token_change_nothing(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant("studio-c")
    client = _operator()
    assert client.post("/operator/tenants", data={"tenant_name": "x"}).status_code == 403
    assert client.post(f"/operator/tenants/{tenant.id}/keys", data={"key_name": "x"}).status_code == 403
    with session_scope() as session:
        assert session.scalars(select(ApiKey).where(ApiKey.name == "x")).first() is None
