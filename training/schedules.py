"""Named schedules (``run_schedule(SCHEDULES[name], ...)``).

``engine_debug`` is NOT CoDi's schedule: it exercises the schedule engine (concurrent stages, a
stage needing two others, skip/resume records) with today's only stage, the debug text-to-image
diffuser. CoDi's ``codi`` / ``codi_debug`` schedules are added here once their stages exist.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from training.config import ScalingConfig, TrainConfig
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


SCHEDULES: dict[str, Callable[[], Schedule]] = {
    "engine_debug": engine_debug,
}
