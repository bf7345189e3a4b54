"""How `orchestrator up` stops its worker and beat: POSIX and Windows semantics, with real child processes."""

from __future__ import annotations

import _thread
import subprocess
import sys
import threading
import time
from pathlib import Path

from orchestrator.child_processes import grace_before_kill_s, stop_children

# A child that reports SIGTERM in a file and exits 0 on it (as Celery's warm shutdown does), else runs for a minute.
OBEYS_SIGTERM = """
import signal, sys, time
def stop(*_):
    open(sys.argv[1], "w").write("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(60)
"""
IGNORES_SIGTERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""
# A child that ends on its own shortly, as one that got the console's Ctrl+C on Windows does.
FINISHES_SOON = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (open(sys.argv[1], "w").write("SIGTERM"), sys.exit(3)))
print("ready", flush=True)
time.sleep(0.5)
"""


def _start(source: str, marker: Path) -> subprocess.Popen[bytes]:
    child = subprocess.Popen([sys.executable, "-c", source, str(marker)], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"  # its handlers are installed
    return child


def test_on_posix_children_get_sigterm_and_one_that_ignores_it_is_killed_after_the_grace(tmp_path: Path) -> None:
    obeys, ignores = _start(OBEYS_SIGTERM, tmp_path / "a"), _start(IGNORES_SIGTERM, tmp_path / "b")

    started = time.monotonic()
    stop_children([obeys, ignores], console_interrupted=True, os_name="posix", grace_s=1.0)

    assert obeys.returncode == 0 and (tmp_path / "a").read_text() == "SIGTERM"
    assert ignores.returncode == -9
    assert 1.0 <= time.monotonic() - started < 10


def test_on_windows_after_ctrl_c_children_finish_on_their_own_without_terminate_process(tmp_path: Path) -> None:
    # terminate() is TerminateProcess there, so it must not be the first thing a child gets.
    child = _start(FINISHES_SOON, tmp_path / "marker")

    stop_children([child], console_interrupted=True, os_name="nt", grace_s=10.0)

    assert child.returncode == 0
    assert not (tmp_path / "marker").exists()


def test_on_windows_a_child_still_running_after_the_grace_is_killed(tmp_path: Path) -> None:
    child = _start(IGNORES_SIGTERM, tmp_path / "marker")

    started = time.monotonic()
    stop_children([child], console_interrupted=True, os_name="nt", grace_s=0.5)

    assert child.returncode == -9
    assert time.monotonic() - started >= 0.5


def test_on_windows_without_a_ctrl_c_the_children_are_ended_at_once(tmp_path: Path) -> None:
    # e.g. the API could not bind its port: the children got no console signal and have nothing to finish.
    child = _start(OBEYS_SIGTERM, tmp_path / "marker")

    started = time.monotonic()
    stop_children([child], console_interrupted=False, os_name="nt", grace_s=30.0)

    assert child.returncode == -9 and time.monotonic() - started < 5
    assert grace_before_kill_s(os_name="nt", console_interrupted=False, grace_s=30.0) == 0.0
    assert grace_before_kill_s(os_name="posix", console_interrupted=False, grace_s=30.0) == 30.0


def test_a_second_ctrl_c_while_waiting_kills_the_children_and_leaves_no_orphan(tmp_path: Path) -> None:
    children = [_start(IGNORES_SIGTERM, tmp_path / "a"), _start(IGNORES_SIGTERM, tmp_path / "b")]
    second_ctrl_c = threading.Timer(0.5, _thread.interrupt_main)
    second_ctrl_c.start()

    started = time.monotonic()
    try:
        stop_children(children, console_interrupted=True, os_name="posix", grace_s=60.0)
    finally:
        second_ctrl_c.cancel()

    assert [child.returncode for child in children] == [-9, -9]
    assert time.monotonic() - started < 10


def test_children_that_already_exited_are_left_alone(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(4)"])
    child.wait()

    stop_children([child], console_interrupted=True, os_name="posix", grace_s=5.0)

    assert child.returncode == 4
