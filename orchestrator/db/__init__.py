"""Database models, engine and sessions. Migrations live in ``migrations/`` and run through Alembic."""
