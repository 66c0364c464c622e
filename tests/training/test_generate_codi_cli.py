"""Any-to-any `codiray generate` end to end on a tiny random CoDi + tiny Codecs saved here.

Outputs are real files decoded back (PNG by PIL, WAV/MP4 by PyAV), generation.json passes
`codiray eval`'s loader, and the files equal what the sampling API gives for the settings the CLI
was given — with the composed context built here from the codecs by Eq. 4 (weights 1 : 2), not by
the CLI's code.
"""

from __future__ import annotations

import importlib.util
import json
from functools import partial
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from codiray import cli
from codiray.evaluate import evaluate, read_samples
from models.codecs import Codecs
from models.codecs_config import debug
from models.codi import CoDi, CoDiConfig, UNetSpec
from models.codi.sampling import sample_joint, table12_guidance
from common.errors import UsageError
from models.diffusion import Guidance, SamplingConfig
from pipelines.toyworld_media import write_audio
from pipelines.toyworld_probes import read_audio, read_video

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a red circle moving left"


def load_tokenizer_writer():
    spec = importlib.util.spec_from_file_location("codecs_conftest", ROOT / "tests/models/codecs/conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_tokenizers


def spec2d(channels: int, video: bool = False) -> UNetSpec:
    return UNetSpec(in_channels=channels, out_channels=channels, model_channels=64, channel_mult=[1, 2],
                    num_res_blocks=[1, 1], attention_levels=[True, False], num_heads=4, context_dim=768,
                    video=video, video_heads=2, connector_mult=[1, 2], connector_blocks=[1, 1],
                    connector_levels=[True, False], connector_dim=64)


def text_spec() -> UNetSpec:
    return UNetSpec(kind="text", in_channels=16, out_channels=16, model_channels=32, channel_mult=[1, 2],
                    num_res_blocks=[1, 1], attention_levels=[True, True], num_heads=4, context_dim=768,
                    second_dim=[4, 4], connector_mult=[1, 2], connector_blocks=[1, 1], connector_second_dim=[4, 4],
                    connector_levels=[True, True], connector_dim=64)


def randomize(module, seed=0, std=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def save_folder(root: Path, config: CoDiConfig, codecs: Codecs | None) -> Path:
    randomize(CoDi(config)).save_pretrained(root)
    if codecs is not None:
        codecs.save_pretrained(root / "codecs")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    torch.manual_seed(0)
    tokenizers = load_tokenizer_writer()(tmp_path_factory.mktemp("tok"))
    cfg = debug()
    cfg.text.encoder_tokenizer, cfg.text.decoder_tokenizer = tokenizers["bert"], tokenizers["gpt2"]
    cfg.clip.tokenizer = tokenizers["clip"]
    codecs = Codecs(cfg)
    randomize(codecs.audio.vocoder, seed=1, std=0.2)  # at init HiFi-GAN's output is ~1e-10: inaudible, all-zero WAVs
    base = tmp_path_factory.mktemp("models")
    full = CoDiConfig(image=spec2d(4, video=True), audio=spec2d(8), text=text_spec())
    media = tmp_path_factory.mktemp("media")
    wav = write_audio(media / "tone.wav", seconds=1.0, rate=16000, channels=1, freq=440.0)
    bad = media / "broken.wav"
    bad.write_text("not audio")
    return {"full": save_folder(base / "full", full, codecs),
            "no_text": save_folder(base / "no_text", CoDiConfig(image=spec2d(4), audio=spec2d(8)), codecs),
            "no_codecs": save_folder(base / "no_codecs", full, None),
            "wav": wav, "bad": bad}



def generate(*argv) -> int:
    return cli.main(["generate", "--device", "cpu", "--steps", "3", "--size", "16", *argv])


def test_text_and_audio_to_image_audio_text(folders, tmp_path):
    out = tmp_path / "gen"
    assert generate("--checkpoint", str(folders["full"]), "--input", f"text={PROMPT}",
                    "--input", f"audio={folders['wav']}", "--weight", "text=1", "--weight", "audio=2",
                    "--output", "image,audio,text", "--num-per-prompt", "2", "--seed", "5",
                    "--out", str(out)) == 0
    samples = read_samples(out)  # `codiray eval`'s loader validates the schema
    assert [s["task"] for s in samples] == ["text+audio->image+audio+text"] * 2
    assert [s["seed"] for s in samples] == [5, 6]
    assert samples[0]["inputs"]["text"] == PROMPT
    assert (out / samples[0]["inputs"]["audio"]).is_file()
    images = [np.asarray(Image.open(out / s["outputs"]["image"])) for s in samples]
    assert all(image.shape == (16, 16, 3) for image in images)
    waves = [read_audio(out / s["outputs"]["audio"]) for s in samples]
    codecs = Codecs.from_pretrained(folders["full"] / "codecs")
    assert all(rate == 16000 and len(wave) == codecs.audio.samples for wave, rate in waves)
    texts = [(out / s["outputs"]["text"]).read_text(encoding="utf-8").strip() for s in samples]
    sheet = np.asarray(Image.open(out / "contact_sheet_00.png"))
    assert sheet.shape[0] > 2 * 96 and sheet.std() > 0
    run = json.loads((out / "generation.json").read_text())["runs"][0]
    assert run["guidance"]["audio"] == {"weight": 7.5, "convention": "scale", "low": None, "num_constant_steps": None}
    assert run["resolved"]["imagen_guidance_weights"] == {"image": [1.0] * 3, "audio": [6.5] * 3, "text": [1.0] * 3}
    assert (run["mode"], run["eta"], run["steps"], run["resolved"]["timesteps"]) == ("joint", 1.0, 3, [999, 666, 332])

    # The files are what joint sampling gives for a context composed here by Eq. 4 with weights 1 : 2.
    model = CoDi.from_pretrained(folders["full"]).eval()
    wave = torch.as_tensor(read_audio(folders["wav"])[0])[None]
    with torch.no_grad():
        context = (codecs.condition("text", [PROMPT]) + 2 * codecs.condition("audio", wave)) / 3
        uncond = (codecs.null("text", 1) + 2 * codecs.null("audio", 1)) / 3
        shapes = {"image": (2, 4, 8, 8), "audio": (2, *codecs.encode("audio", wave).shape[1:]), "text": (2, 16)}
        latents = sample_joint(partial(model, joint_context="paper"), shapes, context.expand(2, -1, -1),
                               uncond.expand(2, -1, -1), model.config.diffusion,
                               SamplingConfig(steps=3, eta=1.0, seed=5), table12_guidance(shapes))
        expected_images = codecs.decode("image", latents["image"]).numpy()
        expected_texts = codecs.decode("text", latents["text"])
        expected_waves = codecs.decode("audio", latents["audio"]).numpy()
    assert all(np.array_equal(a, b) for a, b in zip(images, expected_images))
    assert texts == [t.strip() for t in expected_texts]
    assert all(np.abs(w - e).max() < 2 / 32768 + 1e-6 for (w, _), e in zip(waves, expected_waves))
    assert min(float(np.abs(w).max()) for w, _ in waves) > 0.01  # audible: the comparison has teeth
    assert not np.array_equal(images[0], images[1])  # two seeds, two samples
    # `codiray eval` reads the folder end to end (its probes decode every file and the input WAV).
    metrics = evaluate(out)
    assert metrics["tasks"]["text+audio->image+audio+text"]["n"] == 2


def test_independent_routes_each_output_alone(folders, tmp_path):
    common = ["--checkpoint", str(folders["full"]), "--input", f"text={PROMPT}", "--seed", "2"]
    generate(*common, "--output", "image,audio", "--out", str(tmp_path / "joint"))
    generate(*common, "--output", "image,audio", "--independent", "--out", str(tmp_path / "indep"))
    generate(*common, "--output", "image", "--out", str(tmp_path / "alone"))
    png = {name: np.asarray(Image.open(tmp_path / name / "0000.png")) for name in ("joint", "indep", "alone")}
    assert np.array_equal(png["indep"], png["alone"])       # independent = its UNet alone, same seed
    assert not np.array_equal(png["joint"], png["alone"])   # joint: the audio latent reaches the image
    record = json.loads((tmp_path / "indep" / "generation.json").read_text())
    assert record["samples"][0]["mode"] == "independent"


def test_video_and_audio_give_one_mp4_with_the_audio_muxed_in(folders, tmp_path):
    out = tmp_path / "va"
    assert generate("--checkpoint", str(folders["full"]), "--input", f"text={PROMPT}", "--output", "video,audio",
                    "--frames", "4", "--fps", "4", "--out", str(out)) == 0
    sample = read_samples(out)[0]
    frames, fps, wave, rate = read_video(out / sample["outputs"]["video"])
    assert frames.shape == (4, 16, 16, 3) and fps == 4.0
    with av.open(str(out / sample["outputs"]["video"])) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    alone, alone_rate = read_audio(out / sample["outputs"]["audio"])
    assert rate == alone_rate == 16000 and wave is not None
    # The muxed track is the WAV through AAC (lossy on this noise-like random audio): same length and
    # loudness, correlated with it at lag 0 and not with the same samples reversed.
    assert abs(len(wave) - len(alone)) <= 2048
    n = min(len(wave), len(alone))
    rms = float(np.sqrt(np.mean(wave[:n] ** 2)) / np.sqrt(np.mean(alone[:n] ** 2)))
    assert 0.8 < rms < 1.25, rms
    assert np.corrcoef(wave[:n], alone[:n])[0, 1] > 0.25
    assert abs(np.corrcoef(wave[:n], alone[:n][::-1])[0, 1]) < 0.1


def test_append_accumulates_samples(folders, tmp_path):
    out = tmp_path / "acc"
    common = ["--checkpoint", str(folders["full"]), "--output", "text", "--out", str(out)]
    generate(*common, "--input", "text=a red circle")
    generate(*common, "--input", "text=a blue square", "--append")
    record = json.loads((out / "generation.json").read_text())
    assert [s["inputs"]["text"] for s in record["samples"]] == ["a red circle", "a blue square"]
    assert [s["outputs"]["text"] for s in record["samples"]] == ["0000.txt", "0001.txt"]
    assert len(record["runs"]) == 2 and len(read_samples(out)) == 2
    # Every --prompt is its own input set, sampled in one batch.
    generate(*common, "--prompt", "a red circle", "--prompt", "a blue square", "--append")
    record = json.loads((out / "generation.json").read_text())
    assert [s["inputs"] for s in record["samples"][2:]] == [{"text": "a red circle"}, {"text": "a blue square"}]
    assert [s["seed"] for s in record["samples"][2:]] == [0, 1]


def test_image_and_video_inputs(folders, tmp_path):
    from pipelines.toyworld_media import write_video

    png = tmp_path / "in.png"
    Image.fromarray(np.tile(np.array([200, 30, 30], np.uint8), (24, 24, 1))).save(png)
    mp4 = write_video(tmp_path / "in.mp4", seconds=1.0, fps=8, size=(32, 24), audio_codec=None)
    out = tmp_path / "iv"
    assert generate("--checkpoint", str(folders["full"]), "--input", f"image={png}", "--input", f"video={mp4}",
                    "--weight", "video=3", "--output", "text", "--frames", "4", "--out", str(out)) == 0
    sample = read_samples(out)[0]
    assert sample["task"] == "image+video->text" and sample["weights"] == {"image": 1.0, "video": 3.0}
    assert np.array_equal(np.asarray(Image.open(out / sample["inputs"]["image"])), np.asarray(Image.open(png)))
    assert (out / sample["inputs"]["video"]).read_bytes() == mp4.read_bytes()


@pytest.mark.parametrize("argv,message", [
    (["--input", "smell=roses", "--output", "image"], "unknown modality 'smell'"),
    (["--input", "text=x", "--output", "image,smell"], "--output smell: unknown modality"),
    (["--input", "audio={bad}", "--output", "image"], "broken.wav: cannot read audio"),
    (["--input", "image=/nonexistent.png", "--output", "image"], "file not found"),
    (["--input", "video={bad}", "--output", "text"], "broken.wav: cannot read video"),
    (["--input", "text=x", "--weight", "audio=2", "--output", "image"], "no audio input is given"),
    (["--input", "text=x", "--output", "image,video"], "share one UNet"),
    (["--checkpoint", "{no_text}", "--input", "text=x", "--output", "text"], "no text UNet"),
    (["--checkpoint", "{no_codecs}", "--input", "text=x", "--output", "image"], "no codecs/ folder"),
])
def test_bad_inputs_are_one_line_exit_2(folders, tmp_path, capsys, argv, message):
    argv = [a.format(**{k: str(v) for k, v in folders.items()}) for a in argv]
    if "--checkpoint" not in argv:
        argv = ["--checkpoint", str(folders["full"]), *argv]
    assert generate(*argv, "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_s3_model_folder(folders, bucket, s3_endpoint, tmp_path, monkeypatch):
    from common import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    root = f"{bucket}/models/full"
    for path in folders["full"].rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{root}/{path.relative_to(folders['full']).as_posix()}", path.read_bytes())
    common = ["--input", "text=a red circle", "--output", "image,text", "--seed", "4"]
    assert generate("--checkpoint", root, *common, "--out", str(tmp_path / "s3")) == 0
    assert generate("--checkpoint", str(folders["full"]), *common, "--out", str(tmp_path / "local")) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s3" / "0000.png")),
                          np.asarray(Image.open(tmp_path / "local" / "0000.png")))
    assert read_samples(tmp_path / "s3")[0]["outputs"] == {"image": "0000.png", "text": "0000.txt"}


def test_any_to_any_flags_on_a_text_to_image_checkpoint_are_refused(tmp_path, capsys):
    from models.text_to_image import TextToImageDiffuser
    from training.recipes import text_to_image_demo_debug

    checkpoint = TextToImageDiffuser(text_to_image_demo_debug().model).save_pretrained(tmp_path / "t2i")
    assert cli.main(["generate", "--checkpoint", str(checkpoint), "--input", "text=x", "--output", "audio"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "text-to-image checkpoint" in err, err


def parse(*argv):
    import argparse

    from training import generate as t2i

    parser = argparse.ArgumentParser()
    t2i.register(parser.add_subparsers())
    return parser.parse_args(["generate", "--checkpoint", "x", *argv])


def test_guidance_flags_per_modality_and_conventions():
    from training.generate_codi import request_from_args

    base = ["--input", "text=x", "--output", "image,audio,text"]
    table12 = request_from_args(parse(*base))
    assert table12.guidance == {} and table12.joint and table12.sampling.eta == 1.0
    one = request_from_args(parse(*base, "--guidance", "audio=3"))
    assert one.guidance == {"audio": Guidance(3.0, "scale")}  # the others keep Table 12 (filled at sampling)
    every = request_from_args(parse(*base, "--guidance-weight", "4", "--guidance", "text=1.5"))
    assert every.guidance == {"image": Guidance(4.0, "imagen"), "audio": Guidance(4.0, "imagen"),
                              "text": Guidance(1.5, "scale")}
    assert request_from_args(parse(*base, "--independent")).joint is False
    with pytest.raises(UsageError, match="not a requested --output"):
        request_from_args(parse(*base, "--guidance", "video=2"))
    with pytest.raises(UsageError, match="not a number"):
        request_from_args(parse(*base, "--weight", "text=heavy"))
    with pytest.raises(SystemExit):
        parse(*base, "--joint", "--independent")
