"""``orchestrator writeback``: write a finished job's tags into its files (``--job ID``), list write-backs, undo one.
Talks to the REST API like ``submit`` and ``results``."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.box import SIMPLE
from rich.table import Table
from rich.text import Text

POLL_INTERVAL_S = 1.0

writeback_app = typer.Typer(
    help="Write tags, named people and face regions into your files' XMP; list and undo write-backs.",
    invoke_without_command=True,
)

ApiUrlOption = Annotated[str | None, typer.Option("--api-url", help="API base URL (as for `orchestrator submit`).")]
ApiKeyOption = Annotated[str | None, typer.Option("--api-key", help="Tenant API key (as for `orchestrator submit`).")]


def _summary_line(write: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in write.get("summary", {}).items() if status != "error" and n)
    error = write.get("summary", {}).get("error")
    return (
        f"write-back {write['id']}: {write['status']}"
        + (f" ({counts})" if counts else "")
        + (f": {error}" if error else "")
    )


def _problems_table(write: dict[str, Any]) -> Table | None:
    rows = [item for item in write.get("items", []) if item["status"] in ("failed", "skipped")]
    if not rows:
        return None
    table = Table(title="files not written", box=SIMPLE)
    table.add_column("file", ratio=1)
    table.add_column("status", no_wrap=True)
    table.add_column("reason", ratio=2)
    for item in rows:
        table.add_row(Text(item["name"]), item["status"], Text(item.get("error") or ""))
    return table


@writeback_app.callback()
def writeback(
    ctx: typer.Context,
    job: Annotated[
        str | None, typer.Option("--job", help="Write the tags of this finished job into its files.")
    ] = None,
    mode: Annotated[
        str, typer.Option("--mode", help="append: add ours to what the files hold; replace: swap our earlier ones.")
    ] = "append",
    min_score: Annotated[float, typer.Option("--min-score", min=0.0, max=1.0, help="Skip weaker tags.")] = 0.0,
    faces: Annotated[bool, typer.Option("--faces/--no-faces", help="Named people and face regions.")] = True,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until every file was written.")] = True,
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Write a job's tags into its files (a new stored copy of each; undo puts the previous ones back)."""
    if ctx.invoked_subcommand is not None:
        return
    from orchestrator.cli import _api_errors, _client_config, _fail, _print_table, console, make_client

    if job is None:
        _fail("name the job with --job ID, or use `orchestrator writeback list` / `undo WRITE_ID`")
    if mode not in ("append", "replace"):
        _fail("--mode is append or replace")
    config = _client_config(api_url, api_key)
    with make_client(config) as client, _api_errors(config):
        write = client.start_writeback(job_id=job, mode=mode, min_score=min_score, faces=faces)
        while wait and write["status"] == "running":
            time.sleep(POLL_INTERVAL_S)
            write = client.get_writeback(write["id"])
    console.print(Text(_summary_line(write)), soft_wrap=True)
    table = _problems_table(write)
    if table is not None:
        _print_table(table)


@writeback_app.command("list")
def list_command(
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="How many to show.")] = 20,
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List your write-backs, newest first."""
    from orchestrator.cli import _api_errors, _client_config, _print_table, make_client

    config = _client_config(api_url, api_key)
    with make_client(config) as client, _api_errors(config):
        page = client.list_writebacks(limit=limit)
    table = Table(title=f"write-backs ({page['count']})", box=SIMPLE)
    table.add_column("id", no_wrap=True, min_width=36)
    for column in ("status", "mode", "scope", "written", "failed", "created"):
        table.add_column(column, no_wrap=True)
    for write in page["data"]:
        scope = write["scope"]
        what = f"job {scope['job_id']}" if "job_id" in scope else f"{len(scope.get('asset_ids', []))} files"
        summary = write.get("summary", {})
        table.add_row(
            write["id"],
            write["status"],
            write["mode"],
            what,
            str(summary.get("written", "-")),
            str(summary.get("failed", "-")),
            str(write["created_at"])[:19].replace("T", " "),
        )
    _print_table(table)


@writeback_app.command("undo")
def undo_command(
    write_id: Annotated[str, typer.Argument(help="Write-back id (see `orchestrator writeback list`).")],
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Put back the files a write-back replaced, exactly as they were."""
    from orchestrator.cli import _api_errors, _client_config, console, make_client

    config = _client_config(api_url, api_key)
    with make_client(config) as client, _api_errors(config):
        write = client.undo_writeback(write_id)
    console.print(Text(f"write-back {write['id']}: {write['status']}"), soft_wrap=True)
