"""Tag every media file of a folder: hash, skip what is finished, analyze in batches, write keywords and sidecars.

The main thread hashes and runs inference on one batch while a writer thread writes the previous one (exiftool is
a separate process, so the two overlap). Each file ends as ``tagged``, ``unchanged`` (finished by an earlier run
with the same settings and not modified since) or ``failed`` (reported with a reason; the run goes on). Progress
is checkpointed per file (see :mod:`gpu_worker.tagging.checkpoint`): an interrupted run resumed with ``resume``
redoes no finished file and runs no model twice on the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from gpu_worker.contract import BatchManifest, ItemResult, ManifestItem, MediaKind
from gpu_worker.errors import DecodeError, DecodeErrorCode, WorkerError
from gpu_worker.executor import InProcessExecutor
from gpu_worker.models import ANALYZERS, analyzer_class
from gpu_worker.tagging.checkpoint import Checkpoint, FileRecord, FileState, StoredAnalysis
from gpu_worker.tagging.errors import TaggingError, TaggingSetupError
from gpu_worker.tagging.exiftool import ExifTool, find_exiftool
from gpu_worker.tagging.keywords import TagMode, keywords_for
from gpu_worker.tagging.layout import WriteTarget, json_sidecar_path
from gpu_worker.tagging.sidecar import SidecarWrite, sidecar_document, write_json_sidecar
from gpu_worker.tagging.walk import MediaFile, hash_file, walk_media
from gpu_worker.tagging.xmp import XmpWriter

log = logging.getLogger(__name__)

DEFAULT_ANALYZERS = ("clip",)
# Item errors that the bytes alone decide: the same content fails the same way, so the failure is remembered.
CONTENT_ERRORS = frozenset(code.value for code in DecodeErrorCode) - {DecodeErrorCode.DOWNLOAD_FAILED.value}
# What writing one file may raise without being a bug; the file is reported failed and the run goes on.
WRITE_ERRORS: tuple[type[Exception], ...] = (TaggingError, DecodeError, OSError)


class FileStatus(StrEnum):
    """How one file ended in a run."""

    TAGGED = "tagged"
    UNCHANGED = "unchanged"
    FAILED = "failed"


@dataclass(frozen=True)
class TagOptions:
    """What a run does; the CLI's flags."""

    write: WriteTarget = WriteTarget.XMP
    mode: TagMode = TagMode.APPEND
    resume: bool = False
    backup: bool = False
    analyzers: tuple[str, ...] = DEFAULT_ANALYZERS
    # Per analyzer, as in a batch manifest: {"clip": {"threshold": 0.2, "vocabulary": "default"}}.
    analyzer_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    batch_size: int = 32
    exiftool: str | None = None


@dataclass(frozen=True)
class FileOutcome:
    """One file's end: ``analyzed`` when a model ran on it in this run; ``keywords_in`` names the file that holds
    its keywords (itself or its ``.xmp``), relative to the folder; ``message`` says why it failed, or which
    analyzers failed on a file the others tagged."""

    relative: str
    status: FileStatus
    analyzed: bool = False
    tags: tuple[str, ...] = ()
    keywords_in: str | None = None
    message: str | None = None


@dataclass
class TagSummary:
    """Counts of a run, its outcomes in completion order, and what could not run."""

    files: int = 0
    analyzed: int = 0
    tagged: int = 0
    unchanged: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    # Where inference ran; None when nothing needed it.
    device: str | None = None
    analyzers: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    outcomes: list[FileOutcome] = field(default_factory=list)

    def add(self, outcome: FileOutcome) -> None:
        """Count one outcome."""
        self.outcomes.append(outcome)
        self.analyzed += outcome.analyzed
        if outcome.status is FileStatus.TAGGED:
            self.tagged += 1
        elif outcome.status is FileStatus.UNCHANGED:
            self.unchanged += 1
        else:
            self.failed += 1


StartObserver = Callable[[int], None]
# Called once per finished file, from the main or the writer thread; an exception it raises ends the run after the
# file in hand (which is how a caller, or a test, stops a run at a chosen point).
FileObserver = Callable[[FileOutcome], None]


