"""The ``orchestrator`` command line.

Client commands talk to the REST API (``login``, ``submit``, ``status``, ``jobs``, ``results``); the API URL and key
come from :mod:`orchestrator.client_config`. Server commands act on this machine's configuration and database
(``up``, ``db``, ``tenants``, ``worker``, ``beat``) and import their modules only when run, so that ``--help`` stays
fast and one missing piece does not break the other commands.

Exit codes: 0 success (including a job that finished with some failed files), 1 an API, connection, database or
configuration error (printed as one readable line), 2 ``submit --wait`` ran past ``--timeout`` (and, as for any Click
program, a usage error).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.box import SIMPLE
from rich.console import Console
from rich.filesize import decimal as human_bytes
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from orchestrator.client import (
    ApiClient,
    ApiConnectionError,
    ApiError,
    AssetPublic,
    JobPublic,
    LocalFile,
    SearchResults,
    UploadStatus,
)
from orchestrator.client_config import (
    DEFAULT_API_URL,
    ENV_API_KEY,
    ENV_API_URL,
    ClientConfig,
    ClientConfigError,
    is_local_url,
    normalise_api_url,
    resolve_client_config,
    save_client_config,
)
from orchestrator.enums import AssetStatus, JobStatus
from orchestrator.errors import MediaAnalysisError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TIMEOUT = 2

# Several files per request amortise the round trip; the byte cap keeps one request well under proxy body limits
# and bounds what a dropped connection costs to resend.
UPLOAD_BATCH_MAX_FILES = 8
UPLOAD_BATCH_MAX_BYTES = 32 * 1024**2
POLL_INTERVAL_S = 2.0
# A restarting API (or a proxy in front of it) answers 5xx or refuses for a few seconds; that is not a failed job.
MAX_TRANSIENT_POLL_ERRORS = 5
SNIFF_BYTES = 4096
JOB_NAME_MAX_CHARS = 200
PIPED_TABLE_WIDTH = 120

SKIP_NOT_MEDIA = "not an image, video or audio file"

# A file with one of these extensions is always sent, whatever its bytes: the server is the judge of content.
MEDIA_EXTENSIONS = frozenset(
    {
        # images
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp",
        ".heic", ".heif", ".avif", ".dng", ".cr2", ".nef", ".arw", ".orf", ".rw2", ".pef", ".srw",
        # video
        ".mp4", ".m4v", ".mov", ".qt", ".avi", ".mkv", ".webm", ".3gp", ".3g2", ".ts", ".mts", ".m2ts",
        ".mpg", ".mpeg", ".wmv", ".flv", ".ogv",
        # audio
        ".mp3", ".wav", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".m4b", ".aac", ".wma", ".aif", ".aiff",
    }
)  # fmt: skip

TERMINAL_JOB_STATES = frozenset({JobStatus.DONE, JobStatus.CANCELLED})

app = typer.Typer(
    name="orchestrator",
    help="AI Media Analysis: submit media for tagging and read the results; run the server side.",
    no_args_is_help=True,
    add_completion=False,
    # Locals in a traceback would include the API key.
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants and their API keys, directly on the configured database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tenants_app, name="tenants")
users_app = typer.Typer(
    help="Dashboard users (sign-in with a password), directly on the configured database.", no_args_is_help=True
)
app.add_typer(users_app, name="users")
# The library commands live with the library; the module imports only Typer until a command runs.
from orchestrator.library.commands import library_app  # noqa: E402

app.add_typer(library_app, name="library")
from orchestrator.writeback.commands import writeback_app  # noqa: E402

app.add_typer(writeback_app, name="writeback")
from orchestrator.people.commands import people_app  # noqa: E402

app.add_typer(people_app, name="people")
from orchestrator.backup.commands import backup_app  # noqa: E402

app.add_typer(backup_app, name="backup")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

ApiUrlOption = Annotated[
    str | None,
    typer.Option("--api-url", help="API base URL (default: $ORCH_API_URL, the login file, http://127.0.0.1:8000)."),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key", help="Tenant API key (default: $ORCH_API_KEY, the login file, ./data/first-api-key.txt)."
    ),
]


def make_client(config: ClientConfig) -> ApiClient:
    """Build the API client for one command. Tests replace this function to give the client a fake transport."""
    return ApiClient(config.api_url, config.api_key)


# -- local files ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkippedFile:
    """A local file that is not sent, and why (one line for the user)."""

    path: Path
    name: str
    reason: str


@dataclass(frozen=True)
class MediaScan:
    """The files to upload, in a deterministic order, and the ones skipped."""

    files: list[LocalFile]
    skipped: list[SkippedFile]


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _walk(root: Path) -> Iterator[tuple[Path, str] | SkippedFile]:
    """Files under ``root``: each folder's files by name, then its subfolders by name. Symlinked folders are not
    followed (they can loop)."""
    errors: list[OSError] = []

    def unreadable() -> Iterator[SkippedFile]:
        while errors:
            err = errors.pop(0)
            where = Path(err.filename) if err.filename else root
            yield SkippedFile(where, _relative_name(where, root), f"cannot read folder: {err.strerror or err}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=errors.append):
        yield from unreadable()
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            yield path, _relative_name(path, root)
    yield from unreadable()


def _classify(path: Path, name: str) -> LocalFile | SkippedFile:
    try:
        info = path.stat()
    except OSError as exc:
        return SkippedFile(path, name, f"cannot read: {exc.strerror or exc}")
    if not stat.S_ISREG(info.st_mode):
        return SkippedFile(path, name, "not a regular file")
    if path.suffix.lower() in MEDIA_EXTENSIONS:
        return LocalFile(path=path, name=name, size=info.st_size)
    if info.st_size == 0:
        return SkippedFile(path, name, "empty file")
    from gpu_worker.sniff import sniff

    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        return SkippedFile(path, name, f"cannot read: {exc.strerror or exc}")
    if sniff(head) is None:
        return SkippedFile(path, name, SKIP_NOT_MEDIA)
    return LocalFile(path=path, name=name, size=info.st_size)


def collect_media(paths: Sequence[Path]) -> MediaScan:
    """Find the files to send under ``paths`` (files and folders, folders recursively, in sorted order).

    A file with a media extension (:data:`MEDIA_EXTENSIONS`) is always sent; any other file is sent only if its
    first bytes are an image, video or audio container. A file reached twice is sent once. Names sent to the server
    are paths relative to the folder given (or the bare name for a file given directly), with ``/`` separators.
    """
    files: list[LocalFile] = []
    skipped: list[SkippedFile] = []
    seen: set[Path] = set()
    for arg in paths:
        entries: Iterable[tuple[Path, str] | SkippedFile] = _walk(arg) if arg.is_dir() else [(arg, arg.name)]
        for entry in entries:
            if isinstance(entry, SkippedFile):
                skipped.append(entry)
                continue
            path, name = entry
            try:
                key = path.resolve()
            except OSError:
                key = path.absolute()
            if key in seen:
                continue
            seen.add(key)
            verdict = _classify(path, name)
            if isinstance(verdict, LocalFile):
                files.append(verdict)
            else:
                skipped.append(verdict)
    return MediaScan(files=files, skipped=skipped)


def plan_upload_batches(
    files: Sequence[LocalFile],
    *,
    max_files: int = UPLOAD_BATCH_MAX_FILES,
    max_bytes: int = UPLOAD_BATCH_MAX_BYTES,
) -> list[list[LocalFile]]:
    """Split ``files`` (order kept) into upload requests of at most ``max_files`` files and ``max_bytes`` bytes;
    a file larger than ``max_bytes`` goes alone."""
    batches: list[list[LocalFile]] = []
    current: list[LocalFile] = []
    current_bytes = 0
    for item in files:
        if current and (len(current) >= max_files or current_bytes + item.size > max_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += item.size
    if current:
        batches.append(current)
    return batches


# -- results formatting ---------------------------------------------------------------------------------------------


class ResultFormat(StrEnum):
    """Output formats of ``orchestrator results``."""

    JSON = "json"
    CSV = "csv"


@dataclass(frozen=True)
class JobSummary:
    """Counts over a job's assets; ``tags`` is the number of distinct tags found."""

    files: int
    done: int
    failed: int
    tags: int


