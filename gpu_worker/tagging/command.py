"""``gpu-worker tag FOLDER``: the workstation's folder mode, with a progress bar and a summary.

Exit status: 0 when the run went through (even if some files failed; they are listed), 1 when nothing could run
(no folder, no exiftool for an XMP write, no usable analyzer, the folder busy with another run), 130 when
interrupted (run again with ``--resume`` to continue).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gpu_worker.settings import DeviceChoice
from gpu_worker.tagging.keywords import TagMode
from gpu_worker.tagging.layout import WriteTarget

log = logging.getLogger(__name__)
console = Console()
EXIT_NOTHING_RAN = 1
EXIT_INTERRUPTED = 130


def _parse_options(text: str | None) -> dict[str, dict[str, Any]]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise typer.BadParameter('expected {"analyzer": {"option": value}}, e.g. {"clip": {"threshold": 0.2}}')
    return value


def tag_command(
    folder: Annotated[Path, typer.Argument(help="The folder to tag, recursively.", resolve_path=True)],
    write: Annotated[
        WriteTarget,
        typer.Option(help="Keywords into the file (xmp), into name.ext.xmp beside it (sidecar), or nowhere (none)."),
    ] = WriteTarget.XMP,
    mode: Annotated[
        TagMode, typer.Option(help="append keeps earlier AI keywords; replace removes them. Others are always kept.")
    ] = TagMode.APPEND,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an earlier run: skip finished files, reuse analyses.")
    ] = False,
    backup: Annotated[
        bool, typer.Option("--backup", help="Keep each original as name.orig before changing it.")
    ] = False,
    analyzers: Annotated[str, typer.Option(help="Comma-separated analyzers, e.g. clip,objects,faces.")] = "clip",
    options: Annotated[
        str | None,
        typer.Option(help='Analyzer options as JSON, e.g. \'{"clip": {"threshold": 0.2, "vocabulary": "default"}}\'.'),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Files analyzed together (default: the worker's decode chunk).")
    ] = None,
    device: Annotated[DeviceChoice | None, typer.Option(help="Override the inference device.")] = None,
    exiftool: Annotated[str | None, typer.Option(help="The exiftool executable (default: exiftool on PATH).")] = None,
    report: Annotated[
        Path | None, typer.Option(help="Also write the summary and every file's outcome to this JSON file.")
    ] = None,
) -> None:
    """Tag every photo and video under FOLDER; writes XMP keywords (AI/...) and a JSON sidecar per file."""
    from gpu_worker.executor import InProcessExecutor
    from gpu_worker.settings import get_settings
    from gpu_worker.tagging.errors import TaggingSetupError
    from gpu_worker.tagging.run import FileOutcome, FileStatus, TagOptions, tag_folder

    settings = get_settings()
    if device is not None:
        settings = settings.model_copy(update={"device": device})
    chosen = tuple(name.strip() for name in analyzers.split(",") if name.strip())
    run_options = TagOptions(
        write=write,
        mode=mode,
        resume=resume,
        backup=backup,
        analyzers=chosen,
        analyzer_options=_parse_options(options),
        batch_size=batch_size or settings.decode_chunk_items,
        exiftool=exiftool,
    )
    progress = Progress(
        TextColumn("[bold]tagging"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
    )
    task = progress.add_task("", total=None)

    def started(total: int) -> None:
        progress.start()  # only now: setup messages and errors are printed without a bar in the way
        progress.update(task, total=total)

    def finished(outcome: FileOutcome) -> None:
        progress.update(task, advance=1, description=outcome.relative)
        if outcome.status is FileStatus.FAILED:
            progress.console.print(f"[red]failed[/] {outcome.relative}: {outcome.message}", highlight=False)
        elif outcome.message:
            progress.console.print(f"[yellow]partly tagged[/] {outcome.relative}: {outcome.message}", highlight=False)

    try:
        summary = tag_folder(folder, run_options, InProcessExecutor(settings), on_start=started, on_file=finished)
    except TaggingSetupError as exc:
        console.print(exc.message, style="red", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_NOTHING_RAN) from exc
    except KeyboardInterrupt:
        console.print("interrupted; finished files are recorded. Run again with --resume to continue.", style="yellow")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        if progress.live.is_started:
            progress.stop()

    for name, reason in summary.unavailable.items():
        console.print(f"[yellow]analyzer {name} did not run:[/] {reason}", highlight=False)
    where = f"on {summary.device}" if summary.device else "no inference needed"
    table = Table(title=f"{folder} ({where}, {summary.elapsed_s:.1f} s)")
    for column in ("files", "analyzed", "tagged", "unchanged", "failed"):
        table.add_column(column, justify="right")
    table.add_row(*(str(getattr(summary, c)) for c in ("files", "analyzed", "tagged", "unchanged", "failed")))
    console.print(table)
    if report is not None:
        document = {
            "folder": str(folder),
            **{c: getattr(summary, c) for c in ("files", "analyzed", "tagged", "unchanged", "failed", "elapsed_s")},
            "device": summary.device,
            "analyzers": summary.analyzers,
            "unavailable": summary.unavailable,
            "outcomes": [
                {
                    "file": o.relative,
                    "status": o.status.value,
                    "analyzed": o.analyzed,
                    "tags": list(o.tags),
                    "keywords_in": o.keywords_in,
                    "message": o.message,
                }
                for o in summary.outcomes
            ],
        }
        report.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
