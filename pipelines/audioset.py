"""`codiray prepare audioset|audiocaps`: segment CSVs + audio (or video) files -> shards of 10 s clips.

AudioSet: ``YTID, start_seconds, end_seconds, positive_labels`` after three ``#`` lines, labels are
quoted MID lists turned into a caption with ``class_labels_indices.csv`` ("Speech, Music").
AudioCaps: ``audiocap_id,youtube_id,start_time,caption``; several captions share one recording.
Each sample: ``audio.npy`` (float16 mono waveform) and/or ``mel.npy`` (float16 log-mel) + ``.json``.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from common.errors import UsageError
from common import storage
from pipelines import media
from pipelines.audio import read_segment
from pipelines.config import PrepareConfig
from pipelines.filters import check_caption
from pipelines.images import DropSample
from pipelines.job import Sample, per_row, run_sharded
from pipelines.metadata import assign_keys, metadata_files, parse_seconds, read_csv_rows
from pipelines.shards import encode_npy

STAGES = ["dedup", "metadata", "caption", "fetch", "decode", "duration"]
AUDIOSET_COLUMNS = ["YTID", "start_seconds", "end_seconds", "positive_labels"]
AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")


def labels_uri(metadata: str, cfg: PrepareConfig) -> str:
    """``cfg.labels`` or ``class_labels_indices.csv`` beside the segment CSV(s)."""
    if cfg.labels:
        return cfg.labels
    first = metadata_files(metadata, (".csv",), cfg.s3)[0]
    return storage.join(str(PurePosixPath(first).parent) if not storage.is_remote(first)
                        else first.rsplit("/", 1)[0], "class_labels_indices.csv")


def read_label_names(uri: str, cfg: PrepareConfig) -> dict[str, str]:
    if not storage.exists(uri, cfg.s3):
        raise UsageError(f"{uri}: AudioSet class_labels_indices.csv not found (set labels=URI)")
    rows = read_csv_rows(uri, cfg.s3, required=("mid", "display_name"))
    return {r["mid"].strip(): r["display_name"].strip() for r in rows}


def read_audioset(metadata: str, cfg: PrepareConfig) -> list[dict]:
    names = read_label_names(labels_uri(metadata, cfg), cfg)
    files = [f for f in metadata_files(metadata, (".csv",), cfg.s3)
             if not f.endswith("class_labels_indices.csv")]
    rows = []
    for file in files:
        rows.extend(read_csv_rows(file, cfg.s3, comment="#", fieldnames=AUDIOSET_COLUMNS))
    for row in assign_keys(rows, "YTID"):
        mids = [m.strip() for m in (row.get("positive_labels") or "").split(",") if m.strip()]
        unknown = [m for m in mids if m not in names]
        row["_labels"] = mids
        row["_caption"] = None if unknown else ", ".join(names[m] for m in mids)
        row["_unknown"] = unknown
    return rows


def audioset_segment(row: dict) -> tuple[str, float, float]:
    """(caption text, start, end) of an AudioSet row, or DropSample for bad metadata."""
    if not (row.get("YTID") or "").strip():
        raise DropSample("metadata", "YTID is empty")
    start, end = parse_seconds(row, "start_seconds"), parse_seconds(row, "end_seconds")
    if row["_unknown"]:
        raise DropSample("metadata", f"unknown label MID(s) {', '.join(row['_unknown'])}")
    if not row["_labels"]:
        raise DropSample("caption", "no positive labels (empty caption)")
    return row["_caption"], start, end


def audiocaps_segment(row: dict, seconds: float) -> tuple[str, float, float]:
    if not (row.get("youtube_id") or "").strip():
        raise DropSample("metadata", "youtube_id is empty")
    start = parse_seconds(row, "start_time")
    return row.get("caption"), start, start + seconds


def read_audiocaps(metadata: str, cfg: PrepareConfig) -> list[dict]:
    return assign_keys(read_csv_rows(metadata, cfg.s3, required=AUDIOCAPS_COLUMNS), "audiocap_id")


def make_row_fn(style: str, cfg: PrepareConfig):
    def one(row: dict) -> list[Sample]:
        if style == "audioset":
            caption, start, end = audioset_segment(row)
        else:
            caption, start, end = audiocaps_segment(row, cfg.audio.seconds)
        caption = check_caption(caption, cfg.caption)
        uri, naming = media.lookup(row, media.AUDIO_EXTENSIONS)
        tensors, held = read_segment(media.open_source(uri, cfg.s3), start, end, cfg.audio)
        meta = {"key": row["key"], "caption": caption, "source": uri, "style": style, "start": start,
                "end": end, "sample_rate": cfg.audio.sample_rate, "seconds": cfg.audio.seconds}
        if style == "audioset":
            meta["labels"] = row["_labels"]
        fields = {f"{name}.npy": encode_npy(array) for name, array in tensors.items()}
        fields["json"] = json.dumps(meta).encode()
        return [{"key": row["key"], "input": row["key"], "fields": fields, "caption": caption, "image": None,
                 "notes": {"media naming": naming, "audio file holds": held}}]

    return one


def time_spellings(seconds: float) -> list[str]:
    """How download tools write a segment time in a file name: integer seconds (``30``), decimals
    (``30.0``, ``30.000``, ``30.5``) or milliseconds (``30000``)."""
    out = [str(int(seconds))] if float(seconds).is_integer() else []
    out += [f"{seconds:.1f}", f"{seconds:.2f}", f"{seconds:.3f}", f"{seconds:g}"]
    millis = seconds * 1000
    if abs(millis - round(millis)) < 1e-6:
        out.append(str(int(round(millis))))
    return list(dict.fromkeys(out))


def segment_names(ytid: str, start: float | None, end: float | None) -> tuple[list, list]:
    """(segment-specific candidates, whole-recording candidates) for one YouTube id.

    Exact ``{ytid}_{start}`` / ``{ytid}_{start}_{end}`` names (optionally ``Y``-prefixed) come first:
    a folder holding both ``x.wav`` and ``x_30.wav`` means the second is this row's segment. The id is
    never split at ``_`` (YouTube ids contain ``_`` and ``-``): names are built from the row, not parsed."""
    exact, bare = [], [(ytid, "{ytid}", ""), (f"Y{ytid}", "Y{ytid}", "")]
    if start is not None:
        for prefix in ("", "Y"):
            for s in time_spellings(start):
                exact.append((f"{prefix}{ytid}_{s}", f"{prefix}{{ytid}}_{{start}}", ""))
                for e in time_spellings(end) if end is not None else []:
                    exact.append((f"{prefix}{ytid}_{s}_{e}", f"{prefix}{{ytid}}_{{start}}_{{end}}", ""))
    return exact, bare


def _seconds(row: dict, column: str) -> float | None:
    try:
        return parse_seconds(row, column)
    except DropSample:
        return None  # the row is dropped at "metadata" before it looks for media


def pattern_values(style: str, row: dict) -> dict:
    """The fields a ``media.pattern`` can use for this row."""
    if style == "audioset":
        start, end = _seconds(row, "start_seconds"), _seconds(row, "end_seconds")
        return {"ytid": (row.get("YTID") or "").strip(), "start": start, "end": end, "key": row["key"]}
    start = _seconds(row, "start_time")
    return {"audiocap_id": (row.get("audiocap_id") or "").strip(), "ytid": (row.get("youtube_id") or "").strip(),
            "start": start, "end": None if start is None else start + 10.0, "key": row["key"]}


def media_candidates(style: str, cfg: PrepareConfig):
    """Candidate file names per row, best tier first. AudioSet: ``{ytid}_{start}[_{end}]`` then
    ``{ytid}`` (each also ``Y``-prefixed); AudioCaps: ``{audiocap_id}`` first, then the same by
    ``youtube_id`` (AudioCaps segments are 10 s from ``start_time``). ``media.pattern`` replaces them."""
    def candidates(row: dict):
        values = pattern_values(style, row)
        if cfg.media.pattern:
            return media.pattern_candidates(cfg.media.pattern, values)
        tiers = []
        if style == "audiocaps" and values["audiocap_id"]:
            tiers.append([(values["audiocap_id"], "{audiocap_id}", "")])
        ytid = values["ytid"]
        if ytid:
            exact, bare = segment_names(ytid, values["start"], values["end"])
            tiers += [tier for tier in (exact, bare) if tier]
        shown = [f"{values['audiocap_id']}.*"] if style == "audiocaps" and values["audiocap_id"] else []
        if ytid:
            when = f"{values['start']:g}" if values["start"] is not None else "{start}"
            shown.append(f"{ytid}.*, Y{ytid}.* or {ytid}_{when}[_{{end}}].* (times as seconds, decimals or ms; "
                         f"Y-prefixed too)")
        return tiers, " or ".join(shown) or "(no id in the row)"

    return candidates


def prepare_audio(style: str, metadata: str, media_uri: str, out: str, cfg: PrepareConfig) -> dict:
    """Run the AudioSet or AudioCaps job end to end and return the manifest."""
    if cfg.caption.clip.enabled:
        raise UsageError("caption.clip.enabled: the CLIP filter scores images; audio styles have none")
    rows = read_audioset(metadata, cfg) if style == "audioset" else read_audiocaps(metadata, cfg)
    if cfg.media.pattern:
        media.check_pattern(cfg.media.pattern, style, {"ytid": "dQw4w9WgXcQ", "start": 30.0, "end": 40.0,
                                                       "key": "k", "audiocap_id": "91139"})
    rows = media.attach(rows, media.index_media(media_uri, cfg.s3), media_candidates(style, cfg), media_uri)
    return run_sharded(rows, out, style, cfg, per_row(make_row_fn(style, cfg)), STAGES)
