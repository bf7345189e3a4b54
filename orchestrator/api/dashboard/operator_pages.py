"""The operator view: every instance (those in ALERT first, with what to do), every tenant with its spend and API
keys, the dashboard's users, and the scheduler's latest decisions. Operators create tenants and users, issue keys
(shown once) and revoke them here.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from orchestrator.accounts import Role, create_user, list_users
from orchestrator.api.dashboard.charts import bar_chart
from orchestrator.api.dashboard.spend_pages import duration, usd
from orchestrator.api.dashboard.web import CsrfDep, OperatorDep, PageError, WebIdentity, render
from orchestrator.api.deps import SessionDep
from orchestrator.clock import utcnow
from orchestrator.db.models import ApiKey, Tenant, User
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.spend import Bucket, events, instances_now, spend_series, tenants_spend
from orchestrator.tenants import create_tenant, issue_api_key, list_tenants, revoke_api_key

router = APIRouter(include_in_schema=False)

EVENTS_SHOWN = 30
# Error keys of the three forms, each shown next to its input (id ``error-<key>``).
TENANT_FORM = ("tenant_name",)
KEY_FORM = ("key_name",)
USER_FORM = ("username", "password", "role", "user_tenant")


def parse_id(raw: str, what: str) -> uuid.UUID:
    """An id from the address; anything else is the same 404 as an unknown id."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise PageError(404, "Not found", f"There is no {what} {raw[:60]!r}.") from None


def _keys_by_tenant(session: SessionDep) -> dict[uuid.UUID, list[ApiKey]]:
    keys: dict[uuid.UUID, list[ApiKey]] = defaultdict(list)
    for key in session.scalars(select(ApiKey).order_by(ApiKey.revoked_at.is_not(None), ApiKey.created_at)):
        keys[key.tenant_id].append(key)
    return keys


def _notice(session: SessionDep, query: Mapping[str, str]) -> str | None:
    """A confirmation of what the last form did, looked up by id so that a link cannot make the page say anything."""
    try:
        if "tenant_created" in query:
            tenant = session.get(Tenant, uuid.UUID(query["tenant_created"]))
            return f"Tenant {tenant.name} created. Issue it a key or add a user below." if tenant else None
        if "key_revoked" in query:
            key = session.get(ApiKey, uuid.UUID(query["key_revoked"]))
            return f"Key {key.prefix}… revoked: it stopped working at once." if key and key.revoked_at else None
        if "user_created" in query:
            user = session.get(User, uuid.UUID(query["user_created"]))
            return f"User {user.username} created." if user else None
    except ValueError:
        return None
    return None


