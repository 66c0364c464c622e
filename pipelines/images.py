"""Still-image decode and resize: PIL with JPEG draft mode, antialiased, centre-crop or keep-ratio+pad."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image

from pipelines.config import ImageConfig


class DropSample(Exception):
    """Raised inside a stage: this sample is dropped, and the message is the ledger's reason."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


def _target_size(width: int, height: int, cfg: ImageConfig) -> tuple[int, int]:
    """Size the image is scaled to before the crop (shorter side = size) or pad (longer side = size)."""
    scale = cfg.size / (min(width, height) if cfg.resize_mode == "center_crop" else max(width, height))
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def decode_image(data: bytes, cfg: ImageConfig) -> np.ndarray:
    """Bytes -> ``uint8 (size, size, 3)``; raises DropSample with the reason for bad input."""
    if not data:
        raise DropSample("decode", "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # header only: nothing decoded yet
            if width * height > cfg.max_pixels:
                raise DropSample("decode", f"image too large: {width}x{height} > {cfg.max_pixels} pixels")
            if min(width, height) < cfg.min_size:
                raise DropSample("size", f"too small: {width}x{height} < min_size {cfg.min_size}")
            if max(width, height) / min(width, height) > cfg.max_aspect_ratio:
                raise DropSample("size", f"aspect ratio {max(width, height) / min(width, height):.2f} > {cfg.max_aspect_ratio}")
            target = _target_size(width, height, cfg)
            if image.format == "JPEG":
                image.draft("RGB", target)  # DCT-domain downscale: decode at 1/2, 1/4 or 1/8 size
            image = image.convert("RGB")
    except DropSample:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DropSample("decode", f"decompression bomb: {err}") from None
    except Exception as err:  # PIL raises many types for corrupt/truncated data
        raise DropSample("decode", f"undecodable image ({type(err).__name__}: {err})") from None
    return resize_image(image, cfg)


def resize_image(image: Image.Image, cfg: ImageConfig) -> np.ndarray:
    """Antialiased resize to ``cfg.size`` square by centre crop or by keeping the ratio and padding."""
    target = _target_size(*image.size, cfg)
    image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    w, h = image.size
    if cfg.resize_mode == "center_crop":
        left, top = (w - cfg.size) // 2, (h - cfg.size) // 2
        image = image.crop((left, top, left + cfg.size, top + cfg.size))
        return np.asarray(image, dtype=np.uint8)
    canvas = np.zeros((cfg.size, cfg.size, 3), dtype=np.uint8)
    top, left = (cfg.size - h) // 2, (cfg.size - w) // 2
    canvas[top:top + h, left:left + w] = np.asarray(image, dtype=np.uint8)
    return canvas
