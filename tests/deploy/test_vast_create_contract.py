"""infra/vast/template.md documents the body of Vast.ai's create call; these tests rent through the real scheduler
tick, provider and HTTP client against the fake Vast.ai server and compare what was sent with that document, so the
page cannot drift from the code."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from sqlalchemy import select

from orchestrator import budgets
from orchestrator.db.models import Instance
from orchestrator.db.session import session_scope
from tests.deploy.linters import ROOT
from tests.fixtures.cloud_harness import T0, CloudHarness, add_pending_batch
from tests.fixtures.factories import make_tenant

TEMPLATE = ROOT / "infra" / "vast" / "template.md"
CREATE_BODY_MARKER = "<!-- create-body:"


def documented_body() -> dict[str, Any]:
    """The JSON block that follows the create-body marker in infra/vast/template.md."""
    text = TEMPLATE.read_text()
    after_marker = text[text.index(CREATE_BODY_MARKER) :]
    match = re.search(r"```json\n(.*?)\n```", after_marker, flags=re.S)
    assert match is not None, "the create-body marker is followed by a json block"
    body: dict[str, Any] = json.loads(match.group(1))
    return body


def rent_one(h: CloudHarness) -> tuple[dict[str, Any], Instance]:
    """Let one scheduler tick rent for a tenant with pending work; the create body and the row it wrote."""
    tenant = make_tenant()
    with session_scope() as session:
        changes = {"daily_cap_usd": 10, "monthly_cap_usd": 100, "soft_cap_usd": 80, "scale_up_wait_s": 0}
        budgets.set_policy(session, tenant_id=tenant.id, changes=changes, now=T0)
    add_pending_batch(tenant.id, assets=4, created_at=T0)
    report = h.tick()
    assert len(report.rented) == 1, report.errors
    (create,) = h.fake.requests_to("PUT", "/api/v0/asks/")
    with session_scope() as session:
        row = session.scalars(select(Instance)).one()
        session.expunge(row)
    assert isinstance(create.body, dict)
    return create.body, row


def is_placeholder(value: Any) -> bool:
    """``<...>`` in the document: a value made per instance, compared by the other tests."""
    return isinstance(value, str) and value.startswith("<") and value.endswith(">")


def test_create_body_has_exactly_the_documented_fields_and_values(cloud_sqlite: CloudHarness) -> None:
    sent, _ = rent_one(cloud_sqlite)
    documented = documented_body()
    assert sorted(sent) == sorted(documented), "top-level fields"
    assert sorted(sent["env"]) == sorted(documented["env"]), "env variables and port flags"
    for key, value in documented.items():
        if key != "env" and not is_placeholder(value):
            assert sent[key] == value, key
    for key, value in documented["env"].items():
        if not is_placeholder(value):
            assert sent["env"][key] == value, key


def test_per_instance_values_are_the_rows_token_certificate_and_label(cloud_sqlite: CloudHarness) -> None:
    sent, row = rent_one(cloud_sqlite)
    env = sent["env"]
    assert env["GPUW_TOKEN"] == row.worker_token and len(env["GPUW_TOKEN"]) >= 43, "32 random bytes"
    assert env["GPUW_TLS_CERT_PEM"] == row.tls_cert_pem
    assert env["GPUW_TLS_KEY_PEM"].startswith("-----BEGIN PRIVATE KEY-----")
    stored = json.dumps([getattr(row, column.key) for column in Instance.__table__.columns], default=str)
    assert env["GPUW_TLS_KEY_PEM"] not in stored, "the instance's private key is not stored"
    assert sent["label"] == row.label == f"mam-{cloud_sqlite.settings.cloud_deployment}-{row.id}"
    assert uuid.UUID(sent["label"].removeprefix("mam-test-")) == row.id


def test_nothing_of_the_orchestrators_own_secrets_is_sent(cloud_sqlite: CloudHarness) -> None:
    h = cloud_sqlite
    sent, _ = rent_one(h)
    text = json.dumps(sent)
    secrets = [h.fake.api_key, h.settings.database_url, h.settings.broker_url, h.settings.secret_key]
    assert [s for s in secrets if s and s in text] == []
    assert not any(key.startswith("ORCH_") for key in sent["env"])
    (create,) = h.fake.requests_to("PUT", "/api/v0/asks/")
    assert create.headers["authorization"] == f"Bearer {h.fake.api_key}", "the key travels only in the header"
