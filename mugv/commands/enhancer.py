"""`mugv enhancer pairs|eval`: train an enhancer of your own (docs/enhance.md, "Training an enhancer").

    mugv enhancer pairs --out data/enhancer        # clips of the demo's world, a tiny Wan VAE, the pairs
    mugv train --config enhancer                   # the flow objective on (degraded, clean) latents
    mugv enhancer eval --pairs data/enhancer --run runs/enhancer --out reports/enhancer

`pairs` renders clean clips of the demo's synthetic world (mugv.demo.world; held-out clips show
scene combinations never trained on), trains a tiny Wan VAE on the training clips, degrades every
clip and encodes both sides. `eval` enhances the held-out degraded clips with the trained DiT
through the same pipeline as `mugv enhance` and scores them against the clean clips (PSNR, SSIM),
writing report.html with degraded | enhanced | clean side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mugv.errors import MugvError


class EnhancerRecipeError(MugvError, ValueError):
    """Bad arguments or inputs of `mugv enhancer`."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("enhancer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="enhancer_command", required=True, metavar="ENHANCER_COMMAND")

    pairs = commands.add_parser("pairs", help="clips of the demo's world, a tiny Wan VAE and (degraded, clean) pairs")
    pairs.add_argument("--out", type=Path, required=True, help="pair folder to write (data.pairs of the training run)")
    pairs.add_argument("--clips", type=int, default=48, help="training clips (default 48)")
    pairs.add_argument("--held-out", type=int, default=6, help="held-out clips for `mugv enhancer eval` (default 6)")
    pairs.add_argument("--frames", type=int, default=9, help="frames per clip, 4k+1 (default 9: three latent frames)")
    pairs.add_argument("--size", type=int, default=64, help="clip height and width in pixels, a multiple of 16 (default 64)")
    pairs.add_argument("--vae-preset", default="debug", help="Wan VAE size (default: debug, the tiny one)")
    pairs.add_argument("--vae-image-steps", type=int, default=1600, help="VAE training steps on single frames (default 1600)")
    pairs.add_argument("--vae-video-steps", type=int, default=300, help="VAE training steps on whole clips (default 300)")
    pairs.add_argument("--vae-lr", type=float, default=3e-4,
                       help="VAE peak learning rate, cosine decay to a tenth (default 3e-4; 2e-3 stalls the tiny VAE)")
    pairs.add_argument("--seed", type=int, default=0)
    pairs.set_defaults(func=run_pairs)

    evaluate = commands.add_parser("eval", help="enhance held-out degraded clips; PSNR / SSIM against the clean ones")
    evaluate.add_argument("--pairs", type=Path, required=True, help="the pair folder `mugv enhancer pairs` wrote")
    evaluate.add_argument("--run", type=Path, required=True, help="the enhancer's training run folder (runs/enhancer)")
    evaluate.add_argument("--checkpoint", type=Path, help="a checkpoint folder of the run (default: its latest)")
    evaluate.add_argument("--out", type=Path, required=True, help="report folder (report.html, metrics.json, videos)")
    evaluate.add_argument("--sigma", type=float, default=0.3, help="noise level of the one Euler step (default 0.3)")
    evaluate.add_argument("--cfg", type=float, default=1.0,
                          help="guidance (default 1: the recipe trains without a prompt, so there is nothing to guide by)")
    evaluate.add_argument("--seed", type=int, default=0, help="noise seed of the first clip (clip i: seed + i)")
    evaluate.add_argument("--fps", type=float, default=8.0, help="frame rate of the written mp4s (default 8)")
    evaluate.set_defaults(func=run_eval)


def _world_clips(count: int, frames: int, size: int, seed: int, held_out: bool):
    import numpy as np

    from mugv.demo.world import render, split_scenes, sub_seed

    train_scenes, held_scenes = split_scenes(seed=seed)
    scenes = held_scenes if held_out else train_scenes
    offset = 1_000_000 if held_out else 0  # held-out clips never share a seed with training clips
    picked = [scenes[i % len(scenes)] for i in range(count)]
    clips = np.stack([render(s, frames=frames, height=size, width=size, seed=sub_seed(seed, offset + i))
                      for i, s in enumerate(picked)])
    return clips, [s.caption for s in picked]


