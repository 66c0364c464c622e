"""A training schedule: a Python function returning a DAG of stages, each stage a recipe → TrainConfig.

    def my_schedule() -> Schedule:
        return Schedule([
            Stage("image_ldm", "ldm", recipe=recipes.image_ldm, data="laion"),
            Stage("audio_ldm", "ldm", recipe=recipes.audio_ldm, data="audiocaps"),
            Stage("align", "latent_alignment", needs=["image_ldm", "audio_ldm"], recipe=...),
        ])

Stages whose ``needs`` are met run concurrently (training/orchestrator.py). This module is pure:
validation, per-stage config resolution and the resource arithmetic that decides whether a stage
can ever fit a cluster and whether it fits next to the stages already running.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Optional, get_args

from common.config import deep_merge, from_dict, parse_overrides, to_dict
from common.errors import UsageError
from training.config import TrainConfig

StageKind = Literal["autoencoder", "bridging_alignment", "ldm", "latent_alignment",
                    "cascade_base", "cascade_ssr", "cascade_tsr", "distillation"]
STAGE_KINDS: tuple[str, ...] = get_args(StageKind)


@dataclass
class CurriculumPhase:
    """One phase of a stage (e.g. a video LDM's short low-fps clips first): train until ``until_step``
    with ``overrides`` (``key=value``) and, if given, the shard set of data style ``data``.
    Phase boundaries are checkpoints: the next phase resumes the same run."""

    name: str
    until_step: int
    overrides: list[str] = field(default_factory=list)
    data: Optional[str] = None


@dataclass
class Stage:
    """One node of the schedule: a Ray Train run of ``recipe()`` once every stage in ``needs`` is done.

    ``data`` names the prepared shard style the stage reads (``laion``, ``webvid`` ...), mapped to a
    URI by the schedule's ``--data STYLE=URI``; ``images`` (optional) the style of a second shard set
    (``data.images``: a video LDM's images as 1-frame videos, the text stages' audio captions). ``upstream``
    (optional) gets the stage's config and the checkpoint URIs of its needs when it starts, and
    returns the config that loads from them. ``expected_s`` (optional): how long the stage takes, in
    seconds (measured on an earlier run), for the launch order.
    """

    name: str
    kind: StageKind
    recipe: Callable[[], TrainConfig]
    needs: list[str] = field(default_factory=list)
    data: Optional[str] = None
    phases: list[CurriculumPhase] = field(default_factory=list)
    upstream: Optional[Callable[[TrainConfig, Mapping[str, str]], TrainConfig]] = None
    images: Optional[str] = None
    expected_s: Optional[float] = None


@dataclass
class Schedule:
    stages: list[Stage]

    def __post_init__(self):
        validate(self.stages)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def order(self) -> list[str]:
        """Stage names in an order where every stage comes after its needs (declaration order otherwise)."""
        return topological_order(self.stages)

    def launch_order(self) -> list[str]:
        """Which ready stage to start first: the longest path still ahead of it (the stage included)
        first, so the critical path never waits behind a side branch. A path's length is its stages'
        ``expected_s`` when every stage has one, else its runs (a stage's curriculum phases count as runs)."""
        order = self.order()
        timed = all(s.expected_s is not None for s in self.stages)
        ahead: dict[str, float] = {}
        for name in reversed(order):
            stage = self.stage(name)
            own = stage.expected_s if timed else max(1, len(stage.phases))
            after = [ahead[s.name] for s in self.stages if name in s.needs]
            ahead[name] = own + max(after, default=0)
        return sorted(order, key=lambda n: -ahead[n])   # stable: ties keep the topological order


def validate(stages: list[Stage]) -> None:
    """One UsageError naming the stage for: duplicate or bad names, unknown kinds, unknown needs,
    phases out of order, cycles."""
    names: set[str] = set()
    for s in stages:
        if not s.name or "/" in s.name or s.name in (".", "..") or s.name == "schedule.json":
            raise UsageError(f"stage {s.name!r}: a stage name must be a non-empty folder name without '/'")
        if s.name in names:
            raise UsageError(f"stage {s.name!r}: defined twice in the schedule")
        names.add(s.name)
        if s.kind not in STAGE_KINDS:
            raise UsageError(f"stage {s.name!r}: unknown kind {s.kind!r} (one of {', '.join(STAGE_KINDS)})")
        if s.expected_s is not None and not (isinstance(s.expected_s, (int, float)) and s.expected_s > 0):
            raise UsageError(f"stage {s.name!r}: expected_s must be a number of seconds > 0, got {s.expected_s!r}")
        steps = [p.until_step for p in s.phases]
        if any(b <= a for a, b in zip(steps, steps[1:])) or any(x < 1 for x in steps):
            raise UsageError(f"stage {s.name!r}: curriculum phases must end at increasing steps >= 1, got {steps}")
    for s in stages:
        for need in s.needs:
            if need not in names:
                raise UsageError(f"stage {s.name!r}: needs unknown stage {need!r} (stages: {', '.join(sorted(names))})")
    topological_order(stages)


def topological_order(stages: list[Stage]) -> list[str]:
    """Kahn's algorithm; a cycle is one UsageError naming the stages on it."""
    needs = {s.name: list(dict.fromkeys(s.needs)) for s in stages}
    done: list[str] = []
    while len(done) < len(needs):
        ready = [n for n in needs if n not in done and all(m in done for m in needs[n])]
        if not ready:
            stuck = [n for n in needs if n not in done]
            cycle = _cycle_from(stuck[0], needs)
            raise UsageError(f"stage {cycle[0]!r}: its needs form a cycle ({' -> '.join(cycle)})")
        done.extend(ready)
    return done


def _cycle_from(start: str, needs: dict[str, list[str]]) -> list[str]:
    path, node = [start], start
    while True:
        node = next(m for m in needs[node] if m in needs)  # a stuck node has at least one stuck need
        if node in path:
            return path[path.index(node):] + [node]
        path.append(node)


# -- per-stage configs ------------------------------------------------------------------------------

def apply_overrides(cfg: TrainConfig, overrides: list[str], source: str) -> TrainConfig:
    if not overrides:
        return cfg
    return from_dict(TrainConfig, deep_merge(to_dict(cfg), parse_overrides(list(overrides))), source=source)


def stage_overrides(stage: str, overrides: list[str], stage_names: list[str]) -> list[str]:
    """The ``key=value`` overrides for one stage: plain ones apply to every stage, ``STAGE:key=value``
    only to that stage (an unknown STAGE is one UsageError)."""
    out = []
    for item in overrides:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:
            if head not in stage_names:
                raise UsageError(f"override {item!r}: no stage {head!r} in this schedule ({', '.join(stage_names)})")
            if head == stage:
                out.append(rest)
        else:
            out.append(item)
    return out


def resolve_stage_config(stage: Stage, schedule_name: str, storage_path: str, data: Mapping[str, str],
                         overrides: list[str], stage_names: list[str], config: Optional[str] = None) -> TrainConfig:
    """The stage's TrainConfig: its recipe, the ``config`` YAML (TrainConfig keys, for every stage), run
    name ``stage.name`` under ``<storage>/<schedule_name>``, its data style's URI, then the overrides
    (``data`` missing a style the stage needs is one line)."""
    from common import storage
    from common.config import load_config

    cfg = load_config(TrainConfig, config, base=stage.recipe()) if config else stage.recipe()
    cfg = dataclasses.replace(cfg, name=stage.name, storage_path=storage.join(storage_path, schedule_name))
    for style in [stage.data, *(p.data for p in stage.phases)]:
        if style is not None and style not in data:
            raise UsageError(f"stage {stage.name!r}: needs --data {style}=URI (given: {', '.join(sorted(data)) or 'none'})")
    if stage.data is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=data[stage.data]))
    if stage.images is not None:
        if stage.images not in data:
            raise UsageError(f"stage {stage.name!r}: needs --data {stage.images}=URI for its second shard set "
                             f"(given: {', '.join(sorted(data)) or 'none'})")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, images=data[stage.images]))
    return apply_overrides(cfg, stage_overrides(stage.name, overrides, stage_names), f"<overrides of stage {stage.name}>")


