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
from common.errors import ConfigError
from pipelines.config import PATTERN_FIELDS, pattern_fields
from pipelines.images import DropSample
from common.storage import S3Config

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac") + VIDEO_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def _stem(rel: str) -> str:
    return str(PurePosixPath(rel).with_suffix("")) if "." in PurePosixPath(rel).name else rel


def index_media(media: str, s3: S3Config | None = None, tar_members: bool = False) -> dict[str, list[str]]:
    """``{relative path without extension: [uri, ...]}`` for every file under ``media`` (any depth),
    each also under its bare name (so ``part01/Y{ytid}.wav`` is found as ``Y{ytid}``; the same name in
    two folders is then an ambiguous match, reported as such).

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
        stem = _stem(uri[len(prefix):])
        index.setdefault(stem, []).append(uri)
        if "/" in stem:  # also by bare name: downloads are often split into sub-folders (parts, splits)
            index.setdefault(stem.rsplit("/", 1)[1], []).append(uri)
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


# A way a row's media file may be named: (path relative to --media without extension, the naming
# convention's label for the manifest, a required extension or "" for any accepted one).
Candidate = tuple[str, str, str]


def attach(rows: list[dict], index: dict[str, list[str]], candidates, root: str) -> list[dict]:
    """Give each row its candidate names (tiers, best first) and their index entries, so tasks need
    no global index. ``candidates(row) -> (tiers, looked_for)``: ``looked_for`` is how the ledger
    describes what was searched when nothing is found."""
    for row in rows:
        tiers, looked_for = candidates(row)
        row["_candidates"] = [[c for c in tier if c[0] in index] for tier in tiers]  # only names that exist
        row["_looked_for"] = f"{looked_for} under {root}"
        row["_media"] = {stem: index[stem] for tier in row["_candidates"] for stem, _, _ in tier}
    return rows


def simple_candidates(stems: list[str], label: str) -> tuple[list[list[Candidate]], str]:
    """One tier per stem, in order of preference (e.g. ``page_dir/videoid`` before ``videoid``)."""
    return [[(stem, label, "")] for stem in stems], " or ".join(f"{stem}.*" for stem in stems) or "(no name)"


def lookup(row: dict, extensions: tuple[str, ...]) -> tuple[str, str]:
    """``(uri, naming convention)`` of the row's media file: the first tier of candidates with a
    usable file wins; raises DropSample otherwise.

    Several usable files in the winning tier (``x.wav`` and ``x_30.wav`` style twins, or ``x.wav`` and
    ``x.flac``) are a drop saying so: which one holds the segment would be a guess. A file that exists
    only with a foreign extension (a ``.txt``, an image where a video belongs) is a drop with that
    reason rather than "missing", so the ledger says what to fix.
    """
    index, wrong = row["_media"], None
    for tier in row["_candidates"]:
        found: dict[str, str] = {}
        for stem, label, suffix in tier:
            for uri in index.get(stem, []):
                ext = PurePosixPath(uri).suffix.lower()
                if ext in extensions and (not suffix or ext == suffix.lower()):
                    found.setdefault(uri, label)
                elif wrong is None:
                    wrong = (stem, sorted({PurePosixPath(u).suffix or "(none)" for u in index[stem]}))
        if len(found) == 1:
            return next(iter(found.items()))
        if len(found) > 1:
            names = ", ".join(PurePosixPath(u).name for u in sorted(found))
            raise DropSample("fetch", f"ambiguous media: {len(found)} files match ({names}); keep one, or set "
                                      f"media.pattern")
    if wrong is not None:
        raise DropSample("fetch", f"wrong file extension {', '.join(wrong[1])} for {wrong[0]} (expected one of "
                                  f"{' '.join(extensions)})")
    raise DropSample("fetch", f"media file missing (looked for {row['_looked_for']})")


EXT_SLOT = "\x00"


def pattern_candidates(pattern: str, values: dict) -> tuple[list[list[Candidate]], str]:
    """The one candidate ``media.pattern`` names for a row (``{ext}``: any accepted extension)."""
    try:
        rel = pattern.format(**values, ext=EXT_SLOT)
    except (IndexError, KeyError, ValueError, TypeError) as err:
        return [], f"{pattern} (cannot be filled for this row: {type(err).__name__}: {err})"
    shown = rel.replace(EXT_SLOT, "*")
    if rel.endswith("." + EXT_SLOT):
        return [[(rel[: -len(EXT_SLOT) - 1], "media.pattern", "")]], shown
    return [[(_stem(rel), "media.pattern", PurePosixPath(rel).suffix)]], shown


def check_pattern(pattern: str, style: str, sample: dict) -> None:
    """A ``media.pattern`` must use only ``style``'s fields and format them: else a config error."""
    fields = PATTERN_FIELDS[style]
    for name in pattern_fields(pattern):
        if name not in fields:
            raise ConfigError("prepare config", "media.pattern",
                              f"{pattern!r}: unknown field {name!r} for {style} (fields: {', '.join(fields)})")
    if "{ext" in pattern and not pattern.endswith(".{ext}"):
        raise ConfigError("prepare config", "media.pattern", f"{pattern!r}: {{ext}} must be the end (\".{{ext}}\")")
    try:
        pattern.format(**sample, ext="wav")
    except (IndexError, KeyError, ValueError, TypeError) as err:
        raise ConfigError("prepare config", "media.pattern", f"{pattern!r}: {err}") from None


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
