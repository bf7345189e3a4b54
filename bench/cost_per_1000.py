"""$ per 1000 images per GPU model: Vast.ai offer prices against the images/s table, or a figure measured on the GPU.

    python bench/cost_per_1000.py --live                       # current prices; needs ORCH_VAST_API_KEY and internet
    python bench/cost_per_1000.py --offers offers.json         # saved raw rows (`vastai search offers ... --raw`)
    python bench/cost_per_1000.py --live --measured worker.json "RTX 5090"              # measured images/s for a model
    python bench/cost_per_1000.py --measured worker.json "RTX 5090" --write-table       # ... and record it in the table

Per GPU model it prints the number of offers, the cheapest, 10th-percentile and median $/h (storage for --disk-gb
included, what the scheduler ranks by), the images/s used and whether it is measured, and $ per 1000 images
(``$/h / (images/s * 3600) * 1000``) at the cheapest and at the median offer. Only one-GPU offers count (the worker
drives one GPU), and unless --unfiltered only those the scheduler's default filters accept. ``--measured`` takes the
full-pipeline batched images/s from a ``bench/worker_throughput.py --json`` file written on that GPU model. Nothing is
asserted: record results in docs/performance.md with the command and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shlex
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.cloud.offers import offer_view, provider_filters  # noqa: E402
from orchestrator.errors import ProviderError  # noqa: E402
from orchestrator.providers.base import Provider  # noqa: E402
from orchestrator.providers.vast.provider import parse_offer  # noqa: E402
from orchestrator.scheduler.costs import GpuCost, summarize_costs  # noqa: E402
from orchestrator.scheduler.model import OfferFilters, OfferView, ThroughputTable  # noqa: E402
from orchestrator.scheduler.offers import Rejection, load_throughput_table, rejection  # noqa: E402

DEFAULT_GPUS = ("RTX 5090", "RTX 4090", "H100 SXM", "H100 PCIE")
DEFAULT_TABLE = REPO / "config" / "gpu_throughput.toml"
FULL_PIPELINE = "full pipeline"
# The corpus the table's figures are defined on (see the [cpu] entry of config/gpu_throughput.toml).
PREFERRED_CORPUS = "generated 1080p"


@dataclass(frozen=True)
class Measurement:
    """A full-pipeline images/s measured on one GPU model by ``bench/worker_throughput.py --json``."""

    gpu_name: str
    images_per_s: float
    date: str
    device_name: str
    corpus: str
    path: Path


@dataclass(frozen=True)
class Selection:
    """The offers that count, and per GPU model how many were refused and why."""

    accepted: list[OfferView]
    refused: dict[str, Counter[str]]
    multi_gpu: int


def load_offer_rows(path: Path) -> list[Mapping[str, Any]]:
    """The raw offer rows of a saved search: a JSON list, or ``{"offers": [...]}`` as the API answers."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = data.get("offers") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise SystemExit(f"error: {path} holds neither a list of offer rows nor {{'offers': [...]}}")
    return rows


def views_from_rows(rows: Sequence[Mapping[str, Any]], *, disk_gb: float) -> tuple[list[OfferView], int]:
    """The rows as the scheduler's offer views, with the number of rows that could not be read."""
    views: list[OfferView] = []
    unreadable = 0
    for row in rows:
        try:
            view = offer_view(parse_offer(row), disk_gb=disk_gb)
        except ProviderError:
            view = None
        if view is None:
            unreadable += 1
        else:
            views.append(view)
    return views, unreadable


def live_views(
    provider: Provider, gpus: Sequence[str], filters: OfferFilters | None, *, disk_gb: float, limit: int
) -> tuple[list[OfferView], list[str]]:
    """One-GPU offers of each model, searched one model at a time so that cheap models do not crowd dear ones out
    of the limit; and the models whose search hit the limit (their figures cover only the cheapest offers).
    """
    views: list[OfferView] = []
    truncated: list[str] = []
    for gpu in gpus:
        policy = dataclasses.replace(filters or _loose_filters(), gpu_names=(gpu,), min_disk_gb=disk_gb)
        query = provider_filters(policy, max_price_per_h_usd=math.inf, excluded=frozenset())
        # No price bound: the point is the whole price spread, not a tenant's budget.
        found = provider.search_offers(dataclasses.replace(query, max_dph_total=None, limit=limit))
        if len(found) >= limit:
            truncated.append(gpu)
        views.extend(v for v in (offer_view(o, disk_gb=disk_gb) for o in found) if v is not None)
    return views, truncated


