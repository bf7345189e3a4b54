"""How long one gallery page takes at tens of thousands of assets, on SQLite and on PostgreSQL.

Builds a fresh database of each kind (migrated like production), inserts ``--n`` assets (default 50,000) for one
tenant with four tags each, plus a second tenant's assets as noise, then prints milliseconds per page (the median of
``--repeat`` runs) for the first, middle and last page of the newest-first order, for an exact tag and a tag prefix,
for a media-kind filter, and for the tag facets. Keyset cursors are compared with OFFSET paging at the same depth.

    python bench/gallery_pages.py                  # SQLite and PostgreSQL (TEST_PG_ADMIN_URL or the local server)
    python bench/gallery_pages.py --n 5000 --no-pg # a quick look

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
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scratch_db import DEFAULT_ADMIN_URL, scratch_postgres  # noqa: E402
from sqlalchemy import insert, select, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from orchestrator.db.migrate import upgrade  # noqa: E402
from orchestrator.db.models import Asset, Job, ResultTag, Tenant  # noqa: E402
from orchestrator.db.session import get_engine, get_sessionmaker  # noqa: E402
from orchestrator.enums import AssetStatus, JobStatus  # noqa: E402
from orchestrator.gallery import PAGE_SIZE, Cursor, GalleryFilters, gallery_page, tag_facets  # noqa: E402

CATEGORIES = ("animal", "scene", "object", "mood", "colour", "style", "place", "time")
LABELS_PER_CATEGORY = 25
TAGS_PER_ASSET = 4
NOISE_FRACTION = 0.2
INSERT_CHUNK = 5_000
T0 = datetime(2025, 1, 1, tzinfo=UTC)
KINDS = ("image", "image", "image", "video", "audio")


def _tag(n: int) -> str:
    return f"{CATEGORIES[n % len(CATEGORIES)]}/label-{(n // len(CATEGORIES)) % LABELS_PER_CATEGORY:02d}"


def _fill(session: Session, *, n: int) -> uuid.UUID:
    """One tenant with ``n`` assets one second apart (and a noise tenant); returns the measured tenant's id."""
    ids = []
    for name, count in (("measured", n), ("noise", int(n * NOISE_FRACTION))):
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
        job = Job(tenant_id=tenant.id, name="bench", status=JobStatus.DONE, analyzers=["clip"])
        session.add(job)
        session.flush()
        ids.append(tenant.id)
        for start in range(0, count, INSERT_CHUNK):
            assets, tags = [], []
            for i in range(start, min(start + INSERT_CHUNK, count)):
                asset_id = uuid.uuid4()
                assets.append(
                    {
                        "id": asset_id,
                        "tenant_id": tenant.id,
                        "job_id": job.id,
                        "original_name": f"{i:06d}.jpg",
                        "media_kind": KINDS[i % len(KINDS)],
                        "status": AssetStatus.DONE if i % 50 else AssetStatus.FAILED,
                        "size_bytes": 1000,
                        "storage_key": f"k/{asset_id.hex}",
                        "thumbnail_key": f"t/{asset_id.hex}",
                        "created_at": T0 + timedelta(seconds=i),
                        "updated_at": T0,
                    }
                )
                tags += [
                    {
                        "tenant_id": tenant.id,
                        "asset_id": asset_id,
                        "analyzer": "clip",
                        "tag": _tag(i * 7 + k * 13),
                        "score": 0.5 + k / 10,
                    }
                    for k in range(TAGS_PER_ASSET)
                ]
            session.execute(insert(Asset), assets)
            session.execute(insert(ResultTag), tags)
            session.commit()
    return ids[0]


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm the caches once
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - started) * 1000)
    return statistics.median(runs)


def _cursor_at(session: Session, tenant_id: uuid.UUID, position: int) -> str:
    created_at, asset_id = session.execute(
        select(Asset.created_at, Asset.id)
        .where(Asset.tenant_id == tenant_id)
        .order_by(Asset.created_at.desc(), Asset.id.desc())
        .offset(position)
        .limit(1)
    ).one()
    return Cursor(created_at=created_at, asset_id=asset_id).encode()


def _offset_page(session: Session, tenant_id: uuid.UUID, offset: int) -> list[Asset]:
    return list(
        session.scalars(
            select(Asset)
            .where(Asset.tenant_id == tenant_id)
            .order_by(Asset.created_at.desc(), Asset.id.desc())
            .offset(offset)
            .limit(PAGE_SIZE)
        )
    )


def measure(url: str, *, n: int, repeat: int) -> None:
    """Fill the database at ``url`` and print the figures."""
    upgrade(url)
    factory = get_sessionmaker(url)
    started = time.perf_counter()
    with factory() as session:
        tenant_id = _fill(session, n=n)
    filled_s = time.perf_counter() - started
    engine = get_engine(url)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    print(
        f"\n{engine.dialect.name}: {n:,} assets (+{int(n * NOISE_FRACTION):,} of another tenant), "
        f"filled in {filled_s:.1f} s"
    )
    with factory() as session:
        last_page_at = max(0, n - PAGE_SIZE)
        cursors = {
            "middle": _cursor_at(session, tenant_id, n // 2),
            "last": _cursor_at(session, tenant_id, last_page_at),
        }

        def page(**kwargs: object) -> Callable[[], object]:
            return lambda: gallery_page(session, tenant_id=tenant_id, **kwargs)  # type: ignore[arg-type]

        rows: list[tuple[str, float]] = [
            ("first page (with total count)", _median_ms(page(), repeat)),
            ("first page (no count)", _median_ms(page(with_total=False), repeat)),
            ("middle page, keyset cursor", _median_ms(page(cursor=cursors["middle"], with_total=False), repeat)),
            ("last page, keyset cursor", _median_ms(page(cursor=cursors["last"], with_total=False), repeat)),
            (
                "middle page, OFFSET (for comparison)",
                _median_ms(lambda: _offset_page(session, tenant_id, n // 2), repeat),
            ),
            (
                "last page, OFFSET (for comparison)",
                _median_ms(lambda: _offset_page(session, tenant_id, last_page_at), repeat),
            ),
            (
                "tag animal/label-03, first page + count",
                _median_ms(page(filters=GalleryFilters(tag="animal/label-03")), repeat),
            ),
            (
                "tag prefix animal/*, first page + count",
                _median_ms(page(filters=GalleryFilters(tag="animal/*")), repeat),
            ),
            (
                "tag animal/label-03, middle page",
                _median_ms(
                    page(filters=GalleryFilters(tag="animal/label-03"), cursor=cursors["middle"], with_total=False),
                    repeat,
                ),
            ),
            (
                "status failed, first page + count",
                _median_ms(page(filters=GalleryFilters(status=AssetStatus.FAILED)), repeat),
            ),
            ("tag facets (all tags, counted)", _median_ms(lambda: tag_facets(session, tenant_id=tenant_id), repeat)),
        ]
    for label, ms in rows:
        print(f"  {label:<44} {ms:8.2f} ms")


def main() -> None:
    """Run the benchmark on SQLite and, unless told not to, on PostgreSQL."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="assets of the measured tenant")
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (the median is printed)")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument(
        "--pg-admin-url",
        default=DEFAULT_ADMIN_URL,
        help="a PostgreSQL server where a scratch database may be created and dropped",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gallery-bench-") as folder:
        measure(f"sqlite:///{Path(folder, 'bench.sqlite').as_posix()}", n=args.n, repeat=args.repeat)
    if not args.no_pg:
        with scratch_postgres(args.pg_admin_url) as url:
            measure(url, n=args.n, repeat=args.repeat)


if __name__ == "__main__":
    main()
