"""Run Alembic migrations programmatically (``orchestrator db upgrade``; the API and workers call it at start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from orchestrator.db.session import normalise_url
from orchestrator.settings import get_settings

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")


def alembic_config(url: str | None = None) -> Config:
    """Alembic config pointing at the packaged migrations and ``url`` (default: the configured database)."""
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", normalise_url(url or get_settings().database_url))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    """Migrate the database down to ``revision``."""
    command.downgrade(alembic_config(url), revision)


def current(url: str | None = None) -> None:
    """Print the current revision."""
    command.current(alembic_config(url))