def _loose_filters() -> OfferFilters:
    return OfferFilters(
        min_cuda=0.0, min_reliability=0.0, verified_only=False, min_inet_down_mbps=0.0, min_direct_ports=0
    )


def select(
    views: Sequence[OfferView], gpus: Sequence[str], filters: OfferFilters | None, throughput: ThroughputTable
) -> Selection:
    """One-GPU offers of ``gpus``; with ``filters``, only those the scheduler would accept (no price bound)."""
    accepted: list[OfferView] = []
    refused: dict[str, Counter[str]] = {gpu: Counter() for gpu in gpus}
    multi_gpu = 0
    for view in views:
        if view.gpu_name not in refused:
            continue
        if view.num_gpus != 1:
            multi_gpu += 1
            continue
        reason = None
        if filters is not None:
            reason = rejection(
                view,
                filters=dataclasses.replace(filters, gpu_names=tuple(gpus)),
                max_price_per_h_usd=math.inf,
                excluded_machines=frozenset(),
                throughput=throughput,
            )
        # A model without a figure is still counted: its offers are reported, uncosted.
        if reason is None or reason is Rejection.UNKNOWN_THROUGHPUT:
            accepted.append(view)
        else:
            refused[view.gpu_name][str(reason)] += 1
    return Selection(accepted=accepted, refused=refused, multi_gpu=multi_gpu)


