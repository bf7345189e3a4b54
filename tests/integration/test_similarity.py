"""Similarity search on SQLite and PostgreSQL (with pgvector when the server has it): "more like this" ranks like a
brute-force cosine sort, leaves the asset itself out, answers 404 for another tenant's asset and 409 without an
embedding; the in-memory matrix is reloaded when embeddings change; the REST routes answer gallery cards with
similarity; and a text finds the matching pictures through the tiny CLIP's text embedding."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select, text

from gpu_worker.contract import BatchManifest, ManifestItem, MediaKind
from gpu_worker.text_embedding import TextEmbeddings
from orchestrator.api.main import create_app
from orchestrator.backends import in_process
from orchestrator.db.models import Asset, Embedding, Job, Tenant
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, JobStatus
from orchestrator.errors import NotFoundError
from orchestrator.settings import get_settings
from orchestrator.similarity import pgvector
from orchestrator.similarity.errors import ModelMismatchError, NoEmbeddingError, TextEncoderUnavailableError
from orchestrator.similarity.exact import matrices, top_k, unit_rows
from orchestrator.similarity.service import (
    SimilarityBackend,
    backend_for,
    similar_to_asset,
    similar_to_text,
    similar_to_vector,
)
from orchestrator.similarity.text_encoder import InProcessTextSource, TextEncoder, text_encoder
from tests.fixtures.factories import TenantWithKey, make_tenant
from tests.fixtures.services import OrchestratorEnv
from tests.fixtures.tiny_models import draw_shape

pytestmark = pytest.mark.integration

MODEL = "clip-test-model"
DIM = 16


@dataclass
class Library:
    """A tenant's assets with their embeddings (rows of ``vectors`` in ``asset_ids`` order)."""

    tenant: TenantWithKey
    job_id: uuid.UUID
    asset_ids: list[uuid.UUID]
    vectors: np.ndarray


def _job(tenant_id: uuid.UUID) -> uuid.UUID:
    with session_scope() as session:
        job = Job(tenant_id=tenant_id, name="pictures", status=JobStatus.DONE, analyzers=["clip"])
        session.add(job)
        session.flush()
        return job.id


def _add_assets(
    tenant_id: uuid.UUID, job_id: uuid.UUID, vectors: Sequence[Sequence[float]] | np.ndarray, model_id: str = MODEL
) -> list[uuid.UUID]:
    ids = []
    with session_scope() as session:
        for index, vector in enumerate(vectors):
            asset = Asset(
                tenant_id=tenant_id,
                job_id=job_id,
                sha256=uuid.uuid4().hex * 2,
                media_kind="image",
                mime_type="image/jpeg",
                size_bytes=10,
                storage_key=f"k/{uuid.uuid4().hex}",
                original_name=f"picture-{index}.jpg",
                status=AssetStatus.DONE,
            )
            session.add(asset)
            session.flush()
            values = np.asarray(vector, dtype="<f4")
            session.add(
                Embedding(
                    tenant_id=tenant_id,
                    asset_id=asset.id,
                    analyzer="clip",
                    model_id=model_id,
                    dim=len(values),
                    vector=values.tobytes(),
                )
            )
            ids.append(asset.id)
        pgvector.sync_assets(session, tenant_id=tenant_id, asset_ids=ids)
    return ids


@pytest.fixture
def library(orch_env: OrchestratorEnv) -> Library:
    """Sixty pictures with random 16-d embeddings for tenant A, and a few of tenant B's that must never show."""
    matrices.clear()
    rng = np.random.default_rng(3)
    tenant = make_tenant("similar-a")
    job_id = _job(tenant.id)
    vectors = rng.normal(size=(60, DIM)).astype(np.float32)
    ids = _add_assets(tenant.id, job_id, vectors)
    other = make_tenant("similar-b")
    _add_assets(other.id, _job(other.id), vectors[:5] + 0.001)
    return Library(tenant=tenant, job_id=job_id, asset_ids=ids, vectors=vectors)


def _expected(library: Library, query: np.ndarray, k: int, exclude: int | None = None) -> list[uuid.UUID]:
    hits = top_k(unit_rows(library.vectors), query, k, exclude=() if exclude is None else (exclude,))
    return [library.asset_ids[h.row] for h in hits]


