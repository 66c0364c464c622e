"""`codiray report --generations DIR --metrics FILE [--schedule FILE] --out DIR`: one ``report.html``.

    write_report("out/report", "out/generations", "out/metrics/metrics.json", "out/runs/demo/schedule.json")

The page needs nothing from the network (no JS, CSS or fonts from elsewhere): the metrics table with
the issue's goals marked met/missed, the schedule as a DAG in inline SVG (a node per stage coloured by
status, an edge per need, columns by dependency depth), each stage's loss curve (inline SVG from its
``<run_dir>/tensorboard/scalars.jsonl``), and the samples grouped by task with their prompts: images
as ``<img>``, videos as ``<video controls>`` (H.264 MP4 as generated), audio as ``<audio controls>``,
text as text. Media are copied into ``DIR/assets/`` so the folder can be moved or archived whole.
Every string read from a file is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from common import storage
from common.errors import UsageError
from common.storage import S3Config

REPORT_HTML = "report.html"
ASSETS = "assets"
STATUS_COLOURS = {"done": "#66bb6a", "skipped": "#a5d6a7", "running": "#64b5f6", "pending": "#cfd8dc",
                  "failed": "#ef5350"}
VIDEO_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime", ".mkv": "video/x-matroska"}
AUDIO_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".flac": "audio/flac",
               ".m4a": "audio/mp4"}


@dataclass(frozen=True)
class Goal:
    """An accuracy goal of issue 13: the first of ``where`` ((task, attribute) pairs) present is used."""

    label: str
    where: tuple[tuple[str, str], ...]
    threshold: float


GOALS = (Goal("text→image colour ≥ 90 %", (("text->image", "colour"),), 0.90),
         Goal("text→image position ≥ 80 %", (("text->image", "position"),), 0.80),
         Goal("text→audio pitch ≥ 90 %", (("text->audio", "pitch"),), 0.90),
         Goal("text→video motion ≥ 80 %", (("text->video", "motion"), ("text->video+audio", "video.motion")), 0.80))
JOINT_MARGIN = 0.20   # joint video+audio agreement >= independent agreement + 20 points

esc = html.escape


def register(subparsers) -> None:
    parser = subparsers.add_parser("report", help="write report.html: metrics, schedule DAG, loss curves, samples")
    parser.add_argument("--generations", required=True, help="folder with generation.json and the outputs")
    parser.add_argument("--metrics", required=True, help="metrics.json written by `codiray eval`")
    parser.add_argument("--schedule", help="schedule.json of a schedule run (<storage>/<name>/schedule.json)")
    parser.add_argument("--out", required=True, help="folder for report.html and its assets/")
    parser.set_defaults(func=run)


def run(args) -> int:
    path = write_report(args.out, args.generations, args.metrics, args.schedule)
    print(f"report: {path}")
    return 0


def write_report(out_dir, generations_dir, metrics_path, schedule_path=None, s3: S3Config | None = None) -> Path:
    """Write ``out_dir/report.html`` (+ ``out_dir/assets/``); returns its path. ``schedule_path`` (and the run
    folders it names) may be local or ``s3://``. Bad input: UsageError."""
    from codiray.evaluate import read_samples

    out, generations = Path(out_dir), Path(generations_dir)
    samples = read_samples(generations)
    metrics = read_json(metrics_path)
    if not isinstance(metrics.get("tasks"), dict):
        raise UsageError(f"{metrics_path}: 'tasks' must be an object of task -> scores (a `codiray eval` metrics.json)")
    (out / ASSETS).mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>codiray report</h1>\n<p class=meta>generations: <code>{esc(str(generations))}</code>"
             f" · metrics: <code>{esc(str(metrics_path))}</code></p>",
             metrics_section(metrics)]
    if schedule_path is not None:
        parts.append(schedule_section(str(schedule_path), s3))
    parts.append(samples_section(samples, generations, out))
    path = out / REPORT_HTML
    path.write_text(page("codiray report", "\n".join(parts)), encoding="utf-8")
    return path


