"""Per-tenant settings: analysis defaults (analyzers, vocabulary, NSFW threshold) and the money and scaling policy,
validated field by field, saved all or nothing, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from orchestrator import budgets
from orchestrator.clock import utcnow
from orchestrator.db.models import TenantBudget, TenantSettingsRow
from orchestrator.db.session import session_scope
from orchestrator.errors import NotFoundError
from orchestrator.tenant_settings import (
    MAX_CATEGORIES,
    MAX_LABELS_PER_CATEGORY,
    SettingsValidationError,
    TenantSettings,
    get_tenant_settings,
    read_settings,
    save_settings,
    set_tenant_settings,
)
from tests.fixtures.factories import make_tenant
from tests.fixtures.services import OrchestratorEnv

pytestmark = pytest.mark.integration


def _refused(**settings: object) -> dict[str, str]:
    tenant = make_tenant()
    with pytest.raises(SettingsValidationError) as caught, session_scope() as session:
        set_tenant_settings(session, tenant_id=tenant.id, **settings)  # type: ignore[arg-type]
    with session_scope() as session:
        assert session.get(TenantSettingsRow, tenant.id) is None, "nothing was stored"
    return caught.value.fields


def test_a_tenant_without_settings_gets_the_defaults(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        assert get_tenant_settings(session, tenant_id=tenant.id) == TenantSettings(
            analyzers=["clip"], vocabulary=None, nsfw_threshold=0.5
        )


def test_saved_settings_are_read_back_cleaned(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        set_tenant_settings(
            session,
            tenant_id=tenant.id,
            analyzers=["clip", "faces", "clip"],
            vocabulary={" scene ": [" beach", "forest ", "beach"]},
            nsfw_threshold=0.7,
        )
    with session_scope() as session:
        assert get_tenant_settings(session, tenant_id=tenant.id) == TenantSettings(
            analyzers=["clip", "faces"], vocabulary={"scene": ["beach", "forest"]}, nsfw_threshold=0.7
        )


def test_an_empty_vocabulary_means_the_default_one(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        set_tenant_settings(session, tenant_id=tenant.id, analyzers=["clip"], vocabulary={}, nsfw_threshold=0.5)
    with session_scope() as session:
        row = session.get(TenantSettingsRow, tenant.id)
        assert row is not None and row.vocabulary is None
        assert get_tenant_settings(session, tenant_id=tenant.id).vocabulary is None


def test_unknown_analyzers_are_refused_naming_the_known_ones(orch_env: OrchestratorEnv) -> None:
    fields = _refused(analyzers=["clip", "ocr"], vocabulary=None, nsfw_threshold=0.5)
    assert set(fields) == {"analyzers"}
    assert "'ocr'" in fields["analyzers"] and "clip, objects, faces, transcribe, nsfw" in fields["analyzers"]


def test_no_analyzer_at_all_is_refused(orch_env: OrchestratorEnv) -> None:
    assert "at least one" in _refused(analyzers=[], vocabulary=None, nsfw_threshold=0.5)["analyzers"]


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), float("inf")])
def test_a_threshold_outside_zero_to_one_is_refused(orch_env: OrchestratorEnv, threshold: float) -> None:
    fields = _refused(analyzers=["clip"], vocabulary=None, nsfw_threshold=threshold)
    assert set(fields) == {"nsfw_threshold"} and "0 to 1" in fields["nsfw_threshold"]


@pytest.mark.parametrize(
    ("vocabulary", "expected"),
    [
        ({f"c{n}": ["x"] for n in range(MAX_CATEGORIES + 1)}, "has 51 categories; at most 50"),
        ({"scene": [f"l{n}" for n in range(MAX_LABELS_PER_CATEGORY + 1)]}, "has 501 labels; at most 500"),
        ({"scene": ["x" * 101]}, "1-100 characters"),
        ({"scene": []}, "has no labels"),
        ({"scene": ["  "]}, "1-100 characters"),
        ({"": ["beach"]}, "category name"),
        ({"a/b": ["beach"]}, "without ':', ',' or '/'"),
        ({"scene": "beach"}, "must have a list of labels"),
    ],
)
def test_a_bad_vocabulary_is_refused_with_what_is_allowed(
    orch_env: OrchestratorEnv, vocabulary: object, expected: str
) -> None:
    fields = _refused(analyzers=["clip"], vocabulary=vocabulary, nsfw_threshold=0.5)
    assert set(fields) == {"vocabulary"} and expected in fields["vocabulary"], fields


def test_every_bad_field_is_reported_at_once(orch_env: OrchestratorEnv) -> None:
    fields = _refused(analyzers=["nope"], vocabulary={"scene": []}, nsfw_threshold=3)
    assert set(fields) == {"analyzers", "vocabulary", "nsfw_threshold"}


def test_settings_of_an_unknown_tenant_are_not_found(orch_env: OrchestratorEnv) -> None:
    with pytest.raises(NotFoundError), session_scope() as session:
        set_tenant_settings(session, tenant_id=uuid.uuid4(), analyzers=["clip"], vocabulary=None, nsfw_threshold=0.5)


def _spend_today(tenant_id: uuid.UUID, usd: float) -> None:
    """Run one instance for up to half an hour of today (UTC) so that it costs ``usd``, and settle it."""
    now = utcnow()
    start = max(now - timedelta(minutes=30), now.replace(hour=0, minute=0, second=0, microsecond=0))
    hours = max((now - start).total_seconds(), 1.0) / 3600
    with session_scope() as session:
        budgets.reserve(
            session, tenant_id=tenant_id, instance_id="i-spent", price_per_h_usd=usd / hours, amount_usd=0.1, now=start
        )
    with session_scope() as session:
        budgets.settle(session, tenant_id=tenant_id, instance_id="i-spent", now=start + timedelta(hours=hours))


def test_a_hard_cap_below_what_was_already_spent_is_refused_naming_the_spend(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(
            session,
            tenant_id=tenant.id,
            changes={"daily_cap_usd": 10, "monthly_cap_usd": 100, "soft_cap_usd": 2},
            now=utcnow(),
        )
    _spend_today(tenant.id, 3.0)

    with pytest.raises(budgets.PolicyError) as caught, session_scope() as session:
        budgets.set_policy(
            session, tenant_id=tenant.id, changes={"daily_cap_usd": 2, "monthly_cap_usd": 2.5}, now=utcnow()
        )

    fields = caught.value.fields
    assert fields["daily_cap_usd"].startswith("$2.00 is below what was already spent today ($3.00)")
    assert "set it to at least $3.0" in fields["daily_cap_usd"]
    assert "already spent this month ($3.00)" in fields["monthly_cap_usd"]
    with session_scope() as session:
        assert budgets.get_policy(session, tenant_id=tenant.id).daily_cap_usd == 10, "nothing was stored"
        budgets.set_policy(session, tenant_id=tenant.id, changes={"daily_cap_usd": 3.01}, now=utcnow())


def test_an_unchanged_cap_does_not_block_saving_other_settings_after_a_tick_of_overshoot(
    orch_env: OrchestratorEnv,
) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        budgets.set_policy(session, tenant_id=tenant.id, changes={"daily_cap_usd": 2.9}, now=utcnow())
    _spend_today(tenant.id, 3.0)
    with session_scope() as session:
        policy = budgets.set_policy(
            session, tenant_id=tenant.id, changes={"daily_cap_usd": 2.9, "idle_timeout_s": 60}, now=utcnow()
        )
    assert policy.idle_timeout_s == 60


@pytest.mark.parametrize(
    ("changes", "field", "expected"),
    [
        ({"daily_cap_usd": -1}, "daily_cap_usd", "must not be negative (got -1)"),
        ({"max_price_per_h_usd": -0.5}, "max_price_per_h_usd", "must not be negative"),
        ({"idle_timeout_s": -5}, "idle_timeout_s", "must not be negative"),
        ({"min_instances": 3, "max_instances": 2}, "min_instances", "min 3 is more than max 2"),
        ({"soft_cap_usd": 500, "monthly_cap_usd": 100}, "soft_cap_usd", "must not exceed the monthly cap ($100.00)"),
        ({"daily_cap_usd": 1e300}, "daily_cap_usd", "is too large"),
        ({"daily_cap_usd": float("inf")}, "daily_cap_usd", "a number from 0 to"),
        ({"max_instances": 2.5}, "max_instances", "whole number"),
        ({"max_instances": "two"}, "max_instances", "must be a number, not 'two'"),
        ({"tiers": []}, "tiers", "at least one tier"),
        ({"tiers": ["cloud", "gpu"]}, "tiers", "must be a list of cloud, local, cpu"),
        ({"colour": "red"}, "colour", "unknown policy setting"),
    ],
)
def test_a_bad_policy_value_is_refused_naming_its_field(
    orch_env: OrchestratorEnv, changes: dict[str, object], field: str, expected: str
) -> None:
    tenant = make_tenant()
    with pytest.raises(budgets.PolicyError) as caught, session_scope() as session:
        budgets.set_policy(session, tenant_id=tenant.id, changes=changes, now=utcnow())
    assert expected in caught.value.fields[field], caught.value.fields
    assert field in caught.value.message


def test_the_settings_document_saves_policy_and_analysis_together(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        document = save_settings(
            session,
            tenant_id=tenant.id,
            values={
                "daily_cap_usd": 12.5,
                "max_instances": 3,
                "gpu_names": ["RTX 5090", " RTX 5090 ", ""],
                "tiers": ["cloud", "cpu"],
                "analyzers": ["clip", "objects"],
                "vocabulary": {"scene": ["beach"]},
            },
            now=utcnow(),
        )
    assert (document.daily_cap_usd, document.max_instances, document.gpu_names) == (12.5, 3, ["RTX 5090"])
    assert document.tiers == ["cloud", "cpu"] and document.budget_configured and document.analysis_saved
    with session_scope() as session:
        again = read_settings(session, tenant_id=tenant.id)
        policy = budgets.get_policy(session, tenant_id=tenant.id)
    assert again == document
    assert policy.filters.min_cuda == 12.8, "the other offer filters keep their values"


def test_one_bad_field_saves_nothing_of_the_document(orch_env: OrchestratorEnv) -> None:
    tenant = make_tenant()
    with pytest.raises(SettingsValidationError) as caught, session_scope() as session:
        save_settings(
            session,
            tenant_id=tenant.id,
            values={"daily_cap_usd": 12.5, "analyzers": ["clip"], "nsfw_threshold": 2, "min_instances": -1},
            now=utcnow(),
        )
    assert set(caught.value.fields) == {"nsfw_threshold", "min_instances"}
    with session_scope() as session:
        assert session.get(TenantBudget, tenant.id) is None
        assert session.scalars(select(TenantSettingsRow)).all() == []