def test_more_like_this_ranks_like_brute_force_without_the_asset_itself(library: Library) -> None:
    with session_scope() as session:
        answer = similar_to_asset(session, tenant_id=library.tenant.id, asset_id=library.asset_ids[7], limit=10)
        on_postgresql = session.get_bind().dialect.name == "postgresql"

    ids = [s.item.id for s in answer.items]
    assert ids == _expected(library, library.vectors[7], 10, exclude=7)
    assert library.asset_ids[7] not in ids and answer.model_id == MODEL
    assert all(s.item.name.startswith("picture-") for s in answer.items)
    assert [s.similarity for s in answer.items] == sorted((s.similarity for s in answer.items), reverse=True)
    expected_backend = (
        SimilarityBackend.PGVECTOR if on_postgresql and _pgvector_installed() else SimilarityBackend.EXACT
    )
    assert answer.backend is expected_backend


def _pgvector_installed() -> bool:
    with session_scope() as session:
        return bool(session.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).scalar())


def test_a_vector_query_sees_only_the_tenants_own_pictures(library: Library) -> None:
    query = library.vectors[:5].mean(axis=0)

    with session_scope() as session:
        answer = similar_to_vector(session, tenant_id=library.tenant.id, vector=query, model_id=MODEL, limit=60)

    assert [s.item.id for s in answer.items] == _expected(library, query, 60)


def test_another_tenants_asset_is_not_found_and_an_asset_without_embedding_is_a_conflict(library: Library) -> None:
    other = make_tenant("similar-c")
    with session_scope() as session:
        bare = Asset(tenant_id=library.tenant.id, job_id=library.job_id, status=AssetStatus.DONE, original_name="x")
        session.add(bare)
        session.flush()
        bare_id = bare.id

    with session_scope() as session:
        with pytest.raises(NotFoundError):
            similar_to_asset(session, tenant_id=other.id, asset_id=library.asset_ids[0])
        with pytest.raises(NoEmbeddingError, match="not analyzed with clip"):
            similar_to_asset(session, tenant_id=library.tenant.id, asset_id=bare_id)
        with pytest.raises(ModelMismatchError, match="another-model"):
            similar_to_vector(session, tenant_id=library.tenant.id, vector=[1.0] * DIM, model_id="another-model")
        with pytest.raises(ModelMismatchError, match="8 values"):
            similar_to_vector(session, tenant_id=library.tenant.id, vector=[1.0] * 8, model_id=MODEL)


def test_the_cached_matrix_is_reloaded_when_embeddings_are_added_or_removed(library: Library) -> None:
    near = library.vectors[3] * 2 + 0.0001
    with session_scope() as session:
        first = similar_to_asset(session, tenant_id=library.tenant.id, asset_id=library.asset_ids[3], limit=3)
        loads = matrices.loads
        again = similar_to_asset(session, tenant_id=library.tenant.id, asset_id=library.asset_ids[3], limit=3)
        assert matrices.loads == loads, "an unchanged library is not read again"
    assert [s.item.id for s in again.items] == [s.item.id for s in first.items]

    (twin,) = _add_assets(library.tenant.id, library.job_id, [near])
    with session_scope() as session:
        added = similar_to_asset(session, tenant_id=library.tenant.id, asset_id=library.asset_ids[3], limit=3)
    assert added.items[0].item.id == twin and added.items[0].similarity == pytest.approx(1.0, abs=1e-3)

    with session_scope() as session:
        session.execute(delete(Asset).where(Asset.id == twin))
    with session_scope() as session:
        removed = similar_to_asset(session, tenant_id=library.tenant.id, asset_id=library.asset_ids[3], limit=3)
        if pgvector.vector_table_ready(session):
            total = session.scalar(select(func.count()).select_from(text("vec_embeddings")))
            assert total == 65, "the vector rows went with their embeddings"
    assert [s.item.id for s in removed.items] == [s.item.id for s in first.items]


