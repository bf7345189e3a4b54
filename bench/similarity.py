"""Latency of similarity queries at 100,000 stored 512-d CLIP embeddings: exact in memory (SQLite- and
PostgreSQL-loaded), and pgvector's HNSW index when the PostgreSQL server has the extension.

Builds a fresh migrated database of each kind, stores ``--n`` random unit embeddings for one tenant (plus a second
tenant's as noise), then prints the cold load of the in-memory matrix and p50/p95 milliseconds per top-``--k``
query over ``--queries`` queries: the index alone (version check + ranking, or the pgvector SELECT), and the whole
``similar_to_vector`` answer with its gallery cards. For pgvector it also prints recall@k against the exact answer.

    python bench/similarity.py                     # SQLite, PostgreSQL, pgvector if present
    python bench/similarity.py --n 20000 --no-pg   # a quick look

Prints figures only; nothing here is an assertion about time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from scratch_db import DEFAULT_ADMIN_URL, scratch_postgres  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from orchestrator.db.migrate import upgrade  # noqa: E402
from orchestrator.db.models import Asset, Embedding, Job, Tenant  # noqa: E402
from orchestrator.db.session import get_engine, get_sessionmaker  # noqa: E402
from orchestrator.enums import AssetStatus, JobStatus  # noqa: E402
from orchestrator.similarity import pgvector  # noqa: E402
from orchestrator.similarity.exact import MatrixCache, embeddings_version, load_matrix, top_k  # noqa: E402
from orchestrator.similarity.service import similar_to_vector  # noqa: E402

DIM = 512
MODEL = "bench-clip"
INSERT_CHUNK = 5_000
NOISE_FRACTION = 0.1
CLUSTERS = 2_000


def _fill(session: Session, *, n: int, rng: np.random.Generator) -> tuple[uuid.UUID, np.ndarray]:
    """One tenant with ``n`` embedded pictures (and a noise tenant); returns the tenant and its vectors."""
    measured: tuple[uuid.UUID, np.ndarray] | None = None
    for name, count in (("measured", n), ("noise", int(n * NOISE_FRACTION))):
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
        job = Job(tenant_id=tenant.id, name="bench", status=JobStatus.DONE, analyzers=["clip"])
        session.add(job)
        session.flush()
        # Pictures cluster (series of shots, similar scenes): points around CLUSTERS centres, like real embeddings.
        centres = rng.normal(size=(CLUSTERS, DIM))
        vectors = (centres[rng.integers(0, CLUSTERS, count)] + rng.normal(scale=0.6, size=(count, DIM))).astype("<f4")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for start in range(0, count, INSERT_CHUNK):
            ids = [uuid.uuid4() for _ in range(min(INSERT_CHUNK, count - start))]
            session.execute(
                insert(Asset),
                [
                    {
                        "id": asset_id,
                        "tenant_id": tenant.id,
                        "job_id": job.id,
                        "status": AssetStatus.DONE,
                        "original_name": f"{start + i:06d}.jpg",
                        "media_kind": "image",
                    }
                    for i, asset_id in enumerate(ids)
                ],
            )
            session.execute(
                insert(Embedding),
                [
                    {
                        "tenant_id": tenant.id,
                        "asset_id": asset_id,
                        "analyzer": "clip",
                        "model_id": MODEL,
                        "dim": DIM,
                        "vector": vectors[start + i].tobytes(),
                    }
                    for i, asset_id in enumerate(ids)
                ],
            )
        if measured is None:
            measured = (tenant.id, vectors)
    assert measured is not None
    return measured


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def _timed(fn: Callable[[], object], queries: int) -> tuple[float, float]:
    samples = []
    for _ in range(queries):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return _percentiles(samples)


def measure(url: str, *, label: str, n: int, k: int, queries: int) -> list[tuple[str, str]]:
    """Fill a fresh database at ``url`` and time its queries; returns (figure, value) rows."""
    rng = np.random.default_rng(0)
    upgrade(url)
    engine = get_engine(url)
    maker = get_sessionmaker(url)
    rows: list[tuple[str, str]] = []
    started = time.perf_counter()
    with maker() as session:
        tenant_id, vectors = _fill(session, n=n, rng=rng)
        session.commit()
    rows.append((f"{label}: insert {n:,} embeddings", f"{time.perf_counter() - started:.1f} s"))
    probes = [vectors[i] + rng.normal(scale=0.02, size=DIM).astype(np.float32) for i in rng.integers(0, n, queries)]
    with maker() as session:
        version = embeddings_version(session, tenant_id=tenant_id, analyzer="clip", model_id=MODEL)
        started = time.perf_counter()
        load_matrix(session, tenant_id=tenant_id, analyzer="clip", model_id=MODEL, version=version)
        rows.append((f"{label}: cold load of the matrix", f"{(time.perf_counter() - started) * 1000:.0f} ms"))
        cache = MatrixCache()
        cache.get(session, tenant_id=tenant_id, analyzer="clip", model_id=MODEL)
        probe = iter(probes * 2)

        def exact_query() -> object:
            matrix = cache.get(session, tenant_id=tenant_id, analyzer="clip", model_id=MODEL)
            return top_k(matrix.matrix, next(probe), k)

        p50, p95 = _timed(exact_query, queries)
        rows.append((f"{label}: exact in memory, k={k} (index only)", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"))
        if pgvector.vector_table_ready(session):
            session.rollback()
            started = time.perf_counter()
            for dim in pgvector.HNSW_DIMS:  # built once after the copy: faster than growing the graph row by row
                session.execute(text(f"DROP INDEX IF EXISTS vec_embeddings_hnsw_{dim}"))
            pgvector.sync_tenant(session, tenant_id=tenant_id)
            session.commit()
            copied = time.perf_counter() - started
            started = time.perf_counter()
            session.execute(text("SET maintenance_work_mem = '512MB'"))
            session.execute(
                text(
                    f"CREATE INDEX vec_embeddings_hnsw_{DIM} ON vec_embeddings "
                    f"USING hnsw ((v::vector({DIM})) vector_cosine_ops) WHERE dim = {DIM}"
                )
            )
            session.execute(text("ANALYZE vec_embeddings"))
            session.commit()
            rows.append(
                (f"{label}: pgvector copy / HNSW build", f"{copied:.1f} s / {time.perf_counter() - started:.1f} s")
            )
            probe = iter(probes * 2)
            matrix = cache.get(session, tenant_id=tenant_id, analyzer="clip", model_id=MODEL)
            recalls = []

            def vector_query() -> object:
                query = next(probe)
                hits = pgvector.nearest(
                    session, tenant_id=tenant_id, analyzer="clip", model_id=MODEL, query=query, limit=k
                )
                exact = {matrix.asset_ids[h.row] for h in top_k(matrix.matrix, query, k)}
                recalls.append(len(exact & {h.asset_id for h in hits}) / k)
                return hits

            # The exact ranking inside vector_query is timed too; subtract it with the exact figure above.
            p50, p95 = _timed(vector_query, queries)
            rows.append((f"{label}: pgvector HNSW, k={k} (+ exact check)", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"))
            rows.append((f"{label}: pgvector recall@{k}", f"{statistics.mean(recalls):.3f}"))
            probe = iter(probes * 2)

            def vector_only() -> object:
                return pgvector.nearest(
                    session, tenant_id=tenant_id, analyzer="clip", model_id=MODEL, query=next(probe), limit=k
                )

            p50, p95 = _timed(vector_only, queries)
            rows.append((f"{label}: pgvector HNSW, k={k} (index only)", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"))
        probe = iter(probes * 2)
        p50, p95 = _timed(
            lambda: similar_to_vector(session, tenant_id=tenant_id, vector=next(probe), model_id=MODEL, limit=k),
            queries,
        )
        rows.append((f"{label}: similar_to_vector with cards, k={k}", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"))
    engine.dispose()
    return rows


def main() -> None:
    """Run the benchmark on SQLite and, unless told not to, on PostgreSQL (with pgvector when it is there)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="embeddings of the measured tenant")
    parser.add_argument("--k", type=int, default=20, help="neighbours per query")
    parser.add_argument("--queries", type=int, default=100, help="queries per figure")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument(
        "--pg-admin-url",
        default=DEFAULT_ADMIN_URL,
        help="a PostgreSQL server where a scratch database may be created and dropped",
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="similarity-bench-") as folder:
        url = f"sqlite:///{Path(folder, 'bench.sqlite').as_posix()}"
        rows += measure(url, label="SQLite", n=args.n, k=args.k, queries=args.queries)
    if not args.no_pg:
        with scratch_postgres(args.pg_admin_url) as url:
            rows += measure(url, label="PostgreSQL", n=args.n, k=args.k, queries=args.queries)
    width = max(len(label) for label, _ in rows)
    print(f"\n{args.n:,} embeddings of {DIM} floats, k={args.k}, {args.queries} queries per figure")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


if __name__ == "__main__":
    main()
