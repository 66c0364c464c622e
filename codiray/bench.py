"""`codiray bench prepare`: the preprocessing stages against their floors, side by side, one table.

Every row is measured in the same run on the same generated files (PyAV-encoded, textured so the
codec does real work): best of ``--reps`` passes, the candidates interleaved so background load
hits them alike. Single-process rows also report the ratio of CPU time (``time.process_time``),
which other processes on a shared machine disturb far less than wall time. The Ray rows repeat
1-worker and 2-worker jobs interleaved and report the best ratio and the spread over the pairs,
on 48 and 96 videos, the marginal ratio between them (Ray's fixed per-job cost cancels), and where
the CPU went (the workers, Ray's own processes, the driver).

    codiray bench prepare [--videos 4] [--seconds 10] [--reps 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: 'codiray bench prepare' (data path), 'codiray bench train' (Ray Train + DeepSpeed, ZeRO memory, GPU)")
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    prep = sub.add_parser("prepare", help="video/image/audio preprocessing vs decode-only floors, ffmpeg, 1 vs 2 Ray workers",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    prep.add_argument("--videos", type=int, default=4, help="640x360 30 fps H.264 files to generate")
    prep.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    prep.add_argument("--images", type=int, default=64, help="512x384 JPEGs to generate")
    prep.add_argument("--audio", type=int, default=16, help="10 s 44.1 kHz stereo files to generate (mp3, m4a)")
    prep.add_argument("--reps", type=int, default=5, help="passes per measurement (best is kept)")
    prep.add_argument("--workdir", help="where to write the generated files (default: a temp dir)")
    prep.add_argument("--ray-inputs", type=int, nargs="+", default=[48, 96],
                      help="videos in the 1-vs-2 Ray workers jobs (one row per size)")
    prep.add_argument("--ray-reps", type=int, default=3, help="interleaved 1-worker/2-worker pairs per size")
    prep.add_argument("--skip-ray", action="store_true", help="skip the 1-vs-2 Ray workers row")
    prep.set_defaults(func=run)
    from codiray.bench_train import register_train

    register_train(sub)


class Timing(dict):
    """Best wall time per candidate, with the best CPU time of this process in ``.cpu``."""

    cpu: dict


def best_of(reps: int, candidates: dict) -> Timing:
    """Best wall (and CPU) time per candidate over ``reps`` interleaved passes (one warm-up pass first)."""
    for fn in candidates.values():
        fn()
    best = Timing({name: float("inf") for name in candidates})
    best.cpu = {name: float("inf") for name in candidates}
    for _ in range(reps):
        for name, fn in candidates.items():
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
            best.cpu[name] = min(best.cpu[name], time.process_time() - cpu)
    return best


def make_files(root: Path, args) -> dict:
    from PIL import Image

    from pipelines.toyworld_media import frame_image, write_audio, write_video

    videos = [write_video(root / "videos" / f"v{i:03d}.mp4", args.seconds, 30.0, (640, 360),
                          audio_codec=None, textured=True) for i in range(args.videos)]
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(args.images):
        path = root / "images" / f"{i:05d}.jpg"
        Image.fromarray(frame_image(i, 512, 384, 30.0, textured=True)).save(path, quality=90)
        images.append(path)
    audio = [write_audio(root / "audio" / f"a{i:03d}{'.mp3' if i % 2 else '.m4a'}", 10.0, 44100, 2, 440.0 + i)
             for i in range(args.audio)]
    return {"videos": videos, "images": images, "audio": audio}


def video_floor(paths) -> None:
    """Decode every frame, threaded, convert nothing: no video pipeline can beat this."""
    import av

    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for _ in container.decode(stream):
                pass


def ffmpeg_clips(paths, size: int, fps: float) -> None:
    """video2dataset's approach: one ffmpeg process per file, fps+scale+crop filters, raw RGB out."""
    vf = f"fps={fps:g},scale={size}:{size}:force_original_aspect_ratio=increase,crop={size}:{size}"
    for path in paths:
        subprocess.run(["ffmpeg", "-v", "error", "-threads", "0", "-i", str(path), "-vf", vf, "-f", "rawvideo",
                        "-pix_fmt", "rgb24", "pipe:1"], check=True, capture_output=True)