def summarize_assets(assets: Sequence[AssetPublic]) -> JobSummary:
    """Count files, done, failed and distinct tags over ``assets``."""
    return JobSummary(
        files=len(assets),
        done=sum(1 for a in assets if a.status == AssetStatus.DONE),
        failed=sum(1 for a in assets if a.status == AssetStatus.FAILED),
        tags=len({t.tag for a in assets for t in a.tags}),
    )


def format_tags(asset: AssetPublic) -> str:
    """``tag:score;tag:score`` with scores to three decimals, in the server's order."""
    return ";".join(f"{t.tag}:{t.score:.3f}" for t in asset.tags)


def format_results_json(assets: Sequence[AssetPublic]) -> str:
    """The assets (with tags and per-analyzer results) as a JSON list."""
    return json.dumps([a.model_dump(mode="json") for a in assets], indent=2, ensure_ascii=False) + "\n"


def format_results_csv(assets: Sequence[AssetPublic]) -> str:
    """One row per asset: id, name, status, error_code, tags (see :func:`format_tags`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "name", "status", "error_code", "tags"])
    for asset in assets:
        writer.writerow([asset.id, asset.name, str(asset.status), asset.error_code or "", format_tags(asset)])
    return buffer.getvalue()


# -- waiting --------------------------------------------------------------------------------------------------------


def _is_transient(exc: ApiError) -> bool:
    return isinstance(exc, ApiConnectionError) or (
        exc.status_code is not None and (exc.status_code >= 500 or exc.status_code == 429)
    )


def wait_for_job(
    client: ApiClient,
    job: JobPublic,
    *,
    timeout_s: float | None,
    poll_interval_s: float = POLL_INTERVAL_S,
    on_update: Callable[[JobPublic], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobPublic:
    """Poll ``job`` until it is done or cancelled, or ``timeout_s`` has passed; return the last state seen (the
    caller checks its status). A few consecutive connection errors or 5xx answers are waited out."""
    deadline = None if timeout_s is None else clock() + timeout_s
    failures = 0
    while True:
        try:
            job = client.get_job(job.id)
            failures = 0
        except ApiError as exc:
            failures += 1
            if not _is_transient(exc) or failures > MAX_TRANSIENT_POLL_ERRORS:
                raise
        else:
            if on_update is not None:
                on_update(job)
            if job.status in TERMINAL_JOB_STATES:
                return job
        if deadline is not None:
            left = deadline - clock()
            if left <= 0:
                return job
            sleep(min(poll_interval_s, left))
        else:
            sleep(poll_interval_s)


# -- output helpers -------------------------------------------------------------------------------------------------


def _say(message: str, style: str = "") -> None:
    console.print(Text(message, style=style), soft_wrap=True)


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    err_console.print(Text(f"error: {message}", style="bold red"), soft_wrap=True)
    raise typer.Exit(code)


def _print_table(table: Table) -> None:
    # Piped output has no width of its own (rich assumes 80); a wider table beats one whose columns are cut.
    if console.is_terminal:
        console.print(table)
    else:
        Console(file=console.file, width=max(console.width, PIPED_TABLE_WIDTH), highlight=False).print(table)


def _warn(message: str) -> None:
    first, *rest = message.strip().splitlines() or [""]
    # Continuation lines are indented so that a multi-line notice reads as one warning.
    text = "\n".join([f"warning: {first}", *(f"    {line}" for line in rest)])
    err_console.print(Text(text, style="bold yellow"), soft_wrap=True)


def _print_notices(job: JobPublic) -> None:
    for analyzer, message in sorted(job.notices.items()):
        _warn(f"{analyzer}: {message}")


def _client_config(api_url: str | None, api_key: str | None) -> ClientConfig:
    try:
        config = resolve_client_config(api_url, api_key)
    except ClientConfigError as exc:
        _fail(exc.message)
    if not config.api_key:
        hint = " (or start a local deployment with `orchestrator up`)" if is_local_url(config.api_url) else ""
        _fail(
            f"no API key for {config.api_url}: pass --api-key, set {ENV_API_KEY}, "
            f"or run `orchestrator login --api-url URL --api-key KEY` once{hint}"
        )
    return config


@contextmanager
def _api_errors(config: ClientConfig) -> Iterator[None]:
    try:
        yield
    except ApiConnectionError as exc:
        _fail(exc.message)
    except ApiError as exc:
        hint = ""
        if exc.status_code == 401:
            hint = f" (API key from {config.key_source}; run `orchestrator login` to store a valid one)"
        _fail(f"{exc.message} [{exc.code}]{hint}")


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _default_job_name(paths: Sequence[Path]) -> str:
    first = paths[0].absolute().name or str(paths[0])
    name = first if len(paths) == 1 else f"{first} +{len(paths) - 1} more"
    return name[:JOB_NAME_MAX_CHARS]


# -- client commands ------------------------------------------------------------------------------------------------


@app.command()
def login(
    api_key: Annotated[str, typer.Option("--api-key", prompt="API key", hide_input=True, help="Tenant API key.")],
    api_url: ApiUrlOption = None,
) -> None:
    """Store the API URL and key for later commands (prompts for the key when --api-key is not given)."""
    url = api_url
    if not url:
        try:
            url = resolve_client_config(None, api_key).api_url
        except ClientConfigError:  # a broken login file is what this command replaces
            url = os.environ.get(ENV_API_URL) or DEFAULT_API_URL
    try:
        path = save_client_config(url, api_key)
    except ClientConfigError as exc:
        _fail(exc.message)
    _say(f"saved API URL {normalise_api_url(url)} and key to {path}")


@dataclass
class _UploadTally:
    accepted: int = 0
    rejected: int = 0
    duplicate: int = 0


def _upload(client: ApiClient, job_id: str, files: Sequence[LocalFile]) -> _UploadTally:
    tally = _UploadTally()
    total = sum(f.size for f in files)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("uploading", total=total)
        advance = functools.partial(progress.advance, task)
        for batch in plan_upload_batches(files):
            result = client.upload_files(job_id, batch, on_bytes=advance)
            # The server keeps only the last path component; show the local relative path when the answer lines up.
            names = [f.name for f in batch] if len(result.files) == len(batch) else [v.name for v in result.files]
            for name, verdict in zip(names, result.files, strict=True):
                if verdict.status == UploadStatus.ACCEPTED:
                    tally.accepted += 1
                elif verdict.status == UploadStatus.DUPLICATE:
                    tally.duplicate += 1
                    progress.console.print(
                        Text(f"duplicate {name}: {verdict.message or 'already uploaded'}", style="dim"),
                        soft_wrap=True,
                    )
                else:
                    tally.rejected += 1
                    progress.console.print(
                        Text(
                            f"rejected {name} ({verdict.code or 'rejected'}): {verdict.message or ''}",
                            style="yellow",
                        ),
                        soft_wrap=True,
                    )
        progress.update(task, completed=total)
    return tally


def _wait_with_progress(client: ApiClient, job: JobPublic, timeout_s: float | None) -> JobPublic:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"analysis: {job.status}", total=job.progress.total or None)

        def show(current: JobPublic) -> None:
            p = current.progress
            progress.update(
                task, total=p.total or None, completed=p.done + p.failed, description=f"analysis: {current.status}"
            )

        return wait_for_job(client, job, timeout_s=timeout_s, poll_interval_s=POLL_INTERVAL_S, on_update=show)


def _print_summary(job: JobPublic, assets: Sequence[AssetPublic]) -> None:
    summary = summarize_assets(assets)
    _say(f"job {job.id}" + (f" ({job.name})" if job.name else "") + f": {job.status}")
    table = Table()
    for column in ("files", "done", "failed", "tags found"):
        table.add_column(column, justify="right")
    table.add_row(str(summary.files), str(summary.done), str(summary.failed), str(summary.tags))
    _print_table(table)
    for asset in assets:
        if asset.status == AssetStatus.FAILED:
            _say(f"failed {asset.name} ({asset.error_code or 'error'}): {asset.error_message or ''}", style="red")
    _print_notices(job)


@app.command()
def submit(
    paths: Annotated[
        list[Path],
        typer.Argument(exists=True, help="Files and folders (folders are searched recursively).", show_default=False),
    ],
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the analysis, then print a summary.")
    ] = False,
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
    name: Annotated[str | None, typer.Option("--name", help="Job name (default: the first path's name).")] = None,
    analyzers: Annotated[
        list[str] | None,
        typer.Option("--analyzer", "-a", help="Analyzer to run; repeat for several (default: the server's)."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="With --wait: give up after this many seconds (exit code 2)."),
    ] = None,
) -> None:
    """Upload images, videos and audio files as one job and start their analysis."""
    config = _client_config(api_url, api_key)
    scan = collect_media(paths)
    for skipped in scan.skipped:
        _say(f"skipped {skipped.name}: {skipped.reason}", style="dim")
    if not scan.files:
        _fail("no image, video or audio files to submit")
    total_bytes = sum(f.size for f in scan.files)
    with make_client(config) as client, _api_errors(config):
        job = client.create_job(name=name or _default_job_name(paths), analyzers=analyzers)
        _say(f"job {job.id}: uploading {len(scan.files)} files ({human_bytes(total_bytes)}) to {config.api_url}")
        tally = _upload(client, job.id, scan.files)
        _say(f"uploaded: {tally.accepted} accepted, {tally.rejected} rejected, {tally.duplicate} duplicate")
        if tally.accepted + tally.duplicate == 0:
            _fail(f"no file was accepted; job {job.id} was left open and empty")
        job = client.seal_job(job.id)
        _say(f"job {job.id} sealed; analysis started")
        if not wait:
            _print_notices(job)
            _say(f"follow it with: orchestrator status {job.id}")
            return
        job = _wait_with_progress(client, job, timeout)
        if job.status not in TERMINAL_JOB_STATES:
            _print_notices(job)
            _fail(
                f"job {job.id} is still {job.status} after {timeout:g} s; "
                f"check it later with `orchestrator status {job.id}`",
                code=EXIT_TIMEOUT,
            )
        if job.status == JobStatus.CANCELLED:
            _print_notices(job)
            _fail(f"job {job.id} was cancelled")
        assets = list(client.iter_assets(job.id))
    _print_summary(job, assets)


@app.command("status")
def status_command(
    job_id: Annotated[str, typer.Argument(help="Job id.", show_default=False)],
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show one job: its state, progress and notices."""
    config = _client_config(api_url, api_key)
    with make_client(config) as client, _api_errors(config):
        job = client.get_job(job_id)
    table = Table(show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    p = job.progress
    rows = [
        ("id", job.id),
        ("name", job.name or "-"),
        ("status", str(job.status)),
        ("analyzers", ", ".join(job.analyzers) or "-"),
        ("created", _when(job.created_at)),
        ("sealed", _when(job.sealed_at)),
        ("finished", _when(job.finished_at)),
        ("files", str(p.total)),
        ("uploaded", str(p.uploaded)),
        ("prepared", str(p.prepared)),
        ("analyzing", str(p.analyzing)),
        ("done", str(p.done)),
        ("failed", str(p.failed)),
    ]
    for field, value in rows:
        table.add_row(field, Text(value))
    _print_table(table)
    _print_notices(job)


@app.command("jobs")
def jobs_command(
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many jobs to show.")] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0, help="How many jobs to skip.")] = 0,
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List your jobs."""
    config = _client_config(api_url, api_key)
    with make_client(config) as client, _api_errors(config):
        page = client.list_jobs(limit=limit, offset=offset)
    table = Table(title=f"jobs {offset + 1 if page.data else 0}-{offset + len(page.data)} of {page.count}", box=SIMPLE)
    # The id is what people copy into the next command, so it is never cut; the name gives way first.
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("status", no_wrap=True, min_width=9)
    for column in ("files", "done", "failed"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("name", ratio=1)
    for job in page.data:
        p = job.progress
        created = job.created_at.astimezone().strftime("%Y-%m-%d %H:%M") if job.created_at else "-"
        table.add_row(job.id, str(job.status), str(p.total), str(p.done), str(p.failed), created, Text(job.name))
    _print_table(table)


@app.command("duplicates")
def duplicates_command(
    near: Annotated[bool, typer.Option("--near", help="Pictures that look the same instead of identical files.")] = (
        False
    ),
    threshold: Annotated[
        int | None, typer.Option("--threshold", min=0, max=12, help="--near: most differing hash bits (of 64).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200, help="How many groups to show.")] = 50,
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List duplicate files: the same file in several jobs, or with --near pictures that look the same."""
    from orchestrator.duplicates.report import duplicates_table

    config = _client_config(api_url, api_key)
    with make_client(config) as client, _api_errors(config):
        page = client.list_duplicates(near=near, threshold=threshold, limit=limit)
    _print_table(duplicates_table(page))


@app.command("results")
def results_command(
    job_id: Annotated[str, typer.Argument(help="Job id.", show_default=False)],
    fmt: Annotated[ResultFormat, typer.Option("--format", "-f", help="json: assets with tags and results; csv.")] = (
        ResultFormat.JSON
    ),
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Export a job's assets with their tags and results."""
    config = _client_config(api_url, api_key)
    with make_client(config) as client, _api_errors(config):
        assets = list(client.iter_assets(job_id))
    text = format_results_json(assets) if fmt == ResultFormat.JSON else format_results_csv(assets)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    err_console.print(Text(f"wrote {len(assets)} assets to {output}"), soft_wrap=True)


@app.command("search")
def search_command(
    query: Annotated[str, typer.Argument(help="A query, e.g. 'tag:animal/* \"red car\" -kind:video'.")],
    limit: Annotated[int, typer.Option("--limit", min=1, max=200, help="How many results to show.")] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0, help="How many results to skip.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Search your assets: tags, words from tags, transcripts and file names, and fields (see docs/search.md)."""
    config = _client_config(api_url, api_key)
    with make_client(config) as client, _api_errors(config):
        page = client.search(query, limit=limit, offset=offset)
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    _print_table(search_table(page, offset=offset))


def search_table(page: SearchResults, *, offset: int) -> Table:
    """Search results as a table: name, kind, score, top tags, id."""
    shown = f"{offset + 1 if page.data else 0}-{offset + len(page.data)}"
    table = Table(title=f"results {shown} of {page.count} (by {page.ranked_by})", box=SIMPLE)
    table.add_column("name", ratio=1)
    table.add_column("kind", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("top tags", ratio=1)
    table.add_column("id", no_wrap=True, min_width=36)
    for hit in page.data:
        score = "-" if hit.score is None else f"{hit.score:.3g}"
        tags = ", ".join(t.tag for t in hit.tags[:3])
        table.add_row(Text(hit.name), hit.media_kind or "-", score, Text(tags), hit.id)
    return table


@app.command("similar")
def similar_command(
    asset: Annotated[str | None, typer.Option("--asset", help="Find assets like this asset id.")] = None,
    text: Annotated[str | None, typer.Option("--text", help='Find pictures matching a text ("a red car").')] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="How many to show.")] = 20,
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Assets most like an asset ("more like this"), or pictures that match a text, best first."""
    if (asset is None) == (text is None):
        _fail("give --asset ID or --text TEXT (one of them)")
    config = _client_config(api_url, api_key)
    with make_client(config) as client, _api_errors(config):
        answer = client.similar(asset_id=asset, text=text, limit=limit)
    table = Table(box=SIMPLE)
    for column in ("similarity", "asset", "name", "tags"):
        table.add_column(column)
    for card in answer.get("data", []):
        tags = ", ".join(t["tag"] for t in card.get("tags", []))
        table.add_row(f"{card['similarity']:.3f}", card["id"], Text(card["name"]), Text(tags))
    _print_table(table)


# -- server commands ------------------------------------------------------------------------------------------------


@contextmanager
def _server_errors() -> Iterator[None]:
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except ModuleNotFoundError as exc:
        _fail(f"this command needs the module {exc.name!r}, which is not available: {exc}")
    except MediaAnalysisError as exc:
        _fail(f"{exc.message} [{exc.code}]")
    except CommandError as exc:
        _fail(f"migration: {exc}")
    except SQLAlchemyError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _fail(f"database: {first_line} (has `orchestrator db upgrade` been run?)")


@app.command()
def up(
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default: settings api_host).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default: settings api_port).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Database, queue and media (default: settings data_dir, ./data).")
    ] = None,
) -> None:
    """Run the whole system on this machine: SQLite, an embedded queue, the in-process worker (CUDA if present)."""
    with _server_errors():
        from orchestrator.settings import get_settings

        try:
            settings = get_settings()
        except ValueError as exc:  # pydantic's ValidationError: a bad ORCH_* variable or config/orchestrator.toml
            _fail(f"settings: {exc}")
        from orchestrator.embedded import run_up

        run_up(
            host=host if host is not None else settings.api_host,
            port=port if port is not None else settings.api_port,
            data_dir=data_dir if data_dir is not None else settings.data_dir,
        )


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Option("--revision", "-r", help="Target revision.")] = "head",
) -> None:
    """Migrate the configured database up to REVISION."""
    with _server_errors():
        from orchestrator.db import migrate

        migrate.upgrade(revision=revision)
    _say(f"database upgraded to {revision}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision (e.g. -1 or base).", show_default=False)],
) -> None:
    """Migrate the configured database down to REVISION."""
    with _server_errors():
        from orchestrator.db import migrate

        migrate.downgrade(revision=revision)
    _say(f"database downgraded to {revision}")


@db_app.command("current")
def db_current() -> None:
    """Print the configured database's current revision."""
    with _server_errors():
        from orchestrator.db import migrate

        migrate.current()


@db_app.command("backfill-phash")
def db_backfill_phash(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant (name).")] = None,
) -> None:
    """Compute the perceptual hash of pictures and videos stored before hashes existed (for near-duplicates)."""
    with _server_errors():
        from orchestrator.db.session import session_scope
        from orchestrator.duplicates.hashing import backfill_phashes
        from orchestrator.settings import get_settings
        from orchestrator.storage import LocalStorage

        with session_scope() as session:
            tenant_id = _tenant_id(session, tenant) if tenant else None
            report = backfill_phashes(session, storage=LocalStorage(get_settings().media_dir), tenant_id=tenant_id)
    _say(f"hashed {report.hashed} assets; {report.unreadable} without a readable thumbnail")


@tenants_app.command("create")
def tenants_create(name: Annotated[str, typer.Argument(help="Tenant name (unique).", show_default=False)]) -> None:
    """Create a tenant."""
    with _server_errors():
        from orchestrator.db.session import session_scope
        from orchestrator.tenants import create_tenant

        with session_scope() as session:
            tenant = create_tenant(session, name=name)
            tenant_id = str(tenant.id)
    _say(f"created tenant {name} ({tenant_id}); give it a key with: orchestrator tenants issue-key {name}")


@tenants_app.command("list")
def tenants_list() -> None:
    """List tenants."""
    with _server_errors():
        from orchestrator.db.session import session_scope
        from orchestrator.tenants import list_tenants

        with session_scope() as session:
            rows = [
                (str(t.id), str(t.name), "yes" if t.disabled else "no", _when(t.created_at))
                for t in list_tenants(session)
            ]
    table = Table(title=f"{len(rows)} tenants")
    table.add_column("id", no_wrap=True, min_width=36)
    for column in ("name", "disabled", "created"):
        table.add_column(column)
    for tenant_id, tenant_name, disabled, created in rows:
        table.add_row(tenant_id, Text(tenant_name), disabled, created)
    _print_table(table)


@tenants_app.command("issue-key")
def tenants_issue_key(
    tenant_name: Annotated[str, typer.Argument(help="Tenant name.", show_default=False)],
    key_name: Annotated[str, typer.Option("--name", help="A label for the key.")] = "",
) -> None:
    """Issue an API key for a tenant; the key is printed this once."""
    with _server_errors():
        from orchestrator.db.session import session_scope
        from orchestrator.tenants import get_tenant_by_name, issue_api_key

        with session_scope() as session:
            tenant = get_tenant_by_name(session, name=tenant_name)
            if tenant is None:
                _fail(f"no tenant named {tenant_name!r}")
            api_key, plaintext = issue_api_key(session, tenant_id=tenant.id, name=key_name)
            key_id = str(api_key.id)
    # Printed only after the commit, so a key that is shown is a key that exists.
    _say(f"issued key {key_id} for tenant {tenant_name}; it is shown only now:")
    typer.echo(plaintext)


@tenants_app.command("revoke-key")
def tenants_revoke_key(key_id: Annotated[str, typer.Argument(help="Key id.", show_default=False)]) -> None:
    """Revoke an API key."""
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        _fail(f"{key_id!r} is not a key id")
    with _server_errors():
        from orchestrator.db.session import session_scope
        from orchestrator.tenants import revoke_api_key

        with session_scope() as session:
            revoke_api_key(session, key_id=parsed)
    _say(f"revoked key {parsed}")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Sign-in name (letters, digits, . _ - @).", show_default=False)],
    tenant_name: Annotated[
        str | None, typer.Option("--tenant", help="The tenant the user works in (required for members).")
    ] = None,
    operator: Annotated[bool, typer.Option("--operator", help="Manage tenants and see all spend.")] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
    ] = False,
) -> None:
    """Create a dashboard user; the password is asked for (or read from stdin), never taken as an argument."""
    password = _read_password(password_stdin)
    with _server_errors():
        from orchestrator.accounts import Role, create_user
        from orchestrator.db.session import session_scope
        from orchestrator.tenants import get_tenant_by_name

        with session_scope() as session:
            tenant_id = None
            if tenant_name is not None:
                tenant = get_tenant_by_name(session, name=tenant_name)
                if tenant is None:
                    _fail(f"no tenant named {tenant_name!r}")
                tenant_id = tenant.id
            role = Role.OPERATOR if operator else Role.MEMBER
            create_user(session, username=username, password=password, role=role, tenant_id=tenant_id)
    _say(f"created {role.value} {username.strip().lower()}" + (f" in tenant {tenant_name}" if tenant_name else ""))


@users_app.command("list")
def users_list() -> None:
    """List dashboard users."""
    with _server_errors():
        from sqlalchemy import select

        from orchestrator.accounts import list_users
        from orchestrator.db.models import Tenant
        from orchestrator.db.session import session_scope

        with session_scope() as session:
            names = {t.id: t.name for t in session.scalars(select(Tenant))}
            rows = [
                (
                    u.username,
                    u.role,
                    names.get(u.tenant_id, "") if u.tenant_id else "",
                    "yes" if u.disabled else "no",
                    _when(u.last_login_at) if u.last_login_at else "never",
                )
                for u in list_users(session)
            ]
    table = Table(title=f"{len(rows)} users")
    for column in ("username", "role", "tenant", "disabled", "last sign-in"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text(str(v)) for v in row))
    _print_table(table)


@users_app.command("password")
def users_password(
    username: Annotated[str, typer.Argument(help="Sign-in name.", show_default=False)],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
    ] = False,
) -> None:
    """Set a user's password; the user's open sessions end."""
    password = _read_password(password_stdin)
    with _server_errors():
        from orchestrator.accounts import set_password
        from orchestrator.db.session import session_scope
        from orchestrator.web_sessions import end_all_for_user

        with session_scope() as session:
            user = set_password(session, username=username, password=password)
            end_all_for_user(session, user_id=user.id)
    _say(f"password of {username.strip().lower()} changed; its sessions were signed out")


