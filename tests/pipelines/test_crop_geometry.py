"""Centre-crop geometry: a white marker placed off-centre in a known spot lands where the closed form
puts it after scale + centre crop, and a marker outside the crop is gone. Images (PIL, PNG and JPEG
through draft mode) and video (crop filter + swscale) both."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from pipelines.config import AudioConfig, ImageConfig, VideoConfig
from pipelines.images import decode_image
from pipelines.video import decode_clips

SIZE = 32


def marked_frame(width: int, height: int, inside: tuple[int, int], outside: tuple[int, int]) -> np.ndarray:
    """Black ``width`` x ``height`` RGB with two 8x8 white squares at (x, y) corners ``inside``, ``outside``."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    for x, y in (inside, outside):
        frame[y:y + 8, x:x + 8] = 255
    return frame


def expected_box(width: int, height: int, x: int, y: int) -> tuple[float, float]:
    """Closed form: scale so the shorter side is SIZE, cut the centred SIZE x SIZE window; the centre
    of an 8x8 square at (x, y) moves to ((x + 4) * s - left, (y + 4) * s - top)."""
    s = SIZE / min(width, height)
    left, top = (round(width * s) - SIZE) // 2, (round(height * s) - SIZE) // 2
    return (x + 4) * s - left, (y + 4) * s - top


def bright_centroid(image: np.ndarray) -> tuple[float, float]:
    luma = image.astype(np.float32).mean(axis=-1)
    ys, xs = np.nonzero(luma > 128)
    assert xs.size, "the marker is gone"
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5  # pixel centres


# (width, height, marker kept, marker that falls outside the crop)
LAYOUTS = [(96, 64, (56, 16), (0, 40)), (64, 96, (16, 56), (40, 0))]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("width, height, inside, outside", LAYOUTS)
def test_image_centre_crop_puts_the_marker_where_the_geometry_says(fmt, width, height, inside, outside):
    buf = io.BytesIO()
    Image.fromarray(marked_frame(width, height, inside, outside)).save(buf, format=fmt, quality=98)
    out = decode_image(buf.getvalue(), ImageConfig(size=SIZE, min_size=8))
    assert out.shape == (SIZE, SIZE, 3)
    cx, cy = bright_centroid(out)
    ex, ey = expected_box(width, height, *inside)
    assert abs(cx - ex) <= 0.75 and abs(cy - ey) <= 0.75, ((cx, cy), (ex, ey))
    # only one 4x4 (scaled) marker survives: the one outside the crop window is cut away
    assert 9 <= int((out.astype(np.float32).mean(-1) > 128).sum()) <= 25


def write_marked_video(path, frame: np.ndarray, frames: int = 30) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
        stream.options = {"crf": "8", "preset": "veryfast"}
        for index in range(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = index
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))


@pytest.mark.parametrize("width, height, inside, outside", LAYOUTS)
def test_video_centre_crop_puts_the_marker_where_the_geometry_says(tmp_path, width, height, inside, outside):
    path = tmp_path / "marked.mp4"
    write_marked_video(path, marked_frame(width, height, inside, outside))
    clips = decode_clips(str(path), VideoConfig(size=SIZE, fps=4.0, frames=4, threads=1), AudioConfig())
    ex, ey = expected_box(width, height, *inside)
    for frame in clips[0]["frames"]:
        cx, cy = bright_centroid(frame)
        assert abs(cx - ex) <= 0.75 and abs(cy - ey) <= 0.75, ((cx, cy), (ex, ey))
        assert 9 <= int((frame.astype(np.float32).mean(-1) > 128).sum()) <= 25
