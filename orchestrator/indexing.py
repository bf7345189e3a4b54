"""Keeps the derived indexes in step with results: search text, faces and people.

Results are the truth; everything here can be rebuilt from them (``rebuild_tenant``). Each function runs in the
caller's transaction, so an index never disagrees with the results it was built from.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.orm import Session


def index_assets(session: Session, *, tenant_id: uuid.UUID, asset_ids: Sequence[uuid.UUID]) -> None:
    """Refresh the derived rows of these assets after their results were written (or replaced)."""
    if not asset_ids:
        return
    from orchestrator.search.documents import refresh_documents

    refresh_documents(session, tenant_id=tenant_id, asset_ids=asset_ids)
    from orchestrator.people.faces import refresh_faces

    refresh_faces(session, tenant_id=tenant_id, asset_ids=asset_ids)
    # similarity: the pgvector copy of the embeddings
    from orchestrator.similarity.pgvector import sync_assets

    sync_assets(session, tenant_id=tenant_id, asset_ids=asset_ids)


def on_job_finished(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> None:
    """Work that pays off once per job rather than per batch (clustering the faces no known person took)."""
    from orchestrator.people.faces import cluster_pending

    cluster_pending(session, tenant_id=tenant_id)


def rebuild_tenant(session: Session, *, tenant_id: uuid.UUID) -> None:
    """Rebuild every derived index of a tenant from its results (after an import, or to repair)."""
    from orchestrator.search.documents import rebuild_documents

    rebuild_documents(session, tenant_id=tenant_id)
    from orchestrator.people.faces import rebuild_people

    rebuild_people(session, tenant_id=tenant_id)
    # similarity: the pgvector copy of the embeddings
    from orchestrator.similarity.pgvector import sync_tenant

    sync_tenant(session, tenant_id=tenant_id)
