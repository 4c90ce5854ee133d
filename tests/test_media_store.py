from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from smsbridge.media_store import (
    MediaStore,
    StoredMedia,
    clean_content_type,
    clean_file_name,
)


@pytest.fixture
def store(tmp_path: Path) -> MediaStore:
    return MediaStore(tmp_path / "deep" / "media")


def _put(
    store: MediaStore, data: bytes, content_type: str = "image/png", name: str | None = None
) -> StoredMedia:
    temp = store.temp_path()
    temp.write_bytes(data)
    return store.commit(
        temp,
        content_type=content_type,
        file_name=name,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def test_root_created_with_parents(store: MediaStore) -> None:
    assert store.root.is_dir()


def test_new_key_is_valid_and_unique() -> None:
    keys = {MediaStore.new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(k) == 43 and MediaStore.is_valid_key(k) for k in keys)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "a" * 42,
        "a" * 44,
        "a" * 43 + "\n",  # "$" in a regex would accept this
        "../" + "a" * 40,
        "a" * 42 + ".",
        "a" * 42 + "/",
        ".tmp-" + "a" * 38,
        "a" * 38 + ".json",
        "é" * 43,
    ],
)
def test_invalid_keys_rejected(store: MediaStore, key: str) -> None:
    assert not MediaStore.is_valid_key(key)
    assert store.get(key) is None


def test_commit_then_get_roundtrip(store: MediaStore) -> None:
    data = os.urandom(5000)
    temp = store.temp_path()
    assert temp.parent == store.root and not temp.exists()
    temp.write_bytes(data)
    before = time.time()
    media = store.commit(
        temp,
        content_type="Image/JPEG; charset=binary",
        file_name="../../photo.jpg",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    assert not temp.exists()
    assert MediaStore.is_valid_key(media.key)
    assert media.content_type == "image/jpeg"
    assert media.file_name == "photo.jpg"
    assert before <= media.stored_at <= time.time()
    found = store.get(media.key)
    assert found is not None
    path, meta = found
    assert path == store.root / media.key
    assert path.read_bytes() == data
    assert meta == media
    # The sidecar is plain JSON that other tools (and a restart) can read.
    sidecar = orjson.loads((store.root / f"{media.key}.json").read_bytes())
    assert sidecar["sha256"] == hashlib.sha256(data).hexdigest()
    # Only the media file and its sidecar remain: no temp left behind.
    assert sorted(p.name for p in store.root.iterdir()) == sorted([media.key, f"{media.key}.json"])


def test_get_unknown_or_incomplete(store: MediaStore) -> None:
    assert store.get(MediaStore.new_key()) is None
    media = _put(store, b"abc")
    (store.root / f"{media.key}.json").write_bytes(b"{not json")
    assert store.get(media.key) is None  # corrupt sidecar: treated as unknown
    other = _put(store, b"def")
    (store.root / other.key).unlink()
    assert store.get(other.key) is None  # sidecar without media


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("image/png", "image/png"),
        ("IMAGE/PNG ; charset=utf-8", "image/png"),
        ("application/vnd.ms-excel", "application/vnd.ms-excel"),
        ("text/html\r\nSet-Cookie: x=1", "application/octet-stream"),
        ("image", "application/octet-stream"),
        ("../etc/passwd", "application/octet-stream"),
        ("", "application/octet-stream"),
    ],
)
def test_content_type_sanitized(store: MediaStore, raw: str, expected: str) -> None:
    assert _put(store, b"x", content_type=raw).content_type == expected
    assert clean_content_type(raw) == (None if expected == "application/octet-stream" else expected)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("photo.jpg", "photo.jpg"),
        ("/etc/passwd", "passwd"),
        ("C:\\Users\\x\\cat.gif", "cat.gif"),
        ("bad\x00na\nme\x1b.png", "badname.png"),
        ("..", None),
        ("dir/", None),
        ("", None),
        (None, None),
        ("a" * 500, "a" * 200),
    ],
)
def test_file_name_sanitized(raw: str | None, expected: str | None) -> None:
    assert clean_file_name(raw) == expected


def test_purge_by_age(store: MediaStore) -> None:
    old = _put(store, b"old")
    time.sleep(0.02)  # distinct stored_at values
    new = _put(store, b"new")
    assert old.stored_at < new.stored_at
    midpoint = (old.stored_at + new.stored_at) / 2
    # "now" is 100 s after the midpoint: only the older item is over 100 s old.
    assert store.purge(100, now=midpoint + 100) == 1
    assert store.get(old.key) is None
    assert not (store.root / old.key).exists()
    assert not (store.root / f"{old.key}.json").exists()
    assert store.get(new.key) is not None
    assert store.purge(100) == 0  # nothing is really that old
    assert store.purge(0, now=time.time() + 1) == 1
    assert list(store.root.iterdir()) == []


def test_purge_stale_temp_files_and_orphans(store: MediaStore) -> None:
    stale, fresh = store.temp_path(), store.temp_path()
    stale.write_bytes(b"crashed download")
    fresh.write_bytes(b"download in progress")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    orphan = store.root / MediaStore.new_key()  # media whose sidecar never got written
    orphan.write_bytes(b"x")
    os.utime(orphan, (two_hours_ago, two_hours_ago))
    unrelated = store.root / "README"  # not a key: never touched
    unrelated.write_bytes(b"keep")

    assert store.purge(3600) == 1  # the orphan; temp files are not counted
    assert not stale.exists()
    assert fresh.exists()  # younger than an hour: may still be written to
    assert not orphan.exists()
    assert unrelated.exists()


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs: a second, real filesystem (needs root to mount; skipped elsewhere)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_commit_that_fails_after_the_sidecar_leaves_nothing_behind(
    tmp_path: Path, other_filesystem: Path
) -> None:
    """A real OSError half-way through commit: the data cannot be renamed into a store on
    another filesystem (EXDEV) after the sidecar was already in place. Neither the sidecar
    nor any temp file may stay behind; the caller's temp file is the caller's."""
    store = MediaStore(other_filesystem / "media")
    temp = tmp_path / "download"
    temp.write_bytes(b"data")
    with pytest.raises(OSError) as info:
        store.commit(temp, content_type="image/png", file_name=None, size=4, sha256="0" * 64)
    assert info.value.errno == errno.EXDEV
    assert list(store.root.iterdir()) == []
    assert temp.exists()


def test_commit_on_a_full_disk_leaves_nothing_behind(other_filesystem: Path) -> None:
    store = MediaStore(other_filesystem / "media")
    filler = store.temp_path()
    with filler.open("wb") as fh, pytest.raises(OSError) as full:
        while True:  # fill the disk completely
            fh.write(b"\0" * 65536)
            fh.flush()
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as info:
        store.commit(filler, content_type="image/png", file_name=None, size=1, sha256="0" * 64)
    assert info.value.errno == errno.ENOSPC  # the sidecar did not fit
    assert [p.name for p in store.root.iterdir()] == [filler.name]  # only the caller's temp
