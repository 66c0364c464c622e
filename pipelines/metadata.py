"""Reading the corpora's metadata tables (CSV/parquet, a file or a folder, local or S3) into rows.

Text is decoded leniently (``surrogateescape``) so one non-UTF-8 caption does not sink the whole
file: the bad row reaches the caption filter, which drops it with "not valid UTF-8".
"""

from __future__ import annotations

import csv
import io
import math
import re

from common.errors import UsageError
from common import storage
from pipelines.images import DropSample
from common.storage import S3Config

_ISO_DURATION = re.compile(r"^P(?:(\d+)D)?T?(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?$")


def metadata_files(uri: str, suffixes: tuple[str, ...], s3: S3Config | None = None) -> list[str]:
    """``uri`` itself if it is a file, else the files with one of ``suffixes`` directly under it."""
    fs, path = storage.resolve(uri, s3)
    info = storage.with_retries(f"reading {uri}", lambda: fs.get_file_info(path), s3)
    if info.type.name == "File":
        return [uri]
    if info.type.name == "NotFound":
        raise UsageError(f"{uri}: metadata not found")
    files = [f for f in storage.list_files(uri, "", s3) if f.lower().endswith(suffixes)]
    if not files:
        raise UsageError(f"{uri}: no metadata files ({' '.join(suffixes)}) in this folder")
    return files


def read_csv_rows(uri: str, s3: S3Config | None = None, comment: str | None = None,
                  fieldnames: list[str] | None = None, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of one CSV or of every CSV in a folder (in file-name order)."""
    rows: list[dict] = []
    for file in metadata_files(uri, (".csv", ".tsv"), s3):
        if not file.lower().endswith((".csv", ".tsv")):
            raise UsageError(f"{file}: expected a .csv (or .tsv) metadata file for this corpus style")
        text = storage.read_bytes(file, s3).decode("utf-8", errors="surrogateescape")
        lines = [ln for ln in text.splitlines() if not (comment and ln.startswith(comment))]
        reader = csv.DictReader(lines, fieldnames=fieldnames, skipinitialspace=True,
                                delimiter="\t" if file.endswith(".tsv") else ",")
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise UsageError(f"{file}: metadata is missing column(s) {', '.join(missing)} "
                             f"(has: {', '.join(reader.fieldnames or [])})")
        rows.extend(dict(r) for r in reader)
    return rows


def assign_keys(rows: list[dict], column: str) -> list[dict]:
    """Each row's sample ``key`` from ``column`` (made WebDataset-safe), or ``row<index>`` when empty."""
    from pipelines.shards import sanitize_key

    for index, row in enumerate(rows):
        value = (row.get(column) or "").strip()
        row["key"] = sanitize_key(value) if value else f"row{index:09d}"
    return rows


def parse_iso_duration(text) -> float:
    """WebVid's ``PT00H00M17S`` (ISO-8601 duration) in seconds; DropSample if it is not one."""
    match = _ISO_DURATION.match(str(text).strip()) if text is not None else None
    if not match or not any(match.groups()):
        raise DropSample("metadata", f"duration {text!r} is not an ISO-8601 duration")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


def parse_seconds(row: dict, column: str) -> float:
    """A finite, non-negative number of seconds from a metadata cell, or DropSample naming the cell."""
    value = row.get(column)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DropSample("metadata", f"{column} is not a number: {value!r}") from None
    if math.isnan(number) or math.isinf(number) or number < 0:
        raise DropSample("metadata", f"{column} is not a valid time: {value!r}")
    return number


def csv_bytes(rows: list[dict], columns: list[str]) -> bytes:
    """Rows as CSV bytes (used by tests and the benchmark to write metadata to any store)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")
