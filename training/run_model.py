"""The model a schedule run trained: ``<storage>/<name>/`` (its ``schedule.json``) → one ``CoDi`` with codecs.

    model = model_from_run("runs/demo")          # what `codiray generate --checkpoint runs/demo` loads

Each UNet (image, audio, text) comes from the latest-finished ``ldm`` / ``latent_alignment`` stage
whose export holds it — after CoDi's alignment phases, the last phase's export holds all three — and
the codecs are the ones that stage trained on (its ``task.codecs``: a folder plus the autoencoder and
bridging exports laid over it). Distillation students and cascade stages are separate models and
never picked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from common import storage
from common.errors import UsageError
from common.storage import S3Config

SCHEDULE_JSON = "schedule.json"
MODEL_KINDS = ("ldm", "latent_alignment")


def run_uri(run) -> str:
    """A run folder as a URI: ``s3://`` as given, a local path with ``~`` expanded."""
    return str(run) if storage.is_remote(str(run)) else str(Path(run).expanduser())


def is_run_folder(uri: str, s3: Optional[S3Config] = None) -> bool:
    """Whether ``uri`` (local or ``s3://``) holds a ``schedule.json``."""
    return storage.exists(storage.join(run_uri(uri), SCHEDULE_JSON), s3)


def finished_stages(run, s3: Optional[S3Config] = None) -> list[dict]:
    """The stage records of ``run/schedule.json`` (local or ``s3://``) that finished (done, or skipped on a
    rerun) with a checkpoint, earliest finished first."""
    path = storage.join(run_uri(run), SCHEDULE_JSON)
    try:
        stages = json.loads(storage.read_bytes(path, s3))["stages"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path}: not a schedule record ({type(err).__name__}: {err})") from None
    return sorted((s for s in stages if s.get("status") in ("done", "skipped") and s.get("checkpoint")),
                  key=lambda s: s.get("finished") or "")


def pick_stages(run, s3: Optional[S3Config] = None) -> dict[str, dict]:
    """UNet name → the stage record that provides it (latest ``finished`` wins)."""
    from training.task import codi_config

    usable = [s for s in finished_stages(run, s3) if s.get("kind") in MODEL_KINDS]
    if not usable:
        raise UsageError(f"{storage.join(run_uri(run), SCHEDULE_JSON)}: no finished ldm or latent_alignment stage "
                         "with a checkpoint — nothing to generate with")
    picked: dict[str, dict] = {}
    for record in usable:
        for unet in codi_config(record["checkpoint"], s3).specs():
            picked[unet] = record
    return picked


def model_from_run(run_dir, s3: Optional[S3Config] = None):
    """The assembled ``CoDi`` (with ``codecs``) of a schedule run folder, local or ``s3://``."""
    from training.recipes_codi import stage_config
    from training.task import load_codecs, load_codi_parts

    picked = pick_stages(run_dir, s3)
    model = load_codi_parts({unet: r["checkpoint"] for unet, r in picked.items()}, "model.safetensors", s3)
    latest = max(picked.values(), key=lambda s: s.get("finished") or "")
    model.codecs = load_codecs(stage_config(latest["checkpoint"], s3).task.codecs, s3)
    return model


def describe(run_dir, s3: Optional[S3Config] = None) -> str:
    """One line: which stage gave which UNet."""
    return ", ".join(f"{unet} from {r['name']}" for unet, r in pick_stages(run_dir, s3).items())
