"""Training recipes: each is a function returning a full TrainConfig; ``*_debug`` twins are tiny.

Later stages of the CoDi schedule derive from earlier ones (start from a recipe, change fields),
and integration tests run the ``_debug`` twins.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from models.diffusion.config import DiffusionConfig
from models.text_encoder import TextEncoderConfig
from models.text_to_image import TextToImageModelConfig
from models.unet import UNetConfig
from training.config import OptimConfig, TrainConfig


def text_to_image_demo() -> TrainConfig:
    """The demo's image diffuser: 32 px toy-world images, tiny CLIP text tower, 2 CPU workers."""
    return TrainConfig(
        name="t2i-demo",
        model=TextToImageModelConfig(
            image_size=32,
            unet=UNetConfig(base_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1,
                            attention_levels=[2], num_heads=4, context_dim=64),
            text_encoder=TextEncoderConfig(width=64, heads=2, layers=2, context_length=16),
            # v-prediction (Imagen Video §2.4): with ε-prediction the demo's samples came out with
            # random background colours (x̂ = (z − σε̂)/α amplifies ε̂'s error 15× at high noise);
            # with v they match the toy world's plain background after the same 600 steps.
            diffusion=DiffusionConfig(schedule="scaled_linear", prediction="v"),
        ),
        optim=OptimConfig(lr=1e-3, warmup_steps=50),
        batch_size_per_worker=16,
        max_steps=600,
        log_every=20,
        checkpoint_every=200,
    )


def text_to_image_demo_debug() -> TrainConfig:
    """A few steps of a smaller twin of ``text_to_image_demo`` (integration tests)."""
    cfg = text_to_image_demo()
    return dataclasses.replace(
        cfg,
        name="t2i-demo-debug",
        model=dataclasses.replace(cfg.model, image_size=16,
                                  unet=UNetConfig(base_channels=16, channel_mult=[1, 2], num_res_blocks=1,
                                                  attention_levels=[1], num_heads=2, context_dim=32),
                                  text_encoder=TextEncoderConfig(width=32, heads=2, layers=1, context_length=16)),
        batch_size_per_worker=4,
        max_steps=6,
        log_every=2,
        checkpoint_every=3,
    )


RECIPES: dict[str, Callable[[], TrainConfig]] = {
    "text_to_image_demo": text_to_image_demo,
    "text_to_image_demo_debug": text_to_image_demo_debug,
}
