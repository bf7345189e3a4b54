"""The tenant's settings page: money (hard caps, soft cap, price ceiling), scaling (instances, idle timeout, GPU
models, tiers, longest GPU wait) and analysis (analyzers, tag vocabulary, NSFW threshold).

One POST saves everything or nothing. A bad value re-renders the form with what the user typed and a message next to
each bad field (status 422); success redirects to ``/settings?saved=1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from orchestrator.api.dashboard.web import CsrfDep, MemberDep, WebIdentity, render
from orchestrator.api.deps import SessionDep, SettingsDep
from orchestrator.budgets import current_summary
from orchestrator.clock import utcnow
from orchestrator.jobs import KNOWN_ANALYZERS
from orchestrator.scheduler.model import Tier
from orchestrator.tenant_settings import (
    MAX_CATEGORIES,
    MAX_LABEL_CHARS,
    MAX_LABELS_PER_CATEGORY,
    SettingsDocument,
    SettingsValidationError,
    read_settings,
    save_settings,
)

router = APIRouter(include_in_schema=False)

MAX_NUMBER_CHARS = 40
MAX_TEXT_CHARS = 10_000
MAX_VOCABULARY_CHARS = 200_000


@dataclass(frozen=True)
class NumberField:
    """One numeric input of the form."""

    name: str
    label: str
    help: str
    whole: bool = False
    step: str = "any"


MONEY_FIELDS = (
    NumberField(
        "daily_cap_usd",
        "Daily hard cap (USD)",
        "Most spent per day (UTC). At the cap, instances are destroyed and nothing new is rented until tomorrow.",
    ),
    NumberField(
        "monthly_cap_usd",
        "Monthly hard cap (USD)",
        "Most spent per calendar month (UTC), enforced the same way.",
    ),
    NumberField(
        "soft_cap_usd",
        "Soft cap (USD per month)",
        "Once this month's spend plus reservations reach it, no new instance is rented and you see a warning; "
        "running instances finish their work. At most the monthly cap.",
    ),
    NumberField(
        "max_price_per_h_usd",
        "Most per instance (USD per hour)",
        "Offers costing more per hour (storage included) are never rented.",
    ),
)
SCALING_FIELDS = (
    NumberField(
        "min_instances",
        "Minimum instances",
        "Kept running even without work; they bill while idle.",
        whole=True,
        step="1",
    ),
    NumberField("max_instances", "Maximum instances", "Never more rented at once.", whole=True, step="1"),
    NumberField(
        "idle_timeout_s",
        "Idle timeout (seconds)",
        "An instance without work for this long is destroyed (never stopped: a stopped instance still bills).",
    ),
    NumberField(
        "max_gpu_wait_s",
        "Longest GPU wait (seconds)",
        "Work that waited this long for a cloud GPU runs on the next allowed tier instead.",
    ),
)
NUMBER_FIELDS = {f.name: f for f in (*MONEY_FIELDS, *SCALING_FIELDS)}
TIER_LABELS = {
    Tier.CLOUD: "Rented cloud GPU (Vast.ai)",
    Tier.LOCAL: "Local GPU worker",
    Tier.CPU: "CPU of this server (slow, free)",
}
ANALYZER_LABELS = {
    "clip": "Tags, NSFW score and similarity search (CLIP)",
    "objects": "Objects with boxes (YOLO)",
    "faces": "Faces, grouped by person",
    "transcribe": "Speech transcripts of audio and video (Whisper)",
    "nsfw": "NSFW classifier",
}
# Field-level messages go next to their input; anything else (an unknown setting) above the form.
FORM_FIELDS = frozenset({*NUMBER_FIELDS, "gpu_names", "tiers", "analyzers", "vocabulary", "nsfw_threshold"})


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {key: value for key, value in form.multi_items() if isinstance(value, str)}


FormDep = Annotated[dict[str, str], Depends(_form)]


def parse_number(raw: str, *, whole: bool) -> float:
    """A number typed into the form; ValueError says what to type instead."""
    text = raw.strip().removeprefix("$").strip()
    example = "like 2" if whole else "like 20 or 12.50"
    if not text:
        raise ValueError(f"enter a number, {example}")
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"{len(text)} characters is too long for a number; enter one {example}")
    try:
        value = float(text)
    except ValueError:
        hint = " (use a dot for cents)" if "," in text else ""
        raise ValueError(f"{text!r} is not a number{hint}; enter one {example}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"enter a finite number, {example}")
    if whole and not value.is_integer():
        raise ValueError(f"enter a whole number, {example}")
    return value


def parse_vocabulary(text: str) -> dict[str, list[str]] | None:
    """``scene: beach, forest`` lines to ``{"scene": ["beach", "forest"]}``; empty text is None (the default
    vocabulary). ValueError names the first bad line."""
    if len(text) > MAX_VOCABULARY_CHARS:
        raise ValueError(f"at most {MAX_VOCABULARY_CHARS:,} characters")
    vocabulary: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, labels = line.partition(":")
        if not colon:
            raise ValueError(
                f"line {number}: write a category, a colon, then labels separated by commas (scene: beach)"
            )
        category = name.strip()
        if category in vocabulary:
            raise ValueError(f"line {number}: category {category[:60]!r} appears twice; merge its labels into one line")
        vocabulary[category] = [label.strip() for label in labels.split(",") if label.strip()]
    return vocabulary or None


def vocabulary_text(vocabulary: Mapping[str, Sequence[str]] | None) -> str:
    """The textarea form of a vocabulary."""
    if not vocabulary:
        return ""
    return "\n".join(f"{category}: {', '.join(labels)}" for category, labels in vocabulary.items())


def _number_text(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e15 else repr(value)


def form_values(document: SettingsDocument) -> dict[str, Any]:
    """The form's fields filled from stored settings."""
    values: dict[str, Any] = {name: _number_text(getattr(document, name)) for name in NUMBER_FIELDS}
    values.update(
        gpu_names=", ".join(document.gpu_names),
        tiers=list(document.tiers),
        analyzers=list(document.analyzers),
        vocabulary=vocabulary_text(document.vocabulary),
        nsfw_threshold=_number_text(document.nsfw_threshold),
    )
    return values


