"""`codiray generate --cascade` on the cascade that the session's ``codi_debug`` run trained (its run
folder in the session's S3 bucket): the base's distilled student (its 4 steps read from its export),
then TSR and SSR; MP4s decoded back by PyAV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from codiray import cli
from common.errors import UsageError
from pipelines.toyworld_probes import read_video
from training.generate_cascade import base_shape, pick_cascade
from training.tasks.cascade import load_cascade

def generate(run: str, out: Path, seed: int = 0, *extra: str) -> dict:
    assert cli.main(["generate", "--cascade", "--checkpoint", str(run), "--prompt", "a red circle moving left",
                     "--prompt", "a blue square moving up", "--frames", "4", "--size", "16", "--steps", "2",
                     "--seed", str(seed), "--out", str(out), *extra]) == 0
    return json.loads((out / "generation.json").read_text())


def frames_of(out: Path, record: dict, stage: str) -> list[np.ndarray]:
    return [read_video(out / s["video"])[0] for s in record["samples"] if s["stage"] == stage]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1800)  # may pay the session's `codiray demo --debug` run (10-15 min)
def test_cascade_cli_samples_student_then_tsr_then_ssr(codi_demo_debug, tmp_path, monkeypatch, capsys):
    _, paths = codi_demo_debug
    run = paths["run"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", paths["s3"].endpoint_url)   # the standard AWS variable names the store
    record = generate(run, tmp_path / "a")
    stages = [s["name"] for s in record["stages"]]
    assert stages == ["base_distillation", "cascade_tsr", "cascade_ssr"]
    assert [s["steps"] for s in record["stages"]] == [4, 2, 2]    # the student's own N, --steps for the rest
    assert load_cascade(record["stages"][0]["export"])[1].sampling_steps == 4
    # the chain ends at --frames x --size: base 2 frames of 8 px, TSR 4 frames of 8 px, SSR 4 frames of 16 px
    for stage, (f, px) in zip(stages, [(2, 8), (4, 8), (4, 16)]):
        videos = frames_of(tmp_path / "a", record, stage)
        assert len(videos) == 2 and all(v.shape == (f, px, px, 3) for v in videos), stage
    again = generate(run, tmp_path / "b")
    other = generate(run, tmp_path / "c", seed=1)
    for stage in stages:
        same = zip(frames_of(tmp_path / "a", record, stage), frames_of(tmp_path / "b", again, stage))
        assert all(np.array_equal(x, y) for x, y in same), stage
    assert not all(np.array_equal(x, y) for x, y in zip(frames_of(tmp_path / "a", record, "cascade_ssr"),
                                                        frames_of(tmp_path / "c", other, "cascade_ssr")))
    # classifier-free guidance (Imagen's w, every stage; its arithmetic: test_cascade_sampling.py) is recorded;
    # the debug cascade's UNets have no attention level, so they never read the prompt: the CLI says so, and
    # the guided videos are the unguided ones: the samples to a level of 8 bits ((1 + w)·v − w·v rounds
    # differently), the decoded MP4s to within H.264's error on top (one 16-px frame is one macroblock, so
    # one changed decision moves it by a few levels: measured max 6, mean 0.13 of a level); two seeds' videos
    # are tens of levels apart on average
    capsys.readouterr()
    guided = generate(run, tmp_path / "d", 0, "--guidance-weight", "3")
    assert (record["guidance_weight"], guided["guidance_weight"]) == (0.0, 3.0)
    assert "no stage of this cascade reads the prompt" in capsys.readouterr().out
    for stage in stages:
        for x, y, z in zip(frames_of(tmp_path / "a", record, stage), frames_of(tmp_path / "d", guided, stage),
                           frames_of(tmp_path / "c", other, stage)):
            guided_gap, seed_gap = (np.abs(x.astype(int) - v.astype(int)).mean() for v in (y, z))
            assert guided_gap <= 1.0 and seed_gap >= 10.0, (stage, guided_gap, seed_gap)


def cascade_config(kind, factor=2):
    from models.codi.config import UNetSpec
    from training.tasks.cascade import CascadeConfig, CascadeObjective, cascade_spec

    spec = UNetSpec(in_channels=3, out_channels=3, model_channels=64, channel_mult=[1], num_res_blocks=[1],
                    attention_levels=[False], num_heads=2, context_dim=8, video=True, connectors=False)
    return CascadeConfig(cascade_spec(spec, kind), CascadeObjective(kind=kind, factor=factor))


def test_cascade_cli_refuses_what_it_cannot_sample(tmp_path, capsys):
    from training.tasks.cascade import CascadeDenoiser, save_cascade

    bare = tmp_path / "bare"         # an export with no stage's train_config.yaml one level up: no codecs
    config = cascade_config("base")
    save_cascade(bare, CascadeDenoiser(config.unet).state_dict(), config)
    assert cli.main(["generate", "--cascade", "--checkpoint", str(bare), "--prompt", "a red circle", "--size", "8"]) == 2
    assert "train_config.yaml one level up names the codecs" in capsys.readouterr().err
    assert cli.main(["generate", "--cascade", "--checkpoint", str(bare), "--prompt", "x", "--output", "audio"]) == 2
    err = capsys.readouterr().err
    assert "--output: --cascade samples video from --prompt text only" in err and len(err.strip().splitlines()) == 1
    for flags, problem in ((["--guidance-weight", "4", "--guidance-low", "1"], "oscillating guidance"),
                           (["--guidance-scale", "0.5"], "must be >= 0 (0: unguided; a scale >= 1), got -0.5")):
        assert cli.main(["generate", "--cascade", "--checkpoint", str(bare), "--prompt", "x", *flags]) == 2
        err = capsys.readouterr().err
        assert problem in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "schedule.json").write_text(json.dumps({"stages": [
        {"name": "image_ldm", "kind": "ldm", "status": "done", "checkpoint": str(tmp_path), "finished": "x"}]}))
    with pytest.raises(UsageError, match="no finished cascade_base"):
        pick_cascade(str(tmp_path))
    with pytest.raises(UsageError, match="neither a schedule run folder"):
        pick_cascade(str(tmp_path / "nowhere"))


def test_base_shape_divides_by_each_super_resolution_factor():
    chain = [cascade_config("base"), cascade_config("tsr", 2), cascade_config("ssr", 4)]
    assert base_shape(chain, 3, 8, 64) == (3, 3, 4, 16, 16)
    with pytest.raises(UsageError, match="--frames 7"):
        base_shape(chain, 1, 7, 64)
    with pytest.raises(UsageError, match="--size 30"):
        base_shape(chain, 1, 8, 30)
