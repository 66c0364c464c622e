"""`codiray generate` end to end on a tiny saved checkpoint: the flags reach the sampler, and
generation.json records what the samples were drawn with (settings and what they resolve to)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from common.errors import UsageError
from models.diffusion import Guidance, SamplingConfig
from models.text_to_image import TextToImageDiffuser
from training import generate
from training.recipes import text_to_image_demo_debug


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = TextToImageDiffuser(text_to_image_demo_debug().model)
    for p in model.unet.parameters():  # zero-initialised output layers would make every sample the same
        if p.ndim > 1 and float(p.detach().abs().max()) == 0.0:
            torch.nn.init.normal_(p, std=0.1)
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt"))


def run_cli(*argv) -> int:
    parser = argparse.ArgumentParser()
    generate.register(parser.add_subparsers())
    args = parser.parse_args(["generate", *argv])
    return args.func(args)


def read_pngs(out):
    return [np.asarray(Image.open(p)) for p in sorted(out.glob("0*.png"))]


def test_generation_json_records_settings_and_resolved_values(checkpoint, tmp_path):
    out = tmp_path / "a"
    assert run_cli("--checkpoint", str(checkpoint), "--prompt", "a red circle", "--prompt", "a blue square",
                   "--steps", "4", "--seed", "7", "--eta", "0.5", "--out", str(out), "--device", "cpu") == 0
    record = json.loads((out / "generation.json").read_text())
    assert record["prompts"] == ["a red circle", "a blue square"]
    assert record["resolved_checkpoint"] == str(checkpoint)
    assert (record["sampler"], record["steps"], record["eta"], record["seed"], record["spacing"]) == (
        "ddim", 4, 0.5, 7, "trailing")
    assert record["guidance"] == {"weight": 3.0, "convention": "scale", "low": None, "num_constant_steps": None}
    resolved = record["resolved"]
    assert resolved["timesteps"] == [999, 749, 499, 249]
    assert resolved["imagen_guidance_weights"] == [2.0, 2.0, 2.0, 2.0]  # s = 3 ⇒ w = 2
    assert (resolved["prediction"], resolved["schedule"], resolved["clip_x0"], resolved["data_space"]) == (
        "v", "scaled_linear", "static", "pixel")

    # The PNGs are exactly what the sampling path produces for these settings.
    model = TextToImageDiffuser.from_pretrained(checkpoint)
    sampling = SamplingConfig(steps=4, eta=0.5, seed=7, guidance=Guidance(3.0, "scale"))
    expected = generate.sample_images(model, record["prompts"], sampling)
    assert all(np.array_equal(a, b) for a, b in zip(read_pngs(out), expected))


def test_same_seed_same_images_other_seed_other_images(checkpoint, tmp_path):
    common = ["--checkpoint", str(checkpoint), "--prompt", "a red circle", "--steps", "3", "--device", "cpu"]
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        run_cli(*common, "--seed", seed, "--out", str(tmp_path / name))
    a, b, c = (read_pngs(tmp_path / n)[0] for n in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_imagen_oscillating_guidance_flags(checkpoint, tmp_path):
    out = tmp_path / "osc"
    run_cli("--checkpoint", str(checkpoint), "--prompt", "x", "--steps", "6", "--guidance-weight", "15",
            "--guidance-low", "1", "--guidance-constant-steps", "2", "--clip-x0", "dynamic", "--out", str(out),
            "--device", "cpu")
    record = json.loads((out / "generation.json").read_text())
    assert record["guidance"]["convention"] == "imagen"
    assert record["resolved"]["imagen_guidance_weights"] == [15.0, 15.0, 1.0, 15.0, 1.0, 15.0]
    assert record["resolved"]["clip_x0"] == "dynamic"


@pytest.mark.parametrize("flags,message", [
    (["--guidance-constant-steps", "2"], "only applies to oscillating guidance"),
    (["--guidance-weight", "15", "--guidance-low", "1", "--guidance-constant-steps", "0"], "must be >= 1"),
    (["--steps", "0"], "steps must be >= 1"),
])
def test_bad_guidance_flags_are_one_usage_error(checkpoint, tmp_path, flags, message):
    with pytest.raises(UsageError, match=message):
        run_cli("--checkpoint", str(checkpoint), "--prompt", "x", "--out", str(tmp_path), *flags)
    with pytest.raises(SystemExit):  # the two conventions are mutually exclusive flags
        run_cli("--checkpoint", str(checkpoint), "--prompt", "x", "--guidance-scale", "3", "--guidance-weight", "2")