def video_rows(files: dict, args) -> list[tuple]:
    from pipelines.config import AudioConfig, VideoConfig
    from pipelines.video import decode_clips

    rows = []
    have_ffmpeg = shutil.which("ffmpeg") is not None
    for size, fps, frames in ((64, 4.0, 8), (256, 8.0, 16)):
        cfg = VideoConfig(size=size, fps=fps, frames=frames)
        clips = sum(len(decode_clips(str(p), cfg, AudioConfig())) for p in files["videos"])
        candidates = {"stage": lambda: [decode_clips(str(p), cfg, AudioConfig()) for p in files["videos"]],
                      "floor": lambda: video_floor(files["videos"])}
        if have_ffmpeg:
            candidates["ffmpeg"] = lambda: ffmpeg_clips(files["videos"], size, fps)
        t = best_of(args.reps, candidates)
        label = f"webvid clips/s, {size} px @ {fps:g} fps ({frames} frames)"
        rows.append((label, clips / t["stage"], clips / t["floor"], "decode-only floor (PyAV threaded)",
                     t["floor"] / t["stage"], 0.9 if size == 64 else 0.7, t.cpu["floor"] / t.cpu["stage"]))
        if have_ffmpeg:
            rows.append((label, clips / t["stage"], clips / t["ffmpeg"], "ffmpeg subprocess per file",
                         t["ffmpeg"] / t["stage"], 1.3, None))
    return rows


def image_rows(files: dict, args) -> list[tuple]:
    from PIL import Image

    from pipelines.config import ImageConfig
    from pipelines.images import decode_image

    blobs = [p.read_bytes() for p in files["images"]]
    cfg = ImageConfig(size=64)

    def floor():
        import io

        for data in blobs:
            Image.open(io.BytesIO(data)).load()  # full-size decode, nothing else

    t = best_of(args.reps, {"stage": lambda: [decode_image(b, cfg) for b in blobs], "floor": floor})
    n = len(blobs)
    return [("laion images/s, 512x384 JPEG -> 64 px", n / t["stage"], n / t["floor"], "PIL decode-only floor",
             t["floor"] / t["stage"], 0.9, t.cpu["floor"] / t.cpu["stage"])]


def resampler_comparison(reps: int) -> str:
    """One line: SNR between the stage's resampler (libswresample, filter_size=16) and torchaudio's
    band-limited resample (the previous stage's) on a 44.1 -> 16 kHz swept sine (20 Hz - 7 kHz), each
    one's alias level for a 10 kHz tone, and the CPU time of each on 10 s of mono."""
    import numpy as np

    from pipelines.audio import resample

    rate, seconds = 44100, 4.0
    t = np.arange(int(rate * seconds)) / rate
    sweep = (0.5 * np.sin(2 * np.pi * (20.0 * t + (7000.0 - 20.0) / (2 * seconds) * t ** 2))).astype(np.float32)
    def torchaudio_resample(x):
        import torch

        with torch.inference_mode():
            return _torch_resampler(rate, 16000)(torch.from_numpy(x)).numpy()

    ours, other = resample(sweep, rate, 16000)[800:-800], torchaudio_resample(sweep)[800:-800]
    snr = 10 * np.log10(np.sum(ours ** 2) / np.sum((ours - other) ** 2))
    tone = (0.5 * np.sin(2 * np.pi * 10000 * t)).astype(np.float32)

    def alias_db(x):
        return 20 * np.log10(np.sqrt(np.mean(x[800:-800] ** 2)) / (0.5 / np.sqrt(2)))

    ten = np.resize(sweep, rate * 10)
    cost = best_of(reps, {"swr": lambda: resample(ten, rate, 16000), "torchaudio": lambda: torchaudio_resample(ten)})
    return (f"resamplers, 44.1 -> 16 kHz: libswresample filter_size=16 (the stage's) vs torchaudio (before): SNR "
            f"{snr:.1f} dB between them on a 20 Hz-7 kHz sweep; a 10 kHz tone aliases at "
            f"{alias_db(resample(tone, rate, 16000)):.1f} vs {alias_db(torchaudio_resample(tone)):.1f} dB; CPU per 10 s "
            f"of mono, alone: {cost.cpu['swr'] * 1e3:.1f} vs {cost.cpu['torchaudio'] * 1e3:.1f} ms (inside the decode "
            f"graph libswresample also saves the hand-over to torch)")


@functools.lru_cache(maxsize=8)
def _torch_resampler(orig: int, new: int):
    import torch
    import torchaudio

    return torchaudio.transforms.Resample(orig, new, dtype=torch.float32)