@users_app.command("disable")
def users_disable(
    username: Annotated[str, typer.Argument(help="Sign-in name.", show_default=False)],
    enable: Annotated[bool, typer.Option("--enable", help="Enable the user again.")] = False,
) -> None:
    """Disable a user (its sessions stop working at once), or enable it again."""
    with _server_errors():
        from orchestrator.accounts import set_disabled
        from orchestrator.db.session import session_scope
        from orchestrator.web_sessions import end_all_for_user

        with session_scope() as session:
            user = set_disabled(session, username=username, disabled=not enable)
            if not enable:
                end_all_for_user(session, user_id=user.id)
    _say(f"{'enabled' if enable else 'disabled'} {username.strip().lower()}")


@app.command()
def worker(
    queues: Annotated[str | None, typer.Option("--queues", "-Q", help="Comma-separated queues to consume.")] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", min=1, help="Worker processes/threads.")
    ] = None,
    pool: Annotated[
        str | None, typer.Option("--pool", "-P", help="prefork, threads or solo (default: Celery's; solo on Windows).")
    ] = None,
) -> None:
    """Run a Celery worker (ingest, planning, analysis dispatch)."""
    argv = ["worker", "--loglevel=INFO"]
    if queues:
        argv.append(f"--queues={queues}")
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    if pool is None and sys.platform == "win32":
        pool = "solo"  # Celery's prefork pool does not work on Windows
    if pool:
        argv.append(f"--pool={pool}")
    with _server_errors():
        from orchestrator.tasks.app import celery_app

        celery_app.worker_main(argv)


