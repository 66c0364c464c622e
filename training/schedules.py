"""Named schedules (``run_schedule(SCHEDULES[name], ...)``).

``engine_debug`` is NOT CoDi's schedule: it exercises the schedule engine (concurrent stages, a
stage needing two others, skip/resume records) with the debug text-to-image diffuser.
``codi_demo`` is CoDi's staged training at toy sizes: every stage kind, each stage loading what its
needs exported (training/recipes_codi.py; the DAG is drawn in docs/schedule.md); ``codi_debug`` is
its twin for the tests (two steps a stage).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable, Mapping

import torch

from training.config import Precision, ScalingConfig, TrainConfig
from training import recipes_codi as rc
from training.recipes import text_to_image_demo_debug
from training.schedule import CurriculumPhase, Schedule, Stage


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


def codi_schedule(budgets: Mapping[str, rc.Budget], codecs: str, video_phases: list[CurriculumPhase],
                  vocoder: bool = True, image_fraction: float = 0.25,
                  video_audio_train: tuple[str, ...] = ("video",),
                  min_snr_gamma: float | None = None) -> Schedule:
    """CoDi's staged training (CoDi §3.2-3.4, its appendix; Imagen Video §2.5-2.7), one stage per box:

        autoencoders (image, audio, vocoder, text) ──────────────┐
        CLIP pretraining → audio / video bridging (→ CLIP text) ─┴→ image / audio / text LDMs (in parallel)
        (CLIP pretraining on clips and, half its batches, images: its text tower reads motion words too)
        image LDM → video LDM (curriculum phases) ──→ text+image → audio → video latent alignment
        cascade base → progressive distillation of the base;   cascade SSR / TSR beside everything

    ``budgets`` maps a stage name to its Budget (``default`` for the rest); ``codecs`` is the codecs
    variant every stage starts from (``debug`` or ``toy``); ``vocoder`` trains the HiFi-GAN (codecs
    that decode with Griffin-Lim have nothing to train there); ``image_fraction`` of the video LDM's
    batches are laion images as 1-frame videos. ``video_audio_train``: whose V + cross-modal attention the
    last latent-alignment phase trains: CoDi's ``("video",)`` (audio frozen, §3.4), or ``("video", "audio")``
    as the demo does: there, audio's connectors had only learnt to read text's V in phase 2, and generated
    audio came out the same jointly as independently (docs/schedule.md: the deviation, measured).
    ``min_snr_gamma``: the image, audio and text LDMs weight their ε-loss by min(SNR, γ)/SNR (Hang et al.
    2023; CoDi: none, the default); the video LDM and the latent alignment inherit it with their weights."""
    def b(name: str) -> rc.Budget:
        return budgets.get(name, budgets["default"])

    def stage(name, kind, recipe, *args, needs=(), data=None, upstream=None, phases=(), images=None, **kw):
        return Stage(name, kind, recipe=partial(recipe, *args, budget=b(name), codecs=codecs, **kw), needs=list(needs),
                     data=data, upstream=upstream, phases=list(phases), images=images, expected_s=b(name).expected_s)

    codec_stages = ["image_autoencoder", "audio_autoencoder", *(["vocoder_autoencoder"] if vocoder else []),
                    "text_autoencoder", "clip_pretraining", "audio_bridging", "video_bridging"]
    return Schedule([
        stage("image_autoencoder", "autoencoder", rc.autoencoder, "image", "laion", data="laion"),
        stage("audio_autoencoder", "autoencoder", rc.autoencoder, "audio", "audiocaps", data="audiocaps"),
        *([stage("vocoder_autoencoder", "autoencoder", rc.autoencoder, "vocoder", "audiocaps", data="audiocaps")]
          if vocoder else []),
        stage("text_autoencoder", "autoencoder", rc.autoencoder, "text", "laion", data="laion", images="audiocaps",
              second_fraction=0.5),
        stage("clip_pretraining", "bridging_alignment", rc.clip_pretraining, "webvid", data="webvid", images="laion",
              modality="image+video", image_fraction=0.5),
        stage("audio_bridging", "bridging_alignment", rc.bridging, "audio", "audiocaps", needs=["clip_pretraining"],
              data="audiocaps", upstream=rc.codecs_from),
        stage("video_bridging", "bridging_alignment", rc.bridging, "video", "webvid", needs=["clip_pretraining"],
              data="webvid", upstream=rc.codecs_from),
        stage("image_ldm", "ldm", rc.ldm, "image", "laion", {"text": 1.0}, needs=codec_stages, data="laion",
              upstream=rc.codecs_from, min_snr_gamma=min_snr_gamma),
        stage("audio_ldm", "ldm", rc.ldm, "audio", "audiocaps", {"text": 1.0}, needs=codec_stages, data="audiocaps",
              upstream=rc.codecs_from, min_snr_gamma=min_snr_gamma),
        stage("text_ldm", "ldm", rc.ldm, "text", "laion", TEXT_LDM_CONDITIONS, needs=codec_stages,
              data="laion", upstream=rc.codecs_from, images="audiocaps", second_fraction=0.5,
              min_snr_gamma=min_snr_gamma),
        stage("video_ldm", "ldm", rc.ldm, "video", "webvid", {"text": 1.0}, needs=["image_ldm"], data="webvid",
              upstream=rc.from_ldm, phases=video_phases, images="laion", image_fraction=image_fraction),
        stage("text_image_alignment", "latent_alignment", rc.alignment, "text_image",
              needs=["video_ldm", "audio_ldm", "text_ldm"], data="laion", upstream=rc.merge_ldms),
        stage("audio_text_alignment", "latent_alignment", rc.alignment, "audio_text", needs=["text_image_alignment"],
              data="audiocaps", upstream=rc.from_ldm),
        stage("video_audio_alignment", "latent_alignment", rc.alignment, "video_audio",
              needs=["audio_text_alignment"], data="webvid", upstream=rc.from_ldm, train=video_audio_train),
        stage("base_distillation", "distillation", rc.base_distillation, needs=["cascade_base"], data="webvid",
              upstream=rc.from_cascade_base),
        stage("cascade_base", "cascade_base", rc.cascade, "base", data="webvid"),
        stage("cascade_ssr", "cascade_ssr", rc.cascade, "ssr", data="webvid"),
        stage("cascade_tsr", "cascade_tsr", rc.cascade, "tsr", data="webvid"),
    ])


def video_curriculum(short_until: int, until: int) -> list[CurriculumPhase]:
    """CoDi's video curriculum at toy scale: short low-fps clips (every 2nd frame, 4 of them) first, then
    every prepared frame; the boundary is a checkpoint."""
    return [CurriculumPhase("short_low_fps", short_until, ["task.ldm.frames=4", "task.ldm.frame_stride=2"]),
            CurriculumPhase("full", until, ["task.ldm.frames=0", "task.ldm.frame_stride=1"])]


# The demo's last latent-alignment phase trains audio's V + cross-modal attention beside video's (CoDi froze
# audio's): trained CoDi's way (video's alone), the generated audio came out the same jointly as independently
# (session 12). With both, on the demo's 64 prompts of seed 2000 (video guidance 4, probes in memory, session
# 13's rhythm probe): joint vs independent agreement 42.2 / 35.9 vs 25.0 % trained in one process with plain
# AdamW (text dropped from half the batches: 28.1 %), 26.6 vs 25.0 % through the engine's stage. In one
# process with the engine's optimizer settings, three training seeds: 25.0 / 35.9 / 32.8 % with its 20-step
# warmup, 32.8 / 34.4 / 25.0 % without (session 14): the warmup is not the cause, the phase's outcome varies
# from run to run by about 11 points. README.
JOINT_VIDEO_AUDIO = ("video", "audio")

# The text VAE and the text LDM train on image captions (laion) and, half their batches, audio captions
# (audiocaps), the text LDM conditioned on either set's text or its other modality: CoDi's Table 1 trains
# image->text and audio->text. On laion alone (before session 15) the text VAE gave back none of 64 audio
# captions and audio->text could only write image captions (pitch and rhythm 0 %).
TEXT_LDM_CONDITIONS = {"text": 1.0, "image": 1.0, "audio": 1.0}


# The demo's LDMs weight their ε-loss by min(SNR, 5)/SNR (Hang et al. 2023, "Efficient Diffusion Training
# via Min-SNR Weighting Strategy"; CoDi trains unweighted). One process, one thread each, the demo's shard
# sets, codecs, LR and EMA, 64 held-out prompts (seed 2000), unweighted vs γ = 5 after 500 / 750 / 1000 / 1500
# steps: the image LDM's text->image colour 53 / 67 / 67 / 84 % vs 61 / 70 / 89 / 100 %, position
# 31 / 48 / 67 / 89 % vs 73 / 94 / 97 / 98 %; the audio LDM's text->audio pitch 44 / 55 / 78 / 98 % vs
# 52 / 77 / 91 / 92 %, rhythm 61 / 66 / 75 / 89 % vs 61 / 80 / 86 / 89 %, and from video captions (the audio
# half of text->video+audio) pitch 50 / 64 / 62 / 70 % vs 53 / 67 / 75 / 75 %, rhythm 41 / 45 / 41 / 48 % vs
# 44 / 55 / 52 / 67 % (weighted, after 1100 and 1200 steps: text->audio pitch 92 and 94 %, rhythm 88 % both).
# The image LDM reaches in 1000 weighted steps more than in 1500 unweighted ones (DEMO_BUDGETS).
DEMO_MIN_SNR_GAMMA = 5.0


def codi_debug() -> Schedule:
    """``codi_demo``'s DAG, every stage two steps on two data-parallel workers of 0.75 CPUs (``rc.DEBUG``:
    the tests' twin, proving every stage kind trains across ranks; the video LDM's second step is a batch
    of images as 1-frame videos; the audio LDM under bf16 autocast, as the demo's)."""
    return codi_schedule({"default": rc.DEBUG, "audio_ldm": dataclasses.replace(rc.DEBUG, precision="bf16_autocast")},
                         "debug", video_curriculum(1, 2), image_fraction=0.5, video_audio_train=JOINT_VIDEO_AUDIO,
                         min_snr_gamma=DEMO_MIN_SNR_GAMMA)


