"""Vast.ai behind the :class:`~orchestrator.providers.base.Provider` interface: typed offers and instances.

The API's rows are loosely typed (numbers may arrive as strings, addresses with trailing newlines, ``extra_env`` as
a list of pairs); everything is parsed here, once, into the frozen dataclasses of :mod:`..base`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from orchestrator.errors import CreateFailedError, NotYetTerminatedError, ProviderError
from orchestrator.providers.base import InstanceState, LaunchSpec, Offer, OfferFilters, ProviderInstance
from orchestrator.providers.vast.client import VastClient
from orchestrator.settings import Settings

# Every instance this system rents carries a label starting with this, so that its own are found after a restart.
LABEL_PREFIX = "mam-"
_LABEL_PART = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")

_ACTUAL_STATES: Mapping[str, InstanceState] = {
    "created": InstanceState.LOADING,
    "loading": InstanceState.LOADING,
    "scheduling": InstanceState.LOADING,
    "running": InstanceState.RUNNING,
    "exited": InstanceState.EXITED,
    "stopped": InstanceState.STOPPED,
    "offline": InstanceState.OFFLINE,
    "unknown": InstanceState.UNKNOWN,
}


def make_label(deployment: str, row_id: str) -> str:
    """The label of the instance for our row ``row_id``: ``mam-<deployment>-<row_id>``, lower-case."""
    for part in (deployment, row_id):
        if not _LABEL_PART.match(part):
            raise ValueError(f"label part {part!r} must be lower-case letters, digits and dashes")
    return f"{LABEL_PREFIX}{deployment}-{row_id}"


def offer_query(filters: OfferFilters) -> dict[str, Any]:
    """The ``POST /api/v0/bundles/`` body for ``filters``, in the official client's query language."""
    query: dict[str, Any] = {
        "external": {"eq": False},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "num_gpus": {"eq": filters.num_gpus},
        "disk_space": {"gte": filters.disk_gb},
    }
    if filters.verified_only:
        query["verified"] = {"eq": True}
    if filters.gpu_names:
        query["gpu_name"] = {"in": list(filters.gpu_names)}
    optional_bounds: tuple[tuple[str, str, float | int | None], ...] = (
        ("cuda_max_good", "gte", filters.min_cuda),
        ("reliability", "gte", filters.min_reliability),
        ("inet_down", "gte", filters.min_inet_down_mbps),
        ("direct_port_count", "gte", filters.min_direct_ports),
        ("dph_total", "lte", filters.max_dph_total),
    )
    for name, op, value in optional_bounds:
        if value is not None:
            query[name] = {op: value}
    if filters.excluded_machine_ids:
        query["machine_id"] = {"notin": sorted(filters.excluded_machine_ids)}
    query["order"] = [["dph_total", "asc"]]
    query["type"] = "on-demand"
    query["limit"] = filters.limit
    # Prices are quoted for this much storage, so dph_total covers the disk we will ask for.
    query["allocated_storage"] = filters.disk_gb
    return query


def offer_matches(offer: Offer, filters: OfferFilters) -> bool:
    """Whether ``offer`` satisfies ``filters``; checked again here so that a lax server cannot overspend us."""
    checks = (
        not filters.gpu_names or offer.gpu_name in filters.gpu_names,
        offer.num_gpus == filters.num_gpus,
        filters.min_cuda is None or offer.cuda_max_good >= filters.min_cuda,
        filters.min_reliability is None or offer.reliability >= filters.min_reliability,
        not filters.verified_only or offer.verified,
        filters.min_inet_down_mbps is None or offer.inet_down_mbps >= filters.min_inet_down_mbps,
        filters.min_direct_ports is None or offer.direct_port_count >= filters.min_direct_ports,
        offer.disk_space_gb >= filters.disk_gb,
        filters.max_dph_total is None or offer.dph_total <= filters.max_dph_total,
        offer.machine_id not in filters.excluded_machine_ids,
    )
    return all(checks)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _float(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool) or value is None:
        return default
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return default
    return default