@app.command()
def beat(
    schedule: Annotated[
        Path | None, typer.Option("--schedule", help="Beat's state file (default: <data dir>/beat-schedule).")
    ] = None,
) -> None:
    """Run Celery beat (the scheduler ticks)."""
    with _server_errors():
        from orchestrator.settings import get_settings
        from orchestrator.tasks.app import celery_app

        if schedule is None:
            schedule = get_settings().data_dir / "beat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        # worker_main() accepts only the worker sub-command; start() runs any.
        celery_app.start(["beat", "--loglevel=INFO", f"--schedule={schedule}"])


budget_app = typer.Typer(
    help="Tenants' budgets and scheduling policy, on the configured database.", no_args_is_help=True
)
app.add_typer(budget_app, name="budget")


def _tenant_id(session: Any, name: str) -> Any:
    from orchestrator.tenants import get_tenant_by_name

    tenant = get_tenant_by_name(session, name=name)
    if tenant is None:
        _fail(f"no tenant called {name!r} (see `orchestrator tenants list`)")
    return tenant.id


@budget_app.command("show")
def budget_show(tenant: Annotated[str, typer.Argument(help="Tenant name.")]) -> None:
    """Caps, spend (charged up to now), reservations and the scheduling policy of a tenant."""
    with _server_errors():
        from orchestrator.budgets import summary
        from orchestrator.clock import utcnow
        from orchestrator.db.session import session_scope

        with session_scope() as session:
            info = summary(session, tenant_id=_tenant_id(session, tenant), now=utcnow())
    policy = info.policy
    table = Table(title=f"budget of {tenant}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in (
        ("spent today", f"${info.day_spent_usd:.2f} of ${policy.daily_cap_usd:.2f}"),
        ("spent this month", f"${info.month_spent_usd:.2f} of ${policy.monthly_cap_usd:.2f}"),
        ("soft cap (month)", f"${policy.soft_cap_usd:.2f}"),
        ("reserved", f"${info.reserved_usd:.2f} for {info.live_instances} live instances"),
        ("remaining", f"${info.remaining_usd:.2f}"),
        ("max $/h per instance", f"${policy.max_price_per_h_usd:.2f}"),
        ("instances", f"{policy.min_instances}..{policy.max_instances}"),
        ("idle timeout", f"{policy.idle_timeout_s:.0f} s"),
        ("longest wait for a GPU", f"{policy.max_gpu_wait_s:.0f} s"),
        ("tiers", ", ".join(policy.tiers)),
        ("GPUs", ", ".join(policy.filters.gpu_names) or "any"),
    ):
        table.add_row(label, value)
    _print_table(table)