def torch_segment(path, cfg) -> None:
    """The stage as it was (baseline): per-frame arrays in Python, numpy downmix, torchaudio's
    band-limited resample (kernel cached per rate pair, one torch thread, as the stage ran it)."""
    import av
    import numpy as np
    import torch

    from pipelines.audio import fit_length, single_thread, to_float

    with av.open(str(path)) as container:
        raw, first = [], None
        for frame in container.decode(container.streams.audio[0]):
            if first is None:
                first = (frame.format.name, frame.format.is_planar, len(frame.layout.channels), frame.sample_rate)
            raw.append(frame.to_ndarray())
    fmt, planar, channels, rate = first
    mono = to_float(np.concatenate(raw, axis=-1), fmt, planar, channels).mean(axis=0)
    with torch.inference_mode(), single_thread():
        mono = _torch_resampler(rate, cfg.sample_rate)(torch.from_numpy(np.ascontiguousarray(mono))).numpy()
    fit_length(mono, cfg.num_samples).astype(np.float16)


def decode_downmix_only(path) -> None:
    """The stage's FFmpeg graph without the resample: what downmixing and gathering cost over decoding."""
    import av

    graph = av.filter.Graph()
    chain = [graph.add("amovie", filename=str(path)), graph.add("aresample", "rematrix_maxval=1"),
             graph.add("aformat", "sample_fmts=flt:channel_layouts=mono"),
             graph.add("asetnsamples", "n=441064:p=0"), graph.add("abuffersink")]
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    while True:
        try:
            chain[-1].pull()
        except (av.BlockingIOError, av.EOFError):
            return


def audio_rows(files: dict, args) -> list[tuple]:
    import av

    from pipelines.audio import decode_segment
    from pipelines.config import AudioConfig

    cfg = AudioConfig(sample_rate=16000, seconds=10.0)

    def floor():
        for path in files["audio"]:
            with av.open(str(path)) as container:
                for _ in container.decode(container.streams.audio[0]):
                    pass

    t = best_of(args.reps, {"stage": lambda: [decode_segment(str(p), 0.0, 10.0, cfg) for p in files["audio"]],
                            "floor": floor,
                            "before": lambda: [torch_segment(p, cfg) for p in files["audio"]],
                            "no resample": lambda: [decode_downmix_only(p) for p in files["audio"]]})
    n = len(files["audio"])
    label = "audioset clips/s, 10 s mp3+m4a -> 16 kHz mono"
    return [(label, n / t["stage"], n / t["floor"], "PyAV decode-only floor", t["floor"] / t["stage"], 0.9,
             t.cpu["floor"] / t.cpu["stage"]),
            (label, n / t["stage"], n / t["before"], "previous stage (per-frame Python + torchaudio)",
             t["before"] / t["stage"], 1.0, t.cpu["before"] / t.cpu["stage"]),
            ("audioset, the same FFmpeg graph without the resample (where the rest goes)", n / t["no resample"],
             n / t["floor"], "PyAV decode-only floor", t["floor"] / t["no resample"], 0.9,
             t.cpu["floor"] / t.cpu["no resample"])]


