"""The error answers of the REST API as the OpenAPI schema documents them.

Every error the API sends has one shape, ``{"detail": {"code": ..., "message": ...}}`` (see ``api/main.py``), request
validation included (FastAPI's default 422 schema, a list of problems, is replaced). Routers declare the answers
every route of theirs can give (``TENANT_ERRORS``, ``ADMIN_ERRORS``); routes add their own (404, 409...) with
``error_responses``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    """What went wrong: a stable machine-readable ``code`` and a message for people."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error answer of the REST API."""

    detail: ErrorDetail


DESCRIPTIONS = {
    400: "Malformed request: a body that does not parse, a broken multipart upload",
    401: "Missing, unknown or revoked credentials",
    403: "Credentials without the right to do this",
    404: "No such object for this caller (another tenant's objects answer the same)",
    409: "The request contradicts the object's current state",
    413: "Too large",
    415: "Not a supported media type",
    422: "Invalid parameters or body",
    429: "Too many requests; retry after ``Retry-After`` seconds",
    503: "A service this answer needs is unavailable now; try again later",
}

# Headers that come with some error answers.
HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    401: {"WWW-Authenticate": {"description": "the scheme to authenticate with", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "string"}}},
}


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting these error status codes with the API's error body."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status_code in status_codes:
        entry: dict[str, Any] = {"model": ErrorBody, "description": DESCRIPTIONS[status_code]}
        if status_code in HEADERS:
            entry["headers"] = HEADERS[status_code]
        responses[status_code] = entry
    return responses


# A tenant route: a body that does not parse (400), no or a bad key (401), a dashboard session's unsafe call without
# its CSRF token (403), a bad parameter (422), the tenant's request rate spent (429).
TENANT_ERRORS = error_responses(400, 401, 403, 422, 429)
# An operator route: the same without the tenant's rate limit; 403 for credentials that are not the admin token.
ADMIN_ERRORS = error_responses(400, 401, 403, 422)
