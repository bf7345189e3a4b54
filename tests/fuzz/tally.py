"""What the fuzz run sent and got back, for the summary line and docs/reliability.md."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class FuzzTally:
    """Requests per operation (``"GET /api/v1/jobs"``) and responses per status code."""

    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)

    def record(self, operation: str, status_code: int) -> None:
        """Count one request and its answer."""
        self.requests[operation] += 1
        self.statuses[status_code] += 1

    def summary(self) -> str:
        """One line: operations, requests, server errors, and the status codes seen."""
        server_errors = sum(n for code, n in self.statuses.items() if code >= 500)
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        return (
            f"schemathesis fuzz: {len(self.requests)} operations, {sum(self.requests.values())} requests, "
            f"{server_errors} server errors; status codes {{{codes}}}"
        )


TALLY = FuzzTally()
