"""The demo's generation tasks: CoDi's Table 1 categories that the toy world can check, with prompts.

Each ``Task`` is one ``codiray generate`` request: its inputs are drawn from the toy world (held-out
seeds: captions by the grammar, images rendered, tones synthesised), so every output has a known truth
(`codiray eval` decodes it back). Multi-output tasks run twice — jointly and independently — which is
what ``joint_agreement`` vs ``independent_agreement`` compares.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from pipelines.toyworld import render_image, sample_scene
from pipelines.toyworld_av import sample_clip, sample_sound, write_sound


@dataclass(frozen=True)
class Task:
    inputs: tuple[str, ...]          # input modalities
    outputs: tuple[str, ...]         # output modalities
    prompt: str = "image"            # which caption grammar a text input follows: image | video | audio

    @property
    def name(self) -> str:
        return "+".join(self.inputs) + "->" + "+".join(self.outputs)


TASKS = (
    Task(("text",), ("image",), "image"),
    Task(("text",), ("video",), "video"),
    Task(("text",), ("audio",), "audio"),
    Task(("image",), ("text",)),
    Task(("audio",), ("image",)),
    Task(("audio",), ("text",)),
    Task(("image",), ("audio",)),
    Task(("text",), ("video", "audio"), "video"),
    Task(("text",), ("image", "text"), "image"),
)


def input_sets(task: Task, count: int, media_dir: Path, seed: int, size: int) -> list[dict]:
    """``count`` input sets for ``task`` from seed ``seed`` (media files written under ``media_dir``)."""
    rng = random.Random(f"{seed}/{task.name}")
    media_dir.mkdir(parents=True, exist_ok=True)
    sets = []
    for index in range(count):
        entry = {}
        for modality in task.inputs:
            if modality == "text":
                if task.prompt == "video":
                    entry["text"] = sample_clip(rng).caption
                elif task.prompt == "audio":
                    entry["text"] = sample_sound(rng).caption
                else:
                    entry["text"] = sample_scene(rng).caption
            elif modality == "image":
                path = media_dir / f"{task.name.replace('>', '')}-{index:03d}.png"
                render_image(sample_scene(rng), size=size).save(path)
                entry["image"] = str(path)
            elif modality == "audio":
                path = media_dir / f"{task.name.replace('>', '')}-{index:03d}.wav"
                write_sound(path, sample_sound(rng))
                entry["audio"] = str(path)
        sets.append(entry)
    return sets