def test_rest_routes_answer_cards_with_similarity_and_refuse_bad_input(library: Library) -> None:
    get_settings.cache_clear()
    other = make_tenant("similar-d")
    with TestClient(create_app()) as client:
        answer = client.get(
            f"/api/v1/assets/{library.asset_ids[0]}/similar", params={"limit": 5}, headers=library.tenant.headers
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [card["id"] for card in body["data"]] == [str(i) for i in _expected(library, library.vectors[0], 5, 0)]
        assert body["count"] == 5 and body["model_id"] == MODEL
        assert {"similarity", "name", "thumbnail_url", "tags"} <= set(body["data"][0])

        hidden = client.get(f"/api/v1/assets/{library.asset_ids[0]}/similar", headers=other.headers)
        assert hidden.status_code == 404 and hidden.json()["detail"]["code"] == "not_found"
        too_many = client.get(
            f"/api/v1/assets/{library.asset_ids[0]}/similar", params={"limit": 101}, headers=library.tenant.headers
        )
        assert too_many.status_code == 422
        blank = client.get("/api/v1/similar", params={"text": "   "}, headers=library.tenant.headers)
        assert blank.status_code == 422
        long = client.get("/api/v1/similar", params={"text": "x" * 301}, headers=library.tenant.headers)
        assert long.status_code == 422


class _Refusing:
    name = "a worker that is down"

    def embed(self, texts: Sequence[str], model_id: str) -> TextEmbeddings:
        from orchestrator.errors import BackendUnavailableError

        raise BackendUnavailableError("a worker that is down is unreachable")


class _OtherModel:
    name = "a worker with another CLIP"

    def embed(self, texts: Sequence[str], model_id: str) -> TextEmbeddings:
        return TextEmbeddings(model_id="other-clip", dim=DIM, embeddings=[[1.0] * DIM for _ in texts])


def test_text_search_explains_when_no_worker_can_embed_or_the_model_differs(library: Library) -> None:
    encoder = TextEncoder()
    with pytest.raises(TextEncoderUnavailableError, match=r"no worker can embed text now.*down is unreachable"):
        encoder.encode("a red square", model_id=MODEL, sources=[_Refusing()])
    with pytest.raises(ModelMismatchError, match="other-clip"):
        encoder.encode("a red square", model_id=MODEL, sources=[_Refusing(), _OtherModel()])
    with pytest.raises(TextEncoderUnavailableError, match="no worker is configured"):
        encoder.encode("a red square", model_id=MODEL, sources=[])


def test_text_503_over_rest_when_the_tenant_allows_no_worker(library: Library) -> None:
    from orchestrator.budgets import set_policy
    from orchestrator.clock import utcnow

    with session_scope() as session:
        set_policy(session, tenant_id=library.tenant.id, changes={"tiers": ["cloud"]}, now=utcnow())
    text_encoder.clear()
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        answer = client.get("/api/v1/similar", params={"text": "a red square"}, headers=library.tenant.headers)
    assert answer.status_code == 503, answer.text
    assert answer.json()["detail"]["code"] == "text_encoder_unavailable"


def _shape_library(tmp_path: Path, tenant_id: uuid.UUID, job_id: uuid.UUID) -> dict[uuid.UUID, str]:
    """Red squares and blue circles analyzed by the real in-process executor with the tiny CLIP."""
    import random

    shapes = [("red", "square"), ("blue", "circle")] * 4
    items, names = [], {}
    for index, (colour, shape) in enumerate(shapes):
        path = tmp_path / f"{colour}-{shape}-{index}.jpg"
        draw_shape(colour, shape, size=96, rng=random.Random(index)).save(path, "JPEG", quality=95)
        items.append(ManifestItem(asset_id=str(index), media_kind=MediaKind.IMAGE, path=str(path)))
    in_process._executor = None  # a fresh executor that reads this test's worker settings
    manifest = BatchManifest(batch_id="shapes", analyzers=["clip"], options={"clip": {"nsfw": False}}, items=items)
    result = in_process._get_executor().run(manifest)
    with session_scope() as session:
        ids = []
        for item, (colour, shape) in zip(result.items, shapes, strict=True):
            output = item.outputs["clip"]
            assert output.embedding is not None, item.errors
            asset = Asset(
                tenant_id=tenant_id, job_id=job_id, status=AssetStatus.DONE, original_name=f"{colour}-{shape}"
            )
            session.add(asset)
            session.flush()
            values = np.asarray(output.embedding, dtype="<f4")
            session.add(
                Embedding(
                    tenant_id=tenant_id,
                    asset_id=asset.id,
                    analyzer="clip",
                    model_id=output.model_id,
                    dim=len(values),
                    vector=values.tobytes(),
                )
            )
            names[asset.id] = f"{colour} {shape}"
            ids.append(asset.id)
        pgvector.sync_assets(session, tenant_id=tenant_id, asset_ids=ids)
    return names


def test_a_text_finds_the_matching_pictures_through_the_tiny_clip(
    orch_env: OrchestratorEnv, tiny_clip_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(in_process, "_executor", None)
    text_encoder.clear()
    tenant = make_tenant("shapes")
    names = _shape_library(tmp_path, tenant.id, _job(tenant.id))

    with session_scope() as session:
        reds = similar_to_text(session, tenant_id=tenant.id, text="a red square", limit=8)
        blues = similar_to_text(
            session, tenant_id=tenant.id, text="a blue circle", limit=8, sources=[InProcessTextSource()]
        )
        assert backend_for(session) is reds.backend

    assert [names[s.item.id] for s in reds.items[:4]] == ["red square"] * 4
    assert [names[s.item.id] for s in blues.items[:4]] == ["blue circle"] * 4
    assert reds.model_id == "tiny-clip"

    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        answer = client.get("/api/v1/similar", params={"text": "a red square", "limit": 4}, headers=tenant.headers)
    assert answer.status_code == 200, answer.text
    assert [names[uuid.UUID(card["id"])] for card in answer.json()["data"]] == ["red square"] * 4


def test_the_dashboard_shows_more_like_this_and_says_why_a_query_cannot_be_answered(library: Library) -> None:
    from tests.fixtures.web import signed_in_client

    get_settings.cache_clear()
    with session_scope() as session:
        name = session.get(Tenant, library.tenant.id).name  # type: ignore[union-attr]
        bare = Asset(tenant_id=library.tenant.id, job_id=library.job_id, status=AssetStatus.DONE, original_name="bare")
        session.add(bare)
        session.flush()
        bare_id = bare.id
    with signed_in_client(create_app(), tenant_name=name) as client:
        page = client.get(f"/similar?asset={library.asset_ids[0]}")
        assert page.status_code == 200, page.text
        expected = _expected(library, library.vectors[0], 20, 0)
        assert page.text.count("data-similarity") == 20
        assert page.text.index(f"/assets/{expected[0]}") < page.text.index(f"/assets/{expected[1]}")

        no_embedding = client.get(f"/similar?asset={bare_id}")
        assert no_embedding.status_code == 200 and "not analyzed with clip" in no_embedding.text
        assert client.get(f"/similar?asset={uuid.uuid4()}").status_code == 404


def test_the_cli_lists_assets_like_one_best_first(library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from orchestrator import cli
    from orchestrator.client import ApiClient

    get_settings.cache_clear()
    with TestClient(create_app(), base_url="http://api.test") as app_client:

        def forward(request: httpx.Request) -> httpx.Response:
            answer = app_client.request(request.method, str(request.url), headers=request.headers)
            return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

        def make_client(config: object) -> ApiClient:
            return ApiClient("http://api.test", library.tenant.key, transport=httpx.MockTransport(forward))

        monkeypatch.setattr(cli, "make_client", make_client)
        runner = CliRunner()
        shown = runner.invoke(
            cli.app,
            [
                "similar",
                "--asset",
                str(library.asset_ids[0]),
                "--limit",
                "3",
                "--api-url",
                "http://api.test",
                "--api-key",
                "k",
            ],
        )
        both = runner.invoke(cli.app, ["similar", "--asset", "x", "--text", "y", "--api-url", "http://api.test"])

    assert shown.exit_code == 0, shown.output
    expected = _expected(library, library.vectors[0], 3, 0)
    positions = [shown.output.index(str(asset_id)) for asset_id in expected]
    assert positions == sorted(positions)
    assert both.exit_code != 0 and "one of them" in both.output
