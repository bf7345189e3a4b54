"""The dashboard's page map: one router per area, mounted at the site root next to ``/api/v1``.

/login, /logout, /account    signing in and out (auth_pages)
/upload                      drag-and-drop upload to the REST API (upload_pages)
/jobs, /jobs/{id}            live job status, cancel, retry, result downloads (jobs_pages)
/gallery, /assets/{id}       thumbnails with filters; one asset with overlays and transcript (results_pages)
/settings                    money, scaling, analyzers and vocabulary of the tenant (settings_pages)
/spend                       live spend against the caps, instances, scheduler decisions (spend_pages)
/operator                    tenants, keys, users, all spend and instances (operator_pages)
/people, /people/{id}         faces grouped into people: name, merge, split (people_pages)
/duplicates                  exact copies and near-duplicate pictures, side by side (duplicates_pages)
/similar                     more like an asset, or pictures matching a description (similar_pages)
/jobs/{id}/writeback         write tags into a job's files, undo a write-back (writeback_pages)
"""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api.dashboard import (
    auth_pages,
    duplicates_pages,
    jobs_pages,
    operator_pages,
    people_pages,
    results_pages,
    settings_pages,
    similar_pages,
    spend_pages,
    upload_pages,
    writeback_pages,
)


def dashboard_router() -> APIRouter:
    """Every dashboard page in one router."""
    router = APIRouter(include_in_schema=False)
    for area in (auth_pages, upload_pages, jobs_pages, results_pages, settings_pages, spend_pages, operator_pages):
        router.include_router(area.router)
    router.include_router(people_pages.router)
    router.include_router(duplicates_pages.router)
    router.include_router(similar_pages.router)
    router.include_router(writeback_pages.router)
    return router
