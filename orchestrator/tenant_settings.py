"""A tenant's analysis settings: the analyzers its jobs run by default, its tag vocabulary and its NSFW threshold.

No stored row means the defaults. ``set_tenant_settings`` validates everything before it writes anything, and
reports every bad field at once (``SettingsValidationError.fields``), so a form can show each message next to its
field.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from orchestrator import budgets
from orchestrator.clock import utcnow
from orchestrator.db.models import Tenant, TenantBudget, TenantSettingsRow
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.jobs import KNOWN_ANALYZERS

DEFAULT_ANALYZERS: tuple[str, ...] = ("clip",)
DEFAULT_NSFW_THRESHOLD = 0.5
MAX_CATEGORIES = 50
MAX_LABELS_PER_CATEGORY = 500
MAX_LABEL_CHARS = 100
MAX_CATEGORY_CHARS = 64
# The dashboard writes a vocabulary as "category: label, label" lines, so these would not survive a round trip; the
# worker refuses "/" in a category name (tags are "category/label").
FORBIDDEN_IN_CATEGORY = frozenset(":,/\n\r\t")
FORBIDDEN_IN_LABEL = frozenset(",\n\r\t")


class SettingsValidationError(ConflictError):
    """One or more settings are invalid; ``fields`` maps each bad field to a message that says what is allowed."""

    code = "invalid_settings"

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.fields = dict(fields)
        super().__init__("; ".join(f"{name}: {message}" for name, message in self.fields.items()))


@dataclass(frozen=True)
class TenantSettings:
    """What new jobs of a tenant run with, unless the job says otherwise. ``vocabulary`` None: the default one."""

    analyzers: list[str]
    vocabulary: dict[str, list[str]] | None
    nsfw_threshold: float = DEFAULT_NSFW_THRESHOLD


@dataclass
class _Problems:
    fields: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, message: str) -> None:
        self.fields.setdefault(name, message)


def _clean_analyzers(analyzers: object, problems: _Problems) -> list[str]:
    if not isinstance(analyzers, list | tuple) or not all(isinstance(a, str) for a in analyzers):
        problems.add("analyzers", "must be a list of analyzer names")
        return []
    chosen = list(dict.fromkeys(a.strip() for a in analyzers))
    unknown = [a for a in chosen if a not in KNOWN_ANALYZERS]
    if unknown:
        problems.add(
            "analyzers", f"unknown analyzer {', '.join(map(repr, unknown))}; known: {', '.join(KNOWN_ANALYZERS)}"
        )
    elif not chosen:
        problems.add("analyzers", f"choose at least one analyzer ({', '.join(KNOWN_ANALYZERS)})")
    return chosen


def _clean_vocabulary(vocabulary: object, problems: _Problems) -> dict[str, list[str]] | None:
    if vocabulary is None:
        return None
    if not isinstance(vocabulary, Mapping):
        problems.add("vocabulary", "must map each category to a list of labels, or be null for the default")
        return None
    if not vocabulary:
        return None
    if len(vocabulary) > MAX_CATEGORIES:
        problems.add("vocabulary", f"has {len(vocabulary)} categories; at most {MAX_CATEGORIES} are allowed")
        return None
    cleaned: dict[str, list[str]] = {}
    for raw_name, raw_labels in vocabulary.items():
        name = raw_name.strip() if isinstance(raw_name, str) else ""
        if not name or len(name) > MAX_CATEGORY_CHARS or FORBIDDEN_IN_CATEGORY & set(name):
            problems.add(
                "vocabulary",
                f"category name {str(raw_name)[:MAX_CATEGORY_CHARS]!r} must be 1-{MAX_CATEGORY_CHARS} characters "
                "without ':', ',' or '/'",
            )
            return None
        if name in cleaned:
            problems.add("vocabulary", f"category {name!r} appears twice")
            return None
        if not isinstance(raw_labels, list | tuple) or not all(isinstance(label, str) for label in raw_labels):
            problems.add("vocabulary", f"category {name!r} must have a list of labels")
            return None
        labels = list(dict.fromkeys(label.strip() for label in raw_labels))
        if not labels:
            problems.add("vocabulary", f"category {name!r} has no labels; give at least one or remove it")
            return None
        if len(labels) > MAX_LABELS_PER_CATEGORY:
            problems.add(
                "vocabulary",
                f"category {name!r} has {len(labels)} labels; at most {MAX_LABELS_PER_CATEGORY} are allowed",
            )
            return None
        for label in labels:
            if not label or len(label) > MAX_LABEL_CHARS or FORBIDDEN_IN_LABEL & set(label):
                problems.add(
                    "vocabulary",
                    f"label {label[:MAX_LABEL_CHARS]!r} in category {name!r} must be 1-{MAX_LABEL_CHARS} characters "
                    "without ','",
                )
                return None
        cleaned[name] = labels
    return cleaned


def _clean_threshold(value: object, problems: _Problems) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems.add("nsfw_threshold", f"must be a number from 0 to 1, not {str(value)[:40]!r}")
        return DEFAULT_NSFW_THRESHOLD
    if not 0.0 <= value <= 1.0:
        problems.add("nsfw_threshold", f"must be from 0 to 1, not {value:g}")
    return float(value)


def validate_tenant_settings(
    *, analyzers: Sequence[str], vocabulary: Mapping[str, Sequence[str]] | None, nsfw_threshold: float
) -> TenantSettings:
    """The cleaned settings (names trimmed, repeats dropped); raises SettingsValidationError naming every bad field.

    Rules: known analyzers only, at least one; the vocabulary (None or empty: the default) has at most
    ``MAX_CATEGORIES`` categories of 1 to ``MAX_LABELS_PER_CATEGORY`` labels, each label 1-``MAX_LABEL_CHARS``
    characters; the threshold is in [0, 1].
    """
    problems = _Problems()
    settings = TenantSettings(
        analyzers=_clean_analyzers(analyzers, problems),
        vocabulary=_clean_vocabulary(vocabulary, problems),
        nsfw_threshold=_clean_threshold(nsfw_threshold, problems),
    )
    if problems.fields:
        raise SettingsValidationError(problems.fields)
    return settings


def default_tenant_settings() -> TenantSettings:
    """The settings of a tenant that never saved any."""
    return TenantSettings(analyzers=list(DEFAULT_ANALYZERS), vocabulary=None, nsfw_threshold=DEFAULT_NSFW_THRESHOLD)


def get_tenant_settings(session: Session, *, tenant_id: uuid.UUID) -> TenantSettings:
    """The tenant's settings; the defaults when it never saved any."""
    row = session.get(TenantSettingsRow, tenant_id)
    if row is None:
        return default_tenant_settings()
    vocabulary: dict[str, Any] | None = row.vocabulary
    return TenantSettings(
        analyzers=list(row.analyzers),
        vocabulary={str(k): [str(label) for label in v] for k, v in vocabulary.items()} if vocabulary else None,
        nsfw_threshold=row.nsfw_threshold,
    )


