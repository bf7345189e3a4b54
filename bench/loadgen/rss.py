"""Resident memory of a process and its descendants, read from /proc (Linux), sampled for the peak."""

from __future__ import annotations

import threading
from pathlib import Path

PROC = Path("/proc")
PAGE_KIB = 1024


def _rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB; 0 when it is gone or is a zombie."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(child) for child in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return found


def tree_pids(root: int) -> list[int]:
    """``root`` and every live descendant (uvicorn's worker processes, Celery's pool children)."""
    pids, pending = [], [root]
    while pending:
        pid = pending.pop()
        pids.append(pid)
        pending.extend(_children(pid))
    return pids


def tree_rss_mib(root: int) -> float:
    """The summed resident memory of ``root`` and its descendants, in MiB."""
    return sum(_rss_kib(pid) for pid in tree_pids(root)) / PAGE_KIB


class PeakSampler:
    """Samples a process tree's RSS every ``interval_s`` on a thread and keeps the highest value (MiB)."""

    def __init__(self, root: int, interval_s: float = 0.5) -> None:
        self.root = root
        self.interval_s = interval_s
        self.peak_mib = tree_rss_mib(root)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, tree_rss_mib(self.root))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, tree_rss_mib(self.root))
