"""The ``offset`` query parameter of the list routes, bounded.

An offset reaches the database as a bound integer: past a signed 64-bit value SQLite raises ``OverflowError`` and
PostgreSQL a ``DataError``, which answered 500. A billion rows is beyond any tenant, so a larger offset is a 422.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

MAX_OFFSET = 1_000_000_000

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
