"""`mugv info`: parameter count and training FLOPs of a model preset of any registered family."""

from __future__ import annotations

import argparse

from mugv.errors import ConfigError
from mugv.models.dit.config import PRESETS, DiTConfig, latent_shape_for_pixels


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", description="Parameter count and training FLOPs of a model preset.")
    parser.add_argument("--family", default="mug-dit", help="model family (default: mug-dit; also mugv-vae, wan-dit, wan-vae)")
    parser.add_argument("--model", default=None,
                        help=f"preset of the family (default: 10b for mug-dit; mug-dit presets: {', '.join(PRESETS)})")
    parser.add_argument("--frames", type=int, help="clip length in pixel frames (e.g. 105 for 5 s at ~20 fps)")
    parser.add_argument("--height", type=int, help="clip height in pixels")
    parser.add_argument("--width", type=int, help="clip width in pixels")
    parser.add_argument("--text-tokens", type=int, default=None, help="real text tokens (default: the model's maximum)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, _: list[str]) -> int:
    from mugv.models.registry import get_family

    family = get_family(args.family)
    preset = args.model or ("10b" if "10b" in family.presets else family.presets[0])
    if preset not in family.presets:
        raise ConfigError(f"--model {preset}: not a {family.name} preset; known: {', '.join(family.presets)}")
    cfg = family.from_preset(preset)
    if not isinstance(cfg, DiTConfig):  # another family (a VAE, the Wan DiT): its size; the layout below is MUG-DiT's
        params = family.num_params(cfg)
        print(f"{family.name} {preset}: {params:,} parameters ({params / 1e9:.2f} B)")
        return 0
    sizes = (args.frames, args.height, args.width)
    latent = None
    if args.text_tokens is not None and args.text_tokens < 0:
        raise ConfigError(f"--text-tokens {args.text_tokens}: must be 0 or more")
    if any(v is not None for v in sizes):
        if any(v is None for v in sizes):
            raise ConfigError("give --frames, --height and --width together")
        try:
            latent = latent_shape_for_pixels(*sizes)
        except ValueError as exc:
            raise ConfigError(f"--frames {args.frames} --height {args.height} --width {args.width}: {exc}") from exc
    params = family.num_params(cfg)
    print(f"model {preset} ({family.name}): depth {cfg.depth}, hidden {cfg.hidden_size}, heads {cfg.num_heads} x {cfg.head_dim}, "
          f"text dim {cfg.text_dim}")
    print(f"parameters: {params:,} ({params / 1e9:.2f} B)")
    if latent is not None:
        t, h, w = latent
        text = args.text_tokens if args.text_tokens is not None else cfg.max_text_tokens
        tokens = cfg.num_tokens(t, h, w)
        train = family.train_flops(cfg, t, h, w, text)
        megatron = cfg.megatron_train_flops(t, h, w, text)
        print(f"clip {args.frames} x {args.height} x {args.width} -> latent {t} x {h} x {w} -> {tokens:,} tokens "
              f"({tokens - 2:,} video + start/end), {text} text tokens")
        print(f"training FLOPs per sample (forward + backward): {train:.4e} ({train / 1e15:.1f} PFLOP)")
        print(f"  forward {cfg.forward_flops(t, h, w, text):.4e}; the release's MFU formula gives {megatron:.4e}")
    return 0
