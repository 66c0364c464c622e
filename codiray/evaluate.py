"""`codiray eval --generations DIR --out DIR [--model FOLDER]`: score generated media against the toy
world's truth, and (with ``--model``) CoDi's SIM between co-generated outputs.

Every output is decoded by the classical probes of pipelines/toyworld_probes.py (no learned model)
and compared with what its inputs say it should show. Reads ``DIR/generation.json``:

    {
      "samples": [                                  # required, a list of objects:
        {
          "task": "text->video+audio",              # optional; "<in>+<in>-><out>+<out>", modalities
                                                    #   image|video|audio|text; default: derived from the
                                                    #   keys of inputs and outputs (in that order)
          "inputs": {"text": "a red circle moving left slowly, with a low pulsing tone",
                     "image": "inputs/003.png"},    # text: the prompt itself; media: a path
          "outputs": {"video": "007.mp4", "audio": "007.wav"},   # required: modality -> path
          "mode": "joint",                          # optional: "joint" (default) | "independent":
                                                    #   how several outputs were sampled
          "truth": {"colour": "red", ...}           # optional: what the outputs must show; default:
                                                    #   the attributes of the inputs (text parsed by the
                                                    #   caption grammar, media decoded by the probes)
        }, ...
      ]
      # any other keys (settings, seeds, ...) are ignored
    }

Paths are relative to DIR (or absolute). Outputs: PNG/JPEG images, MP4 videos (the first video
stream), WAV (or any PyAV-readable) audio, UTF-8 TXT text.

Scoring. The truth is closed under the world's links (colour <-> pitch, motion <-> rhythm, see
toyworld_spec.py). An image output is scored on colour, shape, position; a video on colour, shape,
motion, speed; an audio on pitch, rhythm; a text on the attributes its inputs state directly — each
only where the truth has a value (audio->image scores colour, from the pitch). An attribute the probe
cannot decode counts as wrong. ``metrics.json``:

    {"tasks": {"text->image": {"colour": acc, "shape": acc, "position": acc, "n": N}, ...,
               "text->video+audio": {"video.colour": acc, ..., "audio.pitch": acc, "n": N}},
     "joint": {"video+audio": {"joint_agreement": a, "independent_agreement": b,
                               "n_joint": J, "n_independent": I}},
     "sim": {"video+audio": {"joint": s, "independent": s_or_null, "n_joint": J, "n_independent": I},
             "image+text": {...}, ...}}                 # {} without --model

Tasks with several outputs prefix each attribute with its output's modality. ``joint_agreement`` is
the fraction of jointly sampled multi-output samples whose outputs agree with each other on every
attribute they share (video colour <-> audio pitch, motion <-> rhythm; image <-> text colour, shape,
position; ...), ``independent_agreement`` the same over ``"mode": "independent"`` samples (null when
there are none), whatever the truth.

SIM (CoDi Eq. 4, Table 11): SIM(A, B) = cos(C_A(A), C_B(B)), the cosine between the prompt-encoder
embeddings (``Codecs.condition``: CLIP for image/video/text, CLAP for audio) of two outputs of one
sample. ``--model`` names a CoDi model folder (codi_config.json + codecs/) or a bare codecs folder;
only its codecs are loaded (CPU, eval mode, no gradients). Every pair of outputs of every sample with
several outputs counts once under its pair ("image+text", modalities in the order image, video,
audio, text): a three-output sample adds to three pairs. ``joint``/``independent`` are the mean SIM
over the pair's ``"mode": "joint"``/``"independent"`` samples (null when there are none). Audio
files are resampled to the codecs' rate (16 kHz) first; a text output is its file's stripped text.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

from common.errors import CodirayError, UsageError

MODALITIES = ("image", "video", "audio", "text")
SCORED = {"image": ("colour", "shape", "position"), "video": ("colour", "shape", "motion", "speed"),
          "audio": ("pitch", "rhythm")}
LINKS = {"colour": "pitch", "pitch": "colour", "motion": "rhythm", "rhythm": "motion"}


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="score a generations folder with the toy world's attribute probes")
    parser.add_argument("--generations", required=True, help="folder with generation.json and the outputs")
    parser.add_argument("--out", help="folder for metrics.json (default: the generations folder)")
    parser.add_argument("--model", help="CoDi model folder or codecs folder whose prompt encoders score SIM "
                                        "(CoDi Eq. 4) between co-generated outputs")
    parser.set_defaults(func=run)


def run(args) -> int:
    codecs = load_codecs(Path(args.model)) if args.model else None
    metrics = evaluate(Path(args.generations), codecs)
    out = Path(args.out or args.generations)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    for task, scores in sorted(metrics["tasks"].items()):
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(scores.items()) if k != "n")
        print(f"{task} (n={scores['n']}): {shown}")
    for pair, scores in sorted(metrics["joint"].items()):
        shown = ", ".join(f"{k} {v if v is None else round(v, 2)}" for k, v in sorted(scores.items()))
        print(f"joint {pair}: {shown}")
    if codecs is None:
        print("sim: not computed (SIM needs --model, a CoDi model folder or a codecs folder)")
    for pair, scores in metrics["sim"].items():
        shown = ", ".join(f"{mode} {'-' if scores[mode] is None else f'{scores[mode]:.3f}'} (n={scores['n_' + mode]})"
                          for mode in ("joint", "independent"))
        print(f"sim {pair}: {shown}")
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def read_samples(root: Path) -> list[dict]:
    """The validated samples of ``root/generation.json`` (UsageError naming the key that is wrong)."""
    path = root / "generation.json"
    if not path.is_file():
        raise UsageError(f"{path}: not found (a generations folder holds generation.json)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from None
    samples = doc.get("samples") if isinstance(doc, dict) else None
    if not isinstance(samples, list):
        raise UsageError(f"{path}: 'samples' must be a list of objects")
    for index, sample in enumerate(samples):
        where = f"{path}: samples[{index}]"
        if not isinstance(sample, dict):
            raise UsageError(f"{where} is not an object")
        for key in ("inputs", "outputs"):
            value = sample.get(key, {} if key == "inputs" else None)
            if not isinstance(value, dict) or (key == "outputs" and not value):
                raise UsageError(f"{where}.{key} must be an object of modality -> value")
            unknown = [m for m in value if m not in MODALITIES]
            if unknown:
                raise UsageError(f"{where}.{key}: unknown modality {unknown[0]!r} (one of {', '.join(MODALITIES)})")
        if sample.get("mode", "joint") not in ("joint", "independent"):
            raise UsageError(f"{where}.mode must be 'joint' or 'independent', not {sample['mode']!r}")
        sample.setdefault("task", "+".join(sample.get("inputs", {})) + "->" + "+".join(sample["outputs"]))
        if set(sample["task"].rpartition("->")[2].split("+")) != set(sample["outputs"]):
            raise UsageError(f"{where}.task {sample['task']!r} does not name the outputs "
                             f"{'+'.join(sample['outputs'])}")
    return samples


def locate(root: Path, modality: str, value: str, where: str) -> Path:
    """The file an output or input names (relative to ``root``); UsageError if it is not there."""
    path = Path(value) if Path(value).is_absolute() else root / value
    if not path.is_file():
        raise UsageError(f"{where}: {modality} file {path} not found")
    return path


def decoded(read, modality: str, path: Path, where: str):
    """``read(path)``, any decoder error turned into one UsageError naming the file."""
    try:
        return read(path)
    except Exception as err:  # PyAV/PIL raise many types; any of them means the file is unreadable
        raise UsageError(f"{where}: cannot decode {modality} file {path} ({type(err).__name__}: {err})") from None


def probe(root: Path, modality: str, value: str, where: str) -> dict:
    """The attributes of one file (a missing or undecodable file is a UsageError naming it)."""
    from pipelines.toyworld_probes import probe_file

    return decoded(lambda p: probe_file(modality, p), modality, locate(root, modality, value, where), where)


def stated_truth(root: Path, sample: dict, where: str) -> dict:
    """What the sample's inputs say (or its explicit ``truth``), before the cross-modal links."""
    from pipelines.toyworld_spec import parse_caption

    if isinstance(sample.get("truth"), dict):
        return dict(sample["truth"])
    truth: dict = {}
    for modality, value in sample.get("inputs", {}).items():
        found = parse_caption(value) if modality == "text" else probe(root, modality, value, f"{where}.inputs")
        for key, decoded in found.items():
            if decoded is not None:
                truth.setdefault(key, decoded)
    return truth


