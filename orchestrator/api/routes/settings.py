"""A tenant's settings (money, scaling, analysis) as one document, and its live spend."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from orchestrator.api.deps import SessionDep, SettingsDep, TenantDep
from orchestrator.api.error_responses import DESCRIPTIONS, TENANT_ERRORS, ErrorBody
from orchestrator.clock import utcnow
from orchestrator.spend import CapUse, EventView, InstanceNow, SpendPoint, TenantSpendRow, tenant_spend
from orchestrator.tenant_settings import SettingsValidationError, read_settings, save_settings

router = APIRouter(tags=["settings"], responses=TENANT_ERRORS)


class SettingsPublic(BaseModel):
    """The tenant's settings. Caps are hard: the scheduler never rents past them. ``budget_configured`` is false
    while no budget was ever saved (no GPU is rented then); ``analysis_saved`` while jobs use the deployment's
    default analyzers."""

    model_config = ConfigDict(from_attributes=True)
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


class SettingsErrorDetail(BaseModel):
    """Why settings were refused: ``fields`` maps each bad setting to what is wrong and what is allowed."""

    code: str
    message: str
    fields: dict[str, str]


class SettingsErrorBody(BaseModel):
    """The 422 answer to invalid settings."""

    detail: SettingsErrorDetail


class CapUsePublic(BaseModel):
    """Spend in a period against its cap."""

    spent_usd: float
    cap_usd: float
    percent: int
    reached: bool

    @classmethod
    def of(cls, use: CapUse) -> CapUsePublic:
        """From the domain value."""
        return cls(spent_usd=use.spent_usd, cap_usd=use.cap_usd, percent=use.percent, reached=use.reached)


class SpendPointPublic(BaseModel):
    """Spend in one hour or day starting at ``start`` (UTC)."""

    start: datetime
    usd: float

    @classmethod
    def of(cls, point: SpendPoint) -> SpendPointPublic:
        """From the domain value."""
        return cls(start=point.start, usd=point.usd)


class InstancePublic(BaseModel):
    """A rented instance that may be billing now; ``cost_usd`` is what it has been charged so far."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_name: str
    gpu_name: str
    state: str
    alert: bool
    price_per_h_usd: float
    created_at: datetime
    uptime_s: float
    cost_usd: float | None
    provider_instance_id: str | None
    status_msg: str
    last_error: str | None

    @classmethod
    def of(cls, inst: InstanceNow) -> InstancePublic:
        """From the domain value."""
        return cls(
            id=inst.id,
            tenant_id=inst.tenant_id,
            tenant_name=inst.tenant_name,
            gpu_name=inst.gpu_name,
            state=inst.state.value,
            alert=inst.alert,
            price_per_h_usd=inst.price_per_h_usd,
            created_at=inst.created_at,
            uptime_s=inst.uptime_s,
            cost_usd=inst.cost_usd,
            provider_instance_id=inst.provider_instance_id,
            status_msg=inst.status_msg,
            last_error=inst.last_error,
        )


class InstancesPublic(BaseModel):
    """Instances, those in ALERT first."""

    data: list[InstancePublic]
    count: int


class EventPublic(BaseModel):
    """One scheduler decision: ``kind`` rent/destroy/warn/fallback/wait/hold, ``reason`` a stable code."""

    at: datetime
    kind: str
    reason: str
    message: str
    instance_id: str | None

    @classmethod
    def of(cls, event: EventView) -> EventPublic:
        """From the domain value."""
        return cls(
            at=event.at, kind=event.kind, reason=event.reason, message=event.message, instance_id=event.instance_id
        )


class SpendPublic(BaseModel):
    """The live spend view: today and this month against the caps, spend per hour (48 h) and per day (60 days),
    instances running now, and the scheduler's latest decisions with their reasons."""

    now: datetime
    budget_configured: bool
    today: CapUsePublic
    month: CapUsePublic
    soft_cap: CapUsePublic
    reserved_usd: float
    remaining_usd: float
    total_spent_usd: float
    hourly: list[SpendPointPublic]
    daily: list[SpendPointPublic]
    instances: list[InstancePublic]
    events: list[EventPublic]


class TenantSpendPublic(BaseModel):
    """One tenant's spend for the operator."""

    tenant_id: uuid.UUID
    name: str
    disabled: bool
    budget_configured: bool
    today: CapUsePublic
    month: CapUsePublic
    reserved_usd: float
    total_spent_usd: float
    live_instances: int
    active_keys: int

    @classmethod
    def of(cls, row: TenantSpendRow) -> TenantSpendPublic:
        """From the domain value."""
        return cls(
            tenant_id=row.tenant_id,
            name=row.name,
            disabled=row.disabled,
            budget_configured=row.summary.configured,
            today=CapUsePublic.of(row.day),
            month=CapUsePublic.of(row.month),
            reserved_usd=row.summary.reserved_usd,
            total_spent_usd=row.summary.total_spent_usd,
            live_instances=row.summary.live_instances,
            active_keys=row.active_keys,
        )


class TenantsSpendPublic(BaseModel):
    """Every tenant's spend."""

    data: list[TenantSpendPublic]
    count: int


@router.get("/settings")
def get_settings_document(session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> SettingsPublic:
    """The tenant's money, scaling and analysis settings."""
    document = read_settings(session, tenant_id=tenant.id, default_analyzers=settings.default_analyzers)
    return SettingsPublic.model_validate(document)


# Settings that break a rule answer SettingsErrorBody; a body that is no JSON object, the API's usual error body.
@router.put(
    "/settings",
    response_model=SettingsPublic,
    responses={422: {"model": SettingsErrorBody | ErrorBody, "description": DESCRIPTIONS[422]}},
)
def put_settings_document(
    values: Annotated[dict[str, Any], Body()], session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> SettingsPublic | JSONResponse:
    """Change settings; fields left out keep their values. All or nothing: one bad field stores nothing, and the
    422 answer names every bad field (a hard cap below what was already spent, a negative value, min > max...)."""
    try:
        document = save_settings(
            session, tenant_id=tenant.id, values=values, now=utcnow(), default_analyzers=settings.default_analyzers
        )
    except SettingsValidationError as exc:
        session.rollback()
        body = SettingsErrorBody(detail=SettingsErrorDetail(code=exc.code, message=exc.message, fields=exc.fields))
        return JSONResponse(body.model_dump(), status_code=422)
    session.commit()
    return SettingsPublic.model_validate(document)


@router.get("/spend")
def get_spend(session: SessionDep, tenant: TenantDep) -> SpendPublic:
    """The live spend view of the tenant."""
    view = tenant_spend(session, tenant_id=tenant.id, now=utcnow())
    return SpendPublic(
        now=view.now,
        budget_configured=view.summary.configured,
        today=CapUsePublic.of(view.day),
        month=CapUsePublic.of(view.month),
        soft_cap=CapUsePublic.of(view.soft),
        reserved_usd=view.summary.reserved_usd,
        remaining_usd=view.summary.remaining_usd,
        total_spent_usd=view.summary.total_spent_usd,
        hourly=[SpendPointPublic.of(p) for p in view.hourly],
        daily=[SpendPointPublic.of(p) for p in view.daily],
        instances=[InstancePublic.of(i) for i in view.instances],
        events=[EventPublic.of(e) for e in view.events],
    )
