"""Caption and metadata filters. Each raises DropSample(stage, reason) for an input it rejects."""

from __future__ import annotations

import math

from pipelines.config import CaptionFilterConfig
from pipelines.images import DropSample


def _number(row: dict, column: str) -> float | None:
    value = row.get(column)
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DropSample("metadata", f"{column} is not a number: {value!r}") from None
    if math.isnan(value):
        raise DropSample("metadata", f"{column} is NaN")
    return value


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
    """LAION metadata thresholds: punsafe/pwatermark maxima, similarity/aesthetic minima."""
    for column, limit, is_max in (("punsafe", cfg.punsafe_max, True), ("pwatermark", cfg.pwatermark_max, True),
                                  ("similarity", cfg.similarity_min, False), ("aesthetic", cfg.aesthetic_min, False)):
        if limit is None:
            continue
        value = _number(row, column)
        if value is None:
            continue
        if (value > limit) if is_max else (value < limit):
            raise DropSample("metadata", f"{column} {value:g} {'>' if is_max else '<'} {limit:g}")