def scored(modality: str, stated: dict, closed: dict) -> list[str]:
    """The attributes an output of ``modality`` is scored on (those the truth has a value for)."""
    names = SCORED.get(modality, tuple(stated))
    return [name for name in names if closed.get(name) is not None]


def shared(a: str, b: str) -> set[str]:
    """The attributes two output modalities can be compared on, through the links."""
    def reach(m: str, other: str) -> set[str]:
        names = set(SCORED.get(m) or SCORED.get(other) or ())
        return names | {LINKS[n] for n in names if n in LINKS}

    return reach(a, b) & reach(b, a)


def agree(a: dict, b: dict, names: set[str]) -> bool:
    return all(a.get(n) is not None and a.get(n) == b.get(n) for n in names)


def evaluate(root: Path, codecs=None) -> dict:
    """The metrics of one generations folder (see the module docstring); ``sim`` only with ``codecs``."""
    from pipelines.toyworld_spec import implied

    tasks: dict[str, dict] = {}
    joint: dict[str, dict] = {}
    for index, sample in enumerate(read_samples(root)):
        where = f"{root / 'generation.json'}: samples[{index}]"
        stated = stated_truth(root, sample, where)
        if not stated:
            raise UsageError(f"{where}: its inputs state no toy-world attribute (a text prompt must follow "
                             "the caption grammar of pipelines/toyworld_spec.py; else give 'truth')")
        closed = implied(stated)
        outputs = {m: probe(root, m, v, f"{where}.outputs") for m, v in sample["outputs"].items()}
        counts = tasks.setdefault(sample["task"], {"n": 0})
        counts["n"] += 1
        for modality, found in outputs.items():
            for name in scored(modality, stated, closed):
                key = name if len(outputs) == 1 else f"{modality}.{name}"
                right, total = counts.get(key, (0, 0))
                counts[key] = (right + (found.get(name) == closed[name]), total + 1)
        if len(outputs) > 1:
            order = sorted(outputs, key=MODALITIES.index)
            together = all(agree(implied(outputs[a]), implied(outputs[b]), shared(a, b))
                           for a, b in combinations(order, 2))
            tally = joint.setdefault("+".join(order), {"joint": [0, 0], "independent": [0, 0]})
            tally[sample.get("mode", "joint")][0] += together
            tally[sample.get("mode", "joint")][1] += 1
    return {"tasks": {task: {k: (v if k == "n" else v[0] / v[1]) for k, v in counts.items()}
                      for task, counts in tasks.items()},
            "joint": {pair: {"joint_agreement": _mean(t["joint"]), "n_joint": t["joint"][1],
                             "independent_agreement": _mean(t["independent"]),
                             "n_independent": t["independent"][1]} for pair, t in joint.items()},
            "sim": {} if codecs is None else sim_metrics(root, codecs)}


