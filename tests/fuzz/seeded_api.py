"""A real API on a real database with one tenant's data in it, for fuzzing: a job with prepared assets (one of them
a near-duplicate pair), two people with faces, a finished write-back, and a spare API key the admin may revoke."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from orchestrator.db.session import session_scope
from orchestrator.ingest import prepare_asset
from orchestrator.settings import get_settings
from orchestrator.signing import media_signer
from orchestrator.storage import LocalStorage
from orchestrator.tenants import issue_api_key
from tests.fixtures.duplicates import seed_near_pair
from tests.fixtures.factories import TenantWithKey, jpeg_bytes, make_tenant
from tests.fixtures.people import seed_people
from tests.fixtures.writeback import seed_write


@dataclass
class SeededApi:
    """The app, the tenant whose key the fuzzer sends, the admin token, and real ids by path-parameter name."""

    app: FastAPI
    tenant: TenantWithKey
    admin_token: str
    ids: dict[str, list[str]] = field(default_factory=dict)


def seed_api(app: FastAPI, *, media_dir: Path, admin_token: str) -> SeededApi:
    """Fill the configured database through the real API (uploads) and the real preparation code."""
    tenant = make_tenant("fuzzed-tenant")
    with TestClient(app) as client:
        job = client.post("/api/v1/jobs", json={"name": "fuzzed job"}, headers=tenant.headers).json()
        files = [("files", (f"photo-{n}.jpg", jpeg_bytes(64, 48, (40 * n, 90, 20)), "image/jpeg")) for n in range(3)]
        upload = client.post(f"/api/v1/jobs/{job['id']}/files", files=files, headers=tenant.headers)
        assert upload.status_code == 201, upload.text
        asset_ids = [entry["asset_id"] for entry in upload.json()["files"]]
        storage = LocalStorage(media_dir)
        with session_scope() as session:
            for asset_id in asset_ids:
                assert prepare_asset(session, storage=storage, asset_id=uuid.UUID(asset_id), max_image_pixels=10**8)
        group_key = seed_near_pair(client, tenant.headers, job["id"], media_dir)
    people = seed_people(tenant.id, uuid.UUID(asset_ids[0]))
    with session_scope() as session:
        # Revoking the fuzzed tenant's own key would turn every later request into a 401; the admin revokes this one.
        spare_key, _ = issue_api_key(session, tenant_id=tenant.id, name="spare")
        spare_key_id = str(spare_key.id)
    signer = media_signer(get_settings())
    ids = {
        "job_id": [job["id"]],
        "asset_id": asset_ids,
        "person_id": [people["person_id"], people["other_person_id"]],
        "face_id": [people["face_id"], str(int(people["face_id"]) + 2)],
        "write_id": [seed_write(tenant.id)],
        "group_key": [group_key],
        "tenant_id": [str(tenant.id)],
        "key_id": [spare_key_id],
        "token": [signer.token_for(uuid.UUID(a)) for a in asset_ids],
    }
    return SeededApi(app=app, tenant=tenant, admin_token=admin_token, ids=ids)