def phase_configs(cfg: TrainConfig, phases: list[CurriculumPhase], data: Mapping[str, str]) -> list[TrainConfig]:
    """One config per curriculum phase: same run (name, storage), ``max_steps`` = the phase's end,
    the phase's overrides and data. No phases: the stage's own config."""
    out = []
    for phase in phases:
        phase_cfg = apply_overrides(cfg, phase.overrides, f"<phase {phase.name} of stage {cfg.name}>")
        phase_cfg = dataclasses.replace(phase_cfg, max_steps=phase.until_step)
        if phase.data is not None:
            phase_cfg = dataclasses.replace(phase_cfg, data=dataclasses.replace(phase_cfg.data, path=data[phase.data]))
        out.append(phase_cfg)
    return out or [cfg]


# -- resources --------------------------------------------------------------------------------------

@dataclass
class StageResources:
    num_workers: int
    per_worker: dict[str, float]

    @classmethod
    def of(cls, cfg: TrainConfig) -> "StageResources":
        return cls(cfg.scaling.num_workers, cfg.scaling.worker.bundle())

    def total(self) -> dict[str, float]:
        return {k: v * self.num_workers for k, v in self.per_worker.items()}

    def describe(self) -> str:
        per = ", ".join(f"{k}={_fmt(v)}" for k, v in self.per_worker.items())
        return f"{self.num_workers} worker(s) x {{{per}}}"


