"""Admin routes: tenants and their API keys, every tenant's spend, and every instance."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from orchestrator.api.deps import AdminDep, SessionDep
from orchestrator.api.error_responses import ADMIN_ERRORS, error_responses
from orchestrator.api.routes.settings import InstancePublic, InstancesPublic, TenantSpendPublic, TenantsSpendPublic
from orchestrator.api.schemas import ApiKeyCreate, ApiKeyIssued, TenantCreate, TenantPublic, TenantsPublic
from orchestrator.clock import utcnow
from orchestrator.spend import instances_now, tenants_spend
from orchestrator.tenants import create_tenant, issue_api_key, list_tenants, revoke_api_key

router = APIRouter(prefix="/admin", tags=["admin"], responses=ADMIN_ERRORS)


@router.post("/tenants", status_code=status.HTTP_201_CREATED, responses=error_responses(409))
def post_tenant(body: TenantCreate, session: SessionDep, _: AdminDep) -> TenantPublic:
    """Create a tenant."""
    tenant = create_tenant(session, name=body.name)
    session.commit()
    return TenantPublic.model_validate(tenant)


@router.get("/tenants")
def get_tenants(session: SessionDep, _: AdminDep) -> TenantsPublic:
    """List tenants."""
    tenants = list_tenants(session)
    return TenantsPublic(data=[TenantPublic.model_validate(t) for t in tenants], count=len(tenants))


@router.post("/tenants/{tenant_id}/keys", status_code=status.HTTP_201_CREATED, responses=error_responses(404))
def post_key(tenant_id: uuid.UUID, body: ApiKeyCreate, session: SessionDep, _: AdminDep) -> ApiKeyIssued:
    """Issue an API key for a tenant; the key is in this answer only."""
    key, plaintext = issue_api_key(session, tenant_id=tenant_id, name=body.name)
    session.commit()
    return ApiKeyIssued(id=key.id, key=plaintext, prefix=key.prefix, created_at=key.created_at)


@router.delete("/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
def delete_key(key_id: uuid.UUID, session: SessionDep, _: AdminDep) -> Response:
    """Revoke an API key."""
    revoke_api_key(session, key_id=key_id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/spend")
def get_spend(session: SessionDep, _: AdminDep) -> TenantsSpendPublic:
    """Every tenant's spend today and this month against its caps, by name."""
    rows = tenants_spend(session, now=utcnow())
    return TenantsSpendPublic(data=[TenantSpendPublic.of(r) for r in rows], count=len(rows))


@router.get("/instances")
def get_instances(session: SessionDep, _: AdminDep) -> InstancesPublic:
    """Every instance that may be billing, of all tenants; those in ALERT (destroys kept failing) first."""
    found = instances_now(session, now=utcnow())
    return InstancesPublic(data=[InstancePublic.of(i) for i in found], count=len(found))
