"""SQLAlchemy URLs for the embedded SQLite files, from any data folder: a Windows drive, spaces, ``%`` or ``#``."""

from __future__ import annotations

from pathlib import PurePath

# SQLAlchemy percent-decodes the database part of a URL and ends it at "?"; kombu's SQLAlchemy transport hands the
# URL to SQLAlchemy unchanged. Escaping exactly these keeps every other character (non-ASCII names) readable.
_URL_ESCAPES = str.maketrans({"%": "%25", "?": "%3F", "#": "%23"})


def sqlite_url(database: PurePath, *, scheme: str = "sqlite") -> str:
    """The URL of the SQLite file ``database``: ``sqlite:///C:/Users/me/data/orchestrator.sqlite`` for
    ``C:\\Users\\me\\data\\orchestrator.sqlite``, ``sqlite:////home/me/data/...`` on POSIX.

    ``scheme`` ``sqla+sqlite`` gives the embedded queue's kombu URL.
    """
    return f"{scheme}:///{database.as_posix().translate(_URL_ESCAPES)}"