def _fmt(value: float) -> str:
    return f"{value:g}" if value < 1e6 else f"{value / 1024**3:.1f}GiB"


def workers_per_node(per_worker: Mapping[str, float], node: Mapping[str, float]) -> int:
    """How many workers of this shape one node can hold at most."""
    wanted = {k: v for k, v in per_worker.items() if v > 0}
    if not wanted:
        return 10**9
    return min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in wanted.items())


def never_fits(name: str, res: StageResources, nodes: list[Mapping[str, float]]) -> Optional[str]:
    """Why the stage can never be placed on a cluster of ``nodes`` (each node's total resources), or None.

    Ray Train waits forever for a placement group that cannot be satisfied; this says it in one line."""
    capacity = [workers_per_node(res.per_worker, node) for node in nodes]
    if not any(capacity):
        largest = max(nodes, key=lambda n: n.get("CPU", 0), default={})
        node = ", ".join(f"{k}={_fmt(largest.get(k, 0))}" for k in res.per_worker)
        return (f"stage {name!r} can never run: it needs {res.describe()} but no node of the cluster holds one "
                f"worker (largest node has {node or 'nothing'})")
    if sum(capacity) < res.num_workers:
        return (f"stage {name!r} can never run: it needs {res.describe()} but the cluster's nodes hold at most "
                f"{sum(capacity)} such worker(s)")
    return None


DATA_RESERVE = {"CPU": 1.0}   # left free beside concurrent stages: Ray Data's read tasks take a whole CPU


def place_workers(res: StageResources, free: list[dict[str, float]]) -> bool:
    """Put the stage's workers on the nodes' ``free`` resources one by one (each on the node with the most
    CPU left that holds it; Ray Train's placement groups may spread a stage's workers), subtracting what
    each takes. False when a worker finds no node (``free`` then holds the workers placed so far)."""
    for _ in range(res.num_workers):
        fitting = [node for node in free if workers_per_node(res.per_worker, node) >= 1]
        if not fitting:
            return False
        node = max(fitting, key=lambda n: n.get("CPU", 0.0))
        for k, v in res.per_worker.items():
            node[k] = node.get(k, 0.0) - v
    return True


def fits_beside(res: StageResources, in_flight: list[StageResources], cluster: Mapping[str, float],
                reserve: Mapping[str, float] = DATA_RESERVE,
                nodes: Optional[list[Mapping[str, float]]] = None) -> bool:
    """Whether the stage's workers fit the cluster's totals next to the stages already in flight, with
    ``reserve`` left over (else every stage's streaming read waits for a CPU that never frees: measured,
    the demo's three concurrent stages left 0.25 CPU and all of them stalled) — and, given the ``nodes``
    (each node's total resources), whether each of its workers finds a node with room once the stages in
    flight are placed: totals alone would start a stage whose workers fit the sum of the leftovers but no
    single node, which then waits for Ray to place it while the orchestrator counts it as running."""
    used: dict[str, float] = dict(reserve)
    for other in in_flight:
        for k, v in other.total().items():
            used[k] = used.get(k, 0.0) + v
    if not all(used.get(k, 0.0) + v <= cluster.get(k, 0.0) + 1e-9 for k, v in res.total().items()):
        return False
    if nodes is None:
        return True
    free = [dict(node) for node in nodes]
    for other in in_flight:
        place_workers(other, free)     # where Ray put them may differ; what did not place here is not counted
    return place_workers(res, free)
