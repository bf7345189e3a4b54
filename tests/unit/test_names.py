"""Display names of uploads are untrusted text for people to read: one path component, no control characters."""

from __future__ import annotations

import random
import unicodedata

import pytest

from orchestrator.names import MAX_NAME_CHARS, sanitize_display_name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("../../etc/passwd.jpg", "passwd.jpg"),
        ("/etc/shadow", "shadow"),
        ("C:\\x\\..\\evil.jpg", "evil.jpg"),
        ("\\\\server\\share\\photo.png", "photo.png"),
        ("photos/2024/beach.jpg", "beach.jpg"),
        ("..\\..\\windows\\system32\\drivers\\etc\\hosts", "hosts"),
    ],
)
def test_only_the_last_path_component_is_kept(raw: str, expected: str) -> None:
    assert sanitize_display_name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a\x00b.jpg", "ab.jpg"),
        ("a\nb.jpg", "ab.jpg"),
        ("a\rb.jpg", "ab.jpg"),
        ("a\r\nSet-Cookie: x=1.jpg", "aSet-Cookie: x=1.jpg"),
        ("a\tb.jpg", "ab.jpg"),
        ("\x1b[31mred\x1b[0m.jpg", "[31mred[0m.jpg"),
        ("bell\x07\x08\x7f.jpg", "bell.jpg"),
        ("c1\x85\x9b.jpg", "c1.jpg"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),
        ("\u2066isolate\u2069.jpg", "isolate.jpg"),
        ("zero\u200bwidth\ufeff.jpg", "zerowidth.jpg"),
        ("line\u2028para\u2029.jpg", "linepara.jpg"),
    ],
)
def test_control_and_bidi_override_characters_are_removed(raw: str, expected: str) -> None:
    assert sanitize_display_name(raw) == expected


@pytest.mark.parametrize("raw", [None, "", "   ", ".", "..", "../", "dir/", "\x00\x01\n", "\u202e", " . . "])
def test_a_name_with_nothing_left_becomes_unnamed(raw: str | None) -> None:
    assert sanitize_display_name(raw) == "unnamed"


def test_a_very_long_name_is_truncated_keeping_its_extension() -> None:
    raw = "holiday-" * 100 + ".jpeg"

    name = sanitize_display_name(raw)

    assert len(name) == MAX_NAME_CHARS
    assert name.endswith(".jpeg")
    assert name.startswith("holiday-holiday-")


def test_a_very_long_name_without_a_usable_extension_is_cut_to_the_limit() -> None:
    assert sanitize_display_name("x" * 1000) == "x" * MAX_NAME_CHARS


@pytest.mark.parametrize(
    "raw", ["Café 東京 фото.jpg", "Ελλάδα-καλοκαίρι.png", "사진 (1).heic", "صورة.webp", "e\u0301te\u0301.jpg"]
)
def test_unicode_letters_and_ordinary_spaces_are_kept(raw: str) -> None:
    assert sanitize_display_name(raw) == raw


def test_whatever_the_input_the_name_is_one_short_printable_component() -> None:
    rng = random.Random(20241121)
    alphabet = "ab./\\ \x00\n\r\t\x1b\x7f\u202e\u200b\u00a0é東" + "".join(chr(c) for c in range(0x80, 0xA0))
    for _ in range(2000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))

        name = sanitize_display_name(raw)

        assert name, raw
        assert len(name) <= MAX_NAME_CHARS, raw
        assert "/" not in name and "\\" not in name, raw
        assert name not in (".", ".."), raw
        assert all(unicodedata.category(ch)[0] != "C" for ch in name), (raw, name)
        assert all(ch == " " or unicodedata.category(ch)[0] != "Z" for ch in name), (raw, name)
