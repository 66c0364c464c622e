"""Finding a row's media file under the naming conventions download tools use (no Ray: the lookup runs
on the driver's folder index), ``media.pattern``, and what a file holds (whole recording or segment)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from codiray.cli import main as codiray_main
from common.config import from_dict
from common.errors import ConfigError
from pipelines import media
from pipelines.audio import SEGMENT, WHOLE, placement, read_segment
from pipelines.audioset import media_candidates
from pipelines.config import AudioConfig, MediaConfig, PrepareConfig
from pipelines.images import DropSample
from pipelines.toyworld_media import write_audio

YTID = "x_Ab-3_kQ9w"  # YouTube ids contain '_' and '-'
AUDIOSET_ROW = {"key": YTID, "YTID": YTID, "start_seconds": "30.000", "end_seconds": "40.000"}


def find(root: Path, names: list[str], row: dict, style: str = "audioset", cfg: PrepareConfig | None = None):
    """Lay out empty files named ``names`` under ``root`` and look the row up as a job would."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    [attached] = media.attach([dict(row)], media.index_media(str(root)),
                              media_candidates(style, cfg or PrepareConfig()), str(root))
    uri, naming = media.lookup(attached, media.AUDIO_EXTENSIONS)
    return str(Path(uri).relative_to(root)), naming


@pytest.mark.parametrize("name, naming", [
    (f"{YTID}.wav", "{ytid}"),
    (f"Y{YTID}.flac", "Y{ytid}"),
    (f"{YTID}_30.wav", "{ytid}_{start}"),
    (f"{YTID}_30.000.wav", "{ytid}_{start}"),
    (f"{YTID}_30.0.m4a", "{ytid}_{start}"),
    (f"{YTID}_30000.mp3", "{ytid}_{start}"),
    (f"{YTID}_30_40.wav", "{ytid}_{start}_{end}"),
    (f"{YTID}_30.000_40.000.ogg", "{ytid}_{start}_{end}"),
    (f"{YTID}_30000_40000.wav", "{ytid}_{start}_{end}"),
    (f"Y{YTID}_30.000_40.000.wav", "Y{ytid}_{start}_{end}"),
    (f"part03/{YTID}_30.wav", "{ytid}_{start}"),  # downloads split into sub-folders
])
def test_every_audioset_convention_is_found(tmp_path, name, naming):
    assert find(tmp_path, [name], AUDIOSET_ROW) == (name, naming)


def test_exact_segment_name_beats_the_bare_id(tmp_path):
    assert find(tmp_path, [f"{YTID}.wav", f"{YTID}_30.wav", f"{YTID}_50.wav"], AUDIOSET_ROW)[0] == f"{YTID}_30.wav"


def test_another_segments_file_is_not_this_rows(tmp_path):
    with pytest.raises(DropSample) as drop:
        find(tmp_path, [f"{YTID}_50.wav", f"{YTID}_30_45.wav", f"{YTID[:-2]}.wav"], AUDIOSET_ROW)
    assert drop.value.stage == "fetch" and "media file missing" in drop.value.reason
    assert f"{YTID}.*" in drop.value.reason and str(tmp_path) in drop.value.reason


@pytest.mark.parametrize("names", [
    [f"{YTID}_30.wav", f"{YTID}_30.000.wav"],     # two spellings of the same segment
    [f"{YTID}.wav", f"Y{YTID}.wav"],              # two mirrors' naming, no segment file
    [f"{YTID}_30.wav", f"{YTID}_30.flac"],        # one name, two formats
    [f"a/{YTID}_30.wav", f"b/{YTID}_30.wav"],     # the same name in two sub-folders
])
def test_ambiguous_candidates_are_a_ledger_row_not_a_guess(tmp_path, names):
    with pytest.raises(DropSample) as drop:
        find(tmp_path, names, AUDIOSET_ROW)
    assert drop.value.stage == "fetch" and "ambiguous media: 2 files match" in drop.value.reason
    assert all(Path(n).name in drop.value.reason for n in names)


