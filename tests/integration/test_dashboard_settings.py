"""The settings page, the live spend page and the settings REST document, as a signed-in member uses them."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient

from orchestrator import budgets
from orchestrator.accounts import Role
from orchestrator.api.main import create_app
from orchestrator.clock import utcnow
from orchestrator.db.models import SchedulerEvent, TenantBudget, TenantSettingsRow
from orchestrator.db.session import session_scope
from orchestrator.tenant_settings import get_tenant_settings
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.web import SignedInClient, signed_in_client

pytestmark = pytest.mark.integration

# starlette's TestClient answers with an httpx2 (or, on older versions, httpx) response.
ClientResponse = Any

GOOD_FORM = {
    "daily_cap_usd": "12.50",
    "monthly_cap_usd": "150",
    "soft_cap_usd": "120",
    "max_price_per_h_usd": "0.8",
    "min_instances": "0",
    "max_instances": "3",
    "idle_timeout_s": "300",
    "max_gpu_wait_s": "600",
    "gpu_names": "RTX 5090, RTX 4090",
    "tier-cloud": "1",
    "tier-cpu": "1",
    "analyzer-clip": "1",
    "analyzer-faces": "1",
    "vocabulary": "scene: beach, forest\n\nmood: calm, busy",
    "nsfw_threshold": "0.6",
}


class _Form(HTMLParser):
    """The inputs of a page and the labels that name them."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, dict[str, str | None]] = {}
        self.labelled: set[str] = set()
        self.texts: dict[str, str] = {}
        self._label_depth = 0
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label":
            self._label_depth += 1
            if a.get("for"):
                self.labelled.add(str(a["for"]))
        if tag in ("input", "select", "textarea") and a.get("type") not in ("hidden", "submit"):
            self.fields[str(a.get("id"))] = a
            if self._label_depth:
                self.labelled.add(str(a.get("id")))
        if tag == "textarea":
            self._textarea = str(a.get("id"))
            self.texts[self._textarea] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_depth -= 1
        if tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.texts[self._textarea] += data


def _form(html: str) -> _Form:
    parser = _Form()
    parser.feed(html)
    return parser


def _member() -> SignedInClient:
    return signed_in_client(create_app(), tenant_name=f"studio-{uuid.uuid4().hex[:6]}")


def _post(client: SignedInClient, form: dict[str, str]) -> ClientResponse:
    return client.post("/settings", data={**form, "csrf_token": client.csrf_token}, follow_redirects=False)


def _error(html: str, field: str) -> str:
    match = re.search(rf'id="error-{re.escape(field)}">([^<]*)<', html)
    assert match, f"no error for {field}"
    return match.group(1)


def test_the_settings_page_shows_every_setting_with_a_label_and_states_that_caps_are_hard(
    orch_env: OrchestratorEnv,
) -> None:
    client = _member()
    page = client.get("/settings")

    assert page.status_code == 200
    form = _form(page.text)
    expected = {
        "daily_cap_usd",
        "monthly_cap_usd",
        "soft_cap_usd",
        "max_price_per_h_usd",
        "min_instances",
        "max_instances",
        "idle_timeout_s",
        "max_gpu_wait_s",
        "gpu_names",
        "tier-cloud",
        "tier-local",
        "tier-cpu",
        "analyzer-clip",
        "analyzer-objects",
        "analyzer-faces",
        "analyzer-transcribe",
        "analyzer-nsfw",
        "vocabulary",
        "nsfw_threshold",
    }
    assert expected <= set(form.fields), expected - set(form.fields)
    assert set(form.fields) <= form.labelled, f"inputs without a label: {set(form.fields) - form.labelled}"
    assert form.fields["daily_cap_usd"]["value"] == "20" and form.fields["max_instances"]["value"] == "4"
    assert form.fields["gpu_names"]["value"] == "RTX 5090, RTX 4090"
    assert "checked" in form.fields["tier-cloud"] and "checked" in form.fields["analyzer-clip"]
    assert "checked" not in form.fields["analyzer-faces"]
    assert "The caps are hard: the scheduler never rents past them." in page.text
    assert 'id="no-budget"' in page.text and 'id="save-settings"' in page.text