def _int_or_none(value: Any) -> int | None:
    number = _float(value, default=float("nan"))
    return int(number) if number == number else None  # NaN is the only value unequal to itself


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def parse_offer(row: Mapping[str, Any]) -> Offer:
    """An offer row of ``/bundles/`` as an :class:`Offer`."""
    offer_id = _int_or_none(row.get("id") if row.get("id") is not None else row.get("ask_contract_id"))
    machine_id = _int_or_none(row.get("machine_id"))
    if offer_id is None or machine_id is None:
        raise ProviderError("Vast.ai offer row without id or machine_id")
    verification = _text(row.get("verification"))
    reliability = row.get("reliability2") if row.get("reliability2") is not None else row.get("reliability")
    return Offer(
        id=str(offer_id),
        machine_id=machine_id,
        host_id=_int_or_none(row.get("host_id")),
        gpu_name=_text(row.get("gpu_name")),
        num_gpus=_int_or_none(row.get("num_gpus")) or 0,
        # gpu_ram is in MB, as the official client's x1000 multiplier for gpu_ram queries in GB shows.
        gpu_ram_gb=_float(row.get("gpu_ram")) / 1000.0,
        cuda_max_good=_float(row.get("cuda_max_good")),
        reliability=_float(reliability),
        verified=_bool(row["verified"]) if "verified" in row else verification == "verified",
        inet_down_mbps=_float(row.get("inet_down")),
        inet_up_mbps=_float(row.get("inet_up")),
        direct_port_count=_int_or_none(row.get("direct_port_count")) or 0,
        disk_space_gb=_float(row.get("disk_space")),
        dph_total=_float(row.get("dph_total"), default=float("inf")),
        storage_cost_per_gb_month=_float(row.get("storage_cost")),
        location=_text(row.get("geolocation")),
        dlperf=_float(row.get("dlperf")) if row.get("dlperf") is not None else None,
    )


def instance_state(actual: Any, cur_state: Any = None) -> InstanceState:
    """Our state for Vast's ``actual_status`` (None while scheduling) and ``cur_state``."""
    actual_text = _text(actual).lower()
    if _text(cur_state).lower() == "stopped" and actual_text != "running":
        return InstanceState.STOPPED
    if not actual_text:
        return InstanceState.LOADING
    return _ACTUAL_STATES.get(actual_text, InstanceState.UNKNOWN)


def _ports(value: Any) -> dict[int, int]:
    """``{"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41234"}]}`` as ``{8000: 41234}`` (TCP only)."""
    if not isinstance(value, Mapping):
        return {}
    ports: dict[int, int] = {}
    for key, bindings in value.items():
        container, _, protocol = str(key).partition("/")
        if protocol not in ("", "tcp") or not isinstance(bindings, list):
            continue
        container_port = _int_or_none(container)
        for binding in bindings:
            host_port = _int_or_none(binding.get("HostPort")) if isinstance(binding, Mapping) else None
            if container_port is not None and host_port is not None:
                ports[container_port] = host_port
                break
    return ports


