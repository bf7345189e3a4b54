"""Memory of a running process as the kernel counts it (Linux ``/proc/<pid>/status``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KIB = 1024


@dataclass(frozen=True)
class Memory:
    """Resident memory now (VmRSS) and its high-water mark since the process started (VmHWM), in bytes."""

    rss_bytes: int
    peak_bytes: int

    @property
    def rss_mb(self) -> float:
        """VmRSS in MB (10^6 bytes)."""
        return self.rss_bytes / 1e6

    @property
    def peak_mb(self) -> float:
        """VmHWM in MB (10^6 bytes)."""
        return self.peak_bytes / 1e6


def memory_of(pid: int) -> Memory:
    """VmRSS and VmHWM of ``pid``."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * KIB  # the kernel prints kB (KiB)
    return Memory(rss_bytes=fields["VmRSS"], peak_bytes=fields["VmHWM"])