@budget_app.command("set")
def budget_set(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    daily_cap: Annotated[float | None, typer.Option("--daily-cap", min=0.0, help="Hard cap per UTC day, USD.")] = None,
    monthly_cap: Annotated[
        float | None, typer.Option("--monthly-cap", min=0.0, help="Hard cap per month, USD.")
    ] = None,
    soft_cap: Annotated[
        float | None, typer.Option("--soft-cap", min=0.0, help="Monthly spend that stops new rentals, USD.")
    ] = None,
    max_price: Annotated[float | None, typer.Option("--max-price", min=0.0, help="Most USD/h per instance.")] = None,
    min_instances: Annotated[int | None, typer.Option("--min-instances", min=0)] = None,
    max_instances: Annotated[int | None, typer.Option("--max-instances", min=0)] = None,
    idle_timeout: Annotated[
        float | None, typer.Option("--idle-timeout", min=0.0, help="Seconds idle before destroy.")
    ] = None,
    max_gpu_wait: Annotated[
        float | None,
        typer.Option("--max-gpu-wait", min=0.0, help="Seconds a batch waits for a GPU before falling back."),
    ] = None,
    tiers: Annotated[str | None, typer.Option("--tiers", help="Allowed tiers in order, e.g. cloud,local,cpu.")] = None,
    gpu: Annotated[list[str] | None, typer.Option("--gpu", help="GPU model to rent; repeat for several.")] = None,
) -> None:
    """Change a tenant's caps and scheduling policy; unchanged settings keep their values."""
    changes: dict[str, Any] = {
        key: value
        for key, value in {
            "daily_cap_usd": daily_cap,
            "monthly_cap_usd": monthly_cap,
            "soft_cap_usd": soft_cap,
            "max_price_per_h_usd": max_price,
            "min_instances": min_instances,
            "max_instances": max_instances,
            "idle_timeout_s": idle_timeout,
            "max_gpu_wait_s": max_gpu_wait,
        }.items()
        if value is not None
    }
    if tiers is not None:
        changes["tiers"] = [t.strip() for t in tiers.split(",") if t.strip()]
    with _server_errors():
        from orchestrator.budgets import get_policy, set_policy
        from orchestrator.clock import utcnow
        from orchestrator.db.session import session_scope

        with session_scope() as session:
            tenant_id = _tenant_id(session, tenant)
            if gpu:
                current = get_policy(session, tenant_id=tenant_id).filters
                changes["filters"] = {**dataclasses.asdict(current), "gpu_names": list(gpu)}
            if not changes:
                _fail("nothing to change: give at least one option (see --help)")
            set_policy(session, tenant_id=tenant_id, changes=changes, now=utcnow())
    _say(f"budget of {tenant} updated")


