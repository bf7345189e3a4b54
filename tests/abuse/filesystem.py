"""Walks of the filesystem after an abuse run: what the system wrote stays inside its data folder, under keys it
generated, and nothing anywhere is named after an upload."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

# Where a path built from a hostile name could land: the temporary folders (the tests' data folders among them), the
# repository (the tests' working directory), /etc, and the top of the home folder and of the disk. A walk of the whole
# disk takes 15 s here; these take under 1 s.
PLACES_TO_LOOK = [Path("/tmp"), Path("/var/tmp"), Path.cwd(), Path("/etc")]
SHALLOW_PLACES = [Path("/"), Path.home()]
# Tool caches of the repository: large, and nothing the system writes goes there.
SKIPPED_FOLDERS = frozenset({".git", ".venv", "node_modules", ".mypy_cache", ".ruff_cache", ".pytest_cache"})
# Every file the media store may hold, relative to its root: uploads, thumbnails and write-back copies by content.
STORE_FILE = re.compile(
    r"^tenants/[0-9a-f]{32}/(blobs/[0-9a-f]{2}/[0-9a-f]{64}|thumbs/[0-9a-f]{2}/[0-9a-f]{64}\.jpg"
    r"|written/[0-9a-f]{32}/[0-9a-f]{64})$"
)


def paths_named_with(marker: str, places: Iterable[Path] = PLACES_TO_LOOK) -> list[Path]:
    """Every file or folder under ``places`` (and directly in ``SHALLOW_PLACES``) whose name contains ``marker``;
    unreadable folders are skipped."""
    found = [path for place in SHALLOW_PLACES for path in place.iterdir() if marker in path.name]
    for place in places:
        for folder, dirs, files in os.walk(place, onerror=lambda _: None):
            dirs[:] = [name for name in dirs if name not in SKIPPED_FOLDERS]
            found += [Path(folder, name) for name in (*dirs, *files) if marker in name]
    return sorted(set(found))


def unexpected_store_files(media_root: Path) -> list[str]:
    """Files of the media store that are not at a generated key (the staging folder ``tmp`` must be empty too)."""
    odd = []
    for path in media_root.rglob("*"):
        if path.is_file():
            relative = path.relative_to(media_root).as_posix()
            if not STORE_FILE.fullmatch(relative):
                odd.append(relative)
    return sorted(odd)
