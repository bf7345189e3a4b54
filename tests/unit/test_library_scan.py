"""What an import reads from a folder: media files paired with their sidecars, sidecars alone, and nothing that is
hidden, linked, a keyword sidecar, a backup or the export manifest."""

from __future__ import annotations

from pathlib import Path

from orchestrator.library.scan import scan_folder


def test_files_pair_with_their_sidecars_and_links_hidden_and_side_files_are_passed_over(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"x")
    root = tmp_path / "library"
    (root / "job-1" / "deeper").mkdir(parents=True)
    for name in ("a.jpg", "a.jpg.ai.json", "a.jpg.xmp", "a.jpg.orig", "b.mp4", "gone.jpg.ai.json", ".hidden.jpg"):
        (root / "job-1" / name).write_bytes(b"x")
    (root / "job-1" / "deeper" / "c.wav").write_bytes(b"x")
    (root / "job-1" / "linked.jpg").symlink_to(outside / "secret.jpg")
    (root / "job-1" / "linked.jpg.ai.json").write_bytes(b"{}")
    (root / "job-1" / ".hidden.jpg.ai.json").write_bytes(b"{}")
    (root / "job-2").symlink_to(outside, target_is_directory=True)
    (root / ".ai-media-analysis").mkdir()
    (root / ".ai-media-analysis" / "checkpoint.sqlite").write_bytes(b"x")
    (root / "@eaDir").mkdir()
    (root / "@eaDir" / "thumb.jpg").write_bytes(b"x")
    (root / "library.json").write_bytes(b"{}")

    scan = scan_folder(root)

    assert [(e.relative, e.sidecar is not None) for e in scan.files] == [
        ("job-1/a.jpg", True),
        ("job-1/b.mp4", False),
        ("job-1/deeper/c.wav", False),
    ]
    assert [(e.relative, e.media) for e in scan.lone_sidecars] == [("job-1/gone.jpg", False)]
    assert scan.unreadable == []
