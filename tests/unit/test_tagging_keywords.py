"""Our tags as XMP keywords: the mapping, what is refused before it reaches exiftool, and how edits merge."""

from __future__ import annotations

import pytest

from gpu_worker.tagging.errors import UnsafeArgumentError
from gpu_worker.tagging.exiftool import encode_argument
from gpu_worker.tagging.keywords import (
    MAX_LABEL_CHARS,
    TagMode,
    XmpField,
    keywords_for,
    label_problem,
    plan_edit,
)

TAGS = XmpField.TAGS_LIST
SUBJECT = XmpField.SUBJECT
HIER = XmpField.HIERARCHICAL_SUBJECT


def test_category_label_tags_become_digikam_lightroom_and_flat_keywords() -> None:
    keywords, rejected = keywords_for(["objects/person", "scene/beach", "objects/person", "people/group"])

    assert rejected == []
    assert keywords[TAGS] == ["AI/Objects/person", "AI/Scene/beach", "AI/People/group"]
    assert keywords[HIER] == ["AI|Objects|person", "AI|Scene|beach", "AI|People|group"]
    assert keywords[SUBJECT] == ["person", "beach", "group"]


def test_labels_keep_spaces_unicode_and_deeper_levels() -> None:
    keywords, rejected = keywords_for(["scene/city street", "style/café noir/dark", "solo"])

    assert rejected == []
    assert keywords[TAGS] == ["AI/Scene/city street", "AI/Style/café noir/dark", "AI/solo"]
    assert keywords[SUBJECT] == ["city street", "dark", "solo"]


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        ("objects/a\nb", "control character U+000A"),
        ("objects/a\rb", "control character U+000D"),
        ("objects/tab\there", "control character U+0009"),
        ("objects/nel\x85x", "control character U+0085"),
        ("objects/line\u2028sep", "control character U+2028"),
        ("objects/\u202eevil", "control character U+202E"),
        ("objects/x\ufffe", "noncharacter U+FFFE"),
        ("objects/-rf", "starts with '-'"),
        ("-objects/x", "starts with '-'"),
        ("objects/a|b", "'|'"),
        ("objects/ padded", "whitespace"),
        ("objects//double", "empty label"),
        ("objects/" + "x" * (MAX_LABEL_CHARS + 1), "longer than"),
    ],
)
def test_unsafe_tags_are_refused_with_a_reason_and_the_others_kept(tag: str, reason: str) -> None:
    keywords, rejected = keywords_for([tag, "scene/beach"])

    assert [r.tag for r in rejected] == [tag]
    assert reason in rejected[0].reason
    assert keywords[TAGS] == ["AI/Scene/beach"]


def test_label_problem_accepts_ordinary_labels() -> None:
    assert label_problem("one person") is None
    assert label_problem("Ærøskøbing") is None
    assert label_problem("a-b") is None


def test_append_adds_only_missing_keywords_and_touches_nothing_else() -> None:
    existing = {TAGS: ["Family/Anna", "AI/Scene/beach"], SUBJECT: ["Anna", "beach"], HIER: []}
    new, _ = keywords_for(["scene/beach", "objects/dog"])

    edit = plan_edit(existing, new, TagMode.APPEND)

    assert edit.changed
    assert all(values == [] for values in edit.removals.values())
    assert edit.expected[TAGS] == {"Family/Anna", "AI/Scene/beach", "AI/Objects/dog"}
    assert edit.expected[SUBJECT] == {"Anna", "beach", "dog"}
    assert edit.expected[HIER] == {"AI|Scene|beach", "AI|Objects|dog"}


def test_append_of_keywords_already_present_changes_nothing() -> None:
    new, _ = keywords_for(["scene/beach"])
    existing = {field: [*values, "mine"] for field, values in new.items()}

    assert not plan_edit(existing, new, TagMode.APPEND).changed


def test_replace_removes_old_ai_keywords_and_their_flat_labels_but_keeps_the_users() -> None:
    existing = {
        TAGS: ["AI/Scene/forest", "AI/Objects/dog", "Places/forest", "Family/Anna"],
        SUBJECT: ["forest", "dog", "Anna", "holiday"],
        HIER: ["AI|Scene|forest", "AI|Objects|dog", "Places|forest"],
    }
    new, _ = keywords_for(["scene/beach", "objects/dog"])

    edit = plan_edit(existing, new, TagMode.REPLACE)

    assert edit.removals[TAGS] == ["AI/Scene/forest"]
    assert edit.removals[HIER] == ["AI|Scene|forest"]
    # "forest" is also the leaf of the user's own Places/forest, so it stays; "dog" is still given by this run.
    assert edit.removals[SUBJECT] == []
    assert edit.expected[TAGS] == {"AI/Objects/dog", "AI/Scene/beach", "Places/forest", "Family/Anna"}
    assert edit.expected[SUBJECT] == {"forest", "dog", "Anna", "holiday", "beach"}


def test_replace_drops_flat_labels_only_our_keywords_explained() -> None:
    existing = {TAGS: ["AI/Scene/forest"], SUBJECT: ["forest", "holiday"], HIER: ["AI|Scene|forest"]}
    new, _ = keywords_for(["scene/beach"])

    edit = plan_edit(existing, new, TagMode.REPLACE)

    assert edit.expected[SUBJECT] == {"holiday", "beach"}
    assert edit.expected[TAGS] == {"AI/Scene/beach"}


def test_replace_leaves_values_that_cannot_be_passed_back_unaltered() -> None:
    existing = {TAGS: ["AI/Scene/bad\nline"], SUBJECT: [], HIER: []}

    edit = plan_edit(existing, {TAGS: [], SUBJECT: [], HIER: []}, TagMode.REPLACE)

    assert edit.removals[TAGS] == []
    assert not edit.changed


@pytest.mark.parametrize(
    ("argument", "line"),
    [
        ("/photos/-rf.jpg", "/photos/-rf.jpg"),
        ("-XMP-dc:Subject+=café", "-XMP-dc:Subject+=café"),
        ("/photos/two\nlines.jpg", "#[CSTR]/photos/two\\nlines.jpg"),
        ("C:\\photos\\new\rname.jpg", "#[CSTR]C:\\\\photos\\\\new\\rname.jpg"),
        (" leading.jpg", "#[CSTR] leading.jpg"),
        ("#hash.jpg", "#[CSTR]#hash.jpg"),
    ],
)
def test_each_argument_is_one_argfile_line_exiftool_reads_back_unaltered(argument: str, line: str) -> None:
    assert encode_argument(argument) == line
    assert "\n" not in encode_argument(argument)


@pytest.mark.parametrize("argument", ["/a/b\n$HOME.jpg", "/a/b\nuser@host.jpg"])
def test_an_argument_exiftool_would_alter_is_refused(argument: str) -> None:
    with pytest.raises(UnsafeArgumentError):
        encode_argument(argument)
