"""Whether a booting instance is usable: the provider's view of it, and its worker's /healthz over pinned TLS."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from orchestrator.cloud.tls import pinned_ssl_context
from orchestrator.enums import InstanceStatus
from orchestrator.providers.base import InstanceState as ProviderState
from orchestrator.providers.base import ProviderInstance
from orchestrator.scheduler.model import InstanceState as SchedulerState

MAX_DETAIL_CHARS = 300

_BROKEN: Mapping[ProviderState, SchedulerState] = {
    ProviderState.EXITED: SchedulerState.EXITED,
    ProviderState.STOPPED: SchedulerState.STOPPED,
    ProviderState.OFFLINE: SchedulerState.OFFLINE,
    ProviderState.UNKNOWN: SchedulerState.UNKNOWN,
}


def scheduler_state(row_state: InstanceStatus, listed: ProviderInstance) -> SchedulerState:
    """How the policy sees an instance: our row's verdict first, then what the provider reports."""
    if row_state is InstanceStatus.FAILED or listed.has_oci_error:
        return SchedulerState.FAILED
    if listed.outbid:
        return SchedulerState.STOPPED
    if listed.state in _BROKEN:
        return _BROKEN[listed.state]
    if listed.state is ProviderState.LOADING:
        return SchedulerState.LOADING
    return SchedulerState.READY if row_state is InstanceStatus.READY else SchedulerState.RUNNING


def worker_url(listed: ProviderInstance, container_port: int) -> str | None:
    """``https://host:port`` of the worker's mapped port, or None while the provider has not mapped it."""
    host_port = listed.ports.get(container_port)
    if listed.public_ip is None or host_port is None:
        return None
    host = f"[{listed.public_ip}]" if ":" in listed.public_ip else listed.public_ip
    return f"https://{host}:{host_port}"


@dataclass(frozen=True)
class Health:
    """The outcome of one /healthz probe; ``detail`` says why it is not ready. ``failed`` means the worker said its
    start-up self-check or model loading failed: it will never become ready, so waiting for the boot deadline would
    only bill."""

    ready: bool
    detail: str
    failed: bool = False


def probe_health(url: str, *, cert_pem: str, token: str, expected_models: Sequence[str], timeout_s: float) -> Health:
    """GET ``url``/healthz trusting only ``cert_pem``; ready when it answers 200 with every expected model."""
    try:
        with httpx.Client(verify=pinned_ssl_context(cert_pem), timeout=timeout_s) as client:
            response = client.get(f"{url}/healthz", headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return Health(False, f"healthz unreachable: {type(exc).__name__}: {str(exc)[:MAX_DETAIL_CHARS]}")
    if response.status_code != httpx.codes.OK:
        detail = f"healthz answered {response.status_code}: {response.text[:MAX_DETAIL_CHARS]}"
        return Health(False, detail, failed=_reports_failure(response))
    try:
        body = response.json()
    except ValueError:
        return Health(False, "healthz answered something that is not JSON")
    models = body.get("models") if isinstance(body, dict) else None
    loaded = set(models) if isinstance(models, dict) else set()
    missing = [name for name in expected_models if name not in loaded]
    if missing:
        return Health(False, f"healthz lacks models {missing}")
    return Health(True, "healthy")


def _reports_failure(response: httpx.Response) -> bool:
    """Whether a non-200 /healthz body is the worker's terminal ``{"status": "failed", ...}`` (not "loading")."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("status") == "failed"


# A recent-runs figure counts only over at least this many real batches; fewer are mostly start-up and small batches.
MIN_RECENT_RUNS = 5


def read_info(url: str, *, cert_pem: str, token: str, timeout_s: float) -> dict[str, Any] | None:
    """GET ``url``/v1/info trusting only ``cert_pem``; None when it cannot be read (never a readiness verdict)."""
    try:
        with httpx.Client(verify=pinned_ssl_context(cert_pem), timeout=timeout_s) as client:
            response = client.get(f"{url}/v1/info", headers={"Authorization": f"Bearer {token}"})
        body = response.json() if response.status_code == httpx.codes.OK else None
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def measured_images_per_s(info: Mapping[str, Any]) -> float | None:
    """The worker's measured full-pipeline images/s from its ``/v1/info``, or None when it has no GPU figure.

    Preferred: ``recent_items_per_s`` over at least MIN_RECENT_RUNS real batches — the configured analyzers on real
    media, decode and batching included, which is what the table's images/s means. Otherwise the warm-up's second
    run (``warmup.items_per_s``): the same analyzers on generated images after the first run paid the one-time costs.
    A worker that is not on CUDA (a broken driver made it fall back to the CPU) says nothing about its GPU model.
    """
    device = info.get("device")
    throughput = info.get("throughput")
    if not isinstance(device, str) or not device.startswith("cuda") or not isinstance(throughput, dict):
        return None
    recent, runs = throughput.get("recent_items_per_s"), throughput.get("recent_runs")
    if isinstance(runs, int) and runs >= MIN_RECENT_RUNS and isinstance(recent, int | float) and recent > 0:
        return float(recent)
    warmup = throughput.get("warmup")
    figure = warmup.get("items_per_s") if isinstance(warmup, dict) else None
    return float(figure) if isinstance(figure, int | float) and figure > 0 else None