def read_json(path, s3: S3Config | None = None) -> dict:
    """A JSON object from a local path or ``s3://`` URI."""
    if not storage.exists(str(path), s3):
        raise UsageError(f"{path}: not found")
    try:
        doc = json.loads(storage.read_bytes(str(path), s3).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: must hold a JSON object")
    return doc


# --- metrics ------------------------------------------------------------------------------------

def percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def verdict(met: bool | None) -> str:
    if met is None:
        return "<td class='na'>not measured</td>"
    return "<td class='met'>met</td>" if met else "<td class='missed'>missed</td>"


def goal_results(metrics: dict) -> list[tuple[str, str, str, bool | None]]:
    """(goal, what was measured, value shown, met) per goal; met is None where nothing was measured."""
    rows = []
    for goal in GOALS:
        tasks = metrics["tasks"]
        found = [(t, a) for t, a in goal.where if isinstance(tasks.get(t), dict) and a in tasks[t]]
        if not found:
            rows.append((goal.label, "", "–", None))
            continue
        task, attr = found[0]
        value = float(metrics["tasks"][task][attr])
        rows.append((goal.label, f"{task} {attr}", percent(value), value >= goal.threshold))
    joint = metrics.get("joint", {}).get("video+audio") or {}
    a, b = joint.get("joint_agreement"), joint.get("independent_agreement")
    met = None if a is None or b is None else a >= b + JOINT_MARGIN
    shown = "–" if met is None else f"{100 * (a - b):+.1f} points"
    rows.append(("joint video+audio agreement ≥ independent + 20 points",
                 "" if met is None else f"joint {percent(a)} − independent {percent(b)}", shown, met))
    return rows


def metrics_section(metrics: dict) -> str:
    goals = "".join(f"<tr><td>{esc(label)}</td><td>{esc(where)}</td><td class=num>{esc(value)}</td>{verdict(met)}</tr>"
                    for label, where, value, met in goal_results(metrics))
    thresholds = {(t, a): g.threshold for g in GOALS for t, a in g.where}
    rows = []
    for task, scores in sorted(metrics["tasks"].items()):
        attrs = [k for k in sorted(scores) if k != "n"]
        for i, attr in enumerate(attrs):
            goal = thresholds.get((task, attr))
            cells = (f"<td class=num>≥ {percent(goal)}</td>{verdict(float(scores[attr]) >= goal)}" if goal is not None
                     else "<td></td><td></td>")
            head = f"<td rowspan={len(attrs)}>{esc(task)}</td>" if i == 0 else ""
            n = f"<td rowspan={len(attrs)} class=num>{esc(str(scores.get('n', '')))}</td>" if i == 0 else ""
            rows.append(f"<tr>{head}<td>{esc(attr)}</td><td class=num>{percent(scores[attr])}</td>{n}{cells}</tr>")
    joint = "".join(
        f"<tr><td>{esc(pair)}</td><td class=num>{percent(s.get('joint_agreement'))}</td>"
        f"<td class=num>{percent(s.get('independent_agreement'))}</td>"
        f"<td class=num>{esc(str(s.get('n_joint', '')))}</td>"
        f"<td class=num>{esc(str(s.get('n_independent', '')))}</td></tr>"
        for pair, s in sorted(metrics.get("joint", {}).items()))
    return ("<h2 id=metrics>Metrics</h2>\n<h3>Goals</h3>\n<table class=goals><tr><th>goal</th><th>measured on</th>"
            f"<th>value</th><th></th></tr>{goals}</table>\n<h3>Accuracy per task and attribute</h3>\n"
            "<table class=metrics><tr><th>task</th><th>attribute</th><th>accuracy</th><th>n</th><th>goal</th>"
            "<th></th></tr>"
            f"{''.join(rows)}</table>\n<h3>Joint vs independent agreement</h3>\n<table class=joint><tr><th>outputs</th>"
            f"<th>joint</th><th>independent</th><th>n joint</th><th>n independent</th></tr>{joint}</table>")


# --- schedule -----------------------------------------------------------------------------------

def read_stages(path: str, s3: S3Config | None = None) -> list[dict]:
    doc = read_json(path, s3)
    stages = doc.get("stages")
    if not isinstance(stages, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in stages):
        raise UsageError(f"{path}: 'stages' must be a list of objects with a 'name'")
    names = {s["name"] for s in stages}
    for i, stage in enumerate(stages):
        needs = stage.get("needs") or []
        if not isinstance(needs, list) or any(n not in names for n in needs):
            raise UsageError(f"{path}: stages[{i}].needs {needs!r} must list stages of this schedule")
    return stages


def depths(stages: list[dict], where: Path) -> dict[str, int]:
    """Dependency depth of every stage: 0 without needs, else 1 + the deepest need."""
    needs = {s["name"]: list(s.get("needs") or []) for s in stages}
    out: dict[str, int] = {}

    def depth(name: str, seen: tuple[str, ...]) -> int:
        if name in seen:
            raise UsageError(f"{where}: the stages' needs form a cycle ({' -> '.join(seen + (name,))})")
        if name not in out:
            out[name] = 1 + max((depth(n, seen + (name,)) for n in needs[name]), default=-1)
        return out[name]

    for name in needs:
        depth(name, ())
    return out


def dag_svg(stages: list[dict], where: Path) -> str:
    level = depths(stages, where)
    # a box as wide as its longest bold name at the page's 16 px (about 10 px a character, measured in
    # Chromium: "video_audio_alignment" is 206 px wide), 200 px at least
    box_w = max(200, 24 + 10 * max((len(s["name"]) for s in stages), default=0))
    box_h, col_w, row_h, pad = 48, box_w + 50, 70, 12
    slots: dict[int, int] = {}
    xy = {}
    for stage in stages:
        d = level[stage["name"]]
        xy[stage["name"]] = (pad + d * col_w, pad + slots.get(d, 0) * row_h)
        slots[d] = slots.get(d, 0) + 1
    width = pad * 2 + max(level.values(), default=0) * col_w + box_w
    height = pad * 2 + (max(slots.values(), default=1) - 1) * row_h + box_h
    parts = [f"<svg class=dag xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' role=img aria-label='schedule DAG'>",
             "<defs><marker id=arrow viewBox='0 0 10 10' refX=10 refY=5 markerWidth=7 markerHeight=7 orient=auto>"
             "<path d='M0,0 L10,5 L0,10 z' fill='#555'/></marker></defs>"]
    for stage in stages:
        x2, top = xy[stage["name"]]
        y2 = top + box_h / 2                      # every edge ends at the middle of the stage's left side
        for need in stage.get("needs") or []:
            x1, y1 = xy[need]
            x1, y1 = x1 + box_w, y1 + box_h / 2
            mid = (x1 + x2) / 2
            parts.append(f"<path class=edge data-from='{esc(need)}' data-to='{esc(stage['name'])}' "
                         f"d='M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}' fill=none stroke='#555' "
                         "stroke-width=1.5 marker-end='url(#arrow)'/>")
    for stage in stages:
        x, y = xy[stage["name"]]
        status = str(stage.get("status", "pending"))
        fill = STATUS_COLOURS.get(status, "#ffffff")
        tip = f"{stage['name']} ({stage.get('kind', '?')}): {status}"
        if stage.get("reason"):
            tip += f" — {stage['reason']}"
        parts.append(f"<g class=stage data-stage='{esc(stage['name'])}' data-status='{esc(status)}'>"
                     f"<title>{esc(tip)}</title><rect x={x} y={y} width={box_w} height={box_h} rx=6 "
                     f"fill='{fill}' stroke='#333'/><text x={x + box_w / 2} y={y + 20} text-anchor=middle "
                     f"font-weight=bold>{esc(stage['name'])}</text><text x={x + box_w / 2} y={y + 38} "
                     f"text-anchor=middle font-size=12>{esc(str(stage.get('kind', '')))} · {esc(status)}</text></g>")
    parts.append("</svg>")
    return "".join(parts)


def read_losses(path: str, s3: S3Config | None = None) -> list[tuple[int, float]]:
    """(step, loss) from a scalars.jsonl (local or ``s3://``), sorted by step; a step logged twice (a resumed
    run) keeps its last value."""
    losses: dict[int, float] = {}
    for number, line in enumerate(storage.read_bytes(path, s3).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if "loss" in row:
                losses[int(row["step"])] = float(row["loss"])
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"{path}:{number}: not a scalars line with 'step' and 'loss' ({err})") from None
    return sorted(losses.items())


def loss_svg(points: list[tuple[int, float]], width: int = 360, height: int = 160) -> str:
    left, right, top, bottom = 56, 10, 10, 26
    (s0, s1), (l0, l1) = ((min(v), max(v)) for v in zip(*points))
    sx = (width - left - right) / ((s1 - s0) or 1)
    sy = (height - top - bottom) / ((l1 - l0) or 1)
    coords = " ".join(f"{left + (s - s0) * sx:.1f},{top + (l1 - l) * sy:.1f}" for s, l in points)
    base = height - bottom
    return (f"<svg class=loss xmlns='http://www.w3.org/2000/svg' width={width} height={height} role=img "
            f"aria-label='loss curve'><rect x={left} y={top} width={width - left - right} height={base - top} "
            f"fill='#fafafa' stroke='#ccc'/><polyline fill=none stroke='#1565c0' stroke-width=1.5 points='{coords}'/>"
            f"<text x={left - 4} y={top + 10} text-anchor=end font-size=11>{l1:.4g}</text>"
            f"<text x={left - 4} y={base} text-anchor=end font-size=11>{l0:.4g}</text>"
            f"<text x={left} y={height - 8} font-size=11>step {s0}</text>"
            f"<text x={width - right} y={height - 8} text-anchor=end font-size=11>step {s1}</text></svg>")


def stage_card(stage: dict, root: str, s3: S3Config | None = None) -> str:
    """One stage's facts and loss curve (``<run dir>/tensorboard/scalars.jsonl``; a relative run dir is
    taken relative to ``root``, the folder of schedule.json)."""
    run_dir = str(stage.get("run_dir") or "")
    curve = "<p class=na>no run folder recorded</p>"
    if run_dir:
        folder = run_dir if storage.is_remote(run_dir) or Path(run_dir).is_absolute() else storage.join(root, run_dir)
        scalars = storage.join(folder, "tensorboard", "scalars.jsonl")
        try:
            points = read_losses(scalars, s3) if storage.exists(scalars, s3) else []
            curve = loss_svg(points) if points else f"<p class=na>no losses logged in {esc(scalars)}</p>"
        except storage.StorageError as err:   # an unreachable store costs the curve, not the report
            curve = f"<p class=na>loss curve not read: {esc(str(err))}</p>"
    facts = [("kind", stage.get("kind")), ("status", stage.get("status")), ("started", stage.get("started")),
             ("finished", stage.get("finished")), ("needs", ", ".join(stage.get("needs") or []) or None),
             ("reason", stage.get("reason")), ("checkpoint", stage.get("checkpoint"))]
    facts += [(f"final {k}", v) for k, v in sorted((stage.get("metrics") or {}).items())]
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in facts if v not in (None, ""))
    return (f"<div class=stagecard id='stage-{esc(stage['name'])}'><h3>{esc(stage['name'])}</h3>"
            f"<table class=facts>{rows}</table>{curve}</div>")


