"""`codiray report`: report.html from a generations folder of real toy-world media (PNG, H.264 MP4 with
its sound, WAV, TXT), the metrics the real `codiray eval` scores on it, and a schedule.json with each
stage's scalars.jsonl — checked as HTML (files, escaping, the DAG's nodes and edges, goals met/missed
counted by hand from what is planted) and in headless Chromium driven over the DevTools protocol
(every image decoded, every player loaded with a decoded frame, no console error, a screenshot).
"""

from __future__ import annotations

import html.parser
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codiray.cli import main
from codiray.report import read_losses
from common import storage
from browser import open_in_chromium
from pipelines.toyworld import render_image
from pipelines.toyworld_av import write_clip, write_sound
from pipelines.toyworld_spec import COLORS, Clip, Scene, Sound

HOSTILE = "<img src=x onerror=\"console.error('escaped?')\"> & 'quotes'"
SCENES = [Scene("red", "circle", "left"), Scene("blue", "square", "right")]
CLIP = Clip("green", "triangle", "down", "slowly")
OTHER = Clip("yellow", "square", "left", "quickly")
SOUND = Sound("low", "pulsing")
# The schedule: a -> c, b -> c, c -> d; d is still pending (no losses), b ran on S3 (its curve read from there).
STAGES = [("image", "ldm", [], "done"), ("audio<&>", "ldm", [], "done"),
          ("joint", "codi_joint", ["image", "audio<&>"], "failed"), ("final", "codi_joint", ["joint"], "pending")]


def build_generations(root: Path) -> Path:
    """Planted: text->image position is wrong in 1 of 2 (50 %, goal missed), colour right in both
    (100 %, met); text->audio pitch right (met); the joint video+audio sample agrees, the independent
    one does not (joint 100 % vs independent 0 %: met)."""
    root.mkdir(parents=True)
    samples = []
    for i, scene in enumerate(SCENES):
        shown = Scene(scene.color, scene.shape, "bottom") if i == 1 else scene
        render_image(shown, 64).save(root / f"{i:04d}.png")
        samples.append({"task": "text->image", "inputs": {"text": scene.caption}, "outputs": {"image": f"{i:04d}.png"},
                        "seed": i})
    samples[0]["inputs"]["text"] = SCENES[0].caption + " " + HOSTILE       # the prompt is free text ...
    samples[0]["truth"] = SCENES[0].attributes()                          # ... its truth given
    write_clip(root / "0002.mp4", CLIP)                                   # H.264 + AAC, the sound muxed in
    write_sound(root / "0002.wav", CLIP.sound)
    samples.append({"task": "text->video+audio", "inputs": {"text": CLIP.caption}, "mode": "joint",
                    "outputs": {"video": "0002.mp4", "audio": "0002.wav"}, "seed": 2})
    write_clip(root / "0003.mp4", OTHER, with_audio=False)
    write_sound(root / "0003.wav", Sound("shrill", "ticking"))           # belongs to no yellow-left clip
    samples.append({"task": "text->video+audio", "inputs": {"text": OTHER.caption}, "mode": "independent",
                    "outputs": {"video": "0003.mp4", "audio": "0003.wav"}, "seed": 3})
    write_sound(root / "0004.wav", SOUND)
    samples.append({"task": "text->audio", "inputs": {"text": SOUND.caption}, "outputs": {"audio": "0004.wav"}})
    (root / "inputs").mkdir()
    render_image(SCENES[1], 64).save(root / "inputs" / "0005.png")
    (root / "0005.txt").write_text(SCENES[1].caption + "\n")
    samples.append({"task": "image->text", "inputs": {"image": "inputs/0005.png"}, "outputs": {"text": "0005.txt"}})
    (root / "generation.json").write_text(json.dumps({"samples": samples, "runs": []}))
    return root


def build_schedule(root: Path, bucket: str) -> Path:
    records = []
    for index, (name, kind, needs, status) in enumerate(STAGES):
        run_dir = root / "runs" / f"stage{index}"
        if name == "audio<&>":
            run_dir = f"{bucket}/runs/audio"
            storage.write_bytes(f"{run_dir}/tensorboard/scalars.jsonl",
                                "".join(json.dumps({"step": s, "loss": 2.0 - s / 4}) + "\n" for s in range(5)).encode())
        elif status != "pending":
            (run_dir / "tensorboard").mkdir(parents=True)
            # 0..9 then a resume that logs steps 8 and 9 again with other values (the later must win)
            lines = [{"step": s, "loss": 1.0 / (1 + s), "lr": 1e-3} for s in range(10)]
            lines += [{"step": 8, "loss": 0.5, "lr": 1e-3}, {"step": 9, "loss": 0.25, "lr": 1e-3}]
            (run_dir / "tensorboard" / "scalars.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        records.append({"name": name, "kind": kind, "needs": needs, "status": status,
                        "started": "2026-01-01T00:00:00.000+00:00", "finished": None, "resources": {"workers": 1},
                        "run_dir": str(run_dir), "checkpoint": None,
                        "reason": HOSTILE if status == "failed" else None, "phases": [], "metrics": {}})
    path = root / "runs" / "schedule.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schedule": "test", "name": "demo", "updated": "now", "stages": records}))
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory, s3_endpoint):
    import boto3

    root = tmp_path_factory.mktemp("report")
    generations = build_generations(root / "generations")
    assert main(["eval", "--generations", str(generations), "--out", str(root / "metrics")]) == 0
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="report-runs")
    with pytest.MonkeyPatch.context() as env:   # the CLI's store: the standard AWS variable names it
        env.setenv("AWS_ENDPOINT_URL", s3_endpoint)
        schedule = build_schedule(root, "s3://report-runs")
        assert main(["report", "--generations", str(generations), "--metrics", str(root / "metrics" / "metrics.json"),
                     "--schedule", str(schedule), "--out", str(root / "out")]) == 0
    return {"root": root, "generations": generations, "html": root / "out" / "report.html",
            "metrics": json.loads((root / "metrics" / "metrics.json").read_text())}


class Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


class Rows(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.rows[-1].append("")

    def handle_data(self, data):
        if self.rows and self.rows[-1]:
            self.rows[-1][-1] += data


def table_rows(fragment: str) -> list[list[str]]:
    rows = Rows()
    rows.feed(fragment)
    return rows.rows


def parse(path: Path) -> Collect:
    collect = Collect()
    collect.feed(path.read_text(encoding="utf-8"))
    return collect


def test_every_referenced_file_exists_and_is_the_generated_one(report):
    doc = parse(report["html"])
    sources = [a["src"] for tag, a in doc.tags if tag in ("img", "source") and not a["src"].startswith("data:")]
    assert len(sources) == 2 + 2 + 2 + 1 + 1  # text->image PNGs, MP4s and WAVs of the pairs, text->audio WAV, input PNG
    for src in sources:
        assert (report["html"].parent / src).is_file(), src
    copied = sorted((report["html"].parent / s).read_bytes() for s in sources)
    originals = sorted(p.read_bytes() for p in report["generations"].rglob("*") if p.suffix in (".png", ".mp4", ".wav"))
    assert copied == originals
    assert not [a for tag, a in doc.tags if tag in ("script", "link") and a.get("rel") != "icon"]  # nothing external


def test_strings_from_files_are_escaped(report):
    text = report["html"].read_text()
    assert HOSTILE not in text and "<img src=x" not in text
    assert text.count("&lt;img src=x onerror=&quot;console.error(&#x27;escaped?&#x27;)&quot;&gt; &amp;") == 3
    doc = parse(report["html"])
    assert HOSTILE in "".join(doc.text)        # shown as text: the prompt, the stage's reason and its DAG tooltip
    assert "audio<&>" in [a.get("data-stage") for _, a in doc.tags]
    assert SCENES[1].caption in "".join(doc.text)          # the TXT output's content


def test_dag_has_a_node_per_stage_and_an_edge_per_need(report):
    doc = parse(report["html"])
    nodes = {a["data-stage"]: a["data-status"] for tag, a in doc.tags if tag == "g" and "data-stage" in a}
    assert nodes == {name: status for name, _, _, status in STAGES}
    edges = sorted((a["data-from"], a["data-to"]) for tag, a in doc.tags if tag == "path" and "data-from" in a)
    assert edges == sorted((need, name) for name, _, needs, _ in STAGES for need in needs)
    # laid out by depth: image and audio<&> in column 0, joint in 1, final in 2
    rects = [a for tag, a in doc.tags if tag == "rect" and "rx" in a]
    xs = [float(r["x"]) for r in rects]
    assert xs[0] == xs[1] < xs[2] < xs[3]
    # every edge runs from the middle of its need's right side to the middle of its stage's left side
    # (joint has two needs: both arrows must end at the same point, on its box)
    boxes = {a["data-stage"]: r for (tag, a), r in zip([t for t in doc.tags if t[0] == "g" and "data-stage" in t[1]],
                                                        rects)}
    for tag, a in doc.tags:
        if tag == "path" and "data-from" in a:
            numbers = [float(v) for v in a["d"].replace("M", " ").replace("C", " ").replace(",", " ").split()]
            start, end = numbers[:2], numbers[-2:]
            need, stage = boxes[a["data-from"]], boxes[a["data-to"]]
            assert start == [float(need["x"]) + float(need["width"]), float(need["y"]) + float(need["height"]) / 2]
            assert end == [float(stage["x"]), float(stage["y"]) + float(stage["height"]) / 2], a


def test_loss_curves_keep_the_last_value_of_a_resumed_step(report):
    scalars = report["root"] / "runs" / "stage0" / "tensorboard" / "scalars.jsonl"
    assert read_losses(scalars) == [(s, 1.0 / (1 + s)) for s in range(8)] + [(8, 0.5), (9, 0.25)]
    doc = parse(report["html"])
    lines = [a["points"].split() for tag, a in doc.tags if tag == "polyline"]
    assert [len(p) for p in lines] == [10, 5, 10]          # stage0, the S3 stage, joint; the pending stage: none
    ys = [float(p.split(",")[1]) for p in lines[0]]
    assert ys[0] == min(ys) and ys[7] == max(ys) > ys[8] # highest loss at step 0 (top); the lowest, 1/8, at step 7
    ys = [float(p.split(",")[1]) for p in lines[1]]
    assert ys == sorted(ys) and ys[0] < ys[-1]            # read from S3: 2.0 falling to 1.0, top to bottom
    assert "no losses logged in " + str(report["root"] / "runs" / "stage3") in "".join(doc.text)


def test_goals_are_marked_met_or_missed(report):
    m = report["metrics"]  # the hand-counted figures, read back from the real evaluator
    assert m["tasks"]["text->image"]["colour"] == 1.0 and m["tasks"]["text->image"]["position"] == 0.5
    assert m["joint"]["video+audio"]["joint_agreement"] == 1.0
    assert m["joint"]["video+audio"]["independent_agreement"] == 0.0
    text = report["html"].read_text()
    table = text[text.index("<table class=goals>"):]
    rows = table_rows(table[:table.index("</table>")])[1:]
    verdicts = {r[0]: r[-1] for r in rows}
    assert verdicts == {"text→image colour ≥ 90 %": "met", "text→image position ≥ 80 %": "missed",
                        "text→audio pitch ≥ 90 %": "met", "text→video motion ≥ 80 %": "met",
                        "joint video+audio agreement ≥ independent + 20 points": "met"}
    assert rows[3][1:3] == ["text->video+audio video.motion", "100.0 %"]  # no text->video task: the pair's video
    assert rows[1][1:3] == ["text->image position", "50.0 %"]
    assert rows[4][2] == "+100.0 points"                                  # joint minus independent


def test_bad_metrics_is_one_line_exit_2(report, tmp_path, capsys):
    bad = tmp_path / "metrics.json"
    bad.write_text("[1, 2]")
    assert main(["report", "--generations", str(report["generations"]), "--metrics", str(bad),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err


@pytest.mark.parametrize("needs, problem", [(["nowhere"], "stages[0].needs ['nowhere']"),
                                            (["b"], "cycle (a -> b -> a)")])
def test_bad_schedule_is_one_line_exit_2(report, tmp_path, capsys, needs, problem):
    bad = tmp_path / "schedule.json"
    bad.write_text(json.dumps({"stages": [{"name": "a", "needs": needs}, {"name": "b", "needs": ["a"]}]}))
    assert main(["report", "--generations", str(report["generations"]), "--metrics",
                 str(report["root"] / "metrics" / "metrics.json"), "--schedule", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and problem in err, err


def test_report_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0 and "--schedule" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_report_loads_in_headless_chromium(report, tmp_path):
    found, errors, log, screenshot = open_in_chromium(report["html"], tmp_path)
    assert errors == [], (errors, log)
    assert len(found["images"]) == 3 and all(i["complete"] and i["width"] == 64 for i in found["images"]), found
    assert [m["tag"] for m in found["media"]] == ["VIDEO", "AUDIO", "VIDEO", "AUDIO", "AUDIO"], found
    for m in found["media"]:
        assert m["error"] is None and m["networkState"] != 3 and m["readyState"] >= 2, (m, log)
        assert abs(m["duration"] - 2.0) < 0.15, m                  # the toy clips and sounds last 2 s
    assert all(m["coloured"] > 20 for m in found["media"] if m["tag"] == "VIDEO"), found
    assert found["svgs"] == 1 + 3                                 # the DAG and three loss curves (one from S3)
    assert found["page_width"] <= found["viewport"] and 0 < found["dag_width"] <= found["viewport"], found

    pixels = np.asarray(Image.open(io.BytesIO(screenshot.read_bytes())).convert("RGB")).reshape(-1, 3).astype(int)
    assert pixels.shape[0] >= 1280 * 900 and pixels.std() > 20    # not blank
    for colour in ("red", "blue"):                                # the generated images are on screen
        assert (np.abs(pixels - np.array(COLORS[colour])).sum(axis=1) < 30).sum() > 500, colour


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_long_schedule_dag_fits_the_window(report, tmp_path):
    """The demo's schedule is eight stages deep (1974 px at the DAG's natural size): drawn in a 1280-px
    window it is scaled to the page's width, not cut off at the right edge; every name fits its box (the
    demo's longest, video_audio_alignment, once ran past its box's edge and the DAG's)."""
    chain = [f"stage{i}" for i in range(7)] + ["video_audio_alignment"]
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps({"name": "deep", "stages": [
        {"name": n, "kind": "ldm", "needs": chain[i - 1:i], "status": "done"} for i, n in enumerate(chain)]}))
    out = tmp_path / "report"
    assert main(["report", "--generations", str(report["generations"]), "--metrics",
                 str(report["root"] / "metrics" / "metrics.json"), "--schedule", str(schedule), "--out", str(out)]) == 0
    found, errors, log, _ = open_in_chromium(out / "report.html", tmp_path)
    assert errors == [], (errors, log)
    assert found["page_width"] <= found["viewport"] == 1280, found
    assert 1000 < found["dag_width"] <= found["viewport"], found
    assert len(found["dag_boxes"]) == 8 and all(0 < b["label"] <= b["box"] - 8 for b in found["dag_boxes"]), found
