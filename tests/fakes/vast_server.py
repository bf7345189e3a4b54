"""A fake Vast.ai API with the real request and answer shapes, per-second billing and fault switches.

:class:`FakeVast` holds the market (offers), the account (balance, instances) and a log of every request. Its
:meth:`FakeVast.handle` answers one HTTP request; :meth:`FakeVast.serve` puts it on real HTTP at 127.0.0.1 in a
thread (for the official CLI, subprocesses and the end-to-end tests), and :meth:`FakeVast.transport` hands the same
handler to httpx without a socket (for unit tests).

Shapes follow the official ``vastai`` package and the live API: offers under ``{"offers": [...]}``, the v1 list
paged with ``next_token``, one instance under ``{"instances": {...}}``, creates answered ``{"success": true,
"new_contract": id}``, logs through a ``result_url`` fetched without credentials. Like the live API, some numbers
arrive as strings and addresses with a trailing newline (``loose_types``); list rows carry ``start_date`` (epoch
seconds) and ``extra_env`` as ``[name, value]`` pairs.

Time comes from ``clock`` (seconds; injectable), so boot and billing can be driven without sleeping. An instance is
``loading`` until ``boot_s`` has passed, then ``running``. Billing is per second: ``dph_total`` while the instance
exists and is not stopped, storage only while stopped (as Vast bills a stopped instance), nothing after destroy.

``on_create(instance) -> handle`` and ``on_destroy(handle)`` let a test start a real process per instance (it may
set ``instance.public_ip`` and ``instance.ports``); every handle still alive is destroyed when :meth:`serve` exits.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

# Storage is priced per GB-month; Vast's own pages convert with a 30-day month.
HOURS_PER_MONTH = 720.0
SECONDS_PER_HOUR = 3600.0
LIST_MAX_PAGE_SIZE = 25
UNIT_TEST_BASE_URL = "http://fake-vast.test"
OCI_ERROR_MSG = (
    "Error response from daemon: failed to create task for container: failed to create shim task: OCI runtime "
    "create failed: runc create failed: unable to start container process: error during container init: error "
    "running hook #0: error running hook: exit status 1, stdout: , stderr: Auto-detected mode as 'legacy'\n"
    "nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.8, please update your driver"
)
# Query keys of /bundles/ that are not offer fields.
_QUERY_CONTROL_KEYS = frozenset({"order", "type", "limit", "allocated_storage", "disable_bundling"})
# Fields that the live API sometimes sends as strings; loose_types reproduces that.
_STRINGY_FIELDS = frozenset({"dph_total", "machine_id", "disk_space", "cuda_max_good", "inet_down", "gpu_ram"})


class InstanceFault(StrEnum):
    """What can go wrong with one instance."""

    STUCK_LOADING = "stuck_loading"  # never leaves loading
    OCI_ERROR = "oci_error"  # the container runtime refuses the image; status_msg says so
    EXITED = "exited"  # the container exits once booted
    OUTBID = "outbid"  # intended running, actually stopped by the provider


@dataclass
class FakeOffer:
    """One rentable machine in the fake market."""

    id: int
    machine_id: int
    gpu_name: str = "RTX 4090"
    dph_base: float = 0.40
    storage_cost: float = 0.15  # USD per GB-month
    num_gpus: int = 1
    gpu_ram_mb: int = 24564
    cuda_max_good: float = 12.8
    reliability: float = 0.995
    verified: bool = True
    inet_down: float = 900.0
    inet_up: float = 500.0
    direct_port_count: int = 20
    disk_space: float = 200.0
    geolocation: str = "Sweden, SE"
    host_id: int = 1000
    rented: bool = False

    def dph_total(self, storage_gb: float) -> float:
        """USD per hour for this offer with ``storage_gb`` of disk."""
        return self.dph_base + self.storage_dph(storage_gb)

    def storage_dph(self, storage_gb: float) -> float:
        """USD per hour for ``storage_gb`` of disk on this machine."""
        return self.storage_cost * storage_gb / HOURS_PER_MONTH

    def fields(self, storage_gb: float) -> dict[str, Any]:
        """The offer as typed values keyed by the API's field names (used for filtering and answers)."""
        return {
            "id": self.id,
            "ask_contract_id": self.id,
            "bundle_id": self.id,
            "machine_id": self.machine_id,
            "host_id": self.host_id,
            "gpu_name": self.gpu_name,
            "num_gpus": self.num_gpus,
            "gpu_ram": self.gpu_ram_mb,
            "gpu_total_ram": self.gpu_ram_mb * self.num_gpus,
            "cuda_max_good": self.cuda_max_good,
            "reliability": self.reliability,
            "reliability2": self.reliability,
            "verified": self.verified,
            "verification": "verified" if self.verified else "unverified",
            "inet_down": self.inet_down,
            "inet_up": self.inet_up,
            "direct_port_count": self.direct_port_count,
            "disk_space": self.disk_space,
            "dph_base": self.dph_base,
            "dph_total": round(self.dph_total(storage_gb), 6),
            "storage_cost": self.storage_cost,
            "storage_total_cost": round(self.storage_dph(storage_gb), 6),
            "geolocation": self.geolocation,
            "dlperf": 40.0 * self.num_gpus,
            "rentable": not self.rented,
            "rented": self.rented,
            "external": False,
            "min_bid": round(self.dph_base * 0.6, 6),
        }


