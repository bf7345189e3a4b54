"""Backups of one deployment: the database and the media store, with a manifest of checksums.

``manifest`` describes and verifies a backup folder, ``database`` dumps and restores PostgreSQL (pg_dump/pg_restore)
and SQLite (its online backup API), ``media`` archives the media store as tar, ``archive`` puts them together
(create atomically; restore only after every check passed), ``commands`` is ``orchestrator backup``.
"""
