"""Display names of uploaded files: untrusted, kept for people to read, never used to build a path."""

from __future__ import annotations

import unicodedata

MAX_NAME_CHARS = 200


def sanitize_display_name(raw: str | None) -> str:
    """The last path component of ``raw`` with control, format and separator characters removed.

    ``../../etc/passwd`` becomes ``passwd``; ``a\\nb.jpg`` becomes ``ab.jpg``; an empty result becomes ``unnamed``.
    """
    if not raw:
        return "unnamed"
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] not in ("C", "Z") or ch == " ")
    name = name.strip(" .")
    if len(name) > MAX_NAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: MAX_NAME_CHARS - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else name[:MAX_NAME_CHARS]
    return name or "unnamed"