def schedule_section(path: str, s3: S3Config | None = None) -> str:
    stages = read_stages(path, s3)
    doc = read_json(path, s3)
    legend = " ".join(f"<span class=swatch style='background:{c}'></span>{s}" for s, c in STATUS_COLOURS.items())
    cards = "".join(stage_card(stage, storage.parent(path), s3) for stage in stages)
    return (f"<h2 id=schedule>Schedule {esc(str(doc.get('name', '')))}</h2>\n<p class=meta>{esc(str(path))} · "
            f"updated {esc(str(doc.get('updated', '?')))} · {legend}</p>\n{dag_svg(stages, path)}\n"
            f"<div class=stages>{cards}</div>")


# --- samples ------------------------------------------------------------------------------------

def media_html(modality: str, source: Path, out: Path, name: str) -> str:
    """The player (or image, or text) for one file, copied to ``out/assets/name``."""
    if not source.is_file():
        raise UsageError(f"{source}: {modality} file not found")
    if modality == "text":
        return f"<pre class=text>{esc(source.read_text(encoding='utf-8', errors='replace').strip())}</pre>"
    target = out / ASSETS / name
    shutil.copyfile(source, target)
    url = esc(quote(f"{ASSETS}/{name}"))
    if modality == "image":
        return f"<img src='{url}' alt='{esc(source.name)}' loading=eager>"
    kind = VIDEO_TYPES if modality == "video" else AUDIO_TYPES
    mime = kind.get(source.suffix.lower())
    typed = f" type='{mime}'" if mime else ""
    return f"<{modality} controls preload=auto><source src='{url}'{typed}></{modality}>"


