"""Inbound MMS media on disk: one file per item named by an unguessable key, plus a JSON sidecar.

Layout under ``root``::

    <key>          the bytes, exactly as downloaded
    <key>.json     StoredMedia metadata (orjson)
    .tmp-<random>  a download in progress (never a valid key: keys contain no ".")

A write that fails (a full disk: ``OSError`` ``ENOSPC``) leaves neither a temp file nor a
half-committed item: the writer removes its temp file, and ``commit`` undoes its own steps.

All methods do blocking disk I/O; async callers run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "MediaStore",
    "StoredMedia",
    "clean_content_type",
    "clean_file_name",
]

DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"
TEMP_PREFIX: Final = ".tmp-"
STALE_TEMP_SECONDS: Final = 3600.0
MAX_FILE_NAME: Final = 200

# secrets.token_urlsafe(32) is 43 characters of the URL-safe base64 alphabet.
_KEY = re.compile(r"[A-Za-z0-9_-]{43}")
# RFC 6838 restricted names; parameters (charset, boundary...) are dropped before matching.
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


@dataclass(frozen=True)
class StoredMedia:
    key: str
    content_type: str
    file_name: str | None
    size: int
    sha256: str
    stored_at: float  # epoch seconds


def clean_content_type(value: str | None) -> str | None:
    """``type/subtype`` in lower case, or None when the value is not a plain media type.

    The result is served back verbatim as a Content-Type header, so nothing else may pass.
    """
    if not value:
        return None
    token = value.split(";", 1)[0].strip().lower()
    return token if _MIME.fullmatch(token) else None


def clean_file_name(value: str | None) -> str | None:
    """A display name only: basename, printable characters, at most 200 characters."""
    if not value:
        return None
    # Both separators: a name from a Windows client must not smuggle a path either.
    base = re.split(r"[/\\]", value)[-1]
    name = "".join(ch for ch in base if ch.isprintable()).strip()[:MAX_FILE_NAME].strip()
    return None if name in ("", ".", "..") else name


class MediaStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # Media are private messages: readable by this service's user only.
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    @staticmethod
    def new_key() -> str:
        return secrets.token_urlsafe(32)

    @staticmethod
    def is_valid_key(key: str) -> bool:
        # fullmatch, not match + "$": "$" would accept a trailing newline.
        return isinstance(key, str) and _KEY.fullmatch(key) is not None

    def temp_path(self) -> Path:
        """A fresh path for a download in progress; the caller creates the file."""
        return self.root / f"{TEMP_PREFIX}{secrets.token_hex(16)}"

    def commit(
        self, temp: Path, *, content_type: str, file_name: str | None, size: int, sha256: str
    ) -> StoredMedia:
        """Move a finished download into place under a new key and write its sidecar.

        The data is fsynced before any rename so a crash never leaves a named but truncated
        file; the sidecar goes in first, and ``get`` needs both, so a reader never sees media
        without metadata. On any error (e.g. ``ENOSPC``) whatever this call created is removed
        before the error propagates; ``temp`` stays the caller's to remove.
        """
        media = StoredMedia(
            key=self.new_key(),
            content_type=clean_content_type(content_type) or DEFAULT_CONTENT_TYPE,
            file_name=clean_file_name(file_name),
            size=size,
            sha256=sha256,
            stored_at=time.time(),
        )
        final = self.root / media.key
        sidecar = self._sidecar(media.key)
        sidecar_temp = self.temp_path()
        placed: list[Path] = []
        try:
            _fsync_file(temp)
            with sidecar_temp.open("xb") as fh:
                fh.write(orjson.dumps(dataclasses.asdict(media)))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(sidecar_temp, sidecar)
            placed.append(sidecar)
            os.replace(temp, final)
            placed.append(final)
            _fsync_dir(self.root)
        except BaseException:
            # A full disk (ENOSPC) or any other failure: nothing half-stored stays behind, not
            # even a committed pair the caller will never hear of. The caller removes `temp`.
            for path in (sidecar_temp, *reversed(placed)):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            raise
        return media

    def get(self, key: str) -> tuple[Path, StoredMedia] | None:
        """The file and its metadata, or None for an invalid or unknown key."""
        if not self.is_valid_key(key):
            return None
        path = self.root / key
        media = self._read_sidecar(key)
        if media is None or not path.is_file():
            return None
        return path, media

    def purge(self, older_than_seconds: float, now: float | None = None) -> int:
        """Delete media (file + sidecar) stored more than ``older_than_seconds`` ago.

        Also deletes temp files left behind by a crash once they are an hour old (younger ones
        may belong to a download in progress). Returns the number of media items removed.
        """
        now = time.time() if now is None else now
        cutoff = now - older_than_seconds
        ages: dict[str, float] = {}  # key -> stored_at (or mtime for orphans)
        with os.scandir(self.root) as entries:
            for entry in entries:
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue  # removed concurrently
                if entry.name.startswith(TEMP_PREFIX):
                    if mtime < now - STALE_TEMP_SECONDS:
                        Path(entry.path).unlink(missing_ok=True)
                    continue
                key = entry.name.removesuffix(".json")
                if self.is_valid_key(key):
                    ages[key] = min(ages.get(key, mtime), mtime)
        removed = 0
        for key, mtime in ages.items():
            media = self._read_sidecar(key)
            stored_at = media.stored_at if media is not None else mtime
            if stored_at < cutoff:
                # Media file first: once it is gone, get() already answers None.
                (self.root / key).unlink(missing_ok=True)
                self._sidecar(key).unlink(missing_ok=True)
                removed += 1
        return removed

    def _sidecar(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def _read_sidecar(self, key: str) -> StoredMedia | None:
        try:
            raw = orjson.loads(self._sidecar(key).read_bytes())
            return StoredMedia(
                key=key,
                content_type=str(raw["content_type"]),
                file_name=None if raw["file_name"] is None else str(raw["file_name"]),
                size=int(raw["size"]),
                sha256=str(raw["sha256"]),
                stored_at=float(raw["stored_at"]),
            )
        except (OSError, KeyError, TypeError, ValueError):  # incl. orjson.JSONDecodeError
            return None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Makes the renames durable; a directory fd is only fsyncable on POSIX.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
