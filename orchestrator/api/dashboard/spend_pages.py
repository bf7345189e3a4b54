"""The live spend view: today and this month against the caps, spend per hour and per day as server-drawn charts,
the instances running now (GPU, $/h, uptime, cost so far) and the scheduler's reasons for what it did.

``/spend/live`` is the page's refreshing part as an HTML fragment, polled by ``live.js``; it is never final.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from orchestrator.api.dashboard.charts import bar_chart
from orchestrator.api.dashboard.web import MemberDep, WebIdentity, render
from orchestrator.api.deps import SessionDep
from orchestrator.clock import utcnow
from orchestrator.spend import Bucket, TenantSpend, tenant_spend

router = APIRouter(include_in_schema=False)

LIVE_INTERVAL_MS = 10_000


def usd(amount: float | None) -> str:
    """Dollars for people: cents, and tenths of a cent below one dollar so that slow accrual shows; None is a dash."""
    if amount is None:
        return "-"
    return f"${amount:,.3f}" if 0 < abs(amount) < 1 else f"${amount:,.2f}"


def duration(seconds: float) -> str:
    """An uptime: ``45 s``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``."""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86_400} d {s % 86_400 // 3600} h"


def spend_context(view: TenantSpend) -> dict[str, Any]:
    """What ``_spend_live.html`` draws."""
    return {
        "view": view,
        "hourly_chart": bar_chart(view.hourly, bucket=Bucket.HOUR, title="Spend per hour, last 48 hours"),
        "daily_chart": bar_chart(view.daily, bucket=Bucket.DAY, title="Spend per day, last 60 days"),
        "usd": usd,
        "duration": duration,
        "live_url": "/spend/live",
        "live_interval_ms": LIVE_INTERVAL_MS,
    }


def _view(identity: WebIdentity, session: SessionDep) -> TenantSpend:
    assert identity.tenant_id is not None
    return tenant_spend(session, tenant_id=identity.tenant_id, now=utcnow())


@router.get("/spend", response_class=HTMLResponse)
def spend_page(request: Request, identity: MemberDep, session: SessionDep) -> HTMLResponse:
    """The live spend page."""
    return render(request, "spend.html", identity, spend_context(_view(identity, session)))


@router.get("/spend/live", response_class=HTMLResponse)
def spend_live(request: Request, identity: MemberDep, session: SessionDep) -> HTMLResponse:
    """The refreshing part of the spend page, as a fragment."""
    return render(request, "_spend_live.html", identity, spend_context(_view(identity, session)))