def sample_card(index: int, sample: dict, root: Path, out: Path) -> str:
    def resolve(value: str) -> Path:
        return Path(value) if Path(value).is_absolute() else root / value

    prompt = sample.get("inputs", {}).get("text")
    head = f"<p class=prompt>“{esc(str(prompt))}”</p>" if prompt is not None else ""
    inputs = "".join(
        f"<figure class=input><figcaption>input {esc(m)}</figcaption>"
        f"{media_html(m, resolve(str(v)), out, f'{index:04d}_in_{m}{resolve(str(v)).suffix.lower()}')}</figure>"
        for m, v in sample.get("inputs", {}).items() if m != "text")
    outputs = "".join(
        f"<figure><figcaption>{esc(m)} · {esc(str(v))}</figcaption>"
        f"{media_html(m, resolve(str(v)), out, f'{index:04d}_out_{m}{resolve(str(v)).suffix.lower()}')}</figure>"
        for m, v in sample["outputs"].items())
    extra = " · ".join(f"{k} {esc(str(sample[k]))}" for k in ("mode", "seed") if k in sample)
    return f"<div class=sample>{head}<div class=media>{inputs}{outputs}</div><p class=meta>{extra}</p></div>"


def samples_section(samples: list[dict], root: Path, out: Path) -> str:
    by_task: dict[str, list[tuple[int, dict]]] = {}
    for index, sample in enumerate(samples):
        by_task.setdefault(sample["task"], []).append((index, sample))
    parts = ["<h2 id=samples>Samples</h2>"]
    for task, group in by_task.items():
        cards = "".join(sample_card(i, s, root, out) for i, s in group)
        parts.append(f"<h3>{esc(task)} <span class=meta>({len(group)})</span></h3><div class=grid>{cards}</div>")
    sheets = sorted(root.glob("contact_sheet_*.png"))
    if sheets:
        parts.append("<h3>Contact sheets</h3>" + "".join(
            f"<figure>{media_html('image', p, out, p.name)}</figure>" for p in sheets))
    return "\n".join(parts)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.met { background: #c8e6c9; } td.missed { background: #ffcdd2; } .na { color: #777; }
.meta { color: #666; font-size: 0.9em; }
svg.dag { display: block; max-width: 100%; height: auto; }   /* a deep schedule scales to the page */
.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #333; margin: 0 3px 0 8px; }
.stages, .grid { display: flex; flex-wrap: wrap; gap: 12px; }
.stagecard, .sample { border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
.stagecard h3 { margin: 0 0 6px; } table.facts { font-size: 0.85em; }
.media { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 0.8em; color: #555; }
img, video { display: block; width: 160px; image-rendering: pixelated; background: #eee; }
audio { display: block; width: 240px; } pre.text { max-width: 320px; white-space: pre-wrap; }
.prompt { font-style: italic; margin: 0 0 6px; max-width: 520px; }
"""


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<link rel=icon href='data:,'><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
