"""`codiray train`'s two forms: --recipe (one stage, one shard set) and --schedule (a DAG, STYLE=URI
shard sets). Mistakes are one line and exit 2 before Ray starts."""

from __future__ import annotations

import pytest

from codiray.cli import main


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_schedule_without_the_data_style_it_needs_is_one_line(capsys, tmp_path):
    assert main(["train", "--schedule", "engine_debug", "--storage-path", str(tmp_path)]) == 2
    err = _error(capsys)
    assert "laion" in err and "--data" in err
    assert not any(tmp_path.iterdir()), "nothing may be written before the schedule can start"


def test_schedule_data_must_be_style_equals_uri(capsys, tmp_path):
    assert main(["train", "--schedule", "engine_debug", "--data", str(tmp_path)]) == 2
    assert "expected STYLE=URI" in _error(capsys)


def test_recipe_takes_one_shard_set(capsys, tmp_path):
    assert main(["train", "--recipe", "text_to_image_demo_debug", "--data", "a", "--data", "b"]) == 2
    assert "--data 2 times" in _error(capsys)


def test_recipe_and_schedule_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--recipe", "text_to_image_demo_debug", "--schedule", "engine_debug"])
    assert exit_info.value.code == 2
    assert "not allowed with" in _error(capsys)
