"""Finding and fetching the media file behind a metadata row, local or on S3.

The media folder is listed once on the driver (one recursive listing instead of an existence probe
per row and extension, which on S3 would be one request each) into an index from the file's path
without extension to its URI; tasks receive the index entries of their own rows.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import PurePosixPath

from common import storage
from pipelines.images import DropSample
from common.storage import S3Config

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac") + VIDEO_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def _stem(rel: str) -> str:
    return str(PurePosixPath(rel).with_suffix("")) if "." in PurePosixPath(rel).name else rel


def index_media(media: str, s3: S3Config | None = None, tar_members: bool = False) -> dict[str, list[str]]:
    """``{relative path without extension: [uri, ...]}`` for every file under ``media`` (any depth).

    With ``tar_members``, the members of ``.tar`` files (img2dataset's output) are indexed by their
    sample key too, as member URIs that ``read_media_bytes`` reads by byte range.
    """
    index: dict[str, list[str]] = {}
    prefix = str(media).rstrip("/") + "/"
    for uri in storage.list_files(media, "", s3, recursive=True):
        if tar_members and uri.endswith(".tar"):
            for stem, member_uri in tar_member_uris(uri, s3):
                index.setdefault(stem, []).append(member_uri)
            continue
        index.setdefault(_stem(uri[len(prefix):]), []).append(uri)
    return index


def tar_member_uris(tar_uri: str, s3: S3Config | None = None) -> list[tuple[str, str]]:
    """``(key, "<tar uri>#<offset>+<size>/<member>")`` per regular file of a tar; only the headers are
    read (tarfile seeks over member data), so indexing does not download the images."""
    fs, path = storage.resolve(tar_uri, s3)

    def scan():
        with fs.open_input_file(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            return [(_stem(m.name), f"{tar_uri}#{m.offset_data}+{m.size}/{m.name}") for m in tar if m.isfile()]

    try:
        return storage.with_retries(f"indexing {tar_uri}", scan, s3)
    except tarfile.TarError:
        return []  # not a readable tar: its samples show up as missing media in the ledger


def read_media_bytes(uri: str, s3: S3Config | None = None) -> bytes:
    """A media file's bytes, or a tar member's (by byte range, without reading the rest of the tar)."""
    if "#" in uri and ".tar#" in uri:
        tar_uri, rest = uri.split("#", 1)
        span = rest.split("/", 1)[0]
        offset, size = (int(x) for x in span.split("+"))
        fs, path = storage.resolve(tar_uri, s3)

        def read_range():
            with fs.open_input_file(path) as f:
                return f.read_at(size, offset)

        data = storage.with_retries(f"reading {uri}", read_range, s3)
    else:
        data = storage.read_bytes(uri, s3)
    if not data:
        raise DropSample("decode", "empty file (0 bytes)")
    return data


def attach(rows: list[dict], index: dict[str, list[str]], candidates) -> list[dict]:
    """Give each row its candidate stems and their index entries, so tasks need no global index."""
    for row in rows:
        row["_candidates"] = candidates(row)
        row["_media"] = {stem: index[stem] for stem in row["_candidates"] if stem in index}
    return rows


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
