"""The console entry point: helpful --help, and one clear line + exit 2 for bad usage or config."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from codiray.cli import main

SUBCOMMANDS = ("prepare", "train", "generate", "demo", "submit", "jobs", "bench", "eval", "convert", "report")


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for sub in SUBCOMMANDS:
        assert sub in out


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_each_subcommand_has_help(capsys, sub):
    with pytest.raises(SystemExit) as exit_info:
        main([sub, "--help"])
    assert exit_info.value.code == 0
    assert "usage: codiray " + sub in capsys.readouterr().out


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "codiray.cli", *args], capture_output=True, text=True, timeout=120)


def test_bad_config_key_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"optim": {"learning_rate": 1e-3}}))
    proc = run_cli("train", "--config", str(bad), "--data", str(tmp_path))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("codiray: error: ") and str(bad) in lines[0] and "'optim.learning_rate'" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(300)  # eight CLI processes: 68 s in all on a 2-core AMD EPYC (AVX2), over half the default
def test_bad_usage_is_one_line_exit_2(tmp_path):
    for args in (("train", "--recipe", "nope"), ("frobnicate",), ("train", "--data", str(tmp_path), "stray"),
                 ("generate", "--checkpoint", str(tmp_path / "missing"), "--prompt", "x"),
                 ("train", "--data", str(tmp_path), "max_steps=abc"),
                 ("train", "--data", str(tmp_path), "optim=3", "optim.lr=1"),
                 ("generate", "--checkpoint", str(tmp_path), "--prompt", "x", "--stepz=3"),
                 ("generate", "--checkpoint", str(tmp_path), "--prompt", "x", "steps=3")):
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("codiray: error:"), (args, proc.stderr)


def test_flag_values_stay_strings(tmp_path):
    from argparse import Namespace

    from training.cli import resolve_train_config

    args = Namespace(recipe="text_to_image_demo_debug", config=None, overrides=["max_steps=4"],
                     name="2024", storage_path="on", data=["007"])
    cfg = resolve_train_config(args)
    assert (cfg.name, cfg.storage_path, cfg.data.path, cfg.max_steps) == ("2024", "on", "007", 4)


def test_demo_with_an_unknown_schedule_is_one_line_exit_2(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "schedule=nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown schedule 'nope'" in err and "codi_demo" in err
    assert not (tmp_path / "d" / "bucket").exists()     # nothing started


def test_demo_with_guidance_for_an_unknown_modality_is_one_line_exit_2(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "generate.guidance={imagee: 3.0}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "generate.guidance" in err and "imagee" in err
