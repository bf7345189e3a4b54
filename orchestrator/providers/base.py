"""What a GPU capacity provider offers the orchestrator: search, launch, get, list, destroy and logs.

Every call either answers truthfully or raises a :class:`~orchestrator.errors.ProviderError` subclass; in particular
a failed list call raises and is never reported as "no instances", and destroying an instance that is already gone
is a success. Money figures are USD, rates USD per hour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

# Substrings of a status message that mean the container runtime refused the image (driver too old for the image's
# CUDA, a broken entrypoint): the instance will never become ready, so waiting out the boot deadline is pointless.
OCI_ERROR_MARKERS = ("OCI runtime", "oci runtime", "failed to create shim task", "nvidia-container-cli")


class InstanceState(StrEnum):
    """What the provider reports about one instance (not the orchestrator's own lifecycle of its row)."""

    LOADING = "loading"  # created, image pulling or container starting
    RUNNING = "running"
    EXITED = "exited"  # the container stopped by itself
    STOPPED = "stopped"  # stopped by the provider or outbid; still bills storage
    OFFLINE = "offline"  # the host machine lost contact
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class OfferFilters:
    """Which offers a tenant accepts; ``None`` leaves a bound out of the query.

    ``disk_gb`` is both the minimum free disk and the storage the offer's price is quoted for, so that
    ``Offer.dph_total`` includes the storage of the instance we would create.
    """

    gpu_names: tuple[str, ...] = ()
    num_gpus: int = 1
    min_cuda: float | None = None
    min_reliability: float | None = None
    verified_only: bool = True
    min_inet_down_mbps: float | None = None
    min_direct_ports: int | None = None
    disk_gb: float = 10.0
    max_dph_total: float | None = None
    excluded_machine_ids: frozenset[int] = frozenset()
    limit: int = 64


@dataclass(frozen=True, slots=True)
class Offer:
    """One rentable machine offer. ``dph_total`` is USD/h including storage for the requested disk."""

    id: str
    machine_id: int
    host_id: int | None
    gpu_name: str
    num_gpus: int
    gpu_ram_gb: float
    cuda_max_good: float
    reliability: float
    verified: bool
    inet_down_mbps: float
    inet_up_mbps: float
    direct_port_count: int
    disk_space_gb: float
    dph_total: float
    storage_cost_per_gb_month: float
    location: str
    dlperf: float | None = None


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """What to run on a new instance.

    ``env`` holds only non-secret settings and the per-instance worker token; ``ports`` are container ports to
    expose directly. ``onstart`` is a shell script run at start, ``args`` the container's arguments (the image's own
    entrypoint runs when both are empty).
    """

    image: str
    label: str
    disk_gb: float
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    onstart: str | None = None
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProviderInstance:
    """One instance as the provider reports it.

    ``ports`` maps a container port to the public host port; ``start_date`` is when the provider created it.
    ``intended_state`` is what was asked for (running unless someone stopped it).
    """

    id: str
    label: str | None
    machine_id: int | None
    state: InstanceState
    intended_state: InstanceState
    status_msg: str
    public_ip: str | None
    ports: Mapping[int, int]
    dph_total: float
    start_date: datetime | None
    gpu_name: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def has_oci_error(self) -> bool:
        """True when the status message says the container runtime refused to start the image."""
        return any(marker in self.status_msg for marker in OCI_ERROR_MARKERS)

    @property
    def outbid(self) -> bool:
        """True when we asked for running but the provider stopped it (outbid or preempted)."""
        return self.intended_state is InstanceState.RUNNING and self.state is InstanceState.STOPPED


class Provider(Protocol):
    """GPU capacity from one cloud. Implementations are synchronous and safe to call from Celery tasks."""

    name: str

    def search_offers(self, filters: OfferFilters) -> list[Offer]:
        """Offers matching ``filters``, cheapest first; raises ProviderError when the search failed."""
        ...

    def launch(self, offer_id: str, spec: LaunchSpec) -> ProviderInstance:
        """Rent ``offer_id`` and start ``spec`` on it.

        Raises OfferGoneError when the offer was taken (try the next one) and CreateFailedError when the create
        failed; a create that failed after a contract was made is destroyed before the error is raised.
        """
        ...

    def get(self, instance_id: str) -> ProviderInstance | None:
        """The instance, or None when the provider no longer knows it."""
        ...

    def list_instances(self, label_prefix: str = "") -> list[ProviderInstance]:
        """All of our instances whose label starts with ``label_prefix``; raises rather than return a partial list."""
        ...

    def destroy(self, instance_id: str) -> None:
        """Destroy (never stop) the instance; an instance already gone counts as destroyed.

        Raises NotYetTerminatedError when the provider accepted the destroy but still lists the instance.
        """
        ...

    def logs(self, instance_id: str, tail: int = 1000) -> str:
        """The last ``tail`` lines of the instance's container log."""
        ...