def read_measurement(path: Path, gpu_name: str) -> Measurement:
    """The full-pipeline batched images/s of a ``worker_throughput.py --json`` file measured on ``gpu_name``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot read {path}: {exc}") from exc
    device, device_name = str(data.get("device", "")), str(data.get("device_name", ""))
    if not device.startswith("cuda"):
        raise SystemExit(f"error: {path} was measured on {device or 'an unknown device'!r}, not on a CUDA GPU")
    model_token = next((word for word in gpu_name.split() if any(c.isdigit() for c in word)), "")
    if model_token.lower() not in device_name.lower():
        raise SystemExit(f"error: {path} was measured on {device_name!r}, which does not look like {gpu_name!r}")
    rows = [r for r in data.get("results", []) if r.get("analyzers") == FULL_PIPELINE]
    rows.sort(key=lambda r: r.get("corpus") != PREFERRED_CORPUS)
    if not rows or not float(rows[0].get("batched_images_per_s", 0.0)) > 0.0:
        raise SystemExit(f"error: {path} has no positive full-pipeline batched_images_per_s")
    return Measurement(
        gpu_name=gpu_name,
        images_per_s=float(rows[0]["batched_images_per_s"]),
        date=str(data.get("date", "unknown date")),
        device_name=device_name,
        corpus=str(rows[0].get("corpus", "")),
        path=path,
    )


def with_measurements(table: ThroughputTable, measurements: Sequence[Measurement]) -> ThroughputTable:
    """``table`` with the measured figures in place of the configured ones, marked measured."""
    figures = dict(table.images_per_s)
    figures.update({m.gpu_name: m.images_per_s for m in measurements})
    measured = table.measured | {m.gpu_name for m in measurements}
    return ThroughputTable(images_per_s=figures, reference_gpu=table.reference_gpu, measured=frozenset(measured))


def report_lines(
    gpus: Sequence[str], costs: Sequence[GpuCost], selection: Selection, table: ThroughputTable
) -> list[str]:
    """The printed report: one row per GPU model with offers, a line for each model without, then the notes."""
    by_name = {cost.gpu_name: cost for cost in costs}
    header = (
        f"{'GPU':<10}  {'offers':>6}  {'cheapest $/h':>12}  {'p10 $/h':>8}  {'median $/h':>10}  {'images/s':>9}  "
        f"{'figure':<9}  {'$/1000 img @cheapest':>20}  {'$/1000 img @median':>18}"
    )
    lines = [header, "-" * len(header)]
    for gpu in gpus:
        cost = by_name.get(gpu)
        if cost is None:
            refused = sum(selection.refused[gpu].values())
            found = f"no acceptable offers ({refused} refused by the filters)" if refused else "no offers found"
            lines.append(f"{gpu:<10}  {found}")
            continue
        lines.append(
            f"{gpu:<10}  {cost.offers:>6}  {cost.cheapest_per_h_usd:>12.3f}  {cost.p10_per_h_usd:>8.3f}  "
            f"{cost.median_per_h_usd:>10.3f}  {_number(cost.images_per_s, '.1f'):>9}  "
            f"{_figure(cost):<9}  {_number(cost.usd_per_1000_at_cheapest, '.6f'):>20}  "
            f"{_number(cost.usd_per_1000_at_median, '.6f'):>18}"
        )
    for gpu in gpus:
        if selection.refused[gpu]:
            reasons = ", ".join(f"{r}: {n}" for r, n in selection.refused[gpu].most_common())
            lines.append(f"refused {gpu} offers: {reasons}")
    if selection.multi_gpu:
        lines.append(f"left out {selection.multi_gpu} offers with more than one GPU (the worker drives one)")
    estimated = [g for g in gpus if g in table.images_per_s and g not in table.measured]
    if estimated:
        lines.append(
            "images/s are ESTIMATES, not measured, for: "
            + ", ".join(f"{g} ({table.images_per_s[g]:g})" for g in estimated)
            + "; measure with bench/worker_throughput.py --device cuda --json FILE and pass --measured FILE GPU"
        )
    missing = [g for g in gpus if g not in table.images_per_s]
    if missing:
        lines.append("no images/s figure in the table for: " + ", ".join(missing) + " (offers listed, not costed)")
    return lines


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _figure(cost: GpuCost) -> str:
    if cost.images_per_s is None:
        return "none"
    return "measured" if cost.measured else "estimate"


def write_measured(text: str, measurement: Measurement, command: str) -> str:
    """``text`` of the throughput table with ``measurement`` recorded: figure, ``source = "measured"``, a comment.

    A text edit, not a TOML rewrite, so every other line and comment stays as it is. Comments inside the model's
    own entry described the old figure and are replaced; a model not in the table gets a new entry after the last.
    """
    old_document = tomllib.loads(text)
    old_entry = old_document.get("gpus", {}).get(measurement.gpu_name, {})
    if set(old_entry) - {"images_per_s", "source"}:
        raise ValueError(f"the entry of {measurement.gpu_name} has keys this edit does not know: {sorted(old_entry)}")
    lines = text.splitlines()
    header = re.compile(r'^\s*\[gpus\."' + re.escape(measurement.gpu_name) + r'"\]\s*(#.*)?$')
    entry = [
        f"# Measured {measurement.date} on {measurement.device_name}: {measurement.path.name}, "
        f"{measurement.corpus}, full pipeline, batched.",
        f"# Written by: {command}",
        f"images_per_s = {measurement.images_per_s:.2f}",
        'source = "measured"',
    ]
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        gpu_headers = [i for i, line in enumerate(lines) if line.lstrip().startswith("[gpus.")]
        if not gpu_headers:
            raise ValueError('the throughput table has no [gpus."..."] entry to add the measurement after')
        after = _last_key_line(lines, gpu_headers[-1])
        new_lines = [*lines[: after + 1], "", f'[gpus."{measurement.gpu_name}"]', *entry, *lines[after + 1 :]]
    else:
        end = _last_key_line(lines, start)
        new_lines = [*lines[: start + 1], *entry, *lines[end + 1 :]]
    new_text = "\n".join(new_lines) + ("\n" if text.endswith("\n") else "")
    # The edit must change this one entry and nothing else.
    expected = {**old_document, "gpus": {**old_document["gpus"]}}
    expected["gpus"][measurement.gpu_name] = {"images_per_s": round(measurement.images_per_s, 2), "source": "measured"}
    if tomllib.loads(new_text) != expected:
        raise ValueError(f"editing the entry of {measurement.gpu_name} would change other entries; edit by hand")
    return new_text


def _last_key_line(lines: Sequence[str], header: int) -> int:
    """The last ``key = value`` line of the entry whose header is at ``header`` (the header when it has none)."""
    last = header
    for index in range(header + 1, len(lines)):
        stripped = lines[index].strip()
        if stripped.startswith("["):
            break
        if stripped and not stripped.startswith("#"):
            last = index
    return last


def main(argv: Sequence[str] | None = None, *, provider: Provider | None = None) -> int:
    """Parse arguments, read or search offers, print the report; ``provider`` replaces Vast.ai in tests."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--offers", type=Path, nargs="+", metavar="FILE", help="saved raw Vast.ai offer rows")
    source.add_argument("--live", action="store_true", help="search Vast.ai now (ORCH_VAST_API_KEY)")
    parser.add_argument("--gpus", nargs="+", default=list(DEFAULT_GPUS), metavar="GPU", help="Vast GPU names")
    parser.add_argument("--throughput", type=Path, default=DEFAULT_TABLE, help="the images/s table")
    parser.add_argument(
        "--measured",
        nargs=2,
        action="append",
        metavar=("FILE", "GPU_NAME"),
        help="worker_throughput.py --json output measured on GPU_NAME; repeat for several models",
    )
    parser.add_argument("--write-table", action="store_true", help="record the --measured figures in --throughput")
    parser.add_argument("--disk-gb", type=float, default=OfferFilters().min_disk_gb, help="disk rented with the GPU")
    parser.add_argument("--limit", type=int, default=256, help="offers per GPU model in a live search (cheapest)")
    parser.add_argument("--unfiltered", action="store_true", help="count every one-GPU offer, not only acceptable")
    args = parser.parse_args(argv)
    if not (args.offers or args.live or args.write_table):
        parser.error("give --offers FILE or --live (or --measured ... --write-table)")
    if args.write_table and not args.measured:
        parser.error("--write-table records --measured figures: give --measured FILE GPU_NAME")

    measurements = [read_measurement(Path(path), gpu) for path, gpu in args.measured or []]
    table = with_measurements(load_throughput_table(args.throughput), measurements)
    if args.offers or args.live:
        filters = None if args.unfiltered else OfferFilters(gpu_names=tuple(args.gpus), min_disk_gb=args.disk_gb)
        views, origin = _offer_views(args, filters, provider)
        selection = select(views, args.gpus, filters, table)
        costs = summarize_costs(selection.accepted, table)
        print(origin)
        print("\n".join(report_lines(args.gpus, costs, selection, table)))
    if args.write_table:
        text = args.throughput.read_text(encoding="utf-8")
        command = shlex.join(["python", "bench/cost_per_1000.py", *(argv if argv is not None else sys.argv[1:])])
        for measurement in measurements:
            text = write_measured(text, measurement, command)
            figure = f"{measurement.gpu_name} = {measurement.images_per_s:.2f} images/s (measured)"
            print(f"wrote {figure} to {args.throughput}")
        args.throughput.write_text(text, encoding="utf-8")
    return 0


