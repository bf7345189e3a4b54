"""``gpu-worker``: the model cache (``models list|fetch|verify|export-bundle|import-bundle``) and the worker's other
commands."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from rich.table import Table

from gpu_worker.errors import ChecksumMismatchError, ModelUnavailableError
from gpu_worker.settings import DeviceChoice, get_settings
from gpu_worker.store import ModelState, ModelStore, PinState
from gpu_worker.tagging.command import tag_command

app = typer.Typer(no_args_is_help=True, help="AI Media Analysis inference worker.")


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False) -> None:
    if get_settings().log_format == "json":  # GPUW_LOG_FORMAT=json: one JSON object per line, for log shippers
        from gpu_worker.logs import configure_logging

        configure_logging("json", level=logging.DEBUG if verbose else logging.INFO)
        return
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


@models_app.command("export-bundle")
def export_bundle_command(
    output: Annotated[Path, typer.Argument(help="The bundle file to write (a .tar).")],
    model_ids: Annotated[list[str], typer.Argument(help="Catalog ids of cached models to pack.")],
) -> None:
    """Pack cached, verified models and their catalog entries into one archive for offline machines or images."""
    from gpu_worker.bundle import BundleError, export_bundle

    try:
        contents = export_bundle(_store(), model_ids, output)
    except (BundleError, ModelUnavailableError) as exc:
        console.print(exc.message, style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    console.print(f"wrote {output} with {', '.join(e.id for e in contents.entries)}")


@models_app.command("import-bundle")
def import_bundle_command(
    bundle: Annotated[Path, typer.Argument(help="A bundle written by export-bundle.", exists=True, dir_okay=False)],
) -> None:
    """Install every model of a bundle into the cache, checking each file's sha256; needs no network."""
    from gpu_worker.bundle import BundleError, import_bundle

    try:
        contents = import_bundle(_store(), bundle)
    except (BundleError, ChecksumMismatchError) as exc:
        console.print(exc.message, style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    console.print(f"imported {', '.join(e.id for e in contents.entries)} into {_store().root}")


@app.command("serve")
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on; 0.0.0.0 for every interface (default: settings).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default: settings, 8700).")] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="GPUW_TOKEN", help="Bearer token that callers of /v1/* must send.", show_default=False),
    ] = None,
    analyzers: Annotated[
        str | None,
        typer.Option(help="Comma-separated analyzers to load and warm up, e.g. clip,objects (default: settings)."),
    ] = None,
    device: Annotated[DeviceChoice | None, typer.Option(help="Override the inference device.")] = None,
    insecure_no_token: Annotated[
        bool, typer.Option("--insecure-no-token", help="Serve without a token (local development only).")
    ] = False,
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="Serve HTTPS with this PEM certificate (needs --tls-key).", exists=True, dir_okay=False),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(help="The PEM private key of --tls-cert.", exists=True, dir_okay=False),
    ] = None,
    tls_cert_pem: Annotated[str | None, typer.Option(envvar="GPUW_TLS_CERT_PEM", hidden=True)] = None,
    tls_key_pem: Annotated[str | None, typer.Option(envvar="GPUW_TLS_KEY_PEM", hidden=True)] = None,
) -> None:
    """Serve /healthz, /v1/info and /v1/analyze, merging concurrent requests into shared batches.

    HTTPS with --tls-cert/--tls-key, or with the PEM texts in GPUW_TLS_CERT_PEM/GPUW_TLS_KEY_PEM (how a rented
    instance gets them); plain HTTP otherwise.
    """
    from gpu_worker.server import TlsFiles, private_tls_files, run_server

    log = logging.getLogger("gpu_worker.serve")
    if not token and not insecure_no_token:
        console.print(
            "Refusing to serve without a token: pass --token or set GPUW_TOKEN "
            "(or --insecure-no-token for local development).",
            style="red",
        )
        raise typer.Exit(2)
    settings = get_settings()
    if device is not None:
        settings = settings.model_copy(update={"device": device})
    host = host or settings.serve_host
    port = port or settings.serve_port
    if not token:
        log.warning(
            "!!! SERVING WITHOUT A TOKEN: anyone who reaches %s:%d can run batches on this machine !!!", host, port
        )
    chosen = [name.strip() for name in analyzers.split(",") if name.strip()] if analyzers else None
    if (tls_cert is None) != (tls_key is None) or bool(tls_cert_pem) != bool(tls_key_pem):
        console.print("Give both a TLS certificate and its key, or neither.", style="red")
        raise typer.Exit(2)
    if tls_cert is not None and tls_key is not None:
        tls = TlsFiles(cert_path=tls_cert, key_path=tls_key)
        run_server(settings, host=host, port=port, token=token or None, analyzers=chosen, tls=tls)
    elif tls_cert_pem and tls_key_pem:
        with private_tls_files(tls_cert_pem, tls_key_pem) as tls:
            run_server(settings, host=host, port=port, token=token or None, analyzers=chosen, tls=tls)
    else:
        run_server(settings, host=host, port=port, token=token or None, analyzers=chosen)


app.command("tag")(tag_command)


@app.command("selfcheck")
def selfcheck(
    analyzers: Annotated[
        str | None, typer.Option(help="Comma-separated analyzers to load and warm up (default: settings).")
    ] = None,
    device: Annotated[DeviceChoice | None, typer.Option(help="Override the inference device.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Check the GPU, load the analyzers and run the warm-up batch exactly as `serve` does, then exit: 0 when the
    worker would be ready, 1 otherwise. In the worker image: `docker run --rm --gpus all IMAGE selfcheck`."""
    import json

    from gpu_worker.batcher import DynamicBatcher
    from gpu_worker.executor import InProcessExecutor
    from gpu_worker.selfcheck import report_lines
    from gpu_worker.server import WorkerState, hardware_info

    settings = get_settings()
    if device is not None:
        settings = settings.model_copy(update={"device": device})
    chosen = [name.strip() for name in analyzers.split(",") if name.strip()] if analyzers else None
    executor = InProcessExecutor(settings)
    state = WorkerState(
        settings=settings,
        executor=executor,
        batcher=DynamicBatcher(executor.run),  # never started: warm_up runs here, on this thread
        analyzers=list(dict.fromkeys(chosen or settings.serve_analyzers)),
        token=None,
    )
    state.warm_up()
    code, health = state.health()
    report = {
        **health,
        "ok": code == 200,
        "gpu_check": state.gpu_check.as_dict() if state.gpu_check else None,
        "warmup": state.warmup,
        "hardware": hardware_info(state.device),
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        for line in report_lines(report):
            console.print(line, markup=False, soft_wrap=True)
    raise typer.Exit(0 if report["ok"] else 1)


@app.command("bench")
def bench(
    analyzers: Annotated[str, typer.Option(help="Comma-separated image analyzers.")] = "clip,objects,faces,nsfw",
    images: Annotated[int, typer.Option(min=2, help="Generated 1080p JPEGs to analyze.")] = 64,
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs per figure; the best is kept.")] = 2,
    device: Annotated[DeviceChoice | None, typer.Option(help="Override the inference device.")] = None,
) -> None:
    """Measure this machine's images/s with the configured models, batched and one by one.

    The full-pipeline figure is what the scheduler's GPU table (config/gpu_throughput.toml) wants for this GPU.
    """
    import tempfile

    from gpu_worker.benchmark import generate_corpus, measure_images
    from gpu_worker.executor import InProcessExecutor

    logging.getLogger("gpu_worker.executor").setLevel(logging.WARNING)  # one line per timed batch is noise here
    settings = get_settings()
    if device is not None:
        settings = settings.model_copy(update={"device": device})
    executor = InProcessExecutor(settings)
    chosen = [name.strip() for name in analyzers.split(",") if name.strip()]
    table = Table(title=f"{images} generated 1080p images on {executor.device}")
    for header in ("analyzers", "batched images/s", "sequential images/s", "ratio"):
        table.add_column(header, justify="left" if header == "analyzers" else "right")
    with tempfile.TemporaryDirectory(prefix="gpuw-bench-") as folder:
        corpus = generate_corpus(Path(folder), images)
        for label, selected in [*((name, [name]) for name in chosen), ("full pipeline", chosen)]:
            try:
                row = measure_images(executor, selected, corpus, repeat)
            except RuntimeError as exc:
                console.print(f"{label}: {exc}", style="red", markup=False)
                raise typer.Exit(1) from exc
            table.add_row(
                label,
                f"{row['batched_images_per_s']:.1f}",
                f"{row['sequential_images_per_s']:.1f}",
                f"{row['ratio']:.2f}",
            )
    console.print(table)
    if executor.device_info is not None:
        console.print(f"device: {executor.device_info.name}")


def main() -> None:
    """Entry point of the ``gpu-worker`` command."""
    app()


if __name__ == "__main__":
    main()