def _extra_env(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        return {str(pair[0]): str(pair[1]) for pair in value if isinstance(pair, list | tuple) and len(pair) == 2}
    return {}


def parse_instance(row: Mapping[str, Any]) -> ProviderInstance:
    """An instance row of ``/api/v1/instances/`` or ``/api/v0/instances/{id}/`` as a :class:`ProviderInstance`."""
    instance_id = _int_or_none(row.get("id"))
    if instance_id is None:
        raise ProviderError("Vast.ai instance row without id")
    start = _float(row.get("start_date"), default=float("nan"))
    intended = _text(row.get("intended_status")).lower()
    label = _text(row.get("label")) or None
    return ProviderInstance(
        id=str(instance_id),
        label=label,
        machine_id=_int_or_none(row.get("machine_id")),
        state=instance_state(row.get("actual_status"), row.get("cur_state")),
        intended_state=InstanceState.STOPPED if intended == "stopped" else InstanceState.RUNNING,
        status_msg=_text(row.get("status_msg")),
        public_ip=_text(row.get("public_ipaddr")) or None,
        ports=_ports(row.get("ports")),
        dph_total=_float(row.get("dph_total")),
        start_date=datetime.fromtimestamp(start, UTC) if start == start else None,
        gpu_name=_text(row.get("gpu_name")) or None,
        extra_env=_extra_env(row.get("extra_env")),
    )


def _launch_env(spec: LaunchSpec) -> dict[str, str]:
    """The create call's env: variables plus ``"-p N:N": "1"`` entries for direct ports, as the CLI encodes them."""
    env = dict(spec.env)
    for port in spec.ports:
        env[f"-p {int(port)}:{int(port)}"] = "1"
    return env


class VastProvider:
    """The Vast.ai :class:`~orchestrator.providers.base.Provider`."""

    name = "vast"

    def __init__(self, client: VastClient) -> None:
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> VastProvider:
        """A provider for ``ORCH_VAST_API_URL`` with ``ORCH_VAST_API_KEY``."""
        return cls(VastClient(settings.vast_api_key, settings.vast_api_url))

    def search_offers(self, filters: OfferFilters) -> list[Offer]:
        """Offers matching ``filters``, cheapest first."""
        offers = [parse_offer(row) for row in self.client.search_offers(offer_query(filters))]
        return sorted((o for o in offers if offer_matches(o, filters)), key=lambda o: (o.dph_total, o.id))

    def launch(self, offer_id: str, spec: LaunchSpec) -> ProviderInstance:
        """Rent ``offer_id`` for ``spec``; a create that failed yet made a contract is destroyed at once."""
        try:
            contract = self.client.create_instance(
                int(offer_id),
                image=spec.image,
                disk_gb=spec.disk_gb,
                env=_launch_env(spec),
                label=spec.label,
                onstart=spec.onstart,
                args=spec.args,
            )
        except CreateFailedError as exc:
            if exc.instance_id is not None:
                # The error reaches the caller either way; a failing destroy leaves a labelled orphan for the
                # reconciler, which is why it is not raised in place of the create error.
                try:
                    self.client.destroy_instance(int(exc.instance_id))
                except ProviderError as destroy_error:
                    exc.add_note(f"destroying contract {exc.instance_id} failed too: {destroy_error.message}")
            raise
        return ProviderInstance(
            id=str(contract),
            label=spec.label,
            machine_id=None,
            state=InstanceState.LOADING,
            intended_state=InstanceState.RUNNING,
            status_msg="",
            public_ip=None,
            ports={},
            dph_total=0.0,
            start_date=None,
            extra_env=dict(spec.env),
        )

    def get(self, instance_id: str) -> ProviderInstance | None:
        """The instance, or None when Vast no longer knows it."""
        row = self.client.show_instance(int(instance_id))
        return parse_instance(row) if row is not None else None

    def list_instances(self, label_prefix: str = LABEL_PREFIX) -> list[ProviderInstance]:
        """Our instances whose label starts with ``label_prefix`` (all pages, one logical list call)."""
        instances = [parse_instance(row) for row in self.client.list_instances()]
        if not label_prefix:
            return instances
        return [i for i in instances if i.label is not None and i.label.startswith(label_prefix)]

    def destroy(self, instance_id: str) -> None:
        """Destroy the instance and confirm it is gone; NotYetTerminatedError while Vast still reports it."""
        self.client.destroy_instance(int(instance_id))
        if self.client.show_instance(int(instance_id)) is not None:
            raise NotYetTerminatedError(f"Vast.ai instance {instance_id} is still reported after destroy")

    def logs(self, instance_id: str, tail: int = 1000) -> str:
        """The last ``tail`` lines of the container log."""
        return self.client.instance_logs(int(instance_id), tail)