def tag_folder(
    root: Path,
    options: TagOptions,
    executor: InProcessExecutor,
    *,
    on_start: StartObserver | None = None,
    on_file: FileObserver | None = None,
) -> TagSummary:
    """Tag every media file under ``root``. Raises ``TaggingSetupError`` when nothing can run (no folder, no
    exiftool for an XMP write, no usable analyzer, a checkpoint that cannot be opened or is in use)."""
    root = root.absolute()
    if not root.is_dir():
        raise TaggingSetupError(f"{root} is not a folder")
    if options.batch_size < 1:
        raise TaggingSetupError("the batch size must be at least 1")
    with ExitStack() as stack:
        writer = None
        if options.write is not WriteTarget.NONE:
            exiftool = stack.enter_context(ExifTool(find_exiftool(options.exiftool)))
            check = exiftool.execute(["-ver"])
            if check.status != 0:
                raise TaggingSetupError(f"exiftool does not run: {check.error}")
            log.info("exiftool %s", check.stdout.strip())
        summary = TagSummary()
        kinds = _plan_analyzers(options, executor, summary)
        checkpoint = stack.enter_context(Checkpoint(root))
        if options.write is not WriteTarget.NONE:
            writer = XmpWriter(
                exiftool,
                checkpoint,
                mode=options.mode,
                backup=options.backup,
                max_pixels=executor.settings.max_image_pixels,
            )
        run = _Run(root, options, executor, checkpoint, writer, summary, on_file)
        run.execute(kinds, on_start)
    return summary


def _plan_analyzers(options: TagOptions, executor: InProcessExecutor, summary: TagSummary) -> set[MediaKind]:
    """Name each requested analyzer's model (without loading it: a run with nothing to analyze loads nothing) and
    return the media kinds they apply to; unknown names are noted as unavailable."""
    kinds: set[MediaKind] = set()
    for name in dict.fromkeys(options.analyzers):
        if name not in ANALYZERS:
            summary.unavailable[name] = f"unknown analyzer; this worker has {', '.join(sorted(ANALYZERS))}"
            continue
        cls = analyzer_class(name)
        model = options.analyzer_options.get(name, {}).get("model")
        summary.analyzers[name] = model if isinstance(model, str) else cls.default_model(executor.settings)
        kinds |= set(cls.media_kinds)
    if not summary.analyzers:
        raise TaggingSetupError(f"no analyzer can run ({'; '.join(summary.unavailable.values()) or 'none requested'})")
    return kinds


@dataclass(frozen=True)
class _Job:
    """A file with its analysis, ready to be written. ``current_sha256`` is the file's content now;
    ``analysis_sha256`` the content that was analyzed (an earlier version of the file after a crash mid-write)."""

    media: MediaFile
    current_sha256: str
    analysis_sha256: str
    analysis: StoredAnalysis
    analyzed: bool
    # False when an analyzer could not run on it: its record then never counts as finished under these settings.
    complete: bool = True