offers_app = typer.Typer(help="GPU offers on the cloud provider.", no_args_is_help=True)
app.add_typer(offers_app, name="offers")


@offers_app.command("search")
def offers_search(
    gpu: Annotated[
        list[str] | None, typer.Option("--gpu", help="GPU model to accept; repeat for several (default: 5090, 4090).")
    ] = None,
    max_price: Annotated[float, typer.Option("--max-price", min=0.0, help="Most USD/h, storage included.")] = 1.0,
    min_reliability: Annotated[float, typer.Option("--min-reliability", min=0.0, max=1.0)] = 0.98,
    min_cuda: Annotated[float, typer.Option("--min-cuda", help="Lowest host CUDA (12.8 for Blackwell).")] = 12.8,
    disk_gb: Annotated[float, typer.Option("--disk-gb", min=1.0, help="Disk to rent with the GPU.")] = 40.0,
    include_unverified: Annotated[bool, typer.Option("--include-unverified", help="Accept unverified hosts.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Rows to show.")] = 10,
) -> None:
    """Preview what the scheduler would rent now, best images per dollar first (with the scheduler's own checks).

    Images/s are measured on our workers where the database holds recent samples, else the configured estimates.
    "$ / 1000 images" is the offer's $/h divided by its images per hour, times 1000 (the ranking's figure inverted).
    """
    with _server_errors():
        from datetime import timedelta

        from sqlalchemy.exc import OperationalError, ProgrammingError

        from orchestrator.clock import utcnow
        from orchestrator.cloud.offers import preview_offers
        from orchestrator.cloud.throughput_samples import load_samples
        from orchestrator.db.session import session_scope
        from orchestrator.providers.vast.provider import VastProvider
        from orchestrator.scheduler.model import OfferFilters
        from orchestrator.scheduler.offers import load_throughput_table
        from orchestrator.scheduler.throughput import current_table
        from orchestrator.settings import get_settings

        settings = get_settings()
        if not settings.vast_api_key:
            _fail("set ORCH_VAST_API_KEY (your Vast.ai API key) to search offers")
        now, max_age = utcnow(), timedelta(seconds=settings.cloud_throughput_max_age_s)
        try:
            with session_scope() as session:
                samples = load_samples(session, now=now, max_age=max_age)
        except (OperationalError, ProgrammingError):
            samples = []  # no migrated database on this machine: the estimates alone
        defaults = OfferFilters()
        filters = OfferFilters(
            gpu_names=tuple(gpu) if gpu else defaults.gpu_names,
            min_cuda=min_cuda,
            min_reliability=min_reliability,
            verified_only=not include_unverified,
            min_disk_gb=disk_gb,
        )
        preview = preview_offers(
            VastProvider.from_settings(settings),
            filters,
            max_price_per_h_usd=max_price,
            throughput=current_table(load_throughput_table(), samples, now=now, max_age=max_age),
        )
    table = Table(title=f"{len(preview.ranked)} acceptable of {preview.searched} offers found")
    headers = ("offer", "GPU", "$/h", "images/s", "figure", "images per $", "$ / 1000 images", "reliability", "machine")
    for header in headers:
        table.add_column(header, justify="right" if header not in ("GPU", "figure") else "left")
    for ranked in preview.ranked[:limit]:
        offer = ranked.offer
        table.add_row(
            str(offer.offer_id),
            f"{offer.num_gpus}x {offer.gpu_name}",
            f"{offer.total_per_h_usd:.3f}",
            f"{ranked.images_per_s:.0f}",
            "measured" if ranked.measured else "estimate",
            f"{ranked.images_per_usd:,.0f}",
            f"{ranked.usd_per_1000_images:.6f}",
            f"{offer.reliability:.3f}",
            str(offer.machine_id),
        )
    _print_table(table)
    if preview.rejected:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in preview.rejected.most_common())
        console.print(f"refused: {reasons}")


