"""One long-lived exiftool process (``-stay_open``), fed one argument per line through its ``-@ -`` argument file.

No shell is involved and no argument is ever split or re-read as an option: file names are absolute (so none starts
with ``-``) and go as single lines in UTF-8 (``-charset filename=utf8``, which also makes Windows use its wide file
APIs). A line break inside a name is sent in exiftool's ``#[CSTR]`` form. Each command ends with ``-echo4`` of its
exit status on stderr and ``-execute<n>``, so replies are matched to commands and failures are never silent.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gpu_worker.tagging.errors import ExifToolError, ExifToolMissingError, UnsafeArgumentError
from gpu_worker.tagging.exiftool_locate import locate_exiftool
from gpu_worker.tagging.keywords import Keywords, XmpField, empty_keywords

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "exiftool is needed to write XMP. Install it: Debian/Ubuntu `sudo apt-get install libimage-exiftool-perl`, "
    "Fedora `sudo dnf install perl-Image-ExifTool`, macOS `brew install exiftool`, Windows: download the zip from "
    "https://exiftool.org, rename `exiftool(-k).exe` to `exiftool.exe` and put it on PATH, or run "
    "deploy\\windows\\install.ps1 -WithExiftool (or pass --exiftool). "
    "`--write none` tags without it (JSON sidecars only)."
)
DEFAULT_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 5.0
READ_CHUNK_BYTES = 65536
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def find_exiftool(override: str | Path | None = None) -> Path:
    """The exiftool executable: ``override`` when given, else the one ``locate_exiftool`` finds (the virtual
    environment's, the ``exiftool`` folder beside it, then PATH; ``exiftool.exe`` or ``exiftool(-k).exe`` on
    Windows)."""
    if override is not None:
        candidate = Path(override)
        if candidate.is_file():
            return candidate
        found = shutil.which(str(override))
        if found is None:
            raise ExifToolMissingError(f"exiftool not found at {override}. {INSTALL_HINT}")
        return Path(found)
    located = locate_exiftool()
    if located is None:
        raise ExifToolMissingError(f"exiftool is not on PATH. {INSTALL_HINT}")
    return located


def path_argument(path: Path) -> str:
    """A file name exiftool cannot mistake for an option: absolute, so it starts with ``/``, a drive or ``\\\\``."""
    text = str(path.absolute())
    if text.startswith("-"):  # pragma: no cover - an absolute path never does
        raise UnsafeArgumentError(f"refusing a file name that starts with '-': {text}")
    return text


def encode_argument(argument: str) -> str:
    """One argument as one argument-file line (without the newline).

    exiftool strips leading whitespace from plain lines and ends a line at a line break; such arguments go in
    ``#[CSTR]`` form. That form mangles ``$`` and ``@`` in the exiftool versions Debian ships, so an argument that
    needs it and holds either character is refused rather than altered.
    """
    plain = "\n" not in argument and "\r" not in argument and not argument[:1].isspace() and argument[:1] != "#"
    if plain:
        return argument
    if "$" in argument or "@" in argument:
        raise UnsafeArgumentError(f"exiftool cannot be given this argument unaltered: {argument!r}")
    return "#[CSTR]" + argument.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


@dataclass(frozen=True)
class ExifToolResult:
    """What one command printed, and its exit status (0 ok, 1 error)."""

    status: int
    output: bytes
    stderr: str

    @property
    def stdout(self) -> str:
        """The output as text (exiftool prints UTF-8)."""
        return self.output.decode("utf-8", "replace")

    @property
    def error(self) -> str:
        """The first error line, or the whole stderr when it has none."""
        for line in self.stderr.splitlines():
            if line.startswith("Error"):
                return line
        return self.stderr.strip() or f"exiftool exited with status {self.status}"


class _PipeReader(threading.Thread):
    """Collects a pipe's output so that neither pipe can fill up and block exiftool while we wait on the other."""

    def __init__(self, pipe: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self._pipe = pipe
        self._buffer = bytearray()
        self._changed = threading.Condition()
        self.closed = False

    def run(self) -> None:
        while True:
            try:
                chunk = self._pipe.read1(READ_CHUNK_BYTES)  # type: ignore[attr-defined]
            except (OSError, ValueError):
                chunk = b""
            with self._changed:
                if not chunk:
                    self.closed = True
                    self._changed.notify_all()
                    return
                self._buffer += chunk
                self._changed.notify_all()

    def take_until(self, marker: re.Pattern[bytes], deadline: float) -> tuple[bytes, list[bytes]] | None:
        """Everything before ``marker`` and the marker's groups, consumed; None on timeout or when the pipe closed
        first."""
        with self._changed:
            while True:
                found = marker.search(self._buffer)
                if found is not None:
                    # Copies first: a match on a bytearray reads its groups from the buffer we are about to cut.
                    before, groups = bytes(self._buffer[: found.start()]), [bytes(g or b"") for g in found.groups()]
                    del self._buffer[: found.end()]
                    return before, groups
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def drain(self) -> bytes:
        """Whatever is buffered."""
        with self._changed:
            data = bytes(self._buffer)
            self._buffer.clear()
            return data


class ExifTool:
    """A ``-stay_open`` exiftool, started on first use and restarted after a failure. One command at a time."""

    def __init__(self, executable: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.executable = executable
        self.timeout_s = timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._stdout: _PipeReader | None = None
        self._stderr: _PipeReader | None = None
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def __enter__(self) -> ExifTool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The exiftool process id while it runs."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
        try:
            process = subprocess.Popen(
                [str(self.executable), "-stay_open", "True", "-@", "-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                creationflags=flags,
                preexec_fn=_die_with_parent(),
            )
        except OSError as exc:
            raise ExifToolMissingError(f"cannot start {self.executable}: {exc}. {INSTALL_HINT}") from exc
        assert process.stdout is not None and process.stderr is not None
        self._stdout, self._stderr = _PipeReader(process.stdout), _PipeReader(process.stderr)
        self._stdout.start()
        self._stderr.start()
        self._process = process
        return process

    def execute(self, arguments: Sequence[str], timeout_s: float | None = None) -> ExifToolResult:
        """Run one exiftool command; raises ``ExifToolError`` when exiftool dies or does not answer in time."""
        lines = [encode_argument(argument) for argument in ("-charset", "filename=utf8", *arguments)]
        with self._lock:
            process = self._start()
            number = next(self._numbers)
            lines += ["-echo4", f"{{status{number}=${{status}}}}", f"-execute{number}"]
            assert process.stdin is not None and self._stdout is not None and self._stderr is not None
            try:
                process.stdin.write(("\n".join(lines) + "\n").encode("utf-8"))
                process.stdin.flush()
            except OSError as exc:
                self._kill()
                raise ExifToolError(f"exiftool stopped accepting commands: {exc}") from exc
            deadline = time.monotonic() + (timeout_s or self.timeout_s)
            out = self._stdout.take_until(re.compile(rb"\{ready%d\}\r?\n" % number), deadline)
            err = self._stderr.take_until(re.compile(rb"\{status%d=(\d+)\}\r?\n" % number), deadline)
            if out is None or err is None:
                stderr = self._stderr.drain().decode("utf-8", "replace").strip()
                stopped = self._stdout.closed or self._stderr.closed
                self._kill()
                if stopped:
                    raise ExifToolError(f"exiftool stopped (exit status {process.returncode}) {stderr}".strip())
                raise ExifToolError(f"exiftool did not answer within {timeout_s or self.timeout_s:.0f} s {stderr}")
        return ExifToolResult(
            status=int(err[1][0]),
            output=out[0],
            stderr=err[0].decode("utf-8", "replace"),
        )

    def read_keywords(self, path: Path) -> Keywords:
        """The three keyword lists of ``path`` (a media file or an ``.xmp`` sidecar) as exiftool reads them."""
        result = self.execute(["-json", "-struct", "-G1", *(f"-{field}" for field in XmpField), path_argument(path)])
        if result.status != 0:
            raise ExifToolError(f"exiftool cannot read {path.name}: {result.error}")
        try:
            # Numbers are printed unquoted; parsing them as text keeps "007" and "1.50" as written.
            documents = json.loads(result.stdout, parse_int=str, parse_float=str)
        except ValueError as exc:
            raise ExifToolError(f"exiftool printed no JSON for {path.name}: {result.stdout[:200]!r}") from exc
        document: dict[str, Any] = documents[0] if documents else {}
        keywords = empty_keywords()
        for field in XmpField:
            value = document.get(field.value, [])
            keywords[field] = [_as_text(item) for item in (value if isinstance(value, list) else [value])]
        return keywords

    def close(self) -> None:
        """Ask exiftool to exit; kill it if it does not."""
        with self._lock:
            process, self._process = self._process, None
            if process is None:
                return
            try:
                assert process.stdin is not None
                process.stdin.write(b"-stay_open\nFalse\n")
                process.stdin.close()
                process.wait(CLOSE_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, make exiftool exit when we die, even by SIGKILL.

    A ``-stay_open`` exiftool whose argument pipe reaches end-of-file keeps polling it forever, so an orphan would
    never go away. The prctl function is looked up here, before the fork; the child only calls it. (Linux sends
    the signal when the starting *thread* ends: the main thread, or the writer thread that outlives its run.)
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_parent_death_signal


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
