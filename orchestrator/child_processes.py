"""Stopping ``orchestrator up``'s Celery worker and beat, on POSIX and on Windows.

On POSIX ``terminate()`` sends SIGTERM, Celery's warm shutdown. On Windows it is ``TerminateProcess``, which ends a
process at once; there a child shares our console and gets the user's Ctrl+C itself (Celery's warm shutdown on
SIGINT), so after an interrupt it is given the grace to finish on its own first. A second Ctrl+C while waiting must
not leave orphans holding the SQLite files: whatever still runs is killed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Sequence

# A warm shutdown lets a running task finish; a task longer than this is delivered again later (at-least-once).
STOP_GRACE_S = 10.0


def grace_before_kill_s(*, os_name: str, console_interrupted: bool, grace_s: float = STOP_GRACE_S) -> float:
    """How long to wait for the children before killing them. On Windows a child that got no console Ctrl+C
    (e.g. the API could not bind its port) has nothing to finish, and waiting would only delay the exit."""
    if os_name == "nt" and not console_interrupted:
        return 0.0
    return grace_s


def stop_children(
    children: Sequence[subprocess.Popen[bytes]],
    *,
    console_interrupted: bool,
    os_name: str = os.name,
    grace_s: float = STOP_GRACE_S,
) -> None:
    """Stop every child: ask (SIGTERM on POSIX; on Windows the console's Ctrl+C already did), wait up to the grace
    in total, then kill what is left. Returns once all have exited, also when interrupted again while waiting."""
    try:
        if os_name != "nt":
            for child in children:
                if child.poll() is None:
                    child.terminate()
        deadline = time.monotonic() + grace_before_kill_s(
            os_name=os_name, console_interrupted=console_interrupted, grace_s=grace_s
        )
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        pass  # a second Ctrl+C: stop waiting, kill below
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