def test_saving_the_form_stores_everything_and_shows_a_saved_notice(orch_env: OrchestratorEnv) -> None:
    client = _member()
    answer = _post(client, GOOD_FORM)

    assert answer.status_code == 303 and answer.headers["location"] == "/settings?saved=1"
    page = client.get("/settings?saved=1")
    assert 'id="saved-notice"' in page.text and 'id="no-budget"' not in page.text
    form = _form(page.text)
    assert form.fields["daily_cap_usd"]["value"] == "12.5" and form.fields["max_instances"]["value"] == "3"
    assert "checked" not in form.fields["tier-local"] and "checked" in form.fields["analyzer-faces"]
    assert form.texts["vocabulary"] == "scene: beach, forest\nmood: calm, busy"
    assert client.tenant_id is not None
    with session_scope() as session:
        policy = budgets.get_policy(session, tenant_id=client.tenant_id)
        analysis = get_tenant_settings(session, tenant_id=client.tenant_id)
    assert (policy.daily_cap_usd, policy.monthly_cap_usd, policy.soft_cap_usd) == (12.5, 150.0, 120.0)
    assert (policy.max_price_per_h_usd, policy.max_instances, policy.idle_timeout_s) == (0.8, 3, 300.0)
    assert policy.filters.gpu_names == ("RTX 5090", "RTX 4090") and [t.value for t in policy.tiers] == ["cloud", "cpu"]
    assert analysis.analyzers == ["clip", "faces"] and analysis.nsfw_threshold == 0.6
    assert analysis.vocabulary == {"scene": ["beach", "forest"], "mood": ["calm", "busy"]}


def test_bad_values_re_render_the_form_with_a_message_per_field_and_save_nothing(orch_env: OrchestratorEnv) -> None:
    client = _member()
    bad = {
        **GOOD_FORM,
        "daily_cap_usd": "lots",
        "monthly_cap_usd": "-5",
        "min_instances": "5",
        "max_instances": "2",
        "idle_timeout_s": "1e999",
        "max_gpu_wait_s": "9" * 60,
        "nsfw_threshold": "1.5",
        "vocabulary": "scene beach forest",
    }
    del bad["tier-cloud"], bad["tier-cpu"]

    answer = _post(client, bad)

    assert answer.status_code == 422
    html = answer.text
    assert "not a number" in _error(html, "daily_cap_usd")
    assert "must not be negative (got -5)" in _error(html, "monthly_cap_usd")
    assert "min 5 is more than max 2" in _error(html, "min_instances")
    assert "finite number" in _error(html, "idle_timeout_s")
    assert "too long" in _error(html, "max_gpu_wait_s")
    assert "0 to 1" in _error(html, "nsfw_threshold")
    assert "line 1: write a category, a colon" in _error(html, "vocabulary")
    assert "at least one tier" in _error(html, "tiers")
    form = _form(html)
    assert form.fields["daily_cap_usd"]["value"] == "lots", "what the user typed is shown again"
    assert form.texts["vocabulary"] == "scene beach forest"
    assert client.tenant_id is not None
    with session_scope() as session:
        assert session.get(TenantBudget, client.tenant_id) is None
        assert session.get(TenantSettingsRow, client.tenant_id) is None


def test_a_cap_below_todays_spend_is_refused_with_the_spend_in_the_message(orch_env: OrchestratorEnv) -> None:
    client = _member()
    assert client.tenant_id is not None
    now = utcnow()
    # $5 spent today (UTC), within the last half hour.
    start = max(now - timedelta(minutes=30), now.replace(hour=0, minute=0, second=0, microsecond=0))
    hours = max((now - start).total_seconds(), 1.0) / 3600
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=client.tenant_id, changes={"daily_cap_usd": 20}, now=start)
        budgets.reserve(
            session, tenant_id=client.tenant_id, instance_id="i-1", price_per_h_usd=5 / hours, amount_usd=1, now=start
        )
    with session_scope() as session:
        budgets.settle(session, tenant_id=client.tenant_id, instance_id="i-1", now=start + timedelta(hours=hours))

    answer = _post(client, {**GOOD_FORM, "daily_cap_usd": "4"})

    assert answer.status_code == 422
    assert "$4.00 is below what was already spent today ($5.00)" in _error(answer.text, "daily_cap_usd")
    with session_scope() as session:
        assert budgets.get_policy(session, tenant_id=client.tenant_id).daily_cap_usd == 20