def ray_cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process and by the Ray processes it started, by role."""
    import psutil

    me = psutil.Process()
    used = {"driver": sum(me.cpu_times()[:2]), "workers": 0.0, "ray system": 0.0}
    for child in me.children(recursive=True):
        try:
            title = " ".join(child.cmdline()) or child.name()
            seconds = sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
        used["workers" if title.startswith("ray::") or "default_worker.py" in title else "ray system"] += seconds
    return used


def ray_rows(files: dict, root: Path, args) -> tuple[list[tuple], list[str]]:
    """The whole webvid job (Ray Data tasks, shards, ledger) on 1 and 2 workers, one decoder thread
    each, so workers = cores used; 1-worker and 2-worker jobs alternate so background load hits both.
    Sizes in ``--ray-inputs`` (hard links to the generated files); the marginal ratio between the two
    sizes cancels Ray's fixed per-job cost, and a 1-video job measures that cost."""
    import ray

    from pipelines.config import PrepareConfig, ShardConfig, VideoConfig
    from pipelines.toyworld_media import iso_duration
    from pipelines.webvid import prepare_webvid

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)

    def job(count: int, workers: int, tag: str) -> tuple[float, int, dict]:
        inputs = root / f"ray_videos_{count}"
        inputs.mkdir(exist_ok=True)
        names = []
        for i in range(count):
            source = files["videos"][i % len(files["videos"])]
            link = inputs / f"r{i:04d}{source.suffix}"
            if not link.exists():
                os.link(source, link)
            names.append(link.stem)
        metadata = root / f"webvid_{count}.csv"
        lines = ["videoid,name,duration,page_dir,contentUrl"]
        lines += [f"{name},benchmark clip {name},{iso_duration(args.seconds)},," for name in names]
        metadata.write_text("\n".join(lines) + "\n")
        cfg = PrepareConfig(video=VideoConfig(size=64, fps=4.0, frames=8, threads=1),
                            shards=ShardConfig(samples_per_shard=1), concurrency=workers)
        out = root / f"ray_out_{count}_{workers}_{tag}"
        before, start = ray_cpu_seconds(), time.perf_counter()
        manifest = prepare_webvid(str(metadata), str(inputs), str(out), cfg)
        wall = time.perf_counter() - start
        after = ray_cpu_seconds()
        shutil.rmtree(out, ignore_errors=True)
        return wall, manifest["samples"], {k: after[k] - before[k] for k in after}

    job(2, 1, "warm1"), job(2, 2, "warm2")  # worker processes started, code imported
    fixed = min(job(1, 1, f"fixed{i}")[0] for i in range(3))
    rows, notes, best = [], [f"Ray fixed per-job cost (a 1-video job, best of 3): {fixed:.2f} s"], {}
    for count in args.ray_inputs:
        times = {1: [], 2: []}
        cpu = {}
        for rep in range(args.ray_reps):
            for workers in (1, 2):
                wall, samples, used = job(count, workers, str(rep))
                times[workers].append(wall)
                cpu[workers] = used
        t1, t2 = min(times[1]), min(times[2])
        pairs = [a / b for a, b in zip(times[1], times[2])]
        best[count] = (t1, t2)
        rows.append((f"webvid job clips/s, {count} videos, Ray workers: 2 vs 1 (pairs {min(pairs):.2f}-{max(pairs):.2f}x)",
                     samples / t2, samples / t1, "same job on 1 worker", t1 / t2, 1.8, None))
        one, two = cpu[1], cpu[2]
        cores = os.cpu_count() or 2
        if cores <= 2 and two["workers"] > 0:
            # 1 worker: its job takes at least its own CPU time (Ray and the driver fit on the other
            # core); 2 workers on 2 cores: at least all the CPU of the job spread over both cores
            bound = one["workers"] / (sum(two.values()) / cores)
            notes.append(f"{count} videos: on {cores} cores, with Ray's processes and the driver using "
                         f"{two['ray system'] + two['driver']:.1f} s of CPU beside the workers' {two['workers']:.1f} s, "
                         f"2 workers can be at most {bound:.2f}x faster than 1 (CPU accounting, not wall time)")
        for workers, used in sorted(cpu.items()):
            notes.append(f"{count} videos, {workers} worker(s), last run: {times[workers][-1]:.1f} s wall = "
                         f"{workers * times[workers][-1]:.1f} core-s for its workers; CPU used: workers "
                         f"{used['workers']:.1f} s, Ray's own processes {used['ray system']:.1f} s, driver "
                         f"{used['driver']:.1f} s")
    if len(best) >= 2:
        (small, (a1, a2)), (large, (b1, b2)) = sorted(best.items())[0], sorted(best.items())[-1]
        if b2 > a2:
            rows.append((f"webvid job, marginal {small} -> {large} videos (fixed cost cancels), 2 vs 1 workers",
                         (large - small) / (b2 - a2), (large - small) / (b1 - a1), "same on 1 worker",
                         (b1 - a1) / (b2 - a2), 1.8, None))
    return rows, notes


def run(args) -> int:
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="codiray-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    files = make_files(root, args)
    rows = video_rows(files, args) + image_rows(files, args) + audio_rows(files, args)
    notes = []
    notes.append(resampler_comparison(args.reps))
    if not args.skip_ray:
        ray_table, ray_notes = ray_rows(files, root, args)
        rows += ray_table
        notes += ray_notes
    print("| measurement | codiray | baseline | baseline is | ratio | ratio (CPU time) | goal |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for label, ours, base, what, ratio, goal, cpu_ratio in rows:
        mark = "ok" if ratio >= goal else "below"
        cpu = f"{cpu_ratio:.2f}x" if cpu_ratio is not None else "-"
        print(f"| {label} | {ours:.1f} | {base:.1f} | {what} | {ratio:.2f}x | {cpu} | >= {goal:g}x ({mark}) |")
    for note in notes:
        print(f"- {note}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"- {os.cpu_count()} cores, load average {load:.1f} at the end of the run")
    if shutil.which("ffmpeg") is None:
        print("(ffmpeg not found: the ffmpeg rows were skipped; install Debian's ffmpeg package)")
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    return 0