@dataclass
class FakeInstance:
    """One rented instance. Tests may read anything and set ``public_ip``/``ports`` from ``on_create``."""

    id: int
    offer: FakeOffer
    label: str | None
    image: str
    env: dict[str, str]
    disk_gb: float
    onstart: str | None
    args: list[str] | None
    runtype: str | None
    created_at: float  # clock seconds
    start_epoch: float  # wall epoch seconds, as start_date
    dph_total: float
    storage_dph: float
    fault: InstanceFault | None = None
    public_ip: str = "127.0.0.1"
    ports: dict[int, int] = field(default_factory=dict)
    handle: Any = None
    charged_usd: float = 0.0
    billed_until: float = 0.0
    destroyed: bool = False
    log_lines: list[str] = field(default_factory=list)

    def actual_status(self, now: float, boot_s: float) -> tuple[str | None, str, str, str]:
        """(actual_status, intended_status, cur_state, status_msg) at clock time ``now``."""
        booted = now - self.created_at >= boot_s
        if self.fault is InstanceFault.OUTBID:
            return "stopped", "running", "stopped", "Instance stopped: outbid by a higher bid"
        if self.fault is InstanceFault.OCI_ERROR:
            return "created", "running", "running", OCI_ERROR_MSG
        if self.fault is InstanceFault.STUCK_LOADING or not booted:
            return "loading", "running", "running", "Pulling image layers"
        if self.fault is InstanceFault.EXITED:
            return "exited", "running", "running", "Container exited with code 1"
        return "running", "running", "running", "success, running"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it; ``body`` is the parsed JSON (None when empty or not JSON)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


