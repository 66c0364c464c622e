"""Test corpora for the three styles, each with good rows and one row per bad-input kind.

``EXPECTED_DROPS`` maps each bad row's key to (stage, a phrase its ledger reason must contain).
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

from PIL import Image

from pipelines.toyworld import write_laion_corpus
from pipelines.toyworld_media import (VideoSpec, write_audio, write_audiocaps_metadata, write_audioset_metadata,
                                      write_video, write_webvid_corpus)

NON_UTF8 = "@@NON_UTF8@@"  # placeholder replaced by invalid UTF-8 bytes after the CSV is written


def _poison_utf8(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(NON_UTF8.encode(), b"caf\xe9 \xff\xfe"))


def truncated_mp4(tmp: Path) -> bytes:
    data = write_video(tmp / "_whole.mp4", 2.0, 30.0, (64, 48)).read_bytes()
    return data[: len(data) // 2]


def audio_only_bytes(tmp: Path) -> bytes:
    return write_audio(tmp / "_sound.m4a", 1.0).read_bytes()


WEBVID_GOOD = {"v_mp4": 2, "v_webm": 2, "v_mov": 2}  # key -> clips (1 s clips)
WEBVID_DROPS = {
    "v_short": ("duration", "shorter than one clip"),
    "v_missing": ("fetch", "media file missing"),
    "v_nocaption": ("caption", "caption is empty"),
    "v_nan": ("caption", "null/NaN"),
    "v_nonutf8": ("caption", "not valid UTF-8"),
    "v_corrupt": ("decode", "not a media file PyAV can open"),
    "v_zero": ("decode", "empty file (0 bytes)"),
    "v_truncated": ("decode", "not a media file PyAV can open"),
    "v_wrongext": ("fetch", "wrong file extension .txt"),
    "v_nostream": ("decode", "no video stream"),
    "v_baddur": ("metadata", "not an ISO-8601 duration"),
}


def webvid_corpus(root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    specs = [
        VideoSpec("v_mp4", "a red square slides right", 2.0, 30.0, (64, 48)),
        VideoSpec("v_webm", "a webm clip without sound", 2.5, 25.0, (80, 48), ".webm", audio_codec=None,
                  page_dir="002"),
        VideoSpec("v_mov", "a portrait quicktime clip", 2.0, 24.0, (48, 64), ".mov"),
        VideoSpec("v_short", "too short", 0.5),
        VideoSpec("v_missing", "no file", ext=None),
        VideoSpec("v_nocaption", "   "),
        VideoSpec("v_nan", "NaN"),
        VideoSpec("v_nonutf8", NON_UTF8),
        VideoSpec("v_corrupt", "garbage", raw=b"\x13\x37" * 3000),
        VideoSpec("v_zero", "zero bytes", raw=b""),
        VideoSpec("v_truncated", "cut in half", raw=truncated_mp4(root)),
        VideoSpec("v_wrongext", "a text file", ext=".txt", raw=b"hello"),
        VideoSpec("v_nostream", "audio only", raw=audio_only_bytes(root)),
        VideoSpec("v_baddur", "bad duration", 1.0),
    ]
    paths = write_webvid_corpus(root, specs)
    text = paths["metadata"].read_text(encoding="utf-8")
    text = text.replace("v_baddur,https://webvid.invalid/v_baddur.mp4,PT00H00M01S",
                        "v_baddur,https://webvid.invalid/v_baddur.mp4,ten seconds")
    # a duplicate row of a good video: dedup keeps the first and ledgers the second
    text += "v_mp4,https://webvid.invalid/v_mp4.mp4,PT00H00M02S,001,a duplicate row\n"
    paths["metadata"].write_text(text, encoding="utf-8")
    _poison_utf8(paths["metadata"])
    return {**paths, "good": WEBVID_GOOD, "drops": {**WEBVID_DROPS, "v_mp4": ("dedup", "duplicate key")},
            "input": len(specs) + 1}


AUDIOSET_GOOD = ["a_wav", "a_flac", "a_ogg", "a_mp3", "a_m4a", "a_video"]
AUDIOSET_DROPS = {
    "a_missing": ("fetch", "media file missing"),
    "a_unknown": ("metadata", "unknown label MID"),
    "a_nolabels": ("caption", "no positive labels"),
    "a_nanstart": ("metadata", "start_seconds is not a valid time"),
    "a_corrupt": ("decode", "not a media file PyAV can open"),
    "a_silentvideo": ("decode", "no audio stream"),
    "a_zero": ("decode", "empty file (0 bytes)"),
}


def audioset_corpus(root: Path) -> dict:
    media = root / "audio"
    write_audio(media / "a_wav.wav", 1.5, 44100, 2)
    write_audio(media / "a_flac.flac", 1.5, 22050, 1)
    write_audio(media / "a_ogg.ogg", 1.5, 44100, 2)
    write_audio(media / "Ya_mp3.mp3", 4.0, 44100, 1)  # "Y"-prefixed mirror naming; a whole recording
    write_audio(media / "a_m4a.m4a", 1.5, 32000, 2)
    write_video(media / "a_video.mp4", 1.5, 30.0, (64, 48))
    (media / "a_corrupt.flac").write_bytes(b"fLaC" + b"\x00" * 500)
    write_video(media / "a_silentvideo.mp4", 1.0, 30.0, (64, 48), audio_codec=None)
    (media / "a_zero.wav").write_bytes(b"")
    rows = [("a_wav", 30.0, 40.0, ["/m/09x0r"]), ("a_flac", 0.0, 10.0, ["/m/04rlf", "/m/09x0r"]),
            ("a_ogg", 5.0, 15.0, ["/m/0jbk"]), ("a_mp3", 1.0, 3.0, ["/m/07yv9"]),
            ("a_m4a", 0.0, 10.0, ["/m/04rlf"]), ("a_video", 0.0, 10.0, ["/m/09x0r"]),
            ("a_missing", 0.0, 10.0, ["/m/09x0r"]), ("a_unknown", 0.0, 10.0, ["/m/nope"]),
            ("a_nolabels", 0.0, 10.0, []), ("a_nanstart", float("nan"), 10.0, ["/m/09x0r"]),
            ("a_corrupt", 0.0, 10.0, ["/m/09x0r"]), ("a_silentvideo", 0.0, 10.0, ["/m/09x0r"]),
            ("a_zero", 0.0, 10.0, ["/m/09x0r"])]
    paths = write_audioset_metadata(root / "meta", rows)
    return {**paths, "media": media, "good": AUDIOSET_GOOD, "drops": AUDIOSET_DROPS, "input": len(rows)}


AUDIOCAPS_GOOD = ["101", "102", "103"]
AUDIOCAPS_DROPS = {
    "104": ("caption", "caption is empty"),
    "105": ("caption", "not valid UTF-8"),
    "106": ("fetch", "media file missing"),
    "107": ("metadata", "start_time is not a number"),
}


def audiocaps_corpus(root: Path) -> dict:
    media = root / "audio"
    write_audio(media / "yt_one.wav", 1.5, 16000, 1)
    write_audio(media / "yt_two.m4a", 1.5, 44100, 2)
    rows = [("101", "yt_one", 0.0, "a tone plays"), ("102", "yt_one", 0.0, "the same tone, another caption"),
            ("103", "yt_two", 0.0, "a stereo tone"), ("104", "yt_two", 0.0, ""), ("105", "yt_two", 0.0, NON_UTF8),
            ("106", "yt_gone", 0.0, "the video was taken down"), ("107", "yt_one", "soon", "bad start")]
    path = write_audiocaps_metadata(root / "meta", rows)
    _poison_utf8(path)
    return {"metadata": path, "media": media, "good": AUDIOCAPS_GOOD, "drops": AUDIOCAPS_DROPS, "input": len(rows)}


def huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG whose header claims ``width`` x ``height`` (a decompression-bomb shape)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


LAION_BAD = {
    "000000003": ("decode", "empty file (0 bytes)"),
    "000000004": ("decode", "decompression bomb"),
    "000000005": ("decode", "undecodable image"),
    "000000006": ("size", "aspect ratio"),
}


def laion_corpus(root: Path, num: int = 12, as_tars: bool = False) -> dict:
    """The toy world's LAION corpus with some images replaced by bad ones; optionally packed into
    img2dataset-style tars (``00000.tar`` with ``<key>.jpg/.txt/.json``) instead of loose files."""
    paths = write_laion_corpus(root, num_samples=num, image_size=48)
    media = paths["media"]
    (media / "000000003.jpg").write_bytes(b"")
    (media / "000000004.jpg").unlink()
    (media / "000000004.png").write_bytes(huge_png_header())
    (media / "000000005.jpg").write_bytes((media / "000000005.jpg").read_bytes()[:200])
    Image.new("RGB", (200, 20), (10, 200, 10)).save(media / "000000006.jpg")
    if as_tars:
        tars = root / "tars"
        tars.mkdir()
        files = sorted(media.iterdir())
        for index in range(0, len(files), 5):
            with tarfile.open(tars / f"{index // 5:05d}.tar", "w") as tar:
                for f in files[index:index + 5]:
                    tar.add(f, arcname=f.name)
                    caption = tarfile.TarInfo(f"{f.stem}.txt")
                    caption.size = 3
                    tar.addfile(caption, io.BytesIO(b"cap"))
        paths["media"] = tars
    return paths
