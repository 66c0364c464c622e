"""`codiray demo --debug` end to end through the CLI: toy world -> four prepare jobs -> ``codi_debug``
(every stage kind) -> every generation task -> eval -> report.html, opened in headless Chromium.

The generated media come from a two-step model, so the attribute accuracies are not asserted here
(the full demo's are in the README); what is asserted is that every task was generated, decoded and
scored, that the schedule run folder is a model `codiray generate` can load, and that the report's
every image and player loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from browser import open_in_chromium
from codiray.cli import main
from codiray.demo import debug_config
from codiray.demo_tasks import TASKS
from common import storage
from pipelines.toyworld_probes import read_audio, read_image, read_video

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo(codi_demo_debug):
    out, paths = codi_demo_debug
    assert Path(paths["report"]) == out / "report" / "report.html"
    return out, paths


@pytest.mark.timeout(1800)  # may pay the session's demo run: 18 stages, two steps on 2 workers each (10-15 min)
def test_every_task_is_generated_and_scored(demo):
    demo, _ = demo
    per_task = debug_config().generate.per_task
    metrics = json.loads((demo / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {t.name for t in TASKS}
    for task in TASKS:
        modes = 2 if len(task.outputs) > 1 else 1
        assert metrics["tasks"][task.name]["n"] == per_task * modes, task.name
        assert all(0.0 <= v <= 1.0 for k, v in metrics["tasks"][task.name].items() if k != "n"), task.name
    assert metrics["tasks"]["text->image"].keys() >= {"colour", "shape", "position"}
    assert metrics["tasks"]["text->video+audio"].keys() >= {"video.motion", "audio.pitch", "audio.rhythm"}
    for pair in ("video+audio", "image+text"):
        assert metrics["joint"][pair]["n_joint"] == metrics["joint"][pair]["n_independent"] == per_task, pair
        assert metrics["sim"][pair]["n_joint"] == per_task and -1 <= metrics["sim"][pair]["joint"] <= 1, pair

    record = json.loads((demo / "generations" / "generation.json").read_text())
    g = debug_config().generate
    for sample in record["samples"]:
        for modality, path in sample["outputs"].items():
            file = demo / "generations" / path
            if modality == "image":
                assert read_image(file).shape == (g.size, g.size, 3)
            elif modality == "video":
                frames, fps, sound, _ = read_video(file)
                assert frames.shape == (g.frames, g.size, g.size, 3) and fps == pytest.approx(g.fps)
                assert (sound is not None) == ("audio" in sample["outputs"]), path   # muxed when generated together
            elif modality == "audio":
                wave, rate = read_audio(file)
                assert rate == 16000 and wave.ndim == 1 and np.isfinite(wave).all()
            else:
                file.read_text(encoding="utf-8")   # decodes as UTF-8 (an untrained decoder may say nothing)
    assert {s["mode"] for s in record["samples"] if len(s["outputs"]) > 1} == {"joint", "independent"}
    for run in record["runs"]:   # the demo's guidance scales where it departs from Table 12, Table 12 elsewhere
        for modality, guidance in run["guidance"].items():
            scale = g.guidance.get(modality, {"image": 2.0, "video": 2.0, "audio": 7.5, "text": 2.0}[modality])
            assert (guidance["weight"], guidance["convention"]) == (scale, "scale"), (modality, guidance)


def test_the_saved_model_is_the_last_alignment_phase_with_the_trained_codecs(demo):
    demo, paths = demo
    run, s3 = paths["run"], paths["s3"]     # in the session's S3 bucket
    stages = {s["name"]: s for s in json.loads(storage.read_bytes(storage.join(run, "schedule.json"), s3))["stages"]}
    # done, or skipped when the schedule test's second run (same session run) already rewrote the record
    assert {s["status"] for s in stages.values()} in ({"done"}, {"skipped"})
    weights = lambda stage: load_file(storage.local_copy(  # noqa: E731
        storage.join(stages[stage]["checkpoint"], "model.safetensors"), s3))
    saved = load_file(str(demo / "model" / "model.safetensors"))
    aligned = weights("video_audio_alignment")
    assert saved.keys() == aligned.keys() and all(torch.equal(saved[k], aligned[k]) for k in saved)
    codecs = load_file(str(demo / "model" / "codecs" / "model.safetensors"))
    vocoder = weights("vocoder_autoencoder")
    assert vocoder and all(torch.equal(codecs[k], v) for k, v in vocoder.items())


def test_generate_takes_the_schedule_run_folder_as_checkpoint(demo, tmp_path, capsys, monkeypatch):
    _, paths = demo
    run = paths["run"]                                  # s3://: the endpoint from the standard AWS variable
    monkeypatch.setenv("AWS_ENDPOINT_URL", paths["s3"].endpoint_url)
    out = tmp_path / "gen"
    assert main(["generate", "--checkpoint", str(run), "--input", "text=a red circle moving left slowly",
                 "--output", "video,audio", "--steps", "2", "--size", "16", "--frames", "4", "--out", str(out)]) == 0
    sample = json.loads((out / "generation.json").read_text())["samples"][0]
    assert sample["task"] == "text->video+audio" and (out / sample["outputs"]["video"]).is_file()
    assert str(run) in capsys.readouterr().out


@pytest.mark.timeout(180)
def test_report_loads_in_headless_chromium(demo, tmp_path):
    demo, _ = demo
    page = demo / "report" / "report.html"
    found, errors, log, _ = open_in_chromium(page, tmp_path)
    assert errors == [], (errors, log)
    record = json.loads((demo / "generations" / "generation.json").read_text())
    counts = {m: sum(m in s["outputs"] for s in record["samples"]) for m in ("image", "video", "audio")}
    assert counts["image"] > 0 and counts["video"] > 0 and counts["audio"] > 0
    assert len(found["images"]) >= counts["image"] and all(i["complete"] and i["width"] > 0 for i in found["images"])
    tags = [m["tag"] for m in found["media"]]
    assert tags.count("VIDEO") >= counts["video"] and tags.count("AUDIO") >= counts["audio"], found
    for m in found["media"]:
        assert m["error"] is None and m["networkState"] != 3 and m["readyState"] >= 2, (m, log)
    assert found["svgs"] >= 1 + 16            # the DAG and a loss curve per stage
