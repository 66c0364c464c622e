"""What a prepare job tells its user, without Ray: the drop-fraction failure line, the per-stage summary,
the one progress line, and LAION metadata thresholds against unknown values."""

from __future__ import annotations

import io
import math

import pytest

from pipelines import shards
from pipelines.config import CaptionFilterConfig
from pipelines.filters import check_metadata
from pipelines.images import DropSample
from pipelines.job import ProgressLine, TooManyDrops, check_drops, drop_summary


def manifest_for(tmp_path, num_input: int, dropped: list[dict], written: list[str], stages: list[str]) -> dict:
    """A real manifest: one committed shard record with these outcomes, folded by ``finalize``."""
    record = shards.ShardRecord("shard-000000", sorted(written + [d["key"] for d in dropped]), written=written)
    for d in dropped:
        record.drop(d["key"], d["stage"], d["reason"])
    shards.commit_shard(str(tmp_path), record, [])
    return shards.finalize(str(tmp_path), num_input, "audiocaps", stages=stages)


def missing(key: str) -> dict:
    return {"key": key, "stage": "fetch", "reason": f"media file missing (looked for {key}.* under /data/audio)"}


def test_everything_dropped_at_fetch_fails_with_one_line(tmp_path):
    dropped = [missing(f"{9100 + i}") for i in range(12)] + [
        {"key": "9200", "stage": "fetch", "reason": "wrong file extension .txt for 9200 (expected one of .wav)"}]
    manifest = manifest_for(tmp_path, 13, dropped, [], ["metadata", "fetch", "decode"])
    with pytest.raises(TooManyDrops) as failed:
        check_drops(manifest, str(tmp_path), 0.5)
    line = str(failed.value)
    assert "\n" not in line and failed.value.exit_code == 1
    assert line.startswith("13 of 13 inputs dropped at fetch: media file missing (looked for 9100.* under /data/audio)")
    assert "12 like this, e.g. key 9100" in line and line.endswith(f"see {tmp_path}/dropped.parquet")
    # the ledger and manifest were written before the failure
    assert (tmp_path / "dropped.parquet").is_file() and (tmp_path / "manifest.json").is_file()


def test_drop_fraction_is_per_stage_and_configurable(tmp_path):
    # 10 inputs: 2 dropped at metadata, then 5 of the remaining 8 at decode (62%)
    dropped = [{"key": f"m{i}", "stage": "metadata", "reason": "start_seconds is not a valid time: 'x'"}
               for i in range(2)]
    dropped += [{"key": f"d{i}", "stage": "decode", "reason": f"not a media file PyAV can open (err {i})"}
                for i in range(5)]
    manifest = manifest_for(tmp_path, 10, dropped, ["w0", "w1", "w2"], ["metadata", "fetch", "decode"])
    with pytest.raises(TooManyDrops, match=r"^5 of 8 inputs dropped at decode: not a media file PyAV can open"):
        check_drops(manifest, str(tmp_path), 0.5)
    check_drops(manifest, str(tmp_path), 0.7)  # 62.5% is within 0.7: the job passes
    lines = drop_summary(manifest)
    assert len(lines) == 2
    assert "metadata" in lines[0] and "dropped 2 of 10" in lines[0] and "start_seconds is not a valid time" in lines[0]
    assert "decode" in lines[1] and "dropped 5 of 8" in lines[1] and "(5): not a media file PyAV can open" in lines[1]


def test_zero_samples_fail_even_when_the_fraction_allows_it(tmp_path):
    manifest = manifest_for(tmp_path, 2, [missing("a"), missing("b")], [], ["fetch"])
    with pytest.raises(TooManyDrops, match="2 of 2 inputs dropped at fetch"):
        check_drops(manifest, str(tmp_path), 1.0)


def test_reason_kinds_group_reasons_that_differ_only_in_details():
    assert shards.reason_kind("media file missing (looked for x.* under /a)") == "media file missing"
    assert shards.reason_kind("CLIP similarity 0.2012 < 0.28 (ViT-B-32)") == "CLIP similarity N < N"


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_one_line_redrawn_on_a_terminal():
    screen = Terminal()
    progress = ProgressLine("prepare webvid", 3, screen)
    for written, dropped in ((2, 1), (3, 0), (1, 2)):
        progress.update(written, dropped)
    progress.close()
    text = screen.getvalue()
    assert text.count("\n") == 1 and text.count("\r") == 4
    assert text.rsplit("\r", 1)[1].startswith("\x1b[Kprepare webvid: 3/3 shards, 6 inputs written, 3 dropped")


def test_progress_is_a_periodic_line_in_a_log():
    log = io.StringIO()
    progress = ProgressLine("prepare laion", 100, log, every_s=3600.0)
    for _ in range(50):
        progress.update(1, 0)
    progress.close()
    assert log.getvalue() == ""  # nothing before the period is up; no carriage returns in a log
    progress.every_s = 0.0
    progress.update(1, 0)
    assert log.getvalue().count("\n") == 1 and "51/100 shards" in log.getvalue() and "\r" not in log.getvalue()


@pytest.mark.parametrize("value", [None, math.nan, float("nan")])
def test_unknown_similarity_is_dropped_only_when_a_threshold_is_set(value):
    row = {"similarity": value, "punsafe": 0.1, "pwatermark": 0.1}
    with pytest.raises(DropSample) as drop:
        check_metadata(row, CaptionFilterConfig(similarity_min=0.3))
    assert drop.value.stage == "metadata" and drop.value.reason.startswith("similarity unknown")
    check_metadata(row, CaptionFilterConfig(similarity_min=None))  # no threshold: kept


def test_known_similarity_is_compared_with_the_threshold():
    check_metadata({"similarity": 0.31, "punsafe": 0.1, "pwatermark": 0.1}, CaptionFilterConfig(similarity_min=0.3))
    with pytest.raises(DropSample, match="similarity 0.29 < 0.3"):
        check_metadata({"similarity": 0.29, "punsafe": 0.1, "pwatermark": 0.1}, CaptionFilterConfig(similarity_min=0.3))


def test_a_threshold_on_a_column_the_corpus_lacks_is_a_usage_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from common.errors import UsageError
    from pipelines.config import PrepareConfig
    from pipelines.laion import read_metadata

    path = tmp_path / "meta.parquet"
    pq.write_table(pa.Table.from_pylist([{"key": "a", "TEXT": "x", "punsafe": 0.1, "pwatermark": 0.1}]), path)
    cfg = PrepareConfig(caption=CaptionFilterConfig(similarity_min=0.3))
    with pytest.raises(UsageError, match="no 'similarity' column but caption.similarity_min is set"):
        read_metadata(str(path), cfg)
    assert [r["key"] for r in read_metadata(str(path), PrepareConfig())] == ["a"]


def test_ray_data_info_lines_stay_off_the_console_during_the_job():
    import logging

    from pipelines.job import ray_data_console_warnings_only

    console = io.StringIO()
    handler = logging.StreamHandler(console)
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("ray.data")
    logger.addHandler(handler)
    old_level, logger.level = logger.level, logging.INFO
    try:
        with ray_data_console_warnings_only():
            logger.info("Starting execution of Dataset")
            logger.warning("Progress bars disabled. To enable, set ...")
            logger.warning("a warning that means something")
        logger.info("after the job")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert console.getvalue().splitlines() == ["a warning that means something", "after the job"]
