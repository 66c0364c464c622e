"""Finding and fetching the media file behind a metadata row, local or on S3.

The media folder is listed once on the driver (one recursive listing instead of an existence probe
per row and extension, which on S3 would be one request each) into an index from the file's path
without extension to its URI; tasks receive the index entries of their own rows.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath

from pipelines import storage
from pipelines.images import DropSample
from pipelines.storage import S3Config

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac") + VIDEO_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def index_media(media: str, s3: S3Config | None = None) -> dict[str, list[str]]:
    """``{relative path without extension: [uri, ...]}`` for every file under ``media`` (any depth)."""
    index: dict[str, list[str]] = {}
    prefix = str(media).rstrip("/") + "/"
    for uri in storage.list_files(media, "", s3, recursive=True):
        rel = uri[len(prefix):]
        stem = str(PurePosixPath(rel).with_suffix("")) if "." in PurePosixPath(rel).name else rel
        index.setdefault(stem, []).append(uri)
    return index


def lookup(index: dict[str, list[str]], candidates: list[str], extensions: tuple[str, ...]) -> str:
    """The media URI for the first candidate stem that has a file; raises DropSample otherwise.

    A file that exists only with a foreign extension (a ``.txt``, an image where a video belongs) is
    a drop with that reason rather than "missing", so the ledger says what to fix.
    """
    for stem in candidates:
        uris = index.get(stem, [])
        usable = [u for u in uris if PurePosixPath(u).suffix.lower() in extensions]
        if usable:
            return usable[0]
        if uris:
            suffixes = ", ".join(sorted({PurePosixPath(u).suffix or "(none)" for u in uris}))
            raise DropSample("fetch", f"wrong file extension {suffixes} for {stem} (expected one of "
                                      f"{' '.join(extensions)})")
    raise DropSample("fetch", f"media file missing (looked for {' or '.join(candidates)})")


def open_source(uri: str, s3: S3Config | None = None):
    """What PyAV/PIL open: the local path as is (the demuxer reads only what it needs), or the
    object's bytes in memory for S3. A zero-byte file is dropped here: no decoder can say more."""
    if storage.is_remote(uri):
        data = storage.read_bytes(uri, s3)
        if not data:
            raise DropSample("decode", "empty file (0 bytes)")
        return io.BytesIO(data)
    path = storage.resolve(uri)[1]
    try:
        size = storage.resolve(uri)[0].get_file_info(path).size
    except OSError as err:
        raise DropSample("fetch", f"cannot stat media file ({err})") from None
    if not size:
        raise DropSample("decode", "empty file (0 bytes)")
    return path
