"""`codiray convert`: released weights → a ``CoDi.from_pretrained`` folder (safetensors + config JSON).

    codiray convert codi --checkpoint CoDi_video_diffuser_8frames.pth [--checkpoint ...] --out DIR
    codiray convert sd --unet SD_UNET (diffusers folder, or .safetensors/.ckpt single file) [--vae VAE] --out DIR

The work happens in ``models.codi.convert``; this module only parses flags and reports.
"""

from __future__ import annotations

import argparse

DTYPES = ("float32", "float16", "bfloat16")


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert CoDi or Stable Diffusion weights to a codiray CoDi model")
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    codi = sub.add_parser("codi", formatter_class=fmt,
                          help="CoDi's released diffuser checkpoints (.pth state dicts; read weights-only)")
    codi.add_argument("--checkpoint", action="append", required=True, metavar="FILE",
                      help="a CoDi diffuser file; repeat to combine the image/video, audio and text UNets")
    codi.add_argument("--num-heads", type=int, default=8,
                      help="spatial-transformer heads (the one size not stored in the tensor shapes)")
    codi.add_argument("--codecs-config", metavar="YAML",
                      help="CodecsConfig keys for the autoencoders/prompt encoders a full checkpoint carries: "
                           "what tensor shapes cannot tell (attention heads, vocoder dilations) and the local "
                           "tokenizer folders (text.encoder_tokenizer, text.decoder_tokenizer, clip.tokenizer); "
                           "default: the released CoDi's")
    sd = sub.add_parser("sd", formatter_class=fmt,
                        help="a Stable Diffusion 1.x UNet → an image-only CoDi model")
    sd.add_argument("--unet", required=True, metavar="PATH",
                    help="diffusers UNet folder (config.json + diffusion_pytorch_model.safetensors) or an "
                         "original single-file checkpoint (model.diffusion_model.*, .safetensors or .ckpt)")
    sd.add_argument("--num-heads", type=int, default=None,
                    help="spatial-transformer heads (default: the diffusers config's, else 8)")
    sd.add_argument("--vae", metavar="PATH",
                    help="SD's kl-f8 autoencoder: a diffusers AutoencoderKL folder or an LDM checkpoint file "
                         "(first_stage_model.*); the model then carries codecs with only the image VAE, so "
                         "model.encode/decode('image'/'video', ...) work")
    for command in (codi, sd):
        command.add_argument("--out", required=True, metavar="DIR", help="where to write the CoDi model folder")
        command.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
        command.set_defaults(func=run)


def run(args) -> int:
    import torch

    from common.errors import UsageError
    from models.codi.convert import convert_codi_release, convert_sd

    if args.num_heads is not None and args.num_heads < 1:
        raise UsageError(f"--num-heads must be positive, got {args.num_heads}")
    dtype = getattr(torch, args.dtype)
    checked, mismatches, ignored = [], [], {}
    if args.source == "codi":
        from common.config import load_config
        from models.codecs_config import CodecsConfig

        base = load_config(CodecsConfig, args.codecs_config, []) if args.codecs_config else None
        conversion = convert_codi_release(args.checkpoint, num_heads=args.num_heads, dtype=dtype, codecs_base=base)
        model, checked, mismatches, ignored = (conversion.model, conversion.checked, conversion.mismatches,
                                               conversion.ignored)
    else:
        model = convert_sd(args.unet, num_heads=args.num_heads, dtype=dtype)
        if args.vae:
            from models.codecs_convert import image_only_codecs

            model.codecs = image_only_codecs(args.vae).to(dtype)
    out = model.save_pretrained(args.out)
    for name, unet in model.unets.items():
        spec = unet.spec
        count = sum(p.numel() for p in unet.parameters())
        extras = [x for x, on in (("video layers", spec.video), ("V + connectors", spec.connectors)) if on]
        print(f"{name}: {count:,} parameters, {spec.in_channels} latent channels, model_channels "
              f"{spec.model_channels}, channel_mult {spec.channel_mult}"
              + (f", with {' and '.join(extras)}" if extras else ""))
    if model.codecs is not None:
        count = sum(p.numel() for p in model.codecs.parameters())
        pieces = ", ".join(model.codecs.cfg.present())
        print(f"codecs ({pieces}): {count:,} parameters, in {out / 'codecs'}")
    if checked:
        print(f"checked, not loaded (derived constants that match codiray's): {len(checked)} tensors")
    if ignored:
        reasons: dict[str, list[str]] = {}
        for key, why in ignored.items():
            reasons.setdefault(why, []).append(key)
        for why, keys in reasons.items():
            print(f"not needed, not loaded: {len(keys)} tensor(s) like {keys[0]} ({why})")
    for problem in mismatches:
        print(f"warning: {problem}")
    print(f"wrote {out}")
    return 0