def test_a_post_without_the_csrf_token_changes_nothing(orch_env: OrchestratorEnv) -> None:
    client = _member()
    answer = client.post("/settings", data=GOOD_FORM, follow_redirects=False)
    assert answer.status_code == 403
    assert client.tenant_id is not None
    with session_scope() as session:
        assert session.get(TenantBudget, client.tenant_id) is None


def test_allowed_tiers_keep_their_order_when_saved_again(orch_env: OrchestratorEnv) -> None:
    client = _member()
    assert client.tenant_id is not None
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=client.tenant_id, changes={"tiers": ["local", "cloud"]}, now=utcnow())
    _post(client, {**GOOD_FORM, "tier-local": "1", "tier-cloud": "1", "tier-cpu": "1"})
    with session_scope() as session:
        tiers = [t.value for t in budgets.get_policy(session, tenant_id=client.tenant_id).tiers]
    assert tiers == ["local", "cloud", "cpu"]


def test_an_operator_without_a_tenant_is_told_so_on_the_settings_and_spend_pages(orch_env: OrchestratorEnv) -> None:
    client = signed_in_client(create_app(), tenant_name=None, role=Role.OPERATOR)
    for path in ("/settings", "/spend", "/spend/live"):
        page = client.get(path)
        assert page.status_code == 403 and "without a tenant" in page.text


def test_pages_ask_a_stranger_to_sign_in(orch_env: OrchestratorEnv) -> None:
    client = TestClient(create_app())
    for path in ("/settings", "/spend"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")


def test_the_spend_page_shows_caps_chart_instances_and_decisions_and_refreshes_live(orch_env: OrchestratorEnv) -> None:
    client = _member()
    assert client.tenant_id is not None
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=client.tenant_id, changes={"daily_cap_usd": 10}, now=utcnow())
        session.add(
            SchedulerEvent(
                tenant_id=client.tenant_id,
                at=utcnow(),
                kind="wait",
                reason="below_threshold",
                message="waiting: a backlog of 50 GPU-s <small>",
            )
        )

    page = client.get("/spend")
    live = client.get("/spend/live")

    assert page.status_code == 200 and live.status_code == 200
    assert 'data-live-url="/spend/live"' in page.text and "/static/live.js" in page.text
    assert "<html" not in live.text and 'data-live-final="true"' not in live.text
    for html in (page.text, live.text):
        assert 'id="cap-today"' in html and "of $10.00" in html
        assert html.count('<svg class="chart"') == 2 and '<title id="chart-hourly-title">' in html
        assert "The caps are hard: the scheduler never rents past them." in html
        assert "waiting: a backlog of 50 GPU-s &lt;small&gt;" in html, "messages are escaped"
        assert 'id="no-instances"' in html


def test_the_settings_document_over_rest_reads_saves_and_refuses_with_field_messages(
    orch_env: OrchestratorEnv,
) -> None:
    client = _member()
    got = client.get("/api/v1/settings")
    assert got.status_code == 200 and got.json()["budget_configured"] is False

    refused = client.put(
        "/api/v1/settings",
        json={"daily_cap_usd": -1, "analyzers": ["ocr"]},
        headers={"X-CSRF-Token": client.csrf_token},
    )
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert detail["code"] == "invalid_settings" and set(detail["fields"]) == {"daily_cap_usd", "analyzers"}

    saved = client.put(
        "/api/v1/settings",
        json={"daily_cap_usd": 7, "vocabulary": {"scene": ["beach"]}},
        headers={"X-CSRF-Token": client.csrf_token},
    )
    assert saved.status_code == 200, saved.text
    body = saved.json()
    assert body["daily_cap_usd"] == 7 and body["vocabulary"] == {"scene": ["beach"]} and body["budget_configured"]
    assert client.put("/api/v1/settings", json={"daily_cap_usd": 8}).status_code == 403, "the cookie needs CSRF"
