"""Structured logs: the ids set around work reach every record, one JSON object per line, exceptions serialised,
secrets never written, and Celery tasks get their ids from their arguments."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gpu_worker.logs import (
    REDACTED,
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    bind_context,
    clear_context,
    configure_logging,
    current_context,
    log_context,
    make_handler,
    redact,
    with_log_ids,
)
from orchestrator.logs import _task_finished, _task_started, task_log_ids

SIGNED_MEDIA_TOKEN = "0123456789abcdef0123456789abcdef.1767225600." + "A" * 43


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger writing JSON lines into a buffer."""
    stream = io.StringIO()
    logger = logging.getLogger(f"test.json_logs.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = make_handler("json", stream)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)
    clear_context()


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_logged_inside_a_context_carries_its_ids_and_one_logged_after_does_not(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    with log_context(batch_id="b-1", job_id="j-1", tenant_id=None):
        with log_context(instance_id="i-9"):
            logger.info("claimed %s", "b-1")
        logger.warning("released")
    logger.info("idle")

    first, second, third = _records(stream)
    assert first["message"] == "claimed b-1" and first["level"] == "INFO" and first["logger"] == logger.name
    assert (first["batch_id"], first["job_id"], first["instance_id"]) == ("b-1", "j-1", "i-9")
    assert "tenant_id" not in first, "a None id is not written"
    assert second["batch_id"] == "b-1" and "instance_id" not in second
    assert not {"batch_id", "job_id", "instance_id"} & set(third)
    assert first["ts"].endswith("Z") and "T" in first["ts"]


def test_every_record_is_exactly_one_line_of_json_even_with_newlines_and_a_traceback(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logger.exception("batch failed\nsecond line")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["message"] == "batch failed\nsecond line"
    assert record["level"] == "ERROR"
    assert "Traceback" in record["exception"] and "ValueError: bad" in record["exception"]


def test_secrets_in_messages_and_tracebacks_are_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("calling with Authorization: Bearer sk-live-0123456789")
    logger.info("GET /media/%s 200", SIGNED_MEDIA_TOKEN)
    logger.info("env ORCH_SECRET_KEY=s3cr3t-value and https://x/y?api_key=k-123&page=2")
    logger.info("settings %s", {"worker_token": "wt-abcdef", "password": "hunter2"})
    try:
        raise RuntimeError('failed: {"token": "tok-zyx"}')
    except RuntimeError:
        logger.exception("boom")

    text = stream.getvalue()
    for secret in (
        "sk-live-0123456789",
        SIGNED_MEDIA_TOKEN,
        "s3cr3t-value",
        "k-123",
        "wt-abcdef",
        "hunter2",
        "tok-zyx",
    ):
        assert secret not in text, secret
    assert text.count(REDACTED) >= 7
    assert "page=2" in text, "what is not a secret stays readable"


def test_extra_attributes_are_never_dumped(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("rented", extra={"worker_token": "plain-text-token", "vast_api_key": "vk-1"})
    (record,) = _records(stream)
    assert set(record) == {"ts", "level", "logger", "message", "pid"}
    assert "plain-text-token" not in stream.getvalue()


def test_redact_leaves_ordinary_words_alone() -> None:
    line = "storage_key=jobs/a.jpg tokens=5 keyframes=3 signed in"
    assert redact(line) == line


def test_context_is_private_to_each_thread() -> None:
    seen: dict[str, dict[str, str]] = {}

    def work(name: str) -> None:
        with log_context(batch_id=name):
            barrier.wait(timeout=5)
            seen[name] = current_context()

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=work, args=(n,)) for n in ("x", "y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"x": {"batch_id": "x"}, "y": {"batch_id": "y"}}


def test_unknown_context_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown log context fields"), log_context(api_key="k"):
        pass


def test_text_format_appends_the_ids_and_redacts() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token=abc %s", ("done",), None)
    with log_context(batch_id="b-7"):
        ContextFilter().filter(record)
    line = TextFormatter().format(record)
    assert line.endswith("INFO x: token=[redacted] done [batch_id=b-7]")


def test_ids_stamped_when_logged_survive_formatting_elsewhere() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "queued", (), None)
    with log_context(request_id="r-1"):
        ContextFilter().filter(record)
    assert json.loads(JsonFormatter().format(record))["request_id"] == "r-1"


def test_configure_logging_replaces_its_own_handler_and_keeps_others() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        configure_logging("json", stream=first)
        configure_logging("json", stream=second)
        logging.getLogger("test.configure").warning("once")
        assert first.getvalue() == ""
        assert json.loads(second.getvalue())["message"] == "once"
        assert len(root.handlers) == len(before) + 1
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)


def test_decorated_function_logs_with_its_instance_id(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    @with_log_ids
    def destroy(session: object, *, instance_id: str, reason: str) -> None:
        logger.warning("destroying: %s", reason)

    destroy(None, instance_id="inst-42", reason="idle")
    (record,) = _records(stream)
    assert record["instance_id"] == "inst-42"
    assert current_context() == {}


class _Task:
    def run(self, batch_id: str, job_id: str | None = None) -> None:
        """A task body's signature, as Celery's task_prerun hands it over."""


def test_celery_task_ids_come_from_its_arguments_and_are_cleared_after(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    assert task_log_ids(["asset_id"], ["a-1"], {}) == {}
    bind_context(request_id="left-over-from-a-previous-task")
    _task_started(task=_Task(), args=["b-5"], kwargs={"job_id": "j-5"})
    logger.info("analyzing")
    _task_finished()
    logger.info("between tasks")

    during, after = _records(stream)
    assert (during["batch_id"], during["job_id"]) == ("b-5", "j-5")
    assert "request_id" not in during
    assert not {"batch_id", "job_id"} & set(after)