def _page(
    request: Request,
    identity: WebIdentity,
    session: SessionDep,
    *,
    errors: Mapping[str, str] | None = None,
    values: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    now = utcnow()
    tenants = list_tenants(session)
    context: dict[str, Any] = {
        "tenants": tenants_spend(session, now=now),
        "tenant_choices": [(str(t.id), t.name) for t in tenants],
        "tenant_names": {t.id: t.name for t in tenants},
        "keys": _keys_by_tenant(session),
        "users": list_users(session),
        "instances": instances_now(session, now=now),
        "events": events(session, limit=EVENTS_SHOWN),
        "daily_chart": bar_chart(
            spend_series(session, now=now, bucket=Bucket.DAY),
            bucket=Bucket.DAY,
            title="Spend of all tenants per day, last 60 days",
        ),
        "errors": dict(errors or {}),
        "values": dict(values or {}),
        "notice": _notice(session, request.query_params),
        "roles": [r.value for r in Role],
        "usd": usd,
        "duration": duration,
        "now": now,
    }
    context["alerts"] = [i for i in context["instances"] if i.alert]
    return render(request, "operator.html", identity, context, status_code=status_code)


@router.get("/operator", response_class=HTMLResponse)
def operator_page(request: Request, identity: OperatorDep, session: SessionDep) -> HTMLResponse:
    """Tenants, keys, users, spend and instances of the whole deployment."""
    return _page(request, identity, session)


@router.post("/operator/tenants", response_model=None)
def post_tenant(
    request: Request,
    identity: OperatorDep,
    _csrf: CsrfDep,
    session: SessionDep,
    tenant_name: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Create a tenant."""
    name = tenant_name.strip()
    error = None
    if len(name) > 100:
        error = f"a tenant name has at most 100 characters (this one has {len(name)})"
    else:
        try:
            tenant = create_tenant(session, name=name)
        except ConflictError as exc:
            error = exc.message
    if error is not None:
        session.rollback()
        return _page(
            request, identity, session, errors={"tenant_name": error}, values={"tenant_name": name}, status_code=422
        )
    session.commit()
    return RedirectResponse(f"/operator?tenant_created={tenant.id}#tenants", status_code=303)


@router.post("/operator/tenants/{tenant_id}/keys", response_model=None)
def post_key(
    request: Request,
    tenant_id: str,
    identity: OperatorDep,
    _csrf: CsrfDep,
    session: SessionDep,
    key_name: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Issue an API key; the answer shows it this once (it is never stored, only its hash)."""
    tenant = session.get(Tenant, parse_id(tenant_id, "tenant"))
    if tenant is None:
        raise PageError(404, "Not found", "There is no such tenant; it may have been removed.")
    name = key_name.strip()
    if len(name) > 100:
        return _page(
            request,
            identity,
            session,
            errors={f"key_name-{tenant.id}": f"a key name has at most 100 characters (this one has {len(name)})"},
            status_code=422,
        )
    key, plaintext = issue_api_key(session, tenant_id=tenant.id, name=name)
    session.commit()
    response = render(
        request,
        "operator_key_issued.html",
        identity,
        {"tenant_name": tenant.name, "key": key, "plaintext": plaintext, "base_url": str(request.base_url)},
    )
    # The key is in this answer only: no cache may keep a copy.
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/operator/keys/{key_id}/revoke", response_model=None)
def post_revoke(key_id: str, identity: OperatorDep, _csrf: CsrfDep, session: SessionDep) -> Response:
    """Revoke an API key; it stops working at once."""
    parsed = parse_id(key_id, "API key")
    try:
        revoke_api_key(session, key_id=parsed)
    except NotFoundError:
        raise PageError(404, "Not found", "There is no such API key.") from None
    session.commit()
    return RedirectResponse(f"/operator?key_revoked={parsed}#tenants", status_code=303)


@router.post("/operator/users", response_model=None)
def post_user(
    request: Request,
    identity: OperatorDep,
    _csrf: CsrfDep,
    session: SessionDep,
    username: Annotated[str, Form(max_length=1000)] = "",
    password: Annotated[str, Form(max_length=5000)] = "",
    role: Annotated[str, Form(max_length=100)] = Role.MEMBER.value,
    user_tenant: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Create a dashboard user: a member of a tenant, or an operator (with or without a tenant)."""
    errors: dict[str, str] = {}
    tenant_id: uuid.UUID | None = None
    if user_tenant:
        try:
            tenant_id = uuid.UUID(user_tenant)
        except ValueError:
            errors["user_tenant"] = "choose a tenant from the list"
    if role not in {r.value for r in Role}:
        errors["role"] = f"choose one of: {', '.join(r.value for r in Role)}"
    elif role == Role.MEMBER and not user_tenant:
        errors["user_tenant"] = "a member belongs to a tenant: choose one"
    if not errors:
        try:
            user = create_user(session, username=username, password=password, role=role, tenant_id=tenant_id)
        except NotFoundError:
            errors["user_tenant"] = "that tenant no longer exists; choose another"
        except ConflictError as exc:
            errors[_account_field(exc.message)] = exc.message
    if errors:
        session.rollback()
        values = {"username": username[:100], "role": role[:20], "user_tenant": user_tenant[:40]}
        return _page(request, identity, session, errors=errors, values=values, status_code=422)
    session.commit()
    return RedirectResponse(f"/operator?user_created={user.id}#users", status_code=303)


def _account_field(message: str) -> str:
    """Which input of the user form an account error is about."""
    if "password" in message:
        return "password"
    if "role" in message:
        return "role"
    if "member" in message or "tenant" in message:
        return "user_tenant"
    return "username"