instances_app = typer.Typer(help="Rented GPU instances, on the configured database and provider.", no_args_is_help=True)
app.add_typer(instances_app, name="instances")


@instances_app.command("list")
def instances_list(
    all_rows: Annotated[bool, typer.Option("--all", help="Include destroyed and vanished instances.")] = False,
) -> None:
    """Rented instances: state, tenant, GPU, price, worker address and last error."""
    with _server_errors():
        from orchestrator.cloud.instances import all_instances
        from orchestrator.db.models import Tenant
        from orchestrator.db.session import session_scope

        with session_scope() as session:
            rows = all_instances(session, include_history=all_rows)
            names = {t.id: t.name for t in session.query(Tenant).all()}
    table = Table(title=f"{len(rows)} instances")
    for header in ("id", "tenant", "state", "provider id", "GPU", "$/h", "in flight", "created", "worker", "error"):
        table.add_column(header, justify="right" if header in ("$/h", "in flight") else "left")
    for row in rows:
        table.add_row(
            str(row.id),
            names.get(row.tenant_id, str(row.tenant_id)),
            str(row.state),
            row.provider_instance_id or "-",
            row.gpu_name,
            f"{row.price_per_h_usd:.3f}",
            str(row.in_flight),
            _when(row.created_at),
            row.worker_url or "-",
            (row.last_error or "")[:60],
        )
    _print_table(table)