def _mean(tally: list) -> float | None:
    """sum / count of a [sum, count] tally; None when it counted nothing."""
    return tally[0] / tally[1] if tally[1] else None


# ---- SIM (CoDi Eq. 4) ----------------------------------------------------------------------------------

def load_codecs(folder: Path):
    """The ``Codecs`` of a CoDi model folder (its ``codecs/``) or of a codecs folder, on CPU in eval mode."""
    from models.codecs import CONFIG_FILE, Codecs
    from models.codi.model import CODECS_DIR, CONFIG_NAME

    directory = folder / CODECS_DIR if (folder / CONFIG_NAME).is_file() else folder
    if not folder.exists():
        raise UsageError(f"--model {folder}: not found")
    if directory != folder and not (directory / CONFIG_FILE).is_file():
        raise UsageError(f"--model {folder}: a CoDi model folder without codecs ({directory / CONFIG_FILE} "
                         "not found); SIM needs its prompt encoders")
    if not (directory / CONFIG_FILE).is_file():
        raise UsageError(f"--model {folder}: neither a CoDi model folder (codi_config.json + codecs/) nor a "
                         "codecs folder (config.json + model.safetensors)")
    try:
        codecs = Codecs.from_pretrained(directory)
    except CodirayError as err:     # a config or weights file that does not load: one line, with --model
        raise UsageError(f"--model {folder}: {err}") from None
    except Exception as err:        # safetensors header errors and the like from the weights file
        problem = (str(err).strip().splitlines() or [""])[0][:300]
        raise UsageError(f"--model {folder}: cannot load {directory / 'model.safetensors'} "
                         f"({type(err).__name__}: {problem})") from None
    return codecs.to("cpu").eval()


