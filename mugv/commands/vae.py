"""`mugv vae train|eval|stats`: train the video VAE, measure its reconstructions, and compute the
per-channel latent statistics a newly trained VAE normalises with."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mugv.commands.profiles import reject_foreign_profile
from mugv.config import ConfigError, deep_merge, from_dict, load_profile_dict, parse_overrides, to_toml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("vae", description=__doc__)
    commands = parser.add_subparsers(dest="vae_command", required=True, metavar="VAE_COMMAND")

    train = commands.add_parser(
        "train",
        help="train the VAE on videos and images",
        description="Train the VAE. Any config key can be overridden: --optim.lr=1e-4 --train.steps=50.",
    )
    train.add_argument("--config", default="vae_tiny", help="profile name (./configs/NAME.toml, else a shipped one) or a TOML path (default: vae_tiny)")
    train.add_argument("--source", action="append", default=[], help="folder, media file or manifest (repeatable; adds to data.sources)")
    train.add_argument("--dry-run", action="store_true", help="validate the config, print the resolved tree, exit")
    train.add_argument("--deterministic", action="store_true",
                       help="shorthand for --train.deterministic=true: torch's deterministic algorithms, for "
                            "bit-identical GPU runs at some speed (CPU runs are bit-identical without it)")
    train.set_defaults(func=run_train, accepts_overrides=True)

    for name, helptext in (
        ("eval", "PSNR / SSIM per clip and mean, encode / decode frames/s, peak memory"),
        ("stats", "per-channel latent mean / std over a dataset (for latent_mean / latent_std)"),
    ):
        sub = commands.add_parser(name, help=helptext, description=helptext + ". Model keys can be overridden: --model.tile_size=256.")
        sub.add_argument("sources", nargs="+", help="folders, media files or manifests")
        sub.add_argument("--weights", help="our checkpoint directory, or a weights file (vae.pt, .safetensors) with --config/--preset")
        sub.add_argument("--config", help="profile whose [model] section sets the VAE size")
        sub.add_argument("--preset", help="VAE preset when no config is given (mugv, tiny, tiny-shortcut)")
        sub.add_argument("--height", type=int, default=256)
        sub.add_argument("--width", type=int, default=256)
        sub.add_argument("--frames", type=int, default=17, help="frames per clip (images: 1)")
        sub.add_argument("--device", default="auto")
        sub.add_argument("--output", help="write the full result as JSON here")
        sub.set_defaults(func=run_eval if name == "eval" else run_stats, accepts_overrides=True)
    commands.choices["eval"].add_argument("--sample", action="store_true", help="decode a posterior sample, not the mode")
    commands.choices["eval"].add_argument(
        "--lpips-weights", default="", help="local VGG16 + LPIPS-head weights file; adds LPIPS (never downloaded)"
    )
    commands.choices["stats"].add_argument("--mode", action="store_true", help="statistics of the posterior mode, not samples")


def _run_config(args: argparse.Namespace, overrides: list[str]):
    from mugv.vae_train.config import VAERunConfig

    data = {}
    if args.config:
        data = load_profile_dict(args.config)
    elif args.weights and Path(args.weights, "config.toml").is_file():
        data = load_profile_dict(str(Path(args.weights, "config.toml")))
    if getattr(args, "preset", None):
        data = deep_merge(data, {"model": {"preset": args.preset}})
    try:
        return from_dict(VAERunConfig, deep_merge(data, parse_overrides(overrides)))
    except ConfigError:
        if args.config:
            reject_foreign_profile(args.config, "mugv vae")
        raise


def run_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from mugv.vae_train.config import VAERunConfig

    overrides = [*overrides, "--train.deterministic=true"] if args.deterministic else overrides
    data = deep_merge(load_profile_dict(args.config), parse_overrides(overrides))
    if args.source:
        data = deep_merge(data, {"data": {"sources": list(data.get("data", {}).get("sources", [])) + args.source}})
    try:
        cfg = from_dict(VAERunConfig, data)
    except ConfigError:
        reject_foreign_profile(args.config, "mugv vae")
        raise
    if args.dry_run:
        print(to_toml(cfg), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mugv.vae_train.data import MediaPool
    from mugv.vae_train.trainer import VAETrainer

    media = MediaPool.from_config(cfg.data)
    for rejection in media.rejections:
        print(f"mugv vae train: skipped {rejection.reason}", file=sys.stderr)
    trainer = VAETrainer(cfg, media)
    print(
        f"mugv vae train: VAE {cfg.model.preset} ({trainer.model.num_params() / 1e6:.2f} M parameters) on {trainer.device}; "
        f"{len(media.videos)} videos, {len(media.images)} images at {cfg.data.width}x{cfg.data.height}; run dir {cfg.resolved_run_dir}"
    )
    history = trainer.fit()
    if history:
        print(f"mugv vae train: done at step {trainer.step}; loss {history[0].losses['loss']:.4f} -> {history[-1].losses['loss']:.4f}")
    else:
        print(f"mugv vae train: nothing to do, already at step {trainer.step} of {cfg.train.steps}")
    return 0


def _model(args: argparse.Namespace, overrides: list[str]):
    from mugv.utils.device import resolve_device
    from mugv.vae_train.evaluate import load_model

    cfg = _run_config(args, overrides)
    if not args.weights:
        raise ConfigError("--weights is required: a checkpoint directory or a weights file")
    return load_model(args.weights, cfg.model, str(resolve_device(args.device)))


def run_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from mugv.vae_train.evaluate import evaluate

    model = _model(args, overrides)
    report = evaluate(
        model, args.sources, args.height, args.width, args.frames, sample=args.sample, lpips_weights=args.lpips_weights
    )
    for clip in report.clips:
        lpips = f"  LPIPS {clip.lpips:.4f}" if clip.lpips is not None else ""
        print(f"{clip.path}: {clip.frames} frames  PSNR {clip.psnr:.2f} dB  SSIM {clip.ssim:.4f}{lpips}")
    for rejection in report.rejected:
        print(f"skipped {rejection.reason}", file=sys.stderr)
    quality = f"PSNR {report.mean_psnr:.2f} dB  SSIM {report.mean_ssim:.4f}"
    if report.mean_lpips is not None:
        quality += f"  LPIPS {report.mean_lpips:.4f}"
    print(
        f"mean over {len(report.clips)} clips at {args.width}x{args.height}: {quality}; "
        f"encode {report.encode_fps:.1f} frames/s, decode {report.decode_fps:.1f} frames/s; "
        f"peak memory {report.peak_memory_gib:.2f} GiB ({report.peak_memory_kind})"
    )
    if args.output:
        Path(args.output).write_text(json.dumps(report.to_dict(), indent=2))
    return 0


def run_stats(args: argparse.Namespace, overrides: list[str]) -> int:
    from mugv.vae_train.evaluate import latent_statistics

    model = _model(args, overrides)
    stats = latent_statistics(model, args.sources, args.height, args.width, args.frames, sample=not args.mode)
    for rejection in stats["rejected"]:
        print(f"skipped {rejection['reason']}", file=sys.stderr)
    print(f"# {stats['clips']} clips, {stats['latent_elements_per_channel']} latent elements per channel ({stats['posterior']})")
    print("[model]")
    print(f"latent_mean = {stats['latent_mean']}")
    print(f"latent_std = {stats['latent_std']}")
    if args.output:
        Path(args.output).write_text(json.dumps(stats, indent=2))
    return 0
