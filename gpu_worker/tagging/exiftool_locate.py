"""Where the exiftool executable is looked for, on Linux, macOS and Windows.

Windows has no package to install: the official zip holds ``exiftool(-k).exe`` (the ``-k`` makes it pause before it
exits, for drag and drop) and its ``exiftool_files`` folder. ``deploy/windows/install.ps1 -WithExiftool`` unpacks it
into ``exiftool\\`` beside the virtual environment as ``exiftool.exe``; a copy on PATH works too. PATH is walked here
rather than with ``shutil.which``, which on Windows also looks in the current folder, and that may be the folder
being tagged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

# The folder install.ps1 unpacks the official Windows zip into, beside the virtual environment.
INSTALL_FOLDER_NAME = "exiftool"
WINDOWS_NAMES = ("exiftool.exe", "exiftool(-k).exe")
POSIX_NAMES = ("exiftool",)


def is_windows(platform: str) -> bool:
    """Whether ``platform`` (a ``sys.platform`` value) is Windows."""
    return platform == "win32"


def executable_names(platform: str) -> tuple[str, ...]:
    """The file names exiftool goes by on ``platform``, preferred first."""
    return WINDOWS_NAMES if is_windows(platform) else POSIX_NAMES


def search_folders(*, platform: str, venv: Path, path_env: str) -> list[Path]:
    """The folders to look in, in order: the virtual environment's own scripts folder, the ``exiftool`` folder beside
    it, then each PATH entry (split the way ``platform`` splits it)."""
    scripts = venv / ("Scripts" if is_windows(platform) else "bin")
    separator = ";" if is_windows(platform) else ":"
    on_path = [Path(entry.strip().strip('"')) for entry in path_env.split(separator) if entry.strip().strip('"')]
    return [scripts, venv.parent / INSTALL_FOLDER_NAME, *on_path]


def candidates(*, platform: str, venv: Path, path_env: str) -> Iterator[Path]:
    """Every place exiftool may be, in the order it is looked for."""
    for folder in search_folders(platform=platform, venv=venv, path_env=path_env):
        for name in executable_names(platform):
            yield folder / name


def locate_exiftool(
    *, platform: str = sys.platform, venv: Path | None = None, path_env: str | None = None
) -> Path | None:
    """The first exiftool found (on POSIX it must be executable), or None. Defaults: this process's platform,
    virtual environment (``sys.prefix``) and PATH."""
    venv = Path(sys.prefix) if venv is None else venv
    path_env = os.environ.get("PATH", "") if path_env is None else path_env
    for candidate in candidates(platform=platform, venv=venv, path_env=path_env):
        if candidate.is_file() and (is_windows(platform) or os.access(candidate, os.X_OK)):
            return candidate
    return None
