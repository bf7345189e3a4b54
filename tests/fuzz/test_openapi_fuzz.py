"""Schemathesis fuzzes every operation of the OpenAPI schema against the real app on a real (SQLite) database,
with a valid tenant key (and, on operator routes, the admin token too), and checks each answer: never a 5xx, a
status code, content type, headers and body that the schema documents.

Path parameters are the fuzzer's own values or, some of the time, the ids of the seeded tenant's real objects, so
that the operations get past "not found" into their real work. The run is deterministic (derandomized, fixed seed)
and bounded by ``MAX_EXAMPLES`` per operation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import strategies as st
from schemathesis import Case, HookContext
from schemathesis.core.result import Ok

from orchestrator.api.main import create_app
from orchestrator.settings import Settings
from tests.fuzz.seeded_api import SeededApi
from tests.fuzz.tally import TALLY

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 8
SEED = 20240808
ADMIN_PREFIX = "/api/v1/admin"
OPENAPI_PATH = "/api/v1/openapi.json"

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]


def fuzz_config() -> schemathesis.Config:
    """Deterministic, bounded generation of valid and invalid inputs, without Hypothesis's example database."""
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"coverage": {"unexpected-methods": []}},
        }
    )


def schema_of_the_app() -> schemathesis.BaseSchema:
    """The app's own OpenAPI schema, as the app serves it (pytest collects one test per operation from it, so it is
    loaded at import; the requests go to the seeded app of the ``seeded_api`` fixture)."""
    app = create_app(Settings(environment="test", data_dir=Path(SCHEMA_APP_DIR.name)))
    return schemathesis.openapi.from_asgi(OPENAPI_PATH, app, config=fuzz_config())


# The schema's own app makes its media folders here; removed when the interpreter exits.
SCHEMA_APP_DIR = tempfile.TemporaryDirectory(prefix="mam-fuzz-schema-")


schema = schema_of_the_app()
# The seeded tenant's ids by path-parameter name; filled by the ``real_ids`` fixture before any case is generated.
REAL_IDS: dict[str, list[str]] = {}


@schema.hook
def flatmap_path_parameters(
    context: HookContext, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """The generated path parameters, or the same with real ids of the seeded tenant in them."""
    real = {name: REAL_IDS[name] for name in path_parameters or {} if name in REAL_IDS}
    if not real:
        return st.just(path_parameters)
    with_real_ids = st.fixed_dictionaries({name: st.sampled_from(values) for name, values in real.items()})
    return st.one_of(st.just(path_parameters), with_real_ids.map(lambda ids: {**(path_parameters or {}), **ids}))


@pytest.fixture(scope="module")
def real_ids(seeded_api: SeededApi) -> dict[str, list[str]]:
    """Make the seeded ids available to the path-parameter hook."""
    REAL_IDS.update(seeded_api.ids)
    return REAL_IDS


@schema.parametrize()
def test_every_operation_answers_as_documented_and_never_5xx(
    case: Case[Any], seeded_api: SeededApi, real_ids: dict[str, list[str]]
) -> None:
    """Valid and invalid inputs (the fuzzer's and the seeded tenant's real ids) with the tenant's key, and on
    operator routes with the admin token as well: every answer is documented (status, content type, headers, body)
    and none is a server error."""
    credentials = [f"Bearer {seeded_api.tenant.key}"]
    if case.path.startswith(ADMIN_PREFIX):
        credentials.append(f"Bearer {seeded_api.admin_token}")
    for authorization in credentials:
        case.headers["Authorization"] = authorization  # case-insensitive: replaces a generated "authorization"
        response = case.call_and_validate(checks=CHECKS, app=seeded_api.app)
        TALLY.record(case.operation.label, response.status_code)


def test_the_fuzzed_schema_has_every_route_but_the_dashboard_pages_and_metrics(tmp_path: Path) -> None:
    """Every route of the app is an operation of the schema, so the fuzzer above reaches it, except the hidden ones:
    the dashboard's HTML pages and ``/metrics`` (never a REST or media route)."""
    app = create_app(Settings(environment="test", data_dir=tmp_path))
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)  # FastAPI 0.120+ nests included routers
    contexts: list[Any] = list(iterate(app.routes)) if iterate is not None else list(app.routes)
    # A context has the full path; its original route says whether the route is in the schema.
    routes = [(c.path, c.methods or set(), getattr(c, "original_route", c)) for c in contexts]
    api_routes = [(path, methods, r) for path, methods, r in routes if isinstance(r, APIRoute)]
    in_schema = {f"{m} {path}" for path, methods, r in api_routes if r.include_in_schema for m in methods - {"HEAD"}}
    hidden = {path for path, _, r in api_routes if not r.include_in_schema}
    fuzzed = {result.ok().label for result in schema.get_all_operations() if isinstance(result, Ok)}

    assert fuzzed == in_schema
    assert len(fuzzed) == 43
    assert not [path for path in hidden if path.startswith(("/api/", "/media/", "/healthz"))]
    assert "/metrics" in hidden and "/login" in hidden