def set_tenant_settings(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    analyzers: Sequence[str],
    vocabulary: Mapping[str, Sequence[str]] | None,
    nsfw_threshold: float,
) -> TenantSettings:
    """Validate and store the tenant's settings in the caller's transaction; returns them as stored.

    Raises SettingsValidationError (nothing written) or NotFoundError for an unknown tenant.
    """
    settings = validate_tenant_settings(analyzers=analyzers, vocabulary=vocabulary, nsfw_threshold=nsfw_threshold)
    store_tenant_settings(session, tenant_id=tenant_id, settings=settings)
    return settings


def store_tenant_settings(session: Session, *, tenant_id: uuid.UUID, settings: TenantSettings) -> None:
    """Write already validated settings (``validate_tenant_settings``) in the caller's transaction."""
    if session.get(Tenant, tenant_id) is None:
        raise NotFoundError("tenant not found")
    row = session.get(TenantSettingsRow, tenant_id)
    if row is None:
        row = TenantSettingsRow(tenant_id=tenant_id)
        session.add(row)
    row.analyzers = list(settings.analyzers)
    row.vocabulary = {k: list(v) for k, v in settings.vocabulary.items()} if settings.vocabulary else None
    row.nsfw_threshold = settings.nsfw_threshold
    row.updated_at = utcnow()
    session.flush()


POLICY_KEYS = (
    "daily_cap_usd",
    "monthly_cap_usd",
    "soft_cap_usd",
    "max_price_per_h_usd",
    "min_instances",
    "max_instances",
    "idle_timeout_s",
    "max_gpu_wait_s",
)
ANALYSIS_KEYS = ("analyzers", "vocabulary", "nsfw_threshold")
DOCUMENT_KEYS = (*POLICY_KEYS, "gpu_names", "tiers", *ANALYSIS_KEYS)


