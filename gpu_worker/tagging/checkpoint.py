"""The resumable state of tagging one folder: a SQLite file inside it, keyed by content sha256.

Two tables. ``analyses`` holds finished inference results by (content sha256, analysis key) until the file's
outputs are written, so that an interrupted run never runs a model twice on the same bytes; a decode failure is
kept too (the same bytes fail the same way). ``files`` records, per relative path, the content we analyzed
(``source_sha256``), the content we left behind (``final_sha256``, which differs when tags went into the file) and
the run settings; a file is unchanged when its current hash is that final hash under the same settings. The final
hash is recorded (state ``writing``) *before* the tagged copy replaces the original, so a crash between the two
is recognised on resume. Every change is committed at once.

One run at a time: the checkpoint holds an OS file lock for its lifetime (released by the OS if the process dies).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from gpu_worker.contract import ItemResult
from gpu_worker.tagging.errors import TaggingSetupError
from gpu_worker.tagging.layout import checkpoint_path

SCHEMA_VERSION = "1"
LOCK_NAME = "run.lock"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS analyses (
    sha256 TEXT NOT NULL,
    analysis_key TEXT NOT NULL,
    document TEXT NOT NULL,
    PRIMARY KEY (sha256, analysis_key)
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    final_sha256 TEXT NOT NULL,
    run_key TEXT NOT NULL,
    error TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (path TEXT PRIMARY KEY);
"""


class FileState(StrEnum):
    """Where a file stands: its tagged copy is about to replace it, it is finished, or writing failed."""

    WRITING = "writing"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class FileRecord:
    """The checkpoint's row for one relative path."""

    relative: str
    state: FileState
    source_sha256: str
    final_sha256: str
    run_key: str
    error: str | None


@dataclass(frozen=True)
class StoredAnalysis:
    """One finished analysis of some content: the executor's result, where it ran, and when."""

    result: ItemResult
    device: str
    analyzed_at: str

    def to_json(self) -> str:
        """Serialised for the checkpoint."""
        document = {"result": self.result.model_dump(mode="json"), "device": self.device, "at": self.analyzed_at}
        return json.dumps(document)

    @classmethod
    def from_json(cls, text: str) -> StoredAnalysis:
        """The inverse of :meth:`to_json`."""
        data: dict[str, Any] = json.loads(text)
        return cls(ItemResult.model_validate(data["result"]), str(data["device"]), str(data["at"]))


class Checkpoint:
    """The checkpoint of the folder ``root``; safe to share between threads. Use as a context manager."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = checkpoint_path(root)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(exist_ok=True)
            self._run_lock = _acquire_run_lock(self.path.parent / LOCK_NAME)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.executescript(_SCHEMA)
            self._check_schema()
        except (OSError, sqlite3.Error) as exc:
            raise TaggingSetupError(f"cannot open the checkpoint {self.path}: {exc}") from exc

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database and release the run lock."""
        with self._lock:
            self._db.close()
            _release_run_lock(self._run_lock)

    def _check_schema(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is not None and row[0] == SCHEMA_VERSION:
            return
        if row is not None:  # written by another version: its records cannot be trusted, start over
            self._db.executescript("DELETE FROM analyses; DELETE FROM files;")
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))

    def reset(self) -> None:
        """Forget every finished file and analysis (a run without ``--resume``); pending temp files stay listed."""
        with self._lock:
            self._db.executescript("DELETE FROM analyses; DELETE FROM files;")

    # files

    def file(self, relative: str) -> FileRecord | None:
        """The record of ``relative``, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT state, source_sha256, final_sha256, run_key, error FROM files WHERE path = ?", (relative,)
            ).fetchone()
        if row is None:
            return None
        return FileRecord(relative, FileState(row[0]), row[1], row[2], row[3], row[4])

    def mark(
        self,
        relative: str,
        state: FileState,
        *,
        source_sha256: str,
        final_sha256: str,
        run_key: str,
        error: str | None = None,
    ) -> None:
        """Record where ``relative`` stands; marking it done also drops the analysis it no longer needs."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO files (path, state, source_sha256, final_sha256, run_key, error, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (relative, state.value, source_sha256, final_sha256, run_key, error, now),
            )
            if state is FileState.DONE:
                self._db.execute("DELETE FROM analyses WHERE sha256 = ?", (source_sha256,))

    def counts(self) -> dict[FileState, int]:
        """How many files are in each state."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall()
        return {FileState(state): count for state, count in rows}

    # analyses

    def analysis(self, sha256: str, analysis_key: str) -> StoredAnalysis | None:
        """The stored analysis of this content under these analyzers and options, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT document FROM analyses WHERE sha256 = ? AND analysis_key = ?", (sha256, analysis_key)
            ).fetchone()
        return StoredAnalysis.from_json(row[0]) if row is not None else None

    def save_analysis(self, sha256: str, analysis_key: str, analysis: StoredAnalysis) -> None:
        """Keep an analysis until the file that needs it is done."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO analyses (sha256, analysis_key, document) VALUES (?, ?, ?)",
                (sha256, analysis_key, analysis.to_json()),
            )

    # temporary files

    def add_pending(self, temp: Path) -> None:
        """Note a temporary file before it is created, so that a crashed run's leftovers can be removed."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO pending (path) VALUES (?)", (self._key(temp),))

    def remove_pending(self, temp: Path) -> None:
        """Forget a temporary file that was renamed into place or deleted."""
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE path = ?", (self._key(temp),))

    def remove_leftovers(self) -> list[Path]:
        """Delete the temporary files an interrupted run left behind; returns those that existed."""
        with self._lock:
            keys = [row[0] for row in self._db.execute("SELECT path FROM pending").fetchall()]
        removed = []
        for key in keys:
            temp = self.root / key
            # exiftool writes "<name>_exiftool_tmp" beside a file it edits in place.
            for leftover in (temp, temp.with_name(temp.name + "_exiftool_tmp")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
                    removed.append(leftover)
            self.remove_pending(temp)
        return removed

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _acquire_run_lock(path: Path) -> IO[bytes]:
    handle = path.open("a+b")
    try:
        if sys.platform == "win32":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise TaggingSetupError(
            f"another `gpu-worker tag` run is working on this folder (lock {path}); wait for it to finish"
        ) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n".encode())
    handle.flush()
    return handle


def _release_run_lock(handle: IO[bytes]) -> None:
    if sys.platform == "win32":
        import msvcrt

        handle.seek(0)
        with contextlib.suppress(OSError):
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
    handle.close()
