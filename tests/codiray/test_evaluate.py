"""`codiray eval` on folders of toy-world media laid out as generations: accuracy 1.0 when every output
shows its prompt, exactly the planted fractions when some do not, joint vs independent agreement, and
one clear line for bad folders.

The expected figures are counted by hand from what each folder plants (never from the evaluator).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codiray.cli import main
from codiray.evaluate import evaluate
from pipelines.toyworld import render_image
from pipelines.toyworld_av import write_clip, write_sound
from pipelines.toyworld_spec import Clip, Scene, Sound

SCENES = [Scene("red", "circle", "left"), Scene("blue", "square", "right"), Scene("green", "triangle", "center"),
          Scene("yellow", "circle", "top")]
CLIPS = [Clip("red", "circle", "left", "slowly"), Clip("blue", "square", "up", "quickly"),
         Clip("green", "triangle", "down", "slowly"), Clip("yellow", "square", "right", "quickly")]
SOUNDS = [Sound("low", "pulsing"), Sound("high", "ticking"), Sound("middle", "rattling"), Sound("shrill", "beeping")]


def _image(root: Path, name: str, scene: Scene) -> str:
    render_image(scene, 64).save(root / name)
    return name


def build(root: Path, plant: bool) -> Path:
    """A generations folder; with ``plant``, the errors listed beside each task go in."""
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    # text->image: sample 0 drawn blue (colour wrong), sample 1 at the bottom (position wrong)
    for i, scene in enumerate(SCENES):
        shown = scene
        if plant and i == 0:
            shown = Scene("blue", scene.shape, scene.position)
        if plant and i == 1:
            shown = Scene(scene.color, scene.shape, "bottom")
        samples.append({"task": "text->image", "inputs": {"text": scene.caption},
                        "outputs": {"image": _image(root, f"ti{i}.png", shown)}, "seed": i})
    # text->video (silent MP4s): sample 2 moves the wrong way
    for i, clip in enumerate(CLIPS):
        shown = Clip(clip.color, clip.shape, "up", clip.speed) if plant and i == 2 else clip
        write_clip(root / f"tv{i}.mp4", shown, with_audio=False)
        samples.append({"task": "text->video", "inputs": {"text": clip.caption}, "outputs": {"video": f"tv{i}.mp4"}})
    # text->audio: sample 0 at the wrong pitch, samples 1 and 2 at the wrong rhythm
    for i, sound in enumerate(SOUNDS):
        shown = sound
        if plant and i == 0:
            shown = Sound("shrill", sound.rhythm)
        if plant and i in (1, 2):
            shown = Sound(sound.pitch, "pulsing")
        write_sound(root / f"ta{i}.wav", shown)
        samples.append({"task": "text->audio", "inputs": {"text": sound.caption}, "outputs": {"audio": f"ta{i}.wav"}})
    # image->text: the second caption names the wrong shape
    for i, scene in enumerate(SCENES[:2]):
        said = Scene(scene.color, "triangle", scene.position) if plant and i == 1 else scene
        (root / f"it{i}.txt").write_text(said.caption + "\n")
        samples.append({"task": "image->text", "inputs": {"image": _image(root, f"in{i}.png", scene)},
                        "outputs": {"text": f"it{i}.txt"}})
    # audio->image (truth from the input sound: its pitch -> colour): the first image has the wrong colour
    for i, sound in enumerate(SOUNDS[:2]):
        write_sound(root / f"ai_in{i}.wav", sound)
        colour = {"low": "red", "high": "blue"}[sound.pitch]
        shown = Scene("green" if plant and i == 0 else colour, "square", "center")
        samples.append({"task": "audio->image", "inputs": {"audio": f"ai_in{i}.wav"},
                        "outputs": {"image": _image(root, f"ai{i}.png", shown)}})
    # text->video+audio, joint: in sample 3 the sound's rhythm belongs to another motion (video right,
    # sound "ticking" = up): wrong for the prompt and no agreement with its video
    for i, clip in enumerate(CLIPS):
        write_clip(root / f"tva{i}.mp4", clip)  # one MP4 with the sound muxed in, plus the WAV
        sound = Sound(clip.sound.pitch, "ticking") if plant and i == 3 else clip.sound
        write_sound(root / f"tva{i}.wav", sound)
        samples.append({"task": "text->video+audio", "inputs": {"text": clip.caption}, "mode": "joint",
                        "outputs": {"video": f"tva{i}.mp4", "audio": f"tva{i}.wav"}})
    # ... and independent: in sample 1 the sound's pitch disagrees with the video's colour
    for i, clip in enumerate(CLIPS[:2]):
        write_clip(root / f"ind{i}.mp4", clip, with_audio=False)
        sound = Sound("middle", clip.sound.rhythm) if plant and i == 1 else clip.sound
        write_sound(root / f"ind{i}.wav", sound)
        samples.append({"task": "text->video+audio", "inputs": {"text": clip.caption}, "mode": "independent",
                        "outputs": {"video": f"ind{i}.mp4", "audio": f"ind{i}.wav"}})
    # text->image+text, joint (no "task": derived from the keys); the second caption says "yellow"
    for i, scene in enumerate(SCENES[:2]):
        said = Scene("yellow", scene.shape, scene.position) if plant and i == 1 else scene
        (root / f"tit{i}.txt").write_text(said.caption)
        samples.append({"inputs": {"text": scene.caption},
                        "outputs": {"image": _image(root, f"tit{i}.png", scene), "text": f"tit{i}.txt"}})
    (root / "generation.json").write_text(json.dumps({"settings": {"steps": 50}, "samples": samples}))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("generations")
    return {"clean": build(root / "clean", plant=False), "planted": build(root / "planted", plant=True)}


def test_clean_generations_score_one(folders):
    metrics = evaluate(folders["clean"])
    tasks = metrics["tasks"]
    assert set(tasks) == {"text->image", "text->video", "text->audio", "image->text", "audio->image",
                          "text->video+audio", "text->image+text"}
    for task, scores in tasks.items():
        assert all(v == 1.0 for k, v in scores.items() if k != "n"), (task, scores)
    assert tasks["text->image"] == {"colour": 1.0, "shape": 1.0, "position": 1.0, "n": 4}
    assert tasks["text->video"] == {"colour": 1.0, "shape": 1.0, "motion": 1.0, "speed": 1.0, "n": 4}
    assert tasks["audio->image"] == {"colour": 1.0, "n": 2}  # a sound says nothing of shape or position
    assert set(tasks["text->video+audio"]) == {"n", "video.colour", "video.shape", "video.motion", "video.speed",
                                               "audio.pitch", "audio.rhythm"}
    assert metrics["joint"] == {
        "video+audio": {"joint_agreement": 1.0, "n_joint": 4, "independent_agreement": 1.0, "n_independent": 2},
        "image+text": {"joint_agreement": 1.0, "n_joint": 2, "independent_agreement": None, "n_independent": 0}}


def test_planted_errors_give_exactly_the_expected_fractions(folders):
    metrics = evaluate(folders["planted"])
    tasks = metrics["tasks"]
    assert tasks["text->image"] == {"colour": 0.75, "shape": 1.0, "position": 0.75, "n": 4}
    assert tasks["text->video"] == {"colour": 1.0, "shape": 1.0, "motion": 0.75, "speed": 1.0, "n": 4}
    assert tasks["text->audio"] == {"pitch": 0.75, "rhythm": 0.5, "n": 4}
    assert tasks["image->text"] == {"colour": 1.0, "shape": 0.5, "position": 1.0, "n": 2}
    assert tasks["audio->image"] == {"colour": 0.5, "n": 2}
    assert tasks["text->video+audio"] == {"video.colour": 1.0, "video.shape": 1.0, "video.motion": 1.0,
                                          "video.speed": 1.0, "audio.pitch": 5 / 6, "audio.rhythm": 5 / 6, "n": 6}
    assert tasks["text->image+text"] == {"image.colour": 1.0, "image.shape": 1.0, "image.position": 1.0,
                                         "text.colour": 0.5, "text.shape": 1.0, "text.position": 1.0, "n": 2}
    assert metrics["joint"]["video+audio"] == {"joint_agreement": 0.75, "n_joint": 4,
                                               "independent_agreement": 0.5, "n_independent": 2}
    assert metrics["joint"]["image+text"]["joint_agreement"] == 0.5


def test_cli_writes_metrics_json(folders, tmp_path, capsys):
    assert main(["eval", "--generations", str(folders["planted"]), "--out", str(tmp_path / "m")]) == 0
    written = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert written["tasks"]["text->audio"] == {"pitch": 0.75, "rhythm": 0.5, "n": 4}
    assert "text->audio (n=4): pitch 0.75, rhythm 0.50" in capsys.readouterr().out


def _rewrite(folder: Path, tmp_path: Path, edit) -> Path:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    doc = json.loads((copy / "generation.json").read_text())
    edit(doc)
    (copy / "generation.json").write_text(json.dumps(doc))
    return copy


@pytest.mark.parametrize("edit, phrase", [
    (lambda d: d.clear(), "'samples' must be a list"),
    (lambda d: d["samples"][0]["outputs"].update(smell="x.txt"), "unknown modality 'smell'"),
    (lambda d: d["samples"][0]["outputs"].update(image="gone.png"), "gone.png not found"),
    (lambda d: d["samples"][0].update(mode="both"), "mode must be 'joint' or 'independent'"),
    (lambda d: d["samples"][0].update(task="text->audio"), "does not name the outputs image"),
    (lambda d: d["samples"][0]["outputs"].update(image="it0.txt"), "cannot decode image file"),
    (lambda d: d["samples"][0]["inputs"].update(text="a nice picture"), "state no toy-world attribute"),
])
def test_bad_folders_are_one_clear_line(folders, tmp_path, capsys, edit, phrase):
    copy = _rewrite(folders["clean"], tmp_path, edit)
    assert main(["eval", "--generations", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and phrase in err and "generation.json" in err, err


def test_missing_generation_json_is_one_clear_line(tmp_path, capsys):
    assert main(["eval", "--generations", str(tmp_path)]) == 2
    assert "generation.json: not found" in capsys.readouterr().err


# ---- SIM (CoDi Eq. 4): cosine of the prompt embeddings of two co-generated outputs ---------------------
#
# The oracle embeds media the test holds itself (the rendered image array, the caption string, the WAV's
# int16 samples read by the stdlib ``wave`` module, the MP4's frames decoded by PyAV here) through
# ``Codecs.condition``; the cosines, the pairing, the averaging and the joint/independent split are
# computed here by hand with NumPy.

SIM_SCENES = [Scene("red", "circle", "left"), Scene("blue", "square", "right"), Scene("green", "triangle", "center")]
SIM_CLIP = Clip("yellow", "square", "up", "quickly")


@pytest.fixture(scope="module")
def codecs_dir(tmp_path_factory):
    from training.debug_codecs import ensure_debug_codecs

    return ensure_debug_codecs(tmp_path_factory.mktemp("codecs") / "debug_codecs")


@pytest.fixture(scope="module")
def codecs(codecs_dir):
    from codiray.evaluate import load_codecs

    return load_codecs(codecs_dir)


def build_sim(root: Path) -> Path:
    """0: joint image+audio+text; 1: joint image+text; 2: independent image+text; 3: joint video+audio
    (silent MP4 + WAV at 48 kHz); 4: text->image, one output (no pair)."""
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, scene in enumerate(SIM_SCENES):
        (root / f"t{i}.txt").write_text(scene.caption + "\n")
        outputs = {"image": _image(root, f"i{i}.png", scene), "text": f"t{i}.txt"}
        if i == 0:
            write_sound(root / "a0.wav", SOUNDS[0])
            outputs["audio"] = "a0.wav"
        samples.append({"inputs": {"text": scene.caption}, "outputs": outputs,
                        "mode": "independent" if i == 2 else "joint"})
    write_clip(root / "v3.mp4", SIM_CLIP, with_audio=False)
    write_sound(root / "a3.wav", SIM_CLIP.sound, rate=48000)
    samples.append({"inputs": {"text": SIM_CLIP.caption}, "outputs": {"video": "v3.mp4", "audio": "a3.wav"}})
    samples.append({"inputs": {"text": SIM_SCENES[0].caption}, "outputs": {"image": _image(root, "i4.png", SIM_SCENES[0])}})
    (root / "generation.json").write_text(json.dumps({"samples": samples}))
    return root


@pytest.fixture(scope="module")
def sim_folder(tmp_path_factory):
    return build_sim(tmp_path_factory.mktemp("sim") / "gen")


def _wav16(path: Path):
    """A 16-bit WAV's samples as float32 (b=1, n), read by the stdlib (not by the evaluator's PyAV)."""
    import wave

    import numpy as np
    import torch

    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1 and w.getframerate() == 16000
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None]


def _frames(path: Path):
    import av
    import numpy as np
    import torch

    with av.open(str(path)) as container:
        return torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))[None]


@pytest.fixture(scope="module")
def oracle(codecs, sim_folder):
    """Each output's embedding (float64 NumPy vector), from the test's own copy of the media."""
    import numpy as np
    import torch
    import torchaudio.functional as AF

    from pipelines.toyworld_av import synth_sound

    def vec(modality, data):
        with torch.no_grad():
            return codecs.condition(modality, data).double().numpy().reshape(-1)

    out = {}
    for i, scene in enumerate(SIM_SCENES):
        out[f"i{i}"] = vec("image", torch.from_numpy(np.asarray(render_image(scene, 64)).copy())[None])
        out[f"t{i}"] = vec("text", [scene.caption])
    out["a0"] = vec("audio", _wav16(sim_folder / "a0.wav"))
    out["v3"] = vec("video", _frames(sim_folder / "v3.mp4"))
    # the 48 kHz file holds the same tone as this 16 kHz one (to resampling and int16 rounding)
    out["a3"] = vec("audio", AF.resample(torch.from_numpy(synth_sound(SIM_CLIP.sound, rate=48000))[None], 48000, 16000))
    return out


def _cos(a, b) -> float:
    import numpy as np

    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_sim_is_the_mean_cosine_per_pair_split_by_mode(sim_folder, codecs, oracle):
    o = oracle
    it = [_cos(o[f"i{i}"], o[f"t{i}"]) for i in range(3)]
    assert len({round(c, 4) for c in it}) == 3, it          # distinct, so a wrong pairing shows
    sim = evaluate(sim_folder, codecs)["sim"]
    assert list(sim) == ["image+audio", "image+text", "video+audio", "audio+text"]   # MODALITIES order
    assert sim["image+text"] == {"joint": pytest.approx((it[0] + it[1]) / 2, abs=1e-6), "n_joint": 2,
                                 "independent": pytest.approx(it[2], abs=1e-6), "n_independent": 1}
    assert sim["image+audio"] == {"joint": pytest.approx(_cos(o["i0"], o["a0"]), abs=1e-6), "n_joint": 1,
                                  "independent": None, "n_independent": 0}
    assert sim["audio+text"] == {"joint": pytest.approx(_cos(o["a0"], o["t0"]), abs=1e-6), "n_joint": 1,
                                 "independent": None, "n_independent": 0}
    assert sim["video+audio"]["n_joint"] == 1 and sim["video+audio"]["independent"] is None
    assert sim["video+audio"]["joint"] == pytest.approx(_cos(o["v3"], o["a3"]), abs=2e-3)  # resampled + int16


def test_swapping_modes_moves_the_sims(sim_folder, codecs, oracle, tmp_path):
    def swap(doc):
        doc["samples"][1]["mode"], doc["samples"][2]["mode"] = "independent", "joint"

    sim = evaluate(_rewrite(sim_folder, tmp_path, swap), codecs)["sim"]
    it = [_cos(oracle[f"i{i}"], oracle[f"t{i}"]) for i in range(3)]
    assert sim["image+text"] == {"joint": pytest.approx((it[0] + it[2]) / 2, abs=1e-6), "n_joint": 2,
                                 "independent": pytest.approx(it[1], abs=1e-6), "n_independent": 1}
    assert sim["image+audio"]["joint"] == pytest.approx(_cos(oracle["i0"], oracle["a0"]), abs=1e-6)


def test_audio_at_another_rate_is_resampled_to_the_codecs_rate(sim_folder, codecs, oracle):
    from codiray.evaluate import embed

    at48 = embed(codecs, sim_folder, "audio", "a3.wav", "test").double().numpy()
    assert _cos(at48, oracle["a3"]) > 0.9999
    import torch

    from pipelines.toyworld_probes import read_audio

    wave, rate = read_audio(sim_folder / "a3.wav")
    assert rate == 48000
    with torch.no_grad():  # the same samples taken as 16 kHz (no resampling) embed elsewhere
        unresampled = codecs.condition("audio", torch.from_numpy(wave)[None]).double().numpy().reshape(-1)
    assert _cos(unresampled, oracle["a3"]) < 0.99


def test_cli_sim_from_a_codi_model_folder(sim_folder, codecs, oracle, tmp_path, capsys):
    from models.codi.config import CoDiConfig
    from models.codi.model import CoDi
    from training.recipes_codi import tiny_image_unet

    folder = CoDi(CoDiConfig(image=tiny_image_unet()), codecs).save_pretrained(tmp_path / "codi")
    assert main(["eval", "--generations", str(sim_folder), "--out", str(tmp_path / "m"), "--model", str(folder)]) == 0
    written = json.loads((tmp_path / "m" / "metrics.json").read_text())
    it = [_cos(oracle[f"i{i}"], oracle[f"t{i}"]) for i in range(3)]
    assert written["sim"]["image+text"]["joint"] == pytest.approx((it[0] + it[1]) / 2, abs=1e-6)
    assert written["sim"]["image+text"]["independent"] == pytest.approx(it[2], abs=1e-6)
    out = capsys.readouterr().out
    assert f"sim image+text: joint {(it[0] + it[1]) / 2:.3f} (n=2), independent {it[2]:.3f} (n=1)" in out
    assert "sim image+audio: joint" in out and "independent - (n=0)" in out
    assert written["tasks"]["text->image"]["n"] == 1      # the attribute scores still come with it


def test_without_model_sim_is_empty_and_says_so(sim_folder, tmp_path, capsys):
    assert main(["eval", "--generations", str(sim_folder), "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["sim"] == {}
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sim")]
    assert lines == ["sim: not computed (SIM needs --model, a CoDi model folder or a codecs folder)"]


@pytest.mark.parametrize("make, phrase", [
    (lambda tmp: tmp / "nowhere", "not found"),
    (lambda tmp: tmp, "neither a CoDi model folder"),                        # a folder with no config
    (lambda tmp: (tmp / "codi_config.json").write_text("{}") and tmp, "a CoDi model folder without codecs"),
])
def test_bad_model_folder_is_one_clear_line(sim_folder, tmp_path, capsys, make, phrase):
    folder = make(tmp_path)
    assert main(["eval", "--generations", str(sim_folder), "--out", str(tmp_path / "m"), "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and phrase in err and str(folder) in err, err
    assert not (tmp_path / "m" / "metrics.json").exists()


def test_a_codecs_folder_whose_weights_do_not_load_is_one_clear_line(codecs_dir, sim_folder, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(codecs_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    assert main(["eval", "--generations", str(sim_folder), "--model", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(broken) in err, err
