"""Writing a batch's results replaces exactly the (asset, analyzer) outputs the answer carries, in a number of
statements that does not grow with the batch: on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.engine import Engine

from gpu_worker.contract import AnalyzerOutput, BatchResult, ItemError, ItemResult, TagScore
from orchestrator.batching import claim_batch, complete_batch
from orchestrator.db.models import Asset, Batch, Embedding, Result, ResultTag
from orchestrator.db.session import session_scope
from orchestrator.enums import AssetStatus, BatchStatus
from tests.fixtures.services import OrchestratorEnv
from tests.integration.test_batching import _assets_of, _job, _plan

pytestmark = pytest.mark.integration


def _output(tag: str, embedding: list[float] | None = None) -> AnalyzerOutput:
    return AnalyzerOutput(model_id=f"m-{tag}", tags=[TagScore(tag=tag, score=0.5)], embedding=embedding)


def _complete(batch_id: uuid.UUID, items: list[ItemResult]) -> None:
    with session_scope() as session:
        claim = claim_batch(session, batch_id=batch_id, worker_id=uuid.uuid4().hex, lease_s=60)
    assert claim is not None
    with session_scope() as session:
        assert complete_batch(
            session, claim=claim, result=BatchResult(batch_id=str(batch_id), items=items), backend="t"
        )


def _reopen(batch_id: uuid.UUID) -> None:
    with session_scope() as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(status=BatchStatus.PENDING))
        session.execute(update(Asset).where(Asset.batch_id == batch_id).values(status=AssetStatus.ANALYZING))


def _state() -> dict[str, set[tuple[Any, ...]]]:
    with session_scope() as session:
        return {
            "results": {(r.asset_id, r.analyzer, r.model_id, r.batch_attempt) for r in session.scalars(select(Result))},
            "tags": {(t.asset_id, t.analyzer, t.tag) for t in session.scalars(select(ResultTag))},
            "embeddings": {(e.asset_id, e.analyzer, e.dim) for e in session.scalars(select(Embedding))},
        }


@contextmanager
def _counted() -> Iterator[list[str]]:
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def test_a_rewrite_replaces_only_the_outputs_it_carries(orch_env: OrchestratorEnv) -> None:
    job_id, _ = _job(assets=2)
    (batch_id,) = _plan(job_id, batch_size=2) or []
    a, b = (asset.id for asset in _assets_of(batch_id))
    _complete(
        batch_id,
        [
            ItemResult(
                asset_id=str(a), outputs={"clip": _output("old-a-clip", [1.0, 0.0]), "objects": _output("a-obj")}
            ),
            ItemResult(
                asset_id=str(b), outputs={"clip": _output("old-b-clip", [0.0, 1.0]), "objects": _output("b-obj")}
            ),
        ],
    )
    _reopen(batch_id)

    # a: clip rewritten, objects failed this time (its earlier output stays); b: objects rewritten, clip kept.
    _complete(
        batch_id,
        [
            ItemResult(
                asset_id=str(a),
                outputs={"clip": _output("new-a-clip")},
                errors={"objects": ItemError(code="x", message="failed")},
            ),
            ItemResult(asset_id=str(b), outputs={"objects": _output("new-b-obj", [0.5, 0.5, 0.5])}),
        ],
    )

    state = _state()
    assert state["tags"] == {
        (a, "clip", "new-a-clip"),
        (a, "objects", "a-obj"),
        (b, "clip", "old-b-clip"),
        (b, "objects", "new-b-obj"),
    }
    assert state["embeddings"] == {(b, "clip", 2), (b, "objects", 3)}, "a's clip embedding went with its rewrite"
    assert state["results"] == {(a, "clip", "m-new-a-clip", 2), (a, "objects", "m-a-obj", 1)} | {
        (b, "clip", "m-old-b-clip", 1),
        (b, "objects", "m-new-b-obj", 2),
    }


def _statements_to_complete(size: int) -> list[str]:
    job_id, _ = _job(assets=size)
    (batch_id,) = _plan(job_id, batch_size=size) or []
    items = [
        ItemResult(asset_id=str(asset.id), outputs={"clip": _output(f"t{i}", [0.1, 0.2])})
        for i, asset in enumerate(_assets_of(batch_id))
    ]
    with session_scope() as session:
        claim = claim_batch(session, batch_id=batch_id, worker_id="w", lease_s=60)
    assert claim is not None
    with _counted() as statements, session_scope() as session:
        assert complete_batch(
            session, claim=claim, result=BatchResult(batch_id=str(batch_id), items=items), backend="t"
        )
    return statements


def test_writing_a_batch_takes_the_same_statements_whatever_its_size(orch_env: OrchestratorEnv) -> None:
    small, large = _statements_to_complete(2), _statements_to_complete(24)

    def kinds(statements: list[str]) -> list[str]:
        # SQLite's driver inserts rows with autoincrement ids one statement each; PostgreSQL's in one.
        per_row = orch_env.database_url.startswith("sqlite") and statements
        return sorted(" ".join(s.split()[:3]) for s in statements if not (per_row and s.startswith("INSERT")))

    assert kinds(large) == kinds(small), "a statement per item crept back into writing results"
    assert sum(s.lstrip().upper().startswith("DELETE") for s in large) == 2  # tags, embeddings: once per analyzer
    assert len(_state()["results"]) == 2 + 24
