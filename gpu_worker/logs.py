"""Structured logs: one JSON object per line, carrying the ids of the work being done, with secrets redacted.

The ids live in context variables (:func:`log_context`), so every record logged while they are set carries them,
in any module, without passing them around: a thread or asyncio task sees the ids its own code set. The formatter
writes a fixed set of fields (``ts``, ``level``, ``logger``, ``message``, ``exception``, the ids, ``pid``) and never
arbitrary ``extra`` attributes, which could hold a token; messages and tracebacks are also passed through
:func:`redact` as defence in depth. This module has no dependency on the orchestrator, which re-uses it: the worker
image does not ship the orchestrator.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ParamSpec, TextIO, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

CONTEXT_FIELDS = ("request_id", "tenant_id", "job_id", "batch_id", "instance_id")
REDACTED = "[redacted]"
# The attribute the context filter stamps on a record, so a record formatted later (or on another thread) keeps the
# ids that were current when it was logged.
CONTEXT_ATTR = "log_context"
MAX_ID_CHARS = 100

_CONTEXT: dict[str, ContextVar[str | None]] = {name: ContextVar(f"log_{name}", default=None) for name in CONTEXT_FIELDS}

_SENSITIVE_NAMES = (
    r"(?:[a-z_-]*token|[a-z_-]*secret[a-z_-]*|[a-z_-]*passw(?:or)?d|[a-z_-]*api[_-]?key|private[_-]?key"
    r"|authorization|cookie|signature|sig)"
)
_SECRET_PATTERNS = (
    # Authorization headers and bearer tokens anywhere in a line.
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"),
    # name=value in URLs, query strings, env dumps and reprs (value unquoted or quoted).
    re.compile(rf"(?i)\b({_SENSITIVE_NAMES})(\s*[=:]\s*)(['\"]?)[^\s'\"&,;)}}]+"),
    # JSON "name": "value" and Python reprs 'name': 'value'.
    re.compile(rf"(?i)([\"']{_SENSITIVE_NAMES}[\"'])(\s*:\s*)([\"'])[^\"']*"),
    # The orchestrator's signed media tokens (/media/<asset>.<expires>.<signature>).
    re.compile(r"\b[0-9a-f]{32}\.[0-9]{1,12}\.[A-Za-z0-9_-]{43}\b"),
    # PEM private keys.
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL),
)


class LogFormat(StrEnum):
    """How log lines look: ``text`` for people at a terminal, ``json`` for a log shipper."""

    TEXT = "text"
    JSON = "json"


def _replace(match: re.Match[str]) -> str:
    groups = match.groups()
    if len(groups) == 1:  # bearer/basic: keep the scheme word
        return f"{groups[0]} {REDACTED}"
    if len(groups) == 3:  # name, separator, opening quote
        return f"{groups[0]}{groups[1]}{groups[2]}{REDACTED}"
    return REDACTED


def redact(text: str) -> str:
    """``text`` with bearer tokens, ``token=``/``password=``/``api_key=``-style values, signed media tokens and
    private keys replaced by ``[redacted]``."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(_replace, text)
    return text


def current_context() -> dict[str, str]:
    """The ids set in this thread or task now, without the unset ones."""
    found: dict[str, str] = {}
    for name, var in _CONTEXT.items():
        value = var.get()
        if value is not None:
            found[name] = value
    return found


def _tokens(ids: dict[str, object]) -> list[tuple[ContextVar[str | None], Token[str | None]]]:
    unknown = set(ids) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context fields {sorted(unknown)}; known: {', '.join(CONTEXT_FIELDS)}")
    return [
        (_CONTEXT[name], _CONTEXT[name].set(str(value)[:MAX_ID_CHARS]))
        for name, value in ids.items()
        if value is not None
    ]


@contextmanager
def log_context(**ids: object) -> Iterator[None]:
    """Add ``ids`` (names from :data:`CONTEXT_FIELDS`; None values are skipped) to every record logged inside."""
    tokens = _tokens(ids)
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def with_log_ids(function: Callable[P, R]) -> Callable[P, R]:
    """Decorate a function so its arguments named like context fields (``instance_id``, ``batch_id``, ...) are set
    as log ids while it runs."""
    signature = inspect.signature(function)
    wanted = [name for name in signature.parameters if name in CONTEXT_FIELDS]

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        bound = signature.bind_partial(*args, **kwargs).arguments
        with log_context(**{name: bound.get(name) for name in wanted}):
            return function(*args, **kwargs)

    return wrapper


def bind_context(**ids: object) -> None:
    """Set ``ids`` for the rest of the current asyncio task or thread (a request handler whose task ends with the
    request); prefer :func:`log_context` where a ``with`` block fits."""
    _tokens(ids)


def clear_context() -> None:
    """Unset every id (a pool thread or Celery worker process between two tasks)."""
    for var in _CONTEXT.values():
        var.set(None)


class ContextFilter(logging.Filter):
    """Stamps each record with the ids current where it was logged; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the current ids unless the record already carries some."""
        if not hasattr(record, CONTEXT_ATTR):
            setattr(record, CONTEXT_ATTR, current_context())
        return True


def _ids_of(record: logging.LogRecord) -> dict[str, str]:
    ids = getattr(record, CONTEXT_ATTR, None)
    return dict(ids) if isinstance(ids, dict) else current_context()


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ts (UTC, ISO 8601), level, logger, message, exception, the ids."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON; secrets in the message and traceback are redacted."""
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        entry.update(_ids_of(record))
        entry["pid"] = record.process
        # ensure_ascii keeps a line one line whatever a message holds (json escapes newlines in strings anyway).
        return json.dumps(entry, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """A readable line with the ids appended as ``key=value``; secrets redacted like the JSON form."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The usual text line, then the ids, redacted."""
        line = super().format(record)
        ids = _ids_of(record)
        if ids:
            line += " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]"
        return redact(line)


class _OurHandler(logging.StreamHandler[TextIO]):
    """Marks the handler this module installed, so configuring twice replaces it instead of adding another."""


def make_handler(log_format: LogFormat | str, stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) with the context filter and the formatter for ``log_format``."""
    handler = _OurHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if LogFormat(log_format) is LogFormat.JSON else TextFormatter())
    return handler


def configure_logging(log_format: LogFormat | str, *, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send the root logger's records through one handler of ``log_format``; idempotent.

    Handlers that others installed on the root logger (a test runner's capture, say) are kept; a handler from an
    earlier call of this function is replaced.
    """
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _OurHandler):
            root.removeHandler(existing)
    root.addHandler(make_handler(log_format, stream))
    root.setLevel(level)
