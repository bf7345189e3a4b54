"""``orchestrator library export|import``: the file-first library, directly on the configured database and media
store (like ``orchestrator tenants``). Heavy modules are imported only when a command runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

library_app = typer.Typer(
    help="Export the library as folders of originals with .ai.json sidecars, or import such folders.",
    no_args_is_help=True,
)

TenantOption = Annotated[
    str | None, typer.Option("--tenant", help="Tenant name (default: the only tenant, or the exported one).")
]


def _resolve_tenant(session: Any, name: str | None, *, fallback: str | None = None) -> Any:
    """The tenant named ``name``; without one, the tenant named ``fallback`` if it exists, else the only tenant."""
    from orchestrator.cli import _fail
    from orchestrator.tenants import get_tenant_by_name, list_tenants

    if name is not None:
        tenant = get_tenant_by_name(session, name=name)
        if tenant is None:
            _fail(f"no tenant called {name!r} (see `orchestrator tenants list`)")
        return tenant
    if fallback is not None and (tenant := get_tenant_by_name(session, name=fallback)) is not None:
        return tenant
    tenants = list_tenants(session)
    if len(tenants) != 1:
        _fail(f"there are {len(tenants)} tenants: name one with --tenant")
    return tenants[0]


def _exported_tenant(folder: Path) -> str | None:
    from orchestrator.library.export import MANIFEST_NAME

    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = manifest.get("tenant") if isinstance(manifest, dict) else None
    return name if isinstance(name, str) else None


@library_app.command("export")
def library_export(
    dest: Annotated[Path, typer.Argument(help="Folder to write (created; an earlier export is brought up to date).")],
    tenant: TenantOption = None,
) -> None:
    """Write one folder per job with each original and its .ai.json sidecar, and library.json at the top."""
    from rich.progress import Progress

    from orchestrator.cli import _say, _server_errors, _warn, console

    with _server_errors():
        from orchestrator.db.session import session_scope
        from orchestrator.library.export import export_library
        from orchestrator.settings import get_settings
        from orchestrator.storage import LocalStorage

        storage = LocalStorage(get_settings().media_dir)
        with session_scope() as session, Progress(*_columns(), console=console, transient=True) as progress:
            chosen = _resolve_tenant(session, tenant)
            task = progress.add_task("exporting", total=None)

            def show(done: int, total: int, relative: str) -> None:
                progress.update(task, completed=done, total=total, description=relative[-60:])

            summary = export_library(session, storage, tenant_id=chosen.id, dest=dest, on_progress=show)
            name = chosen.name
    for problem in summary.problems:
        _warn(f"{problem.path}: {problem.reason}")
    _say(
        f"exported {summary.assets} files of {summary.jobs} jobs of {name} to {summary.dest}: "
        f"{summary.originals_written} originals and {summary.sidecars_written} sidecars written, "
        f"{summary.unchanged} unchanged, {len(summary.problems)} problems"
    )


@library_app.command("import")
def library_import(
    source: Annotated[Path, typer.Argument(help="A library export, or a folder tagged by `gpu-worker tag`.")],
    tenant: TenantOption = None,
    only_sidecars: Annotated[
        bool, typer.Option("--only-sidecars", help="Skip media files without a sidecar instead of analysing them.")
    ] = False,
) -> None:
    """Restore jobs, files, results and people from the sidecars without running any model; files without a
    sidecar are uploaded for analysis. Importing the same folder again adds nothing."""
    from rich.progress import Progress

    from orchestrator.cli import _fail, _say, _server_errors, _warn, console

    if not source.is_dir():
        _fail(f"{source} is not a folder")
    with _server_errors():
        from orchestrator.api.routes.jobs import job_options_with_tenant_defaults, tenant_default_analyzers
        from orchestrator.db.session import session_scope
        from orchestrator.library.importer import ImportOptions, import_library
        from orchestrator.settings import get_settings
        from orchestrator.storage import LocalStorage
        from orchestrator.tasks.app import enqueue
        from orchestrator.tasks.constants import TASK_PLAN_JOB, TASK_PREPARE_ASSET
        from orchestrator.tenant_settings import get_tenant_settings

        settings = get_settings()
        storage = LocalStorage(settings.media_dir)
        with session_scope() as session, Progress(*_columns(), console=console, transient=True) as progress:
            chosen = _resolve_tenant(session, tenant, fallback=_exported_tenant(source))
            defaults = get_tenant_settings(session, tenant_id=chosen.id)
            analyzers = tenant_default_analyzers(session, tenant_id=chosen.id, settings=settings)
            options = ImportOptions(
                max_upload_bytes=settings.max_upload_bytes,
                max_image_pixels=settings.max_image_pixels,
                analyzers=analyzers,
                options=job_options_with_tenant_defaults(
                    {}, analyzers=analyzers, vocabulary=defaults.vocabulary, nsfw_threshold=defaults.nsfw_threshold
                ),
                only_sidecars=only_sidecars,
                commit_each_file=True,
            )
            task = progress.add_task("importing", total=None)

            def show(done: int, total: int, relative: str) -> None:
                progress.update(task, completed=done, total=total, description=relative[-60:])

            summary = import_library(
                session, storage, tenant_id=chosen.id, source=source, options=options, on_progress=show
            )
            name = chosen.name
        for asset_id in summary.queued_assets:
            enqueue(TASK_PREPARE_ASSET, str(asset_id))
        for job_id in summary.queued_jobs:
            enqueue(TASK_PLAN_JOB, str(job_id))
    for problem in summary.problems:
        _warn(f"{problem.path}: {problem.reason}")
    _say(
        f"imported {summary.source} into {name}: {summary.restored} restored from sidecars, "
        f"{summary.uploaded} new files to analyse, {summary.unchanged} already there, {summary.skipped} skipped, "
        f"{summary.jobs_created} jobs and {summary.people_created} people created, {len(summary.problems)} problems"
    )


def _columns() -> tuple[Any, ...]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