def run_pairs(args: argparse.Namespace, _: list[str]) -> int:
    import torch

    from mugv.enhance.config import WanVAEConfig
    from mugv.enhance.degrade import DegradationConfig
    from mugv.enhance.pairs import decode, encode, fit_vae, fold_latent_normalisation, make_pairs, write_pair_set
    from mugv.eval.recon import psnr, ssim
    from mugv.models.registry import build_model
    from mugv.utils.progress import progress_bar

    if args.frames < 5 or (args.frames - 1) % 4:
        raise EnhancerRecipeError(f"--frames {args.frames} must be 4k+1 and at least 5 (frame 0 is never enhanced)")
    if args.size < 16 or args.size % 16:
        raise EnhancerRecipeError(f"--size {args.size} must be a positive multiple of 16")
    for name in ("clips", "held_out"):
        if getattr(args, name) < 1:
            raise EnhancerRecipeError(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    if args.vae_image_steps < 0 or args.vae_video_steps < 0:
        raise EnhancerRecipeError("--vae-image-steps and --vae-video-steps must be >= 0")
    vae_cfg = WanVAEConfig.from_preset(args.vae_preset)
    torch.manual_seed(args.seed)
    train, _ = _world_clips(args.clips, args.frames, args.size, args.seed, held_out=False)
    held, captions = _world_clips(args.held_out, args.frames, args.size, args.seed, held_out=True)
    vae = build_model(vae_cfg)
    steps = args.vae_image_steps + args.vae_video_steps
    with progress_bar(steps, desc="tiny Wan VAE", unit="step") as bar:
        losses = fit_vae(vae, train, args.vae_image_steps, args.vae_video_steps, lr=args.vae_lr, seed=args.seed,
                         progress=bar.update)
    fold_latent_normalisation(vae, train)
    to_video = lambda clip: torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 255  # noqa: E731
    recon = [(psnr(to_video(decode(vae, encode(vae, c))), to_video(c)),
              ssim(to_video(decode(vae, encode(vae, c))), to_video(c))) for c in held]
    degradation = DegradationConfig()
    with progress_bar(len(train) + len(held), desc="pairs", unit="clip") as bar:
        _, clean, degraded = make_pairs(vae, train, degradation, seed=args.seed, progress=bar.update)
        held_degraded, _, _ = make_pairs(vae, held, degradation, seed=args.seed + 1, progress=bar.update)
    info = {"clips": args.clips, "held_out": args.held_out, "frames": args.frames, "size": args.size,
            "seed": args.seed, "vae_preset": args.vae_preset, "vae_image_steps": args.vae_image_steps,
            "vae_video_steps": args.vae_video_steps, "vae_lr": args.vae_lr,
            "vae_loss": [losses[0], losses[-1]] if losses else [],
            "vae_held_out_psnr": sum(p for p, _ in recon) / len(recon),
            "vae_held_out_ssim": sum(s for _, s in recon) / len(recon),
            "held_out_captions": captions, "degradation": degradation}
    write_pair_set(args.out, vae, clean, degraded, held, held_degraded, info)
    print(f"mugv enhancer pairs: {len(train)} training pairs {tuple(clean.shape[1:])} latents and {len(held)} "
          f"held-out clips in {args.out}; tiny Wan VAE loss {info['vae_loss'][0] if losses else 0:.3f} -> "
          f"{info['vae_loss'][-1] if losses else 0:.3f}, held-out reconstruction "
          f"{info['vae_held_out_psnr']:.2f} dB PSNR / {info['vae_held_out_ssim']:.3f} SSIM")
    return 0


def _load_dit(run: Path, checkpoint: Path | None):
    from mugv.config import load_config
    from mugv.distributed.checkpoint import read_model_weights
    from mugv.models.registry import build_model, family_of
    from mugv.train.checkpoint import latest_checkpoint
    from mugv.train.lora import apply_lora, merge_lora

    config = run / "config.toml"
    if not config.is_file():
        raise EnhancerRecipeError(f"--run {run}: no config.toml (is it a `mugv train --config enhancer` run folder?)")
    cfg = load_config(str(config))
    if cfg.model.family != "wan-dit":
        raise EnhancerRecipeError(f"--run {run} trained model.family = {cfg.model.family!r}, not an enhancer (wan-dit)")
    checkpoint = checkpoint or latest_checkpoint(cfg.checkpoint_dir if cfg.checkpoint.dir else run / "checkpoints")
    if checkpoint is None or not checkpoint.is_dir():
        raise EnhancerRecipeError(f"--run {run}: no checkpoint (train it first, or name one with --checkpoint)")
    dit, family = build_model(cfg.model), family_of(cfg.model)
    if cfg.lora.rank:
        apply_lora(dit, cfg.lora)
    family.load_weights(dit, read_model_weights(checkpoint, family.name), layout="diffusers")
    merge_lora(dit)
    return dit.eval(), cfg, checkpoint


def _relative_error(latents, clean) -> float:
    """||latents - clean|| / ||clean|| over latent frames 1.. (frame 0 is kept as the input's)."""
    return float((latents[:, :, 1:] - clean[:, :, 1:]).norm() / clean[:, :, 1:].norm())


def _scores(frames, clean) -> tuple[float, float]:
    """PSNR and SSIM of uint8 frames against the clean ones, over frames 1.. (frame 0 is never enhanced)."""
    import torch

    from mugv.eval.recon import psnr, ssim

    def video(x):
        return torch.from_numpy(x[1:]).permute(3, 0, 1, 2).float() / 255

    return psnr(video(frames), video(clean)), ssim(video(frames), video(clean))


def run_eval(args: argparse.Namespace, _: list[str]) -> int:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from mugv.demo.report import Section, Video, write_report
    from mugv.demo.summary import filmstrip
    from mugv.enhance.config import WanVAEConfig
    from mugv.enhance.pairs import HELD_OUT_FILE, INFO_FILE, VAE_FILE, decode, encode
    from mugv.enhance.pipeline import VideoEnhancer
    from mugv.enhance.text import EmptyPromptEncoder
    from mugv.models.registry import build_model, family_of
    from mugv.utils.progress import track
    from mugv.video.writer import write_mp4

    if not 0 < args.sigma <= 1:
        raise EnhancerRecipeError(f"--sigma {args.sigma} must be within (0, 1]")
    missing = [name for name in (INFO_FILE, VAE_FILE, HELD_OUT_FILE) if not (args.pairs / name).is_file()]
    if missing:
        raise EnhancerRecipeError(f"--pairs {args.pairs}: lacks {', '.join(missing)} (write it with `mugv enhancer pairs`)")
    info = json.loads((args.pairs / INFO_FILE).read_text())
    dit, cfg, checkpoint = _load_dit(args.run, args.checkpoint)
    vae_cfg = WanVAEConfig.from_preset(info["vae_preset"])
    vae, vae_family = build_model(vae_cfg), family_of(vae_cfg)
    vae_family.load_weights(vae, vae_family.read_weights(args.pairs / VAE_FILE), layout="diffusers")
    enhancer = VideoEnhancer(dit, vae, EmptyPromptEncoder(cfg.model.text_dim))
    held = {k: v.numpy() for k, v in load_file(str(args.pairs / HELD_OUT_FILE)).items()}
    args.out.mkdir(parents=True, exist_ok=True)
    rows, videos, scores = [], [], {"degraded": [], "degraded_round_trip": [], "enhanced": [], "clean_round_trip": []}
    latent_errors: dict[str, list[float]] = {"degraded": [], "enhanced": []}
    prompt = enhancer.encode_prompts("")[0]
    for i in track(range(len(held["clean"])), desc="enhancer eval", unit="clip"):
        clean, degraded = held["clean"][i], held["degraded"][i]
        z_clean, z_degraded = encode(vae, clean), encode(vae, degraded)
        noise = torch.randn(z_degraded.shape, generator=torch.Generator().manual_seed(args.seed + i))
        z = enhancer.denoise(z_degraded, noise, prompt, prompt, args.sigma, steps=1, cfg_scale=args.cfg)
        enhanced = decode(vae, z)
        for name, latents in (("degraded", z_degraded), ("enhanced", z)):
            latent_errors[name].append(_relative_error(latents, z_clean))
        outputs = {"degraded": degraded, "degraded_round_trip": decode(vae, encode(vae, degraded)),
                   "enhanced": enhanced, "clean_round_trip": decode(vae, encode(vae, clean))}
        for name, frames in outputs.items():
            scores[name].append(_scores(frames, clean))
        rows.append([i, info["held_out_captions"][i], *(f"{scores[n][-1][0]:.2f}" for n in scores)])
        side = np.concatenate([degraded, enhanced, clean], axis=2)
        path = args.out / f"clip_{i:02d}.mp4"
        write_mp4(path, side, fps=args.fps)
        videos.append(Video(path, f"clip {i}: degraded | enhanced | clean", info["held_out_captions"][i],
                            strip=filmstrip(side, args.out / f"clip_{i:02d}.png", count=3)))
    means = {name: [float(np.mean([s[k] for s in values])) for k in (0, 1)] for name, values in scores.items()}
    labels = {"degraded": "degraded input", "degraded_round_trip": "degraded input, VAE round trip (no DiT)",
              "enhanced": "enhanced", "clean_round_trip": "clean clip, VAE round trip (the ceiling)"}
    summary = [[labels[n], f"{means[n][0]:.2f}", f"{means[n][1]:.4f}"] for n in scores]
    latent_means = {name: float(np.mean(values)) for name, values in latent_errors.items()}
    metrics = {"checkpoint": str(checkpoint), "pairs": str(args.pairs), "sigma": args.sigma, "cfg": args.cfg,
               "seed": args.seed, "clips": len(held["clean"]), "frames_scored": "1..T-1", "mean": means,
               "per_clip": scores, "latent_relative_error": latent_means, "vae_held_out_psnr": info["vae_held_out_psnr"]}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    text = (f"{len(held['clean'])} held-out clips of scene combinations never trained on, {info['frames']} frames of "
            f"{info['size']}x{info['size']}. PSNR / SSIM against the clean clip over frames 1.. (frame 0 is kept "
            f"clean by the pipeline: it is the VAE round trip of the degraded frame 0, never enhanced). One Euler "
            f"step from sigma {args.sigma:g}, guidance {args.cfg:g}, checkpoint {checkpoint}.")
    report = write_report(args.out / "report.html", "mugv enhancer eval", f"run {args.run}, pairs {args.pairs}", [
        Section("Held-out clips: mean over clips", text, tables=[(["output", "PSNR (dB)", "SSIM"], summary)]),
        Section("Latents: relative L2 error to the clean clip's latents (frames 1..)",
                "What the DiT changes, independent of how well the VAE reconstructs pixels.",
                tables=[(["latents", "relative error"], [[n, f"{v:.4f}"] for n, v in latent_means.items()])]),
        Section("Per clip: PSNR (dB)", tables=[(["clip", "caption", *(labels[n] for n in scores)], rows)]),
        Section("Degraded | enhanced | clean", videos=videos),
    ])
    for row in summary:
        print(f"  {row[0]:<44} PSNR {row[1]:>6} dB  SSIM {row[2]}")
    print(f"  latents, relative L2 error to the clean ones: degraded {latent_means['degraded']:.4f}, "
          f"enhanced {latent_means['enhanced']:.4f}")
    print(f"mugv enhancer eval: report {report}")
    return 0
