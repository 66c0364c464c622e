"""Named schedules (``run_schedule(SCHEDULES[name], ...)``).

``engine_debug`` is NOT CoDi's schedule: it exercises the schedule engine (concurrent stages, a
stage needing two others, skip/resume records) with the debug text-to-image diffuser.
``codi_debug`` is CoDi's staged training at toy sizes: every stage kind, each stage loading what its
needs exported (training/recipes_codi.py; the DAG is drawn in docs/schedule.md).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from training.config import ScalingConfig, TrainConfig
from training import recipes_codi as rc
from training.recipes import text_to_image_demo_debug
from training.schedule import Schedule, Stage


def one_worker_t2i_debug() -> TrainConfig:
    """The debug text-to-image stage on one worker (two of them run side by side on a 4-CPU Ray and
    leave CPUs for Ray Data's reads)."""
    cfg = text_to_image_demo_debug()
    return dataclasses.replace(cfg, scaling=ScalingConfig(num_workers=1, worker=cfg.scaling.worker))


def engine_debug() -> Schedule:
    """Engine test: ``a`` and ``b`` independent (run concurrently), ``c`` needs both."""
    return Schedule([
        Stage("a", "ldm", recipe=one_worker_t2i_debug, data="laion"),
        Stage("b", "ldm", recipe=one_worker_t2i_debug, data="laion"),
        Stage("c", "ldm", recipe=one_worker_t2i_debug, data="laion", needs=["a", "b"]),
    ])


def codi_debug() -> Schedule:
    """CoDi's stages at toy sizes: codecs (autoencoders, audio bridging) -> image LDM -> text-image latent
    alignment and progressive distillation; the video cascade (base, SSR, TSR) beside them."""
    return Schedule([
        Stage("image_autoencoder", "autoencoder", recipe=rc.image_autoencoder_debug, data="laion"),
        Stage("audio_autoencoder", "autoencoder", recipe=rc.audio_autoencoder_debug, data="audiocaps"),
        Stage("audio_bridging", "bridging_alignment", recipe=rc.audio_bridging_debug, data="audiocaps"),
        Stage("image_ldm", "ldm", recipe=rc.image_ldm_debug, data="laion",
              needs=["image_autoencoder", "audio_autoencoder", "audio_bridging"], upstream=rc.codecs_from),
        Stage("text_image_alignment", "latent_alignment", recipe=rc.text_image_alignment_debug, data="laion",
              needs=["image_ldm"], upstream=rc.from_ldm),
        Stage("image_distillation", "distillation", recipe=rc.image_distillation_debug, data="laion",
              needs=["image_ldm"], upstream=rc.from_ldm),
        Stage("cascade_base", "cascade_base", recipe=rc.cascade_base_debug, data="webvid"),
        Stage("cascade_ssr", "cascade_ssr", recipe=rc.cascade_ssr_debug, data="webvid"),
        Stage("cascade_tsr", "cascade_tsr", recipe=rc.cascade_tsr_debug, data="webvid"),
    ])


SCHEDULES: dict[str, Callable[[], Schedule]] = {
    "engine_debug": engine_debug,
    "codi_debug": codi_debug,
}
