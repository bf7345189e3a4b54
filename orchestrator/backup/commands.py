"""``orchestrator backup``: create, verify and restore backups of this deployment's database and media store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

backup_app = typer.Typer(
    help="Back up and restore the database and the media store (stop the API and workers before a restore).",
    no_args_is_help=True,
)

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _fail(message: str) -> typer.Exit:
    err_console.print(Text(f"error: {message}", style="bold red"), soft_wrap=True)
    return typer.Exit(1)


@backup_app.command("create")
def backup_create(
    dest: Annotated[Path, typer.Argument(help="A new folder to write the backup into.", show_default=False)],
) -> None:
    """Back up the configured database (pg_dump, or SQLite's online backup) and the media store into DEST."""
    from orchestrator.backup.archive import create_backup
    from orchestrator.clock import utcnow
    from orchestrator.errors import MediaAnalysisError
    from orchestrator.settings import get_settings

    settings = get_settings()
    try:
        manifest = create_backup(dest, database_url=settings.database_url, media_dir=settings.media_dir, now=utcnow())
    except MediaAnalysisError as exc:
        raise _fail(exc.message) from exc
    total = sum(part.size_bytes for part in manifest.parts.values())
    console.print(
        Text(f"backup written to {dest} ({total} bytes, schema revision {manifest.alembic_revision})"), soft_wrap=True
    )


@backup_app.command("verify")
def backup_verify(
    src: Annotated[Path, typer.Argument(help="A backup folder.", show_default=False)],
) -> None:
    """Check every part of the backup SRC against its manifest's checksums."""
    from orchestrator.backup.manifest import verify_backup
    from orchestrator.errors import MediaAnalysisError

    try:
        manifest = verify_backup(src)
    except MediaAnalysisError as exc:
        raise _fail(exc.message) from exc
    console.print(Text(f"{src}: intact, made {manifest.created_at}"), soft_wrap=True)


@backup_app.command("restore")
def backup_restore(
    src: Annotated[Path, typer.Argument(help="A backup folder made by `backup create`.", show_default=False)],
    force: Annotated[
        bool, typer.Option("--force", help="Replace a database that has rows and a media store that has files.")
    ] = False,
) -> None:
    """Verify the backup SRC, then restore it into the configured database and media store."""
    from orchestrator.backup.archive import restore_backup
    from orchestrator.errors import MediaAnalysisError
    from orchestrator.settings import get_settings

    settings = get_settings()
    try:
        report = restore_backup(src, database_url=settings.database_url, media_dir=settings.media_dir, force=force)
    except MediaAnalysisError as exc:
        raise _fail(exc.message) from exc
    console.print(Text(f"restored {src} (made {report.manifest.created_at})"), soft_wrap=True)
    if report.needs_upgrade:
        console.print("the backup's schema is older than this program: run `orchestrator db upgrade` next")
