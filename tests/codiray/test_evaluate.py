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