class _Run:
    def __init__(
        self,
        root: Path,
        options: TagOptions,
        executor: InProcessExecutor,
        checkpoint: Checkpoint,
        writer: XmpWriter | None,
        summary: TagSummary,
        on_file: FileObserver | None,
    ) -> None:
        self.root = root
        self.options = options
        self.executor = executor
        self.checkpoint = checkpoint
        self.writer = writer
        self.summary = summary
        self.on_file = on_file
        self._summary_lock = threading.Lock()
        self._stop = threading.Event()
        self._loaded = False
        settings = {
            "analyzers": summary.analyzers,
            "options": {name: options.analyzer_options.get(name, {}) for name in summary.analyzers},
        }
        self.analysis_key = _digest(settings)
        self.run_key = _digest({**settings, "write": options.write, "mode": options.mode})

    def execute(self, kinds: set[MediaKind], on_start: StartObserver | None) -> None:
        started = time.perf_counter()
        for leftover in self.checkpoint.remove_leftovers():
            log.info("removed %s, left by an interrupted run", leftover)
        if not self.options.resume:
            self.checkpoint.reset()
        walked = walk_media(self.root, kinds)
        self.summary.files = len(walked.files) + len(walked.problems)
        if on_start is not None:
            on_start(self.summary.files)
        for problem in walked.problems:
            self._report(FileOutcome(problem.relative, FileStatus.FAILED, message=problem.reason))
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpuw-tag-writer") as pool:
                in_flight: Future[None] | None = None
                try:
                    for batch in _chunks(walked.files, self.options.batch_size):
                        jobs = self._prepare(batch)
                        if in_flight is not None:
                            in_flight.result()
                        in_flight = pool.submit(self._write_all, jobs)
                    if in_flight is not None:
                        in_flight.result()
                except BaseException:
                    self._stop.set()  # the writer finishes the file in hand and takes no other
                    raise
        finally:
            self.summary.elapsed_s = time.perf_counter() - started

    # main thread: hashing, skipping, inference

    def _prepare(self, batch: Sequence[MediaFile]) -> list[_Job]:
        jobs: list[_Job] = []
        to_analyze: dict[str, list[MediaFile]] = {}
        for media in batch:
            try:
                sha256 = hash_file(media.path)
            except OSError as exc:
                self._report(FileOutcome(media.relative, FileStatus.FAILED, message=f"cannot read: {exc}"))
                continue
            record = self.checkpoint.file(media.relative)
            if self._unchanged(media, sha256, record):
                self._report(FileOutcome(media.relative, FileStatus.UNCHANGED))
                continue
            found = self._stored_analysis(sha256, record)
            if found is not None:
                jobs.append(_Job(media, sha256, found[0], found[1], analyzed=False))
            else:
                to_analyze.setdefault(sha256, []).append(media)
        if to_analyze:
            jobs += self._analyze(to_analyze)
        ready = []
        for job in jobs:
            if job.analysis.result.outputs:
                ready.append(job)
            else:
                self._fail_analysis(job)
        return ready

    def _unchanged(self, media: MediaFile, sha256: str, record: FileRecord | None) -> bool:
        return (
            record is not None
            and record.state is FileState.DONE
            and record.final_sha256 == sha256
            and record.run_key == self.run_key
            and json_sidecar_path(media.path).is_file()
        )

    def _stored_analysis(self, sha256: str, record: FileRecord | None) -> tuple[str, StoredAnalysis] | None:
        analysis = self.checkpoint.analysis(sha256, self.analysis_key)
        if analysis is not None:
            return sha256, analysis
        if record is not None and record.final_sha256 == sha256 and record.source_sha256 != sha256:
            # The file holds our own write of an earlier version (a run stopped between the write and its record).
            earlier = self.checkpoint.analysis(record.source_sha256, self.analysis_key)
            if earlier is not None:
                return record.source_sha256, earlier
        return None

    def _load(self) -> list[str]:
        """Load the analyzers on first need; those that cannot run are noted, and if none can, nothing runs."""
        if not self._loaded:
            for name, model in self.summary.analyzers.items():
                try:
                    self.executor.analyzer(name, model)
                except WorkerError as exc:
                    log.warning("analyzer %s cannot run: %s", name, exc.summary)
                    self.summary.unavailable[name] = exc.summary
            self._loaded = True
            self.summary.device = self.executor.device
        usable = [name for name in self.summary.analyzers if name not in self.summary.unavailable]
        if not usable:
            raise TaggingSetupError(f"no analyzer can run ({'; '.join(self.summary.unavailable.values())})")
        return usable

    def _analyze(self, to_analyze: Mapping[str, list[MediaFile]]) -> list[_Job]:
        usable = self._load()
        items = [
            ManifestItem(asset_id=sha256, media_kind=files[0].kind, path=str(files[0].path))
            for sha256, files in to_analyze.items()
        ]
        manifest = BatchManifest(
            batch_id=f"tag-{items[0].asset_id[:12]}",
            analyzers=usable,
            options={name: dict(self.options.analyzer_options.get(name, {})) for name in usable},
            items=items,
        )
        result = self.executor.run(manifest)
        for name, reason in result.unavailable.items():
            self.summary.unavailable.setdefault(name, reason)
        complete = not self.summary.unavailable.keys() & self.summary.analyzers.keys()
        at = datetime.now(UTC).isoformat(timespec="seconds")
        jobs = []
        for item in result.items:
            analysis = StoredAnalysis(item, result.device, at)
            if complete and _remembered(item):
                self.checkpoint.save_analysis(item.asset_id, self.analysis_key, analysis)
            sha256 = item.asset_id
            jobs += [_Job(media, sha256, sha256, analysis, True, complete) for media in to_analyze[sha256]]
        return jobs

    def _run_key(self, job: _Job) -> str:
        return self.run_key if job.complete else f"incomplete-{self.run_key}"

    def _fail_analysis(self, job: _Job) -> None:
        errors = job.analysis.result.errors
        message = "; ".join(f"{name}: {error.message}" for name, error in errors.items()) or "no analyzer result"
        self.checkpoint.mark(
            job.media.relative,
            FileState.FAILED,
            source_sha256=job.analysis_sha256,
            final_sha256=job.current_sha256,
            run_key=self._run_key(job),
            error=message,
        )
        self._report(FileOutcome(job.media.relative, FileStatus.FAILED, analyzed=job.analyzed, message=message))

    # writer thread

    def _write_all(self, jobs: Sequence[_Job]) -> None:
        for job in jobs:
            if self._stop.is_set():
                return
            self._report(self._write_one(job))

    def _write_one(self, job: _Job) -> FileOutcome:
        media = job.media
        tags = [tag.tag for output in job.analysis.result.outputs.values() for tag in output.tags]
        keywords, rejected = keywords_for(tags)
        for refused in rejected:
            log.warning("%s: tag %r not written: %s", media.relative, refused.tag, refused.reason)
        written = SidecarWrite(self.options.write.value, self.options.mode.value)
        final_sha256 = job.current_sha256
        try:
            if self.writer is not None:
                report = self.writer.write(
                    media,
                    keywords,
                    target=self.options.write,
                    expected_sha256=job.current_sha256,
                    before_replace=lambda final: self._before_replace(job, final),
                )
                final_sha256 = report.final_sha256
                if report.keywords_in is None:  # no keyword to write and no sidecar to keep them in
                    target = WriteTarget.NONE
                else:
                    target = WriteTarget.XMP if report.keywords_in == media.path else WriteTarget.SIDECAR
                written = SidecarWrite(target.value, self.options.mode.value, report.keywords_in, report.keywords)
            document = sidecar_document(
                media,
                job.analysis,
                source_sha256=job.analysis_sha256,
                final_sha256=final_sha256,
                tags=keywords,
                rejected=rejected,
                written=written,
            )
            write_json_sidecar(media.path, document, self.checkpoint)
        except WRITE_ERRORS as exc:
            message = exc.message if isinstance(exc, WorkerError) else f"{type(exc).__name__}: {exc}"
            log.warning("%s: not tagged: %s", media.relative, message)
            self.checkpoint.mark(
                media.relative,
                FileState.FAILED,
                source_sha256=job.analysis_sha256,
                final_sha256=job.current_sha256,
                run_key=self._run_key(job),
                error=message,
            )
            return FileOutcome(media.relative, FileStatus.FAILED, analyzed=job.analyzed, message=message)
        self.checkpoint.mark(
            media.relative,
            FileState.DONE,
            source_sha256=job.analysis_sha256,
            final_sha256=final_sha256,
            run_key=self._run_key(job),
        )
        holder = written.keywords_in.relative_to(self.root).as_posix() if written.keywords_in is not None else None
        unique_tags = tuple(dict.fromkeys(tags))
        errors = job.analysis.result.errors
        partial = "; ".join(f"{name}: {error.message}" for name, error in errors.items()) or None
        return FileOutcome(media.relative, FileStatus.TAGGED, job.analyzed, unique_tags, holder, partial)

    def _before_replace(self, job: _Job, final_sha256: str) -> None:
        self.checkpoint.mark(
            job.media.relative,
            FileState.WRITING,
            source_sha256=job.analysis_sha256,
            final_sha256=final_sha256,
            run_key=self._run_key(job),
        )

    def _report(self, outcome: FileOutcome) -> None:
        with self._summary_lock:
            self.summary.add(outcome)
        if self.on_file is not None:
            self.on_file(outcome)


def _remembered(item: ItemResult) -> bool:
    """Whether an analysis is worth keeping: it holds no error that another try could fix."""
    return all(error.code in CONTENT_ERRORS for error in item.errors.values())


def _chunks(files: Sequence[MediaFile], size: int) -> Iterator[Sequence[MediaFile]]:
    for start in range(0, len(files), size):
        yield files[start : start + size]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
