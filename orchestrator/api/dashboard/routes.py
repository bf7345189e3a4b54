"""The dashboard's page map: one router per area, mounted at the site root next to ``/api/v1``.

/login, /logout, /account    signing in and out (auth_pages)
/upload                      drag-and-drop upload to the REST API (upload_pages)
/jobs, /jobs/{id}            live job status, cancel, retry, result downloads (jobs_pages)
/gallery, /assets/{id}       thumbnails with filters; one asset with overlays and transcript (results_pages)
/settings                    money, scaling, analyzers and vocabulary of the tenant (settings_pages)
/spend                       live spend against the caps, instances, scheduler decisions (spend_pages)
/operator                    tenants, keys, users, all spend and instances (operator_pages)
"""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api.dashboard import (
    auth_pages,
    jobs_pages,
    operator_pages,
    results_pages,
    settings_pages,
    spend_pages,
    upload_pages,
)


def dashboard_router() -> APIRouter:
    """Every dashboard page in one router."""
    router = APIRouter(include_in_schema=False)
    for area in (auth_pages, upload_pages, jobs_pages, results_pages, settings_pages, spend_pages, operator_pages):
        router.include_router(area.router)
    return router
