"""Caption and metadata filters. Each raises DropSample(stage, reason) for an input it rejects."""

from __future__ import annotations

import math

from pipelines.config import CaptionFilterConfig
from pipelines.images import DropSample


def _number(row: dict, column: str, setting: str) -> float:
    """A metadata number a threshold is checked against. A value that is missing, null or NaN cannot
    pass a threshold: the row is dropped as "<column> unknown" (set the threshold to null to keep such
    rows)."""
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise DropSample("metadata", f"{column} unknown ({'missing' if value is None else 'NaN'}) while "
                                     f"{setting} is set")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DropSample("metadata", f"{column} is not a number: {value!r}") from None
    if math.isnan(number):
        raise DropSample("metadata", f"{column} unknown (NaN) while {setting} is set")
    return number


def check_caption(caption, cfg: CaptionFilterConfig) -> str:
    """Return the cleaned caption or raise: empty, non-text, too short/long, blocklisted."""
    if caption is None or (isinstance(caption, float) and math.isnan(caption)):
        raise DropSample("caption", "caption is missing (null/NaN)")
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError:
            raise DropSample("caption", "caption is not valid UTF-8") from None
    if not isinstance(caption, str):
        raise DropSample("caption", f"caption is not text ({type(caption).__name__})")
    try:  # metadata read with surrogateescape keeps undecodable bytes as lone surrogates
        caption.encode("utf-8")
    except UnicodeEncodeError:
        raise DropSample("caption", "caption is not valid UTF-8") from None
    text = " ".join(caption.split())
    if not text:
        raise DropSample("caption", "caption is empty")
    if text in ("nan", "NaN", "NAN"):  # how CSV writers spell a missing value
        raise DropSample("caption", "caption is missing (null/NaN)")
    if len(text) < cfg.min_chars:
        raise DropSample("caption", f"caption shorter than {cfg.min_chars} chars")
    if len(text) > cfg.max_chars:
        raise DropSample("caption", f"caption longer than {cfg.max_chars} chars")
    lowered = text.lower()
    for word in cfg.blocklist:
        if word.lower() in lowered:
            raise DropSample("caption", f"caption contains blocklisted term {word!r}")
    return text


def check_metadata(row: dict, cfg: CaptionFilterConfig) -> None:
    """LAION metadata thresholds: punsafe/pwatermark maxima, similarity/aesthetic minima; a threshold
    that is null is not applied."""
    for column, limit, is_max in (("punsafe", cfg.punsafe_max, True), ("pwatermark", cfg.pwatermark_max, True),
                                  ("similarity", cfg.similarity_min, False), ("aesthetic", cfg.aesthetic_min, False)):
        if limit is None:
            continue
        value = _number(row, column, f"caption.{column}_{'max' if is_max else 'min'}")
        if (value > limit) if is_max else (value < limit):
            raise DropSample("metadata", f"{column} {value:g} {'>' if is_max else '<'} {limit:g}")
