"""The code paths that differ on Windows, exercised here on Linux through PureWindowsPath and platform arguments."""

from __future__ import annotations

import re
import sqlite3
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from kombu import Connection
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from gpu_worker.tagging.exiftool import find_exiftool
from gpu_worker.tagging.exiftool_locate import locate_exiftool, search_folders
from gpu_worker.tagging.layout import TEMP_PREFIX, json_sidecar_path, temp_path_for, xmp_sidecar_path
from orchestrator.library.names import asset_file_name, job_folder_name, safe_component
from orchestrator.settings import Settings
from orchestrator.sqlite_urls import sqlite_url

WINDOWS_DATA_DIRS = [
    r"C:\Users\me\AppData\Local\AIMediaAnalysis\data",
    r"C:\Users\José Müller\AppData\Local\AIMediaAnalysis\data",
    r"D:\Media 50%41 #2\data",  # "%41" must not become "A", "#" must stay
    r"\\nas\share\AIMediaAnalysis\data",
]


@pytest.mark.parametrize("data_dir", WINDOWS_DATA_DIRS)
def test_the_database_url_of_a_windows_data_dir_names_that_exact_file(data_dir: str) -> None:
    database = PureWindowsPath(data_dir) / "orchestrator.sqlite"

    url = sqlite_url(database)

    assert url.startswith("sqlite:///")
    parsed = make_url(url)
    assert parsed.drivername == "sqlite" and not parsed.query
    assert PureWindowsPath(parsed.database or "") == database


@pytest.mark.parametrize("data_dir", WINDOWS_DATA_DIRS)
def test_the_embedded_queue_url_of_a_windows_data_dir_reaches_sqlalchemy_unchanged(data_dir: str) -> None:
    database = PureWindowsPath(data_dir) / "queue.sqlite"

    connection = Connection(sqlite_url(database, scheme="sqla+sqlite"))

    assert connection.transport_cls == "sqla"
    # kombu's SQLAlchemy transport passes its hostname to create_engine.
    assert PureWindowsPath(make_url(connection.hostname).database or "") == database


def test_a_data_dir_with_percent_hash_and_non_ascii_opens_the_right_sqlite_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "Médias 50%41 #2"
    data_dir.mkdir()

    settings = Settings(data_dir=data_dir)
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE marker (value TEXT)"))
    engine.dispose()

    assert sqlite3.connect(data_dir / "orchestrator.sqlite").execute("SELECT count(*) FROM marker").fetchone() == (0,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Médias 50%41 #2"]
    queue = make_url(settings.broker_url.removeprefix("sqla+")).database
    assert PurePosixPath(queue or "") == data_dir / "queue.sqlite"


# -- names a Windows file system refuses ----------------------------------------------------------------------------

WINDOWS_INVALID = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("CON", "_CON"),
        ("nul.jpg", "_nul.jpg"),
        ("nul .jpg", "_nul .jpg"),  # Windows drops the space: still NUL
        ("Aux.tar.gz", "_Aux.tar.gz"),
        ("COM1.png", "_COM1.png"),
        ("lpt9", "_lpt9"),
        ("COM¹.jpg", "_COM¹.jpg"),
        ("CONIN$", "_CONIN$"),
        ("conout$.txt", "_conout$.txt"),
        ("com10.jpg", "com10.jpg"),  # not a device
        ("console.jpg", "console.jpg"),
        ("photo.jpg. . ", "photo.jpg"),  # trailing dots and spaces vanish on Windows
        (r"C:\Users\me\Pictures\beach.jpg", "beach.jpg"),
        ("D:beach.jpg", "D_beach.jpg"),  # a drive-relative name
        ('what? "yes" <no> a|b*.jpg', "what_ _yes_ _no_ a_b_.jpg"),
    ],
)
def test_an_exported_file_name_is_one_valid_windows_name(raw: str, expected: str) -> None:
    name = safe_component(raw)

    assert name == expected
    assert not WINDOWS_INVALID.search(name) and not name.endswith((" ", "."))
    assert len(PureWindowsPath(name).parts) == 1 and not PureWindowsPath(name).drive


def test_two_windows_spellings_of_one_name_never_share_an_exported_file() -> None:
    taken: set[str] = set()

    names = [asset_file_name(raw, taken) for raw in ("Photo.JPG", "photo.jpg", "photo.jpg.", "photo.jpg ")]

    assert names == ["Photo.JPG", "photo (2).jpg", "photo (3).jpg", "photo (4).jpg"]


