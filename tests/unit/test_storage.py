"""The local media store: files are hashed and size-checked while they stream in, committed atomically under a
content-addressed key, and no key can reach outside the store."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from orchestrator.errors import UploadRejectedError
from orchestrator.storage import LocalStorage, StagedUpload, blob_key, thumbnail_key

TENANT = uuid.UUID("0f0e0d0c-0b0a-4908-8706-050403020100")


def _chunks(total: int, size: int = 64 * 1024) -> list[bytes]:
    data = hashlib.shake_256(b"media").digest(total)
    return [data[i : i + size] for i in range(0, total, size)]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _stage(storage: LocalStorage, data: bytes, limit: int = 1 << 30) -> StagedUpload:
    staged = storage.stage(limit)
    for piece in _chunks(len(data)) if len(data) > 64 * 1024 else [data]:
        staged.write(piece)
    return staged


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "media")


def test_a_staged_upload_is_hashed_while_streaming(storage: LocalStorage) -> None:
    chunks = _chunks(1_000_000)
    staged = storage.stage(limit_bytes=2_000_000)

    for piece in chunks:
        staged.write(piece)
    staged.close()

    whole = b"".join(chunks)
    assert staged.sha256 == hashlib.sha256(whole).hexdigest()
    assert staged.size == len(whole)
    assert staged.head == whole[: StagedUpload.HEAD_BYTES]
    assert staged.path.read_bytes() == whole
    assert staged.path.parent == storage.root / "tmp"


def test_an_upload_over_the_limit_stops_writing_and_deletes_its_temp_file_but_keeps_counting(
    storage: LocalStorage,
) -> None:
    staged = storage.stage(limit_bytes=100_000)
    chunks = _chunks(500_000, size=30_000)

    staged.write(chunks[0])
    assert staged.path.exists() and not staged.over_limit
    for piece in chunks[1:]:
        staged.write(piece)

    assert staged.over_limit
    assert not staged.path.exists()
    assert staged.size == 500_000
    assert _files(storage.root) == []


def test_an_upload_of_exactly_the_limit_is_kept(storage: LocalStorage) -> None:
    staged = storage.stage(limit_bytes=10_000)
    staged.write(b"\xff" * 10_000)
    staged.close()

    assert not staged.over_limit
    assert staged.path.stat().st_size == 10_000


def test_discard_removes_the_temp_file(storage: LocalStorage) -> None:
    staged = _stage(storage, b"partial upload")
    assert staged.path.exists()

    staged.discard()
    staged.discard()  # harmless twice: it runs in a finally block

    assert _files(storage.root) == []


def test_commit_moves_the_staged_file_under_its_content_key(storage: LocalStorage) -> None:
    data = b"\xff\xd8\xff" + bytes(range(256)) * 100
    staged = _stage(storage, data)
    staged.close()
    inode = staged.path.stat().st_ino
    key = blob_key(TENANT, staged.sha256)
    assert not storage.exists(key), "nothing may appear under the final key before commit"

    assert storage.commit(staged, key) is True

    target = storage.path_for(key)
    assert target.read_bytes() == data
    assert target.stat().st_ino == inode, "commit renames the staged file; it never copies into the final place"
    assert key == f"tenants/{TENANT.hex}/blobs/{staged.sha256[:2]}/{staged.sha256}"
    assert list((storage.root / "tmp").iterdir()) == []


def test_a_failed_commit_leaves_nothing_under_the_key(storage: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    staged = _stage(storage, b"\x89PNG\r\n\x1a\n" + bytes(5000))
    key = blob_key(TENANT, staged.sha256)

    def disk_full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        storage.commit(staged, key)
    monkeypatch.undo()

    assert not storage.exists(key)
    staged.discard()
    assert _files(storage.root) == []


def test_committing_the_same_bytes_twice_keeps_one_file(storage: LocalStorage) -> None:
    data = b"OggS" + bytes(20_000)
    first, second = _stage(storage, data), _stage(storage, data)
    key = blob_key(TENANT, first.sha256)
    assert second.sha256 == first.sha256

    assert storage.commit(first, key) is True
    assert storage.commit(second, key) is False

    assert _files(storage.root) == [storage.path_for(key)]
    assert storage.path_for(key).read_bytes() == data


def test_put_bytes_writes_a_derived_file_and_reads_back_in_chunks(storage: LocalStorage) -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    key = thumbnail_key(TENANT, sha)
    data = os.urandom(3 * 1024 * 1024 + 17)

    storage.put_bytes(key, data)

    assert b"".join(storage.iter_bytes(key)) == data
    assert list((storage.root / "tmp").iterdir()) == []
    storage.delete(key)
    assert not storage.exists(key)


@pytest.mark.parametrize(
    "key",
    [
        "tenants/abc/blobs/../../../etc/passwd",
        "..",
        "../outside",
        "a/../../b",
        "/etc/passwd",
        "/tmp/x",
        "Tenants/ABC/blobs/x",
        "tenants/abc/Photo.JPG",
        "",
        ".hidden",
        "-rf",
        "tenants/abc/my photo.jpg",
        "tenants\\abc\\x",
        "tenants/abc/x\x00y",
        "tenants/abc/évian",
        "tenants/abc/x;rm",
        "a" * 301,
        "tenants/abc/x\n",
    ],
)
def test_path_for_refuses_keys_that_could_leave_the_store_or_hold_odd_characters(
    storage: LocalStorage, key: str
) -> None:
    with pytest.raises(UploadRejectedError) as refused:
        storage.path_for(key)

    assert refused.value.code == "invalid_key"


@pytest.mark.parametrize("key", [blob_key(TENANT, "ab" * 32), thumbnail_key(TENANT, "cd" * 32), "tmp/x.part"])
def test_path_for_accepts_generated_keys_and_keeps_them_inside_the_root(storage: LocalStorage, key: str) -> None:
    path = storage.path_for(key)

    assert path.resolve().is_relative_to(storage.root.resolve())
    assert path == storage.root / key
