"""``gpu-worker``: manage the model cache (``models list|fetch|verify``). Serving and tagging come later."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from rich.table import Table

from gpu_worker.errors import ModelUnavailableError
from gpu_worker.settings import get_settings
from gpu_worker.store import ModelState, ModelStore, PinState

app = typer.Typer(no_args_is_help=True, help="AI Media Analysis inference worker.")


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )


models_app = typer.Typer(no_args_is_help=True, help="The model catalog and the verified weight cache.")
app.add_typer(models_app, name="models")
console = Console()

STATE_STYLE = {ModelState.PRESENT: "green", ModelState.MISSING: "yellow", ModelState.CORRUPT: "red"}
PIN_TEXT = {
    PinState.CATALOG: "pinned",
    PinState.RECORDED: "pinned at download",
    PinState.UNPINNED: "unpinned (pinned on first download)",
}


def _store() -> ModelStore:
    return ModelStore(get_settings())


@models_app.command("list")
def list_models() -> None:
    """Every catalog model with its cache state and whether its sha256 is pinned."""
    store = _store()
    table = Table()
    table.add_column("id", no_wrap=True)
    for header in ("family", "status", "sha256", "description"):
        table.add_column(header)
    for entry in store.catalog():
        status = store.status(entry.id)
        style = STATE_STYLE[status.state]
        table.add_row(entry.id, entry.family, f"[{style}]{status.state}[/]", PIN_TEXT[status.pin], entry.description)
    console.print(table)
    console.print(f"cache: {store.root}")


@models_app.command("fetch")
def fetch(model_id: Annotated[str, typer.Argument(help="Catalog id, see `gpu-worker models list`.")]) -> None:
    """Download (or copy) a model's files into the cache and verify them; downloads are allowed for this call."""
    store = _store()
    tasks: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console
    ) as progress:

        def report(name: str, done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            progress.update(tasks[name], completed=done, total=total)

        try:
            folder = store.resolve(model_id, allow_download=True, progress=report)
        except ModelUnavailableError as exc:
            progress.stop()
            console.print(exc.message, style="red", markup=False, soft_wrap=True)
            raise typer.Exit(1) from exc
    console.print(f"[green]{model_id}[/]: verified in {folder}")


@models_app.command("verify")
def verify(
    model_id: Annotated[str | None, typer.Argument(help="One catalog id; all cached models when left out.")] = None,
) -> None:
    """Re-hash cached files against their sha256; corrupt files are removed. Exits 1 if any file is bad."""
    store = _store()
    ids = [model_id] if model_id else [e.id for e in store.catalog()]
    failed = False
    for current in ids:
        state = store.verify(current)
        if model_id is None and state is ModelState.MISSING:
            continue
        console.print(f"{current}: [{STATE_STYLE[state]}]{state}[/]")
        failed = failed or state is not ModelState.PRESENT
    if failed:
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the ``gpu-worker`` command."""
    app()


if __name__ == "__main__":
    main()