def test_audiocaps_prefers_its_own_id_then_the_youtube_segment(tmp_path):
    row = {"key": "91139", "audiocap_id": "91139", "youtube_id": YTID, "start_time": "30", "caption": "x"}
    assert find(tmp_path / "a", ["91139.wav", f"{YTID}_30.wav"], row, "audiocaps") == ("91139.wav", "{audiocap_id}")
    assert find(tmp_path / "b", [f"{YTID}.wav", f"{YTID}_30000_40000.flac"], row, "audiocaps") == \
        (f"{YTID}_30000_40000.flac", "{ytid}_{start}_{end}")


@pytest.mark.parametrize("pattern, names, found", [
    ("{ytid}_{start:.0f}.{ext}", [f"{YTID}_30.wav", f"{YTID}.wav"], f"{YTID}_30.wav"),
    ("clips/{ytid[0]}/{ytid}.flac", [f"clips/x/{YTID}.flac", f"clips/x/{YTID}.wav", f"clips/y/{YTID}.flac"],
     f"clips/x/{YTID}.flac"),
])
def test_media_pattern_names_the_file(tmp_path, pattern, names, found):
    cfg = PrepareConfig(media=MediaConfig(pattern=pattern))
    uri_name, naming = find(tmp_path, names, AUDIOSET_ROW, cfg=cfg)
    assert (uri_name, naming) == (found, "media.pattern")


def test_media_pattern_with_a_wrong_field_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown field 'yid'"):
        from_dict(PrepareConfig, {"media": {"pattern": "{yid}_{start:.0f}.{ext}"}}, source="prep.yaml")
    with pytest.raises(ConfigError, match="attribute access"):
        from_dict(PrepareConfig, {"media": {"pattern": "{ytid.__class__}.wav"}})
    with pytest.raises(ConfigError, match="unknown field 'videoid' for audioset"):
        media.check_pattern("{videoid}.{ext}", "audioset", {"ytid": "y", "start": 1.0, "end": 2.0, "key": "k"})
    with pytest.raises(ConfigError, match="Unknown format code"):
        media.check_pattern("{ytid:.0f}.{ext}", "audioset", {"ytid": "y", "start": 1.0, "end": 2.0, "key": "k"})


def test_cli_refuses_a_bad_pattern_with_one_line_and_exit_2(tmp_path, capsys):
    code = codiray_main(["prepare", "audioset", "--metadata", str(tmp_path), "--media", str(tmp_path), "--out",
                         str(tmp_path / "out"), "media.pattern={ytid}_{begin}.{ext}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown field 'begin'" in err


def test_placement_is_decided_from_duration():
    assert placement(600.0, 30.0, 40.0) == (WHOLE, 30.0, 40.0)         # a whole recording
    assert placement(10.0, 30.0, 40.0) == (SEGMENT, 0.0, 10.0)         # a downloaded 10 s segment
    assert placement(39.8, 30.0, 40.0)[0] == WHOLE                     # container durations are rounded
    assert placement(8.2, 30.0, 40.0) == (SEGMENT, 0.0, 10.0)          # a segment cut short by the video's end


def step_file(path: Path, seconds: float, tone_from: float, tone_to: float, rate: int = 16000) -> Path:
    samples = np.zeros((1, int(seconds * rate)), dtype=np.float32)
    samples[0, int(tone_from * rate):int(tone_to * rate)] = 0.5
    return write_audio(path, rate=rate, samples=samples)


def test_whole_recording_is_cut_at_start_and_segment_file_read_from_zero(tmp_path):
    cfg = AudioConfig(sample_rate=8000, seconds=2.0)
    # whole 6 s recording, level 0.5 during 3-4 s: the segment 3-5 s starts loud and falls at 1 s
    tensors, held = read_segment(str(step_file(tmp_path / "whole.flac", 6.0, 3.0, 4.0)), 3.0, 5.0, cfg)
    audio = tensors["audio"].astype(np.float32)
    assert held == WHOLE
    assert np.abs(audio[400:7600]).min() > 0.4 and np.abs(audio[8400:]).max() < 0.05
    # a 2 s file for the row's 30-32 s: it is the segment; loud during its first 0.5 s only
    tensors, held = read_segment(str(step_file(tmp_path / "seg.flac", 2.0, 0.0, 0.5)), 30.0, 32.0, cfg)
    audio = tensors["audio"].astype(np.float32)
    assert held == SEGMENT
    assert np.abs(audio[400:3600]).min() > 0.4 and np.abs(audio[4400:]).max() < 0.05