def sim(a, b) -> float:
    """CoDi Eq. 4: SIM(A, B) = cos(C_A(A), C_B(B)) of two prompt embeddings (vectors)."""
    import torch.nn.functional as F

    return float(F.cosine_similarity(a.double(), b.double(), dim=-1))


def read_for_condition(modality: str, path: Path, rate: int):
    """One file in the layout ``Codecs.condition`` takes, batch of one: image uint8 (1, h, w, 3), video
    uint8 (1, f, h, w, 3), audio float32 (1, n) at ``rate``, text [str]."""
    import torch
    import torchaudio.functional as AF

    from pipelines.toyworld_probes import read_audio, read_image, read_video

    if modality == "image":
        return torch.from_numpy(read_image(path).copy())[None]
    if modality == "video":
        return torch.from_numpy(read_video(path)[0])[None]
    if modality == "audio":
        wave, file_rate = read_audio(path)
        wave = torch.from_numpy(wave)[None]
        return wave if file_rate == rate else AF.resample(wave, file_rate, rate)
    return [path.read_text(encoding="utf-8").strip()]


def embed(codecs, root: Path, modality: str, value: str, where: str):
    """C_m(output): the prompt embedding of one output file as a vector."""
    import torch

    path = locate(root, modality, value, where)
    data = decoded(lambda p: read_for_condition(modality, p, codecs.cfg.sample_rate), modality, path, where)
    with torch.no_grad():
        return codecs.condition(modality, data)[0].mean(dim=0)   # (1, 768) -> (768,)


def sim_metrics(root: Path, codecs) -> dict:
    """Mean SIM per output pair, jointly vs independently generated samples (the module docstring)."""
    sums: dict[str, dict] = {}
    for index, sample in enumerate(read_samples(root)):
        if len(sample["outputs"]) < 2:
            continue
        where = f"{root / 'generation.json'}: samples[{index}].outputs"
        order = sorted(sample["outputs"], key=MODALITIES.index)
        vectors = {m: embed(codecs, root, m, sample["outputs"][m], where) for m in order}
        for a, b in combinations(order, 2):
            tally = sums.setdefault(f"{a}+{b}", {"joint": [0.0, 0], "independent": [0.0, 0]})
            tally[sample.get("mode", "joint")][0] += sim(vectors[a], vectors[b])
            tally[sample.get("mode", "joint")][1] += 1
    pairs = sorted(sums, key=lambda p: [MODALITIES.index(m) for m in p.split("+")])
    return {p: {"joint": _mean(sums[p]["joint"]), "n_joint": sums[p]["joint"][1],
                "independent": _mean(sums[p]["independent"]), "n_independent": sums[p]["independent"][1]}
            for p in pairs}