@dataclass(frozen=True)
class SettingsDocument:
    """A tenant's money, scaling and analysis settings in one document (the settings page and ``/api/v1/settings``).

    ``budget_configured`` is False while the tenant never saved a budget: the scheduler rents no GPU for it then.
    ``analysis_saved`` is False while the tenant never saved analysis settings: jobs use the deployment's defaults.
    """

    daily_cap_usd: float
    monthly_cap_usd: float
    soft_cap_usd: float
    max_price_per_h_usd: float
    min_instances: int
    max_instances: int
    idle_timeout_s: float
    max_gpu_wait_s: float
    gpu_names: list[str]
    tiers: list[str]
    analyzers: list[str]
    vocabulary: dict[str, list[str]] | None
    nsfw_threshold: float
    budget_configured: bool
    analysis_saved: bool


def read_settings(
    session: Session, *, tenant_id: uuid.UUID, default_analyzers: Sequence[str] = DEFAULT_ANALYZERS
) -> SettingsDocument:
    """The tenant's settings document; analyzers are ``default_analyzers`` while it never saved its own."""
    if session.get(Tenant, tenant_id) is None:
        raise NotFoundError("tenant not found")
    policy = budgets.get_policy(session, tenant_id=tenant_id)
    analysis = get_tenant_settings(session, tenant_id=tenant_id)
    saved = session.get(TenantSettingsRow, tenant_id) is not None
    return SettingsDocument(
        daily_cap_usd=policy.daily_cap_usd,
        monthly_cap_usd=policy.monthly_cap_usd,
        soft_cap_usd=policy.soft_cap_usd,
        max_price_per_h_usd=policy.max_price_per_h_usd,
        min_instances=policy.min_instances,
        max_instances=policy.max_instances,
        idle_timeout_s=policy.idle_timeout_s,
        max_gpu_wait_s=policy.max_gpu_wait_s,
        gpu_names=list(policy.filters.gpu_names),
        tiers=[t.value for t in policy.tiers],
        analyzers=analysis.analyzers if saved else list(default_analyzers),
        vocabulary=analysis.vocabulary,
        nsfw_threshold=analysis.nsfw_threshold,
        budget_configured=session.get(TenantBudget, tenant_id) is not None,
        analysis_saved=saved,
    )


def save_settings(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    values: Mapping[str, Any],
    now: datetime,
    default_analyzers: Sequence[str] = DEFAULT_ANALYZERS,
) -> SettingsDocument:
    """Validate every given setting, then store them all in the caller's transaction; settings left out keep their
    values. Raises SettingsValidationError naming every bad field, after which the caller must roll back (nothing
    is half-written as long as it does not commit)."""
    current = read_settings(session, tenant_id=tenant_id, default_analyzers=default_analyzers)
    problems: dict[str, str] = {
        key: f"unknown setting; known: {', '.join(DOCUMENT_KEYS)}" for key in values if key not in DOCUMENT_KEYS
    }
    changes: dict[str, Any] = {key: values[key] for key in POLICY_KEYS if key in values}
    if "tiers" in values:
        changes["tiers"] = values["tiers"]
    if "gpu_names" in values:
        names = values["gpu_names"]
        if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
            filters = dataclasses.asdict(budgets.get_policy(session, tenant_id=tenant_id).filters)
            changes["filters"] = {**filters, "gpu_names": list(dict.fromkeys(n.strip() for n in names if n.strip()))}
        else:
            problems["gpu_names"] = "must be a list of GPU model names"
    analysis: TenantSettings | None = None
    if any(key in values for key in ANALYSIS_KEYS):
        try:
            analysis = validate_tenant_settings(
                analyzers=values.get("analyzers", current.analyzers),
                vocabulary=values.get("vocabulary", current.vocabulary),
                nsfw_threshold=values.get("nsfw_threshold", current.nsfw_threshold),
            )
        except SettingsValidationError as exc:
            problems.update(exc.fields)
    if changes:
        # Checked (and merged into the session's budget row) even when other fields are bad, so that every problem
        # is reported at once; raising below leaves it to the caller's rollback.
        try:
            budgets.set_policy(session, tenant_id=tenant_id, changes=changes, now=now)
        except budgets.PolicyError as exc:
            problems.update({k: v for k, v in (exc.fields or {"policy": exc.message}).items() if k not in problems})
    if problems:
        raise SettingsValidationError(problems)
    if analysis is not None:
        store_tenant_settings(session, tenant_id=tenant_id, settings=analysis)
    session.flush()
    return read_settings(session, tenant_id=tenant_id, default_analyzers=default_analyzers)
