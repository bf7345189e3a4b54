"""Signing in and out of the dashboard, sessions, CSRF, and the REST API used with the dashboard's cookie."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from orchestrator.accounts import Role
from orchestrator.api.dashboard.auth_pages import MAX_FAILURES
from orchestrator.api.dashboard.web import SESSION_COOKIE
from orchestrator.api.main import create_app
from orchestrator.cli import app as cli_app
from orchestrator.db.models import ApiKey, WebSession
from orchestrator.db.session import session_scope
from orchestrator.tenants import revoke_api_key
from tests.fixtures.factories import make_tenant
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.web import TEST_PASSWORD, csrf_of, login_token, make_user, signed_in_client

pytestmark = pytest.mark.integration


def _sign_in(client: TestClient, **fields: str) -> object:
    return client.post("/login", data={"login_token": login_token(client), **fields}, follow_redirects=False)


def test_a_page_without_a_session_sends_the_browser_to_sign_in_and_back(orch_env: OrchestratorEnv) -> None:
    client = TestClient(create_app())
    answer = client.get("/account?tab=2", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=/account%3Ftab%3D2"


def test_password_sign_in_sets_a_secure_http_only_same_site_cookie(orch_env: OrchestratorEnv) -> None:
    username, _ = make_user(tenant_name="acme")
    client = TestClient(create_app(), base_url="https://dash.example")
    answer = _sign_in(client, username=username.upper(), password=TEST_PASSWORD, next="/account")
    assert answer.status_code == 303 and answer.headers["location"] == "/account"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=lax", "Secure", "Path=/"):
        assert attribute.lower() in cookie.lower(), cookie
    page = client.get("/account")
    assert page.status_code == 200 and username in page.text and "acme" in page.text
    with session_scope() as session:
        stored = [row.token_hash for row in session.query(WebSession)]
    token = client.cookies[SESSION_COOKIE]
    assert token not in stored, "only a hash of the cookie is stored"


def test_a_wrong_password_is_refused_with_a_message_and_no_session(orch_env: OrchestratorEnv) -> None:
    username, _ = make_user(tenant_name="acme")
    client = TestClient(create_app())
    answer = _sign_in(client, username=username, password="not the password")
    assert answer.status_code == 401
    assert "Wrong username or password" in answer.text
    assert SESSION_COOKIE not in client.cookies
    unknown = _sign_in(client, username="nobody", password="whatever-long")
    assert unknown.status_code == 401 and "Wrong username or password" in unknown.text


def test_a_sign_in_posted_from_another_site_is_refused(orch_env: OrchestratorEnv) -> None:
    username, _ = make_user(tenant_name="acme")
    client = TestClient(create_app())
    answer = client.post("/login", data={"username": username, "password": TEST_PASSWORD, "login_token": "forged"})
    assert answer.status_code == 400 and "expired" in answer.text
    assert SESSION_COOKIE not in client.cookies


def test_repeated_failures_are_throttled_with_retry_after(orch_env: OrchestratorEnv) -> None:
    username, _ = make_user(tenant_name="acme")
    client = TestClient(create_app())
    for _ in range(MAX_FAILURES):
        assert _sign_in(client, username=username, password="wrong password").status_code == 401
    blocked = _sign_in(client, username=username, password=TEST_PASSWORD)
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    assert SESSION_COOKIE not in client.cookies


def test_signing_out_ends_the_session_on_the_server(orch_env: OrchestratorEnv) -> None:
    client = signed_in_client(create_app())
    token = client.cookies[SESSION_COOKIE]
    answer = client.post("/logout", data={"csrf_token": client.csrf_token}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    replay = TestClient(create_app(), cookies={SESSION_COOKIE: token})
    assert replay.get("/account", follow_redirects=False).status_code == 303
    with session_scope() as session:
        assert session.query(WebSession).count() == 0


def test_sign_out_without_the_csrf_token_is_refused(orch_env: OrchestratorEnv) -> None:
    client = signed_in_client(create_app())
    answer = client.post("/logout", data={"csrf_token": "forged"}, follow_redirects=False)
    assert answer.status_code == 403 and "Reload the page" in answer.text
    assert client.get("/account").status_code == 200, "the session is still open"


def test_an_api_key_opens_its_tenant_and_revoking_the_key_ends_the_session(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant("keyed")
    client = TestClient(create_app())
    assert _sign_in(client, api_key=tenant.key, next="/account").status_code == 303
    assert "keyed" in client.get("/account").text
    with session_scope() as session:
        key = session.query(ApiKey).filter_by(tenant_id=tenant.id).one()
        revoke_api_key(session, key_id=key.id)
    assert client.get("/account", follow_redirects=False).status_code == 303


def test_the_admin_token_opens_an_operator_session_without_a_tenant(orch_env: OrchestratorEnv) -> None:
    client = TestClient(create_app())
    assert _sign_in(client, api_key=orch_env.admin_token).status_code == 303
    page = client.get("/account")
    assert "operator" in page.text
    assert client.get("/", follow_redirects=False).headers["location"] == "/operator"
    assert client.get("/api/v1/admin/tenants").status_code == 200


def test_a_member_is_not_an_operator(orch_env: OrchestratorEnv) -> None:
    client = signed_in_client(create_app())
    assert client.get("/api/v1/admin/tenants").status_code == 403


def test_the_rest_api_accepts_the_session_cookie_and_wants_csrf_on_writes(orch_env: OrchestratorEnv) -> None:
    client = signed_in_client(create_app(), tenant_name="acme")
    assert client.get("/api/v1/jobs").json()["count"] == 0
    refused = client.post("/api/v1/jobs", json={"name": "from the browser"})
    assert refused.status_code == 403 and refused.json()["detail"]["code"] == "csrf_failed"
    created = client.post(
        "/api/v1/jobs", json={"name": "from the browser"}, headers={"X-CSRF-Token": client.csrf_token}
    )
    assert created.status_code == 201
    assert client.get("/api/v1/jobs").json()["count"] == 1


def test_a_disabled_user_is_signed_out_at_once(orch_env: OrchestratorEnv) -> None:
    client = signed_in_client(create_app())
    result = CliRunner().invoke(cli_app, ["users", "disable", client.username])
    assert result.exit_code == 0, result.output
    assert client.get("/account", follow_redirects=False).status_code == 303


def test_users_are_created_from_the_command_line_with_the_password_on_stdin(orch_env: OrchestratorEnv) -> None:
    make_tenant("studio")
    runner = CliRunner()
    made = runner.invoke(
        cli_app, ["users", "add", "Ada", "--tenant", "studio", "--password-stdin"], input="long enough pw\n"
    )
    assert made.exit_code == 0, made.output
    short = runner.invoke(cli_app, ["users", "add", "bob", "--tenant", "studio", "--password-stdin"], input="short\n")
    assert short.exit_code != 0 and "at least 10 characters" in short.output
    orphan = runner.invoke(cli_app, ["users", "add", "carol", "--password-stdin"], input="long enough pw\n")
    assert orphan.exit_code != 0 and "must belong to a tenant" in orphan.output
    listed = runner.invoke(cli_app, ["users", "list"])
    assert "ada" in listed.output and "studio" in listed.output
    client = TestClient(create_app())
    assert _sign_in(client, username="ada", password="long enough pw").status_code == 303


def test_an_operator_user_signs_in_with_a_password(orch_env: OrchestratorEnv) -> None:
    client = signed_in_client(create_app(), tenant_name=None, role=Role.OPERATOR)
    assert "operator" in client.get("/account").text


def test_unknown_pages_answer_an_html_404_and_unknown_api_routes_json(orch_env: OrchestratorEnv) -> None:
    client = signed_in_client(create_app())
    page = client.get("/no-such-page")
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]
    assert "There is no such page" in page.text
    api = client.get("/api/v1/no-such-route")
    assert api.status_code == 404 and api.headers["content-type"].startswith("application/json")


def test_pages_carry_a_strict_content_security_policy(orch_env: OrchestratorEnv) -> None:
    client = TestClient(create_app())
    page = client.get("/login")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert csrf_of(page.text) == "", "no session, no CSRF token on the page"
