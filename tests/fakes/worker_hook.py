"""A real ``gpu-worker serve`` per fake Vast instance: the ``on_create``/``on_destroy`` hooks of :class:`FakeVast`.

A created instance becomes a worker process on 127.0.0.1 (CPU, tiny models) with the instance's own env, as the
worker image would start: its ``GPUW_TOKEN`` and TLS PEMs come from the create call, the model settings from the
test. Every container port the create asked for is mapped to the process's real port, so the provider reports
where the worker listens. Destroying the instance kills the process group, as a destroyed container dies.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.fakes.vast_server import FakeInstance
from tests.fixtures.processes import ManagedProcess

WORKER_PORT = 8700


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(env: dict[str, str], log_path: Path, *, port: int) -> ManagedProcess:
    """``gpu-worker serve`` on 127.0.0.1:``port`` with ``env`` on top of this process's non-project env vars."""
    process_env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUW_", "ORCH_"))}
    process_env.update(env)
    args = [sys.executable, "-m", "gpu_worker.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return ManagedProcess(args, process_env, log_path)


def kill_worker(process: ManagedProcess) -> None:
    """Kill the worker's whole process group at once (no graceful shutdown: a container that dies)."""
    process.kill_group(signal.SIGKILL)
    process.stop()  # closes the log


@dataclass
class RealWorkerHook:
    """Starts a worker for each created instance; ``model_env`` (GPUW_ model settings) is the test's."""

    model_env: dict[str, str]
    log_dir: Path
    container_port: int = WORKER_PORT
    processes: dict[int, ManagedProcess] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_create(self, instance: FakeInstance) -> ManagedProcess:
        """Start the instance's worker; map its ports to the process's port."""
        port = free_port()
        instance_env = {k: v for k, v in instance.env.items() if k.startswith("GPUW_")}
        env = {**self.model_env, **instance_env}
        process = start_worker(env, self.log_dir / f"instance-{instance.id}.log", port=port)
        for container in list(instance.ports) or [self.container_port]:
            instance.ports[container] = port
        instance.public_ip = "127.0.0.1"
        with self._lock:
            self.processes[instance.id] = process
        return process

    def on_destroy(self, handle: ManagedProcess) -> None:
        """Kill the instance's worker."""
        kill_worker(handle)

    def alive(self) -> list[int]:
        """Ids of instances whose worker process still runs."""
        with self._lock:
            return [instance_id for instance_id, p in self.processes.items() if p.popen.poll() is None]

    def log(self, instance_id: int) -> str:
        """What one instance's worker printed."""
        with self._lock:
            process = self.processes[instance_id]
        return process.log()
