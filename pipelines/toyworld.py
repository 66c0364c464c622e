"""The toy world's still images: coloured shapes at positions, with captions from a small grammar.

Its ground truth is known exactly (every caption is generated from the scene that drew the image),
so later issues can score any-to-any generation against it. Deterministic by seed: the same seed
gives the same scenes, files and metadata bytes.

    write_laion_corpus("/tmp/toy", num_samples=64)  # -> metadata.parquet + images/<key>.jpg

The attribute table and caption grammar live in toyworld_spec.py; videos, sounds and the other three
corpus styles in toyworld_av.py.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from pipelines.toyworld_spec import (BACKGROUND, COLORS, POSITIONS, SHAPE_RADIUS, SHAPES,  # noqa: F401 (re-exported)
                                     Scene)


def sample_scene(rng: random.Random) -> Scene:
    return Scene(rng.choice(sorted(COLORS)), rng.choice(SHAPES), rng.choice(sorted(POSITIONS)))


def all_scenes() -> list[Scene]:
    """Every scene of the world, in a fixed order (the ground-truth support)."""
    return [Scene(c, s, p) for c in sorted(COLORS) for s in SHAPES for p in sorted(POSITIONS)]


def render_image(scene: Scene, size: int = 64, width: int | None = None) -> Image.Image:
    """Draw ``scene`` on a ``width`` x ``size`` canvas (the shape scales with the shorter side)."""
    w, h = (width or size), size
    image = Image.new("RGB", (w, h), BACKGROUND)
    draw = ImageDraw.Draw(image)
    fx, fy = POSITIONS[scene.position]
    draw_shape(draw, scene.shape, scene.color, fx * w, fy * h, SHAPE_RADIUS * min(w, h))
    return image


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, color: str, cx: float, cy: float, r: float) -> None:
    """A filled ``shape`` of half-size ``r`` centred at (``cx``, ``cy``) pixels."""
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def key_for(index: int) -> str:
    """img2dataset-style sample key: the zero-padded row index."""
    return f"{index:09d}"


def write_laion_corpus(out_dir: str | Path, num_samples: int = 256, image_size: int = 64,
                       seed: int = 0, unsafe_fraction: float = 0.05) -> dict[str, Path]:
    """Write a LAION-style corpus: ``metadata.parquet`` (LAION's columns + ``key``) and JPEGs.

    A ``unsafe_fraction`` of rows gets ``punsafe`` = 0.9 so the metadata filter has work to do;
    images are 4:3 so the centre crop is real.
    """
    out = Path(out_dir)
    media = out / "images"
    media.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    width = image_size * 4 // 3
    rows = []
    for index in range(num_samples):
        scene = sample_scene(rng)
        key = key_for(index)
        render_image(scene, image_size, width=width).save(media / f"{key}.jpg", quality=95)
        unsafe = rng.random() < unsafe_fraction
        rows.append({
            "key": key,
            "URL": f"https://toyworld.codiray.invalid/{key}.jpg",
            "TEXT": scene.caption,
            "WIDTH": width,
            "HEIGHT": image_size,
            "similarity": round(0.30 + 0.1 * rng.random(), 4),
            "punsafe": 0.9 if unsafe else round(0.05 * rng.random(), 4),
            "pwatermark": round(0.1 * rng.random(), 4),
            **{f"scene_{k}": v for k, v in asdict(scene).items()},
        })
    table = pa.Table.from_pylist(rows)
    metadata = out / "metadata.parquet"
    pq.write_table(table, metadata)
    return {"metadata": metadata, "media": media}