def test_a_job_named_like_a_device_gets_a_valid_folder() -> None:
    import uuid
    from datetime import UTC, datetime

    folder = job_folder_name("PRN", datetime(2026, 1, 2, tzinfo=UTC), uuid.UUID(int=0xABCDEF12 << 96))

    assert folder == "_PRN-abcdef12"


def test_tag_outputs_beside_a_windows_file_keep_its_folder_and_full_name() -> None:
    media = PureWindowsPath(r"C:\Users\me\Pictures\Été 2024\IMG 0001.JPG")

    assert json_sidecar_path(media) == PureWindowsPath(r"C:\Users\me\Pictures\Été 2024\IMG 0001.JPG.ai.json")  # type: ignore[arg-type]
    assert xmp_sidecar_path(media) == PureWindowsPath(r"C:\Users\me\Pictures\Été 2024\IMG 0001.JPG.xmp")  # type: ignore[arg-type]
    temp = temp_path_for(media)  # type: ignore[arg-type]
    assert temp.parent == media.parent and temp.name.startswith(TEMP_PREFIX) and temp.suffix == ".jpg"
    assert "IMG" not in temp.name


# -- exiftool on Windows ----------------------------------------------------------------------------------------------


def _file(path: Path, *, executable: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"MZ")
    if executable:
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def install_root(tmp_path: Path) -> Path:
    """A Windows install: %LOCALAPPDATA%\\AIMediaAnalysis with venv\\Scripts and (maybe) exiftool\\."""
    (tmp_path / "AIMediaAnalysis" / "venv" / "Scripts").mkdir(parents=True)
    return tmp_path / "AIMediaAnalysis"


def test_exiftool_unpacked_beside_the_venv_by_install_ps1_is_found(install_root: Path) -> None:
    exiftool = _file(install_root / "exiftool" / "exiftool.exe")

    assert locate_exiftool(platform="win32", venv=install_root / "venv", path_env="") == exiftool


def test_the_official_zips_exiftool_k_exe_is_found_when_not_renamed(install_root: Path) -> None:
    exiftool = _file(install_root / "exiftool" / "exiftool(-k).exe")
    _file(install_root / "exiftool" / "exiftool_files" / "perl.exe")

    assert locate_exiftool(platform="win32", venv=install_root / "venv", path_env="") == exiftool


def test_a_renamed_exiftool_exe_wins_over_the_pausing_k_version_in_one_folder(install_root: Path) -> None:
    _file(install_root / "exiftool" / "exiftool(-k).exe")
    renamed = _file(install_root / "exiftool" / "exiftool.exe")

    assert locate_exiftool(platform="win32", venv=install_root / "venv", path_env="") == renamed


def test_the_venvs_own_exiftool_comes_before_path(install_root: Path, tmp_path: Path) -> None:
    own = _file(install_root / "venv" / "Scripts" / "exiftool.exe")
    _file(tmp_path / "tools" / "exiftool.exe")

    found = locate_exiftool(platform="win32", venv=install_root / "venv", path_env=str(tmp_path / "tools"))

    assert found == own


def test_windows_path_entries_are_split_on_semicolons_and_unquoted(install_root: Path, tmp_path: Path) -> None:
    on_path = _file(tmp_path / "Program Files" / "ExifTool" / "exiftool.exe")
    path_env = f'{tmp_path / "nothing"};;"{on_path.parent}";{tmp_path / "later"}'

    assert locate_exiftool(platform="win32", venv=install_root / "venv", path_env=path_env) == on_path
    assert search_folders(platform="win32", venv=install_root / "venv", path_env=path_env)[2:] == [
        tmp_path / "nothing",
        on_path.parent,
        tmp_path / "later",
    ]


def test_the_current_folder_is_never_searched_on_windows(
    install_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # shutil.which would run an exiftool.exe lying in the folder being tagged.
    photos = tmp_path / "photos"
    _file(photos / "exiftool.exe")
    monkeypatch.chdir(photos)

    assert locate_exiftool(platform="win32", venv=install_root / "venv", path_env="") is None


def test_on_posix_only_an_executable_exiftool_counts(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    _file(tmp_path / "a" / "exiftool")
    runnable = _file(tmp_path / "b" / "exiftool", executable=True)
    _file(tmp_path / "c" / "exiftool.exe", executable=True)

    path_env = f"{tmp_path / 'a'}:{tmp_path / 'c'}:{tmp_path / 'b'}"

    assert locate_exiftool(platform="linux", venv=venv, path_env=path_env) == runnable


def test_find_exiftool_without_an_override_finds_this_machines_exiftool() -> None:
    import shutil

    installed = shutil.which("exiftool")
    if installed is None:
        pytest.skip("exiftool is not installed here")

    assert find_exiftool().resolve() == Path(installed).resolve()