def parse_form(form: Mapping[str, str], *, current_tiers: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings a submitted form asks for, and a message per field that could not be read."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, spec in NUMBER_FIELDS.items():
        try:
            number = parse_number(form.get(name, ""), whole=spec.whole)
            values[name] = int(number) if spec.whole else number
        except ValueError as exc:
            errors[name] = str(exc)
        except OverflowError:
            errors[name] = "is too large"
    try:
        values["nsfw_threshold"] = parse_number(form.get("nsfw_threshold", ""), whole=False)
    except ValueError as exc:
        errors["nsfw_threshold"] = str(exc)
    gpu_text = form.get("gpu_names", "")
    if len(gpu_text) > MAX_TEXT_CHARS:
        errors["gpu_names"] = f"at most {MAX_TEXT_CHARS:,} characters"
    else:
        values["gpu_names"] = [n.strip() for n in gpu_text.split(",") if n.strip()]
    # Checkboxes carry no order: tiers already allowed keep theirs, newly allowed ones follow in the default order.
    checked = {t.value for t in Tier if form.get(f"tier-{t.value}")}
    values["tiers"] = [t for t in current_tiers if t in checked] + [
        t.value for t in Tier if t.value in checked and t.value not in current_tiers
    ]
    values["analyzers"] = [a for a in KNOWN_ANALYZERS if form.get(f"analyzer-{a}")]
    try:
        values["vocabulary"] = parse_vocabulary(form.get("vocabulary", ""))
    except ValueError as exc:
        errors["vocabulary"] = str(exc)
    return values, errors


def _raw_values(form: Mapping[str, str], parsed: Mapping[str, Any]) -> dict[str, Any]:
    """What the user typed, to show again with the errors."""
    values: dict[str, Any] = {name: form.get(name, "")[: MAX_NUMBER_CHARS * 2] for name in NUMBER_FIELDS}
    values.update(
        nsfw_threshold=form.get("nsfw_threshold", "")[: MAX_NUMBER_CHARS * 2],
        gpu_names=form.get("gpu_names", "")[:MAX_TEXT_CHARS],
        tiers=list(parsed.get("tiers", [])),
        analyzers=list(parsed.get("analyzers", [])),
        vocabulary=form.get("vocabulary", "")[:MAX_VOCABULARY_CHARS],
    )
    return values


def _page(
    request: Request,
    identity: WebIdentity,
    session: SessionDep,
    document: SettingsDocument,
    *,
    values: dict[str, Any],
    errors: Mapping[str, str] | None = None,
    saved: bool = False,
    status_code: int = 200,
) -> HTMLResponse:
    assert identity.tenant_id is not None
    errors = dict(errors or {})
    return render(
        request,
        "settings.html",
        identity,
        {
            "values": values,
            "errors": errors,
            "other_errors": {k: v for k, v in errors.items() if k not in FORM_FIELDS},
            "saved": saved,
            "document": document,
            "summary": current_summary(session, tenant_id=identity.tenant_id, now=utcnow()),
            "money_fields": MONEY_FIELDS,
            "scaling_fields": SCALING_FIELDS,
            "tiers": [(t.value, label) for t, label in TIER_LABELS.items()],
            "analyzers": [(a, ANALYZER_LABELS.get(a, a)) for a in KNOWN_ANALYZERS],
            "limits": {
                "categories": MAX_CATEGORIES,
                "labels": MAX_LABELS_PER_CATEGORY,
                "label_chars": MAX_LABEL_CHARS,
            },
        },
        status_code=status_code,
    )


@router.get("/settings", response_class=HTMLResponse)
def settings_page(
    request: Request, identity: MemberDep, session: SessionDep, settings: SettingsDep, saved: str = ""
) -> HTMLResponse:
    """The settings form with the tenant's current values."""
    assert identity.tenant_id is not None
    document = read_settings(session, tenant_id=identity.tenant_id, default_analyzers=settings.default_analyzers)
    return _page(request, identity, session, document, values=form_values(document), saved=saved == "1")


@router.post("/settings", response_model=None)
def save_settings_page(
    request: Request, identity: MemberDep, _csrf: CsrfDep, form: FormDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """Save every setting, or none: errors re-render the form (422) with a message next to each bad field."""
    assert identity.tenant_id is not None
    current = read_settings(session, tenant_id=identity.tenant_id, default_analyzers=settings.default_analyzers)
    values, errors = parse_form(form, current_tiers=current.tiers)
    try:
        save_settings(
            session,
            tenant_id=identity.tenant_id,
            values=values,
            now=utcnow(),
            default_analyzers=settings.default_analyzers,
        )
    except SettingsValidationError as exc:
        errors = {**exc.fields, **errors}
    if errors:
        session.rollback()
        return _page(
            request, identity, session, current, values=_raw_values(form, values), errors=errors, status_code=422
        )
    session.commit()
    return RedirectResponse("/settings?saved=1", status_code=303)
