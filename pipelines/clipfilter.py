"""CLIP image-text similarity filter (LAION-5B's: ViT-B/32 cosine >= 0.28), as a Ray Data actor pool.

The model loads once per actor (seconds, and a GPU when ``worker`` asks for one), then scores whole
shards: every sample's image (a LAION image, a video clip's middle frame) against its caption. An
input whose mean similarity over its samples is below the threshold is dropped as a whole, so the
ledger stays one row per input.
"""

from __future__ import annotations

import json
import pickle
from collections import defaultdict

import numpy as np

from pipelines.config import ClipFilterConfig, PrepareConfig


def load_clip(cfg: ClipFilterConfig):
    """(model, preprocess, tokenizer). ``tiny_random``: a seeded random-init CLIP, for tests only."""
    import open_clip
    import torch

    if cfg.tiny_random:
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        torch.manual_seed(0)  # same weights in every actor and in the test that checks them
        model = CLIP(embed_dim=32,
                     vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
                     text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
        preprocess = open_clip.image_transform(32, is_train=False)
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(cfg.model, pretrained=cfg.pretrained)
    return model.eval(), preprocess, open_clip.get_tokenizer(cfg.model)


def similarities(model, preprocess, tokenizer, images: list[np.ndarray], captions: list[str],
                 batch_size: int = 64) -> np.ndarray:
    """Cosine similarity of each image with its own caption."""
    import torch
    from PIL import Image

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([preprocess(Image.fromarray(im)) for im in images[start:start + batch_size]])
            tokens = tokenizer(captions[start:start + batch_size])
            image_emb = model.encode_image(pixels.to(device), normalize=True)
            text_emb = model.encode_text(tokens.to(device), normalize=True)
            out.append((image_emb * text_emb).sum(-1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


class ClipScorer:
    """Ray Data callable class: one actor holds the model; each batch row is one pickled shard."""

    def __init__(self, cfg: ClipFilterConfig):
        self.cfg = cfg
        self.model, self.preprocess, self.tokenizer = load_clip(cfg)

    def __call__(self, batch: dict) -> dict:
        batch["payload"] = np.array([self.filter_shard(p) for p in batch["payload"]], dtype=object)
        return batch

    def filter_shard(self, payload: bytes) -> bytes:
        record, samples = pickle.loads(payload)
        scored = [s for s in samples if s.get("image") is not None]
        sims = similarities(self.model, self.preprocess, self.tokenizer, [s["image"] for s in scored],
                            [s["caption"] for s in scored], self.cfg.batch_size)
        per_input: dict[str, list[float]] = defaultdict(list)
        for sample, sim in zip(scored, sims):
            per_input[sample["input"]].append(float(sim))
            meta = json.loads(sample["fields"]["json"])
            meta["clip_similarity"] = round(float(sim), 4)
            sample["fields"]["json"] = json.dumps(meta).encode()
        rejected = {}
        for key, values in per_input.items():
            mean = float(np.mean(values))
            if mean < self.cfg.threshold:
                rejected[key] = mean
        for key in sorted(rejected):
            record.drop(key, "clip_score", f"CLIP similarity {rejected[key]:.4f} < {self.cfg.threshold:g} "
                                           f"({self.cfg.model})")
        kept = [s for s in samples if s["input"] not in rejected]
        return pickle.dumps((record, kept))


class ClipFilter:
    """Adds the scoring actor pool to a job's dataset (between decode and commit)."""

    def __init__(self, cfg: PrepareConfig):
        self.cfg = cfg

    @classmethod
    def maybe(cls, cfg: PrepareConfig) -> "ClipFilter | None":
        return cls(cfg) if cfg.caption.clip.enabled else None

    def apply(self, dataset):
        ccfg = self.cfg.caption.clip
        args = self.cfg.worker.ray_remote_args()
        import ray

        return dataset.map_batches(ClipScorer, fn_constructor_kwargs={"cfg": ccfg}, batch_size=1,
                                   compute=ray.data.ActorPoolStrategy(size=ccfg.actors), batch_format="numpy", **args)