def _offer_views(
    args: argparse.Namespace, filters: OfferFilters | None, provider: Provider | None
) -> tuple[list[OfferView], str]:
    kind = "all one-GPU offers" if filters is None else "one-GPU offers the scheduler's default filters accept"
    if args.offers:
        views: list[OfferView] = []
        unreadable = 0
        for path in args.offers:
            found, bad = views_from_rows(load_offer_rows(path), disk_gb=args.disk_gb)
            views.extend(found)
            unreadable += bad
        names = ", ".join(str(p) for p in args.offers)
        skipped = f", {unreadable} unreadable rows skipped" if unreadable else ""
        return views, f"prices from {names} ({len(views)} offers{skipped}); {kind}"
    if provider is None:
        from orchestrator.providers.vast.provider import VastProvider
        from orchestrator.settings import get_settings

        settings = get_settings()
        if not settings.vast_api_key:
            raise SystemExit("error: --live needs ORCH_VAST_API_KEY (your Vast.ai API key) and internet access")
        provider = VastProvider.from_settings(settings)
    try:
        views, truncated = live_views(provider, args.gpus, filters, disk_gb=args.disk_gb, limit=args.limit)
    except ProviderError as exc:
        raise SystemExit(f"error: the Vast.ai search failed: {exc}") from exc
    origin = f"live Vast.ai prices at {time.strftime('%Y-%m-%d %H:%M %Z')} ({len(views)} offers); {kind}"
    if truncated:
        origin += (
            f"\nthe search of {', '.join(truncated)} hit --limit {args.limit}: those figures cover the cheapest "
            f"{args.limit} offers only (raise --limit for the whole spread)"
        )
    return views, origin


if __name__ == "__main__":
    sys.exit(main())
