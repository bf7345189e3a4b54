"""Alembic environment: the URL comes from the caller's config or the orchestrator settings."""

from __future__ import annotations

from alembic import context

from orchestrator.db.models import Base
from orchestrator.db.session import get_engine, normalise_url
from orchestrator.settings import get_settings

config = context.config
url = normalise_url(config.get_main_option("sqlalchemy.url") or get_settings().database_url)


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    with get_engine(url).connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