@instances_app.command("destroy")
def instances_destroy(instance_id: Annotated[str, typer.Argument(help="Instance id (see `instances list`).")]) -> None:
    """Destroy an instance now and settle its money (never stops it: a stopped instance still bills)."""
    import uuid

    try:
        row_id = uuid.UUID(instance_id)
    except ValueError:
        _fail(f"{instance_id!r} is not an instance id (see `orchestrator instances list`)")
    with _server_errors():
        from orchestrator.clock import utcnow
        from orchestrator.cloud.teardown import destroy_instance
        from orchestrator.db.models import Instance
        from orchestrator.db.session import get_sessionmaker, session_scope
        from orchestrator.enums import InstanceStatus
        from orchestrator.providers.vast.provider import VastProvider
        from orchestrator.settings import get_settings

        settings = get_settings()
        with session_scope() as session:
            if session.get(Instance, row_id) is None:
                _fail(f"no instance {instance_id}")
        if not settings.vast_api_key:
            _fail("set ORCH_VAST_API_KEY (your Vast.ai API key) to destroy instances")
        state = destroy_instance(
            get_sessionmaker(),
            VastProvider.from_settings(settings),
            instance_id=row_id,
            now=utcnow(),
            reason="destroyed from the command line",
            max_attempts=settings.cloud_destroy_max_attempts,
        )
    if state not in (InstanceStatus.DESTROYED, InstanceStatus.VANISHED):
        _fail(f"instance {instance_id} is {state}: the provider refused the destroy; it is retried every tick")
    _say(f"instance {instance_id} destroyed and settled")


@app.command()
def scheduler(
    once: Annotated[bool, typer.Option("--once", help="Run one tick and one reconcile pass, then exit.")] = False,
) -> None:
    """Run the scheduler tick and the reconciler in a loop (for deployments without Celery beat); Ctrl-C stops."""
    with _server_errors():
        import time

        from orchestrator.clock import utcnow
        from orchestrator.cloud.actuator import tick
        from orchestrator.cloud.reconciler import reconcile
        from orchestrator.db.session import get_sessionmaker
        from orchestrator.providers.vast.provider import VastProvider
        from orchestrator.settings import get_settings
        from orchestrator.tasks.constants import RECONCILE_INTERVAL_S

        settings = get_settings()
        if not settings.vast_api_key:
            _fail("set ORCH_VAST_API_KEY (your Vast.ai API key) to run the scheduler")
        provider = VastProvider.from_settings(settings)
        factory = get_sessionmaker()
        last_reconcile = float("-inf")
        try:
            while True:
                started = time.monotonic()
                if started - last_reconcile >= RECONCILE_INTERVAL_S:
                    passed = reconcile(factory, provider, now=utcnow(), settings=settings)
                    last_reconcile = started
                    if passed.aborted:
                        _warn(passed.aborted)
                report = tick(factory, provider, now=utcnow(), settings=settings)
                for line in [report.aborted or "", *report.errors, *(w.message for w in report.warnings)]:
                    if line:
                        _warn(line)
                if report.rented or report.became_ready or report.destroyed:
                    _say(
                        f"rented {len(report.rented)}, ready {len(report.became_ready)}, "
                        f"destroyed {len(report.destroyed)}"
                    )
                if once:
                    return
                time.sleep(max(0.0, settings.scheduler_tick_s - (time.monotonic() - started)))
        except KeyboardInterrupt:
            _say("scheduler stopped")


def main() -> None:
    """Entry point of the ``orchestrator`` console script."""
    app()


if __name__ == "__main__":
    main()