@dataclass
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _json_answer(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> _Answer:
    return _Answer(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _normal(value: Any) -> Any:
    """Compare as the server does: numbers as numbers (the CLI sends them as strings), booleans, else text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    number = _number(value)
    return number if number is not None else value


def matches(row: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """Whether ``row`` satisfies a Vast query ``{field: {op: value}}`` (ops eq, neq, gt, gte, lt, lte, in, notin)."""
    for name, condition in query.items():
        if name in _QUERY_CONTROL_KEYS or not isinstance(condition, Mapping):
            continue
        actual = _normal(row.get(name))
        for op, wanted in condition.items():
            if op in ("in", "notin"):
                options = [_normal(v) for v in (wanted if isinstance(wanted, list) else [wanted])]
                if (actual in options) != (op == "in"):
                    return False
                continue
            expected = _normal(wanted)
            if op == "eq" and actual != expected:
                return False
            if op == "neq" and actual == expected:
                return False
            if op in ("gt", "gte", "lt", "lte"):
                if not isinstance(actual, float) or not isinstance(expected, float):
                    return False
                ok = {
                    "gt": actual > expected,
                    "gte": actual >= expected,
                    "lt": actual < expected,
                    "lte": actual <= expected,
                }[op]
                if not ok:
                    return False
    return True


class FakeVast:
    """The fake Vast.ai account and market. Thread-safe; all fault switches are plain method calls."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        boot_s: float = 0.0,
        balance_usd: float = 100.0,
        loose_types: bool = True,
        on_create: Callable[[FakeInstance], Any] | None = None,
        on_destroy: Callable[[Any], None] | None = None,
    ) -> None:
        self.api_key = api_key or f"fake-vast-{secrets.token_hex(16)}"
        self.clock = clock
        self.boot_s = boot_s
        self.credit_usd = balance_usd
        self.loose_types = loose_types
        self.on_create = on_create
        self.on_destroy = on_destroy
        self.url = UNIT_TEST_BASE_URL
        self.offers: dict[int, FakeOffer] = {}
        self.instances: dict[int, FakeInstance] = {}
        self.requests: list[RecordedRequest] = []
        self.unknown_query_fields: set[str] = set()
        self._lock = threading.RLock()
        self._ids = itertools.count(7_000_001)
        self._epoch_offset = time.time() - clock()
        self._logs: dict[str, tuple[int, str]] = {}
        # Fault switches: counters of upcoming requests to spoil.
        self._rate_limited = 0
        self._retry_after_s = 0.0
        self._list_failures = 0
        self._destroy_rate_limited = 0
        self._offers_taken_on_create = 0
        self._creates_failing_after_contract = 0
        self._destroy_lingering_reads = 0
        self._lingering: dict[int, int] = {}
        self._next_faults: list[InstanceFault] = []
        self._log_polls_before_ready = 0

    # -- market and faults ----------------------------------------------------------------------------------------

    def add_offer(self, offer_id: int, machine_id: int, **fields: Any) -> FakeOffer:
        """Put an offer on the market."""
        offer = FakeOffer(id=offer_id, machine_id=machine_id, **fields)
        with self._lock:
            self.offers[offer_id] = offer
        return offer

    def take_offer(self, offer_id: int) -> None:
        """Someone else rents the offer: it disappears from searches and creates on it answer ``no_such_ask``."""
        with self._lock:
            self.offers[offer_id].rented = True

    def take_offers_on_create(self, count: int = 1) -> None:
        """The next ``count`` creates find their offer taken between our search and our create."""
        with self._lock:
            self._offers_taken_on_create += count

    def rate_limit(self, count: int, retry_after_s: float = 0.0) -> None:
        """A 429 storm: the next ``count`` API requests are answered 429 with ``Retry-After``."""
        with self._lock:
            self._rate_limited += count
            self._retry_after_s = retry_after_s

    def fail_lists(self, count: int = 1) -> None:
        """The next ``count`` list calls answer 500."""
        with self._lock:
            self._list_failures += count

    def rate_limit_destroys(self, count: int = 1) -> None:
        """The next ``count`` destroy calls answer 429 (then destroys succeed)."""
        with self._lock:
            self._destroy_rate_limited += count

    def fail_creates_after_contract(self, count: int = 1) -> None:
        """The next ``count`` creates rent the machine but answer 500 with the new contract in the body."""
        with self._lock:
            self._creates_failing_after_contract += count

    def linger_after_destroy(self, reads: int) -> None:
        """Destroyed instances stay visible (exited, not billing) for ``reads`` more show/list answers."""
        with self._lock:
            self._destroy_lingering_reads = reads

    def fault_next_instances(self, fault: InstanceFault, count: int = 1) -> None:
        """The next ``count`` created instances suffer ``fault``."""
        with self._lock:
            self._next_faults.extend([fault] * count)

    def fault(self, instance_id: int, fault: InstanceFault | None) -> None:
        """Make an existing instance suffer ``fault`` from now on (None heals it)."""
        with self._lock:
            self._accrue(self.clock())
            self.instances[instance_id].fault = fault

    def delay_logs(self, polls: int) -> None:
        """Log results answer 404 for the first ``polls`` fetches, as object storage does until the upload ends."""
        with self._lock:
            self._log_polls_before_ready = polls

    # -- money ----------------------------------------------------------------------------------------------------

    def _rate_per_s(self, instance: FakeInstance) -> float:
        if instance.fault is InstanceFault.OUTBID:
            return instance.storage_dph / SECONDS_PER_HOUR
        return instance.dph_total / SECONDS_PER_HOUR

    def _accrue(self, now: float) -> None:
        for instance in self.instances.values():
            if instance.destroyed or now <= instance.billed_until:
                continue
            instance.charged_usd += self._rate_per_s(instance) * (now - instance.billed_until)
            instance.billed_until = now

    @property
    def spent_usd(self) -> float:
        """Everything billed so far, per second, over all instances ever created."""
        with self._lock:
            self._accrue(self.clock())
            return sum(i.charged_usd for i in self.instances.values())

    @property
    def balance_usd(self) -> float:
        """Credit left."""
        return self.credit_usd - self.spent_usd

    def live_instances(self) -> list[FakeInstance]:
        """Instances not destroyed (what would still bill)."""
        with self._lock:
            return [i for i in self.instances.values() if not i.destroyed]

    def requests_to(self, method: str, path_prefix: str) -> list[RecordedRequest]:
        """Recorded requests with this method whose path starts with ``path_prefix``."""
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    # -- HTTP -----------------------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], raw_body: bytes) -> _Answer:
        """Answer one request (``target`` is the path with its query string)."""
        parts = urlsplit(target)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = None
        lowered = {k.lower(): v for k, v in headers.items()}
        with self._lock:
            self.requests.append(RecordedRequest(method, path, query, body, lowered))
            if path.startswith("/_results/"):
                return self._result(path.removeprefix("/_results/"))
            if lowered.get("authorization") != f"Bearer {self.api_key}":
                return _json_answer(401, {"success": False, "error": "invalid_user_key", "msg": "Invalid user key"})
            if self._rate_limited > 0:
                self._rate_limited -= 1
                retry = {"Retry-After": f"{self._retry_after_s:g}"}
                return _json_answer(429, {"success": False, "error": "rate_limited", "msg": "Too many requests"}, retry)
            self._accrue(self.clock())
            return self._route(method, path, query, body)

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> _Answer:
        segments = [s for s in path.split("/") if s]
        if method == "POST" and path == "/api/v0/bundles/":
            return self._search(body if isinstance(body, dict) else {})
        if method == "PUT" and len(segments) == 4 and segments[:3] == ["api", "v0", "asks"]:
            return self._create(segments[3], body if isinstance(body, dict) else {})
        if method == "GET" and path == "/api/v1/instances/":
            return self._list(query)
        if len(segments) == 5 and segments[:4] == ["api", "v0", "instances", "request_logs"] and method == "PUT":
            return self._request_logs(segments[4], body if isinstance(body, dict) else {})
        if len(segments) == 4 and segments[:3] == ["api", "v0", "instances"]:
            if method == "GET":
                return self._show(segments[3])
            if method == "DELETE":
                return self._destroy(segments[3])
        if method == "GET" and path.rstrip("/") == "/api/v0/users/current":
            return _json_answer(200, {"id": 1, "credit": round(self.balance_usd, 6), "host_agreement_accepted": False})
        return _json_answer(404, {"success": False, "error": "not_found", "msg": f"no route {method} {path}"})

    def _loose(self, row: dict[str, Any]) -> dict[str, Any]:
        if not self.loose_types:
            return row
        return {k: (str(v) if k in _STRINGY_FIELDS and isinstance(v, int | float) else v) for k, v in row.items()}

    def _search(self, query: dict[str, Any]) -> _Answer:
        storage_gb = _number(query.get("allocated_storage")) or 5.0
        known = set(FakeOffer(id=0, machine_id=0).fields(1.0))
        self.unknown_query_fields |= {k for k in query if k not in known and k not in _QUERY_CONTROL_KEYS}
        rows = [o.fields(storage_gb) for o in self.offers.values() if not o.rented]
        rows = [r for r in rows if matches(r, query)]
        for name, direction in reversed(query.get("order") or []):

            def key(row: dict[str, Any], field_name: str = str(name)) -> float:
                return _number(row.get(field_name)) or 0.0

            rows.sort(key=key, reverse=direction == "desc")
        limit = _number(query.get("limit"))
        if limit is not None:
            rows = rows[: int(limit)]
        return _json_answer(200, {"offers": [self._loose(r) for r in rows]})

    def _create(self, raw_offer_id: str, body: dict[str, Any]) -> _Answer:
        offer = self.offers.get(int(raw_offer_id)) if raw_offer_id.isdigit() else None
        if offer is not None and self._offers_taken_on_create > 0:
            self._offers_taken_on_create -= 1
            offer.rented = True
        if offer is None or offer.rented:
            msg = f"Instance type by id {raw_offer_id} is not available."
            return _json_answer(404, {"success": False, "error": "no_such_ask", "msg": msg})
        if self.balance_usd <= 0:
            return _json_answer(402, {"success": False, "error": "insufficient_credit", "msg": "Add credit"})
        disk_gb = _number(body.get("disk")) or 10.0
        env = {str(k): str(v) for k, v in (body.get("env") or {}).items()}
        now = self.clock()
        instance = FakeInstance(
            id=next(self._ids),
            offer=offer,
            label=body.get("label"),
            image=str(body.get("image")),
            env=env,
            disk_gb=disk_gb,
            onstart=body.get("onstart"),
            args=body.get("args"),
            runtype=body.get("runtype"),
            created_at=now,
            start_epoch=now + self._epoch_offset,
            dph_total=offer.dph_total(disk_gb),
            storage_dph=offer.storage_dph(disk_gb),
            billed_until=now,
            fault=self._next_faults.pop(0) if self._next_faults else None,
        )
        for key in env:
            if key.startswith("-p "):
                container = int(key.removeprefix("-p ").split(":")[0].split("/")[0])
                instance.ports[container] = 40_000 + (instance.id % 10_000) + container % 100
        offer.rented = True
        self.instances[instance.id] = instance
        instance.log_lines.append(f"instance {instance.id}: pulling {instance.image}")
        if self.on_create is not None:
            instance.handle = self.on_create(instance)
        if self._creates_failing_after_contract > 0:
            self._creates_failing_after_contract -= 1
            failed = {"success": False, "error": "server_error", "msg": "internal", "new_contract": instance.id}
            return _json_answer(500, failed)
        return _json_answer(200, {"success": True, "new_contract": instance.id})

    def _row(self, instance: FakeInstance) -> dict[str, Any]:
        actual, intended, cur_state, status_msg = instance.actual_status(self.clock(), self.boot_s)
        if instance.destroyed:
            actual, intended, cur_state, status_msg = "exited", "stopped", "stopped", "destroying"
        ports = {
            f"{container}/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(host)}, {"HostIp": "::", "HostPort": str(host)}]
            for container, host in instance.ports.items()
        }
        row = {
            "id": instance.id,
            "machine_id": instance.offer.machine_id,
            "host_id": instance.offer.host_id,
            "label": instance.label,
            "image_uuid": instance.image,
            "image_args": instance.args or [],
            "onstart": instance.onstart,
            "actual_status": actual,
            "intended_status": intended,
            "cur_state": cur_state,
            "next_state": intended,
            "status_msg": status_msg,
            "public_ipaddr": f"{instance.public_ip}\n" if self.loose_types else instance.public_ip,
            "ports": ports,
            "ssh_host": "ssh.fake-vast.test",
            "ssh_port": 20_000 + instance.id % 10_000,
            "dph_total": round(instance.dph_total, 6),
            "dph_base": instance.offer.dph_base,
            "storage_cost": instance.offer.storage_cost,
            "disk_space": instance.disk_gb,
            "gpu_name": instance.offer.gpu_name,
            "num_gpus": instance.offer.num_gpus,
            "gpu_ram": instance.offer.gpu_ram_mb,
            "cuda_max_good": instance.offer.cuda_max_good,
            "geolocation": instance.offer.geolocation,
            "reliability2": instance.offer.reliability,
            "verification": "verified" if instance.offer.verified else "unverified",
            "start_date": instance.start_epoch,
            "end_date": None,
            "is_bid": False,
            "extra_env": [[k, v] for k, v in instance.env.items() if not k.startswith("-")],
        }
        return self._loose(row)

    def _visible(self, instance: FakeInstance) -> bool:
        if not instance.destroyed:
            return True
        left = self._lingering.get(instance.id, 0)
        if left > 0:
            self._lingering[instance.id] = left - 1
            return True
        return False

    def _list(self, query: dict[str, str]) -> _Answer:
        if self._list_failures > 0:
            self._list_failures -= 1
            return _json_answer(500, {"success": False, "error": "server_error", "msg": "database unavailable"})
        try:
            filters = json.loads(query.get("select_filters") or "{}")
            limit = min(LIST_MAX_PAGE_SIZE, max(1, int(json.loads(query.get("limit") or "25"))))
        except (TypeError, ValueError):
            return _json_answer(400, {"success": False, "error": "invalid_args", "msg": "bad query"})
        after = int(base64.urlsafe_b64decode(query["after_token"]).decode()) if query.get("after_token") else 0
        rows = [self._row(i) for i in sorted(self.instances.values(), key=lambda i: i.id) if self._visible(i)]
        rows = [r for r in rows if matches(r, filters) and r["id"] > after]
        page = rows[:limit]
        more = len(rows) > limit
        token = base64.urlsafe_b64encode(str(page[-1]["id"]).encode()).decode() if more else None
        labels: dict[str, int] = {}
        for row in rows:
            labels[str(row["label"])] = labels.get(str(row["label"]), 0) + 1
        answer = {"instances": page, "next_token": token, "total_instances": len(rows), "label_counts": labels}
        return _json_answer(200, answer)

    def _find(self, raw_id: str) -> FakeInstance | None:
        instance = self.instances.get(int(raw_id)) if raw_id.isdigit() else None
        if instance is None or not self._visible(instance):
            return None
        return instance

    def _show(self, raw_id: str) -> _Answer:
        instance = self._find(raw_id)
        return _json_answer(200, {"instances": self._row(instance) if instance is not None else None})

    def _destroy(self, raw_id: str) -> _Answer:
        if self._destroy_rate_limited > 0:
            self._destroy_rate_limited -= 1
            retry = {"Retry-After": f"{self._retry_after_s:g}"}
            return _json_answer(429, {"success": False, "error": "rate_limited", "msg": "Too many requests"}, retry)
        instance = self.instances.get(int(raw_id)) if raw_id.isdigit() else None
        if instance is None or instance.destroyed:
            return _json_answer(404, {"success": False, "error": "no_such_instance", "msg": "Instance not found"})
        instance.destroyed = True
        instance.offer.rented = False
        self._lingering[instance.id] = self._destroy_lingering_reads
        if self.on_destroy is not None and instance.handle is not None:
            handle, instance.handle = instance.handle, None
            self.on_destroy(handle)
        return _json_answer(200, {"success": True})

    def _request_logs(self, raw_id: str, body: dict[str, Any]) -> _Answer:
        instance = self._find(raw_id)
        if instance is None:
            return _json_answer(404, {"success": False, "error": "no_such_instance", "msg": "Instance not found"})
        tail = int(_number(body.get("tail")) or 1000)
        token = secrets.token_urlsafe(12)
        self._logs[token] = (self._log_polls_before_ready, "\n".join(instance.log_lines[-tail:]) + "\n")
        return _json_answer(200, {"success": True, "result_url": f"{self.url}/_results/{token}"})

    def _result(self, token: str) -> _Answer:
        if token not in self._logs:
            return _Answer(404, b"NoSuchKey", {"Content-Type": "text/plain"})
        polls_left, text = self._logs[token]
        if polls_left > 0:
            self._logs[token] = (polls_left - 1, text)
            return _Answer(404, b"NoSuchKey", {"Content-Type": "text/plain"})
        return _Answer(200, text.encode(), {"Content-Type": "text/plain; charset=utf-8"})

    # -- serving --------------------------------------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        """The fake as an httpx transport: no socket, for unit tests (base URL :data:`UNIT_TEST_BASE_URL`)."""

        def answer(request: httpx.Request) -> httpx.Response:
            target = request.url.raw_path.decode()
            result = self.handle(request.method, target, dict(request.headers), request.read())
            return httpx.Response(result.status, content=result.body, headers=result.headers)

        return httpx.MockTransport(answer)

    @contextlib.contextmanager
    def serve(self) -> Iterator[FakeVast]:
        """Serve on real HTTP at 127.0.0.1 (a free port) until the block ends; then destroy what is left."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                result = fake.handle(self.command, self.path, dict(self.headers.items()), raw)
                self.send_response(result.status)
                for name, value in result.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(result.body)))
                self.end_headers()
                self.wfile.write(result.body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815 - the names http.server dispatches to

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, name="fake-vast", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self.release_all()

    def release_all(self) -> None:
        """Run ``on_destroy`` for every instance that still has a handle (no process outlives a test)."""
        with self._lock:
            handles = [i.handle for i in self.instances.values() if i.handle is not None]
            for instance in self.instances.values():
                instance.handle = None
        if self.on_destroy is not None:
            for handle in handles:
                self.on_destroy(handle)


@pytest.fixture
def fake_vast() -> Iterator[FakeVast]:
    """A fake Vast.ai on real HTTP at 127.0.0.1 with two offers (RTX 4090 and RTX 5090); ``.url``, ``.api_key``."""
    fake = FakeVast()
    fake.add_offer(101, machine_id=11, gpu_name="RTX 4090", dph_base=0.35)
    fake.add_offer(102, machine_id=12, gpu_name="RTX 5090", dph_base=0.60, gpu_ram_mb=32607)
    with fake.serve():
        yield fake