DEMO_CPUS = 1.5        # a stage's logical CPUs: two side by side on the demo's 4, one left for Ray Data
DEMO_ALONE_CPUS = 2.0  # a stage that runs with nothing beside it: both cores, torch on 2 threads


def demo_budget(steps: int, batch: int = 8, lr: float = 1e-3, workers: int = 1, cpus: float = DEMO_CPUS,
                precision: Precision = "fp32", expected_s: float | None = None) -> rc.Budget:
    """``workers`` sharing ``cpus`` logical CPUs (by default ``DEMO_CPUS``: on 2 cores, more stages at once
    only slow each other), a short warmup, a loss line every 25 steps."""
    return rc.Budget(steps=steps, batch=batch, workers=workers, cpus=cpus / workers, lr=lr,
                     warmup=min(20, steps // 10), log_every=25, precision=precision, expected_s=expected_s)


def cpu_has_bf16() -> bool:
    """Whether this machine's CPU multiplies in bf16 natively (AMX or AVX512-BF16), where ``bf16_autocast``
    pays for the audio UNet (−30 % a step); elsewhere autocast emulates bf16 and is slower than fp32."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_amx_tile_supported",
                                                                         "_is_avx512_bf16_supported"))


# Sized from step times and quality measured per stage in one process (torch on 2 threads), on the shards of
# the previous demo run (512 images, 256 clips, 256 sounds): the image VAE reconstructs colour, shape and
# position (probes: 100 %) after 900 steps of 32 (at 150 steps of 8, colour 42 %, shape 59 %); the mel VAE
# keeps pitch (100 %) from 150 steps of 16, rhythm 75 % at 900; Optimus (mean-pooled BERT) gives back 14 of 16
# captions exactly after 500 steps of 32; CLIP separates the captions in 300 steps of 64; an image LDM on
# those reached colour 84 %, shape 91 %, position 91 % in 600 steps of 16 (with the random char-level CLIP of
# the session before: 3 %, 28 %, 25 %); the demo's audio LDM read pitch 75 % after 800 steps of 16 on 128
# sounds (a three-level variant: 56 % after 400, 81 % after 800), 100 % after 1000 on 256; the video LDM's
# video layers (8 clips a step, the image LDM's UNet frozen) read motion 25 / 38 / 44 % after 150 / 300 / 450
# steps on 8-frame clips at 4 fps (the whole 2-s clip), and 25-38 % at any step count up to 800 on clips at 8
# fps (half the motion a frame); with the text cross-attention trained too (the image LDM's never read a motion
# word), 47 / 50 / 53 % after 300 / 600 / 900 steps on 32 held-out prompts (video layers alone: 34-44 %; 44 % again
# after 1000 steps with a quarter of the batches images, whose text->image colour stayed 97-100 %: more steps did
# not buy motion, so 500 stay: all with a CLIP pretrained on stills only, whose text tower barely told motions
# apart, cosine 0.95 between captions differing only there; with clips in its pretraining the same 500 steps
# read motion 81 % of 16 in the demo, session 11). One worker per stage: on 2 cores a Ray Train worker group
# takes 1-1.5 min to start beside another stage (processes importing torch, DeepSpeed, transformers,
# diffusers), so a second worker costs more than it gives.
# ``expected_s``: each stage's seconds in the demo run of 71859e5 on a 2-core AMD EPYC (AVX2, no bf16: the audio
# LDM in fp32), less the 55 s DeepSpeed comm build the first stages paid then; only their ratios matter, for the
# launch order (Schedule.launch_order): the audio chain (autoencoder 500 s, LDM 1550 s) is the critical path,
# though the image chain has more runs; ordered by runs, the audio autoencoder waited 133 s behind CLIP.
DEMO_BUDGETS = {
    "default": demo_budget(100),
    "image_autoencoder": demo_budget(900, batch=32, expected_s=280),
    "audio_autoencoder": demo_budget(500, batch=16, expected_s=500),
    "text_autoencoder": demo_budget(1000, batch=32, expected_s=115),
    # half the batches clips (8 frames through CoDi's temporal blocks, 0.37 s a step of 64 instead of 0.07
    # for images, one process on 2 threads): in that process, captions differing only in motion went from
    # cosine 0.93 (images only) to 0.58 after 300 steps, "left" vs "right" from 0.86 to 0.72; between
    # image captions differing in colour 0.51 -> 0.58, in position 0.50 -> 0.47. 400 steps changed little.
    # The demo's stage took 143 s (session 11; about 80 s on stills alone)
    "clip_pretraining": demo_budget(300, batch=64, expected_s=143),
    "audio_bridging": demo_budget(100, batch=32, expected_s=58),
    "video_bridging": demo_budget(100, batch=16, expected_s=51),
    # 1000 steps under min-SNR-5 (DEMO_MIN_SNR_GAMMA) read more than 1500 unweighted ones (session 15: 1500, 585 s)
    "image_ldm": demo_budget(1000, batch=16, expected_s=400),
    # bf16 autocast where it pays: the audio UNet's convolutions over the 32x16 mel latent, 34 % faster
    # (646 instead of 919 s in the demo; the image and video UNets' 8x8 latents and the autoencoders' narrow
    # convolutions run as fast or faster in fp32). 1000 steps sit on the slope of pitch's learning curve: the
    # demo's audio LDM (128 channels at its second level) read pitch from 64 held-out prompts 94 %, 77 % and
    # 67 % in three runs; in one process on one run's codecs 80 % after 1000 steps and 97 % after 1500 (fp32),
    # 78 / 95 % under autocast. ``tiny_audio_unet`` now has 64 channels at both levels (0.185 instead of 0.246
    # s a step under autocast on 2 threads) and trains at lr 2e-3: 69 % after 1000 steps, 98 % after 1500
    # (rhythm 25 %), so 1500 of its steps cost 13 % more than the old 1000 (README: why pitch fell). Under
    # min-SNR-5 (DEMO_MIN_SNR_GAMMA), one process on one thread: pitch 91 / 92 / 94 / 92 % after 1000 / 1100 /
    # 1200 / 1500 steps, so 1200 (1537 s for 1500 in session 15's fp32 demo); the stage then ends about when
    # the image, video and text LDMs on the other slot do. On a 2-core Intel Xeon with AMX (session 18), one
    # demo run each: 528 s under autocast, pitch 84 % of 64; 604 s in fp32, pitch 81 %
    "audio_ldm": demo_budget(1200, batch=16, lr=2e-3, precision="bf16_autocast", expected_s=1240),
    # on image and audio captions (TEXT_LDM_CONDITIONS), one process on 2 threads from session 12's codecs with
    # the text VAE retrained on both caption sets, 64 held-out inputs each: after 300 steps image->text colour
    # 28 %, audio->text pitch 36 % / rhythm 27 %; after 1000, 78 % and 62 / 41 % (0.29 s a step)
    "text_ldm": demo_budget(1000, batch=32, expected_s=330),
    "video_ldm": demo_budget(500, batch=8, expected_s=590),
    # The three latent-alignment phases need every LDM and each other, so they close the run one after
    # another with no stage beside them (fits_beside keeps DATA_RESERVE free, so 2 + 1.5 CPUs never run
    # together on the demo's 4): they take both cores. Phase 3's step (4 clips, one process, demo16's
    # stage config) took 1.40 s on 1 thread and 0.90 s on 2.
    "text_image_alignment": demo_budget(40, cpus=DEMO_ALONE_CPUS, expected_s=45),
    "audio_text_alignment": demo_budget(20, cpus=DEMO_ALONE_CPUS, expected_s=47),
    # 200 steps of 4 clips: see JOINT_VIDEO_AUDIO. 300 took 426 s on one thread in session 16's demo on the AMD
    # EPYC, 218 and 196 s on two in sessions 18 and 19 on a 2-core Intel Xeon, the last 4 % of the run alone.
    # Session 20, retrained alone from session 19's phase 2, 64 prompts of seed 2000: joint vs independent
    # agreement 34.4 vs 32.8 % after 200 steps, 39.1 vs 32.8 % after 300 (the demo's own stage), inside the
    # phase's run-to-run spread of about 11 points; 200 steps save about 60 s of the 20-minute goal
    "video_audio_alignment": demo_budget(200, batch=4, cpus=DEMO_ALONE_CPUS, expected_s=200),
    # the cascade is there to show the stage kinds run (and the base's distillation start from its export);
    # the demo samples nothing through it
    **{f"cascade_{k}": demo_budget(2, batch=2, expected_s=48) for k in ("base", "ssr", "tsr")},
    "base_distillation": demo_budget(10, batch=2, expected_s=74),
}


# The demo's video LDM takes a tenth of its batches from the image captions (1-frame videos), not a quarter.
# Its motion errors are mostly the wrong sign on the right axis (left read as right, down as up: 17 of session
# 18's 27 errors on 64 prompts), and images, whose captions use "left" and "right" for positions, teach none
# of it.
# Session 19, the video LDM retrained alone from session 18's image LDM and codecs (2 threads, exactly
# reproducing that run's stage), 64 prompts of seed 2000 (motion / video colour / text->image colour /
# position, %): a quarter 57.8 / 90.6 / 90.6 / 93.8 (seed 0), 71.9 / 78.1 / 95.3 / 93.8 (seed 1); a tenth
# 73.4 / 93.8 / 90.6 / 93.8, 76.6 / 73.4 / 92.2 / 85.9; none 76.6 / 84.4 / 87.5 / 89.1 and 76.6 / 76.6 /
# 87.5 / 89.1 (the image UNet is the video LDM's, so text->image colour fell under its 90 % goal). 1000
# steps at a quarter: motion 68.8 %; training every UNet weight: 46.9 %. A tenth costs about 12 % more
# time a step (more batches are clips).
DEMO_VIDEO_IMAGE_FRACTION = 0.1


def codi_demo() -> Schedule:
    """The demo's training: ``codi_debug``'s DAG on the toy codecs (which decode mels with Griffin-Lim, so
    no vocoder stage: a HiFi-GAN from scratch reached 16 % pitch accuracy after 300 CPU steps), each
    stage on one worker of ``DEMO_CPUS`` logical CPUs (the latent-alignment phases, which run alone at the end,
    ``DEMO_ALONE_CPUS``) for the steps of ``DEMO_BUDGETS``."""
    video = DEMO_BUDGETS["video_ldm"].steps
    bf16 = cpu_has_bf16()
    budgets = {name: b if bf16 else dataclasses.replace(b, precision="fp32") for name, b in DEMO_BUDGETS.items()}
    return codi_schedule(budgets, "toy", video_curriculum(video // 2, video), vocoder=False,
                         image_fraction=DEMO_VIDEO_IMAGE_FRACTION, video_audio_train=JOINT_VIDEO_AUDIO,
                         min_snr_gamma=DEMO_MIN_SNR_GAMMA)


SCHEDULES: dict[str, Callable[[], Schedule]] = {
    "engine_debug": engine_debug,
    "codi_debug": codi_debug,
    "codi_demo": codi_demo,
}
