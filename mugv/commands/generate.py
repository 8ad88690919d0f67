"""`mugv generate`: text-to-video, image-to-video and video continuation from a checkpoint."""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

import numpy as np

from mugv.config import DEFAULT_CFG_SCALE, DEFAULT_STEPS, VAE_PRECISIONS
from mugv.infer.pipeline import (
    ASPECT_RATIOS,
    RESOLUTIONS,
    GenerationError,
    GenerationRequest,
    frame_size,
    frames_for_duration,
)

CSV_COLUMNS = {"prompt", "image", "video", "continue_frames", "negative_prompt", "seed", "name"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        description="Generate videos: a prompt (T2V), plus --image (I2V / TI2V) or --video (continuation).",
    )
    src = parser.add_argument_group("models")
    src.add_argument("--dit", required=True, help="DiT weights: our .safetensors, a checkpoint folder, or MUG-V dit.pt")
    src.add_argument("--vae", required=True, help="VAE weights: our .safetensors or MUG-V vae.pt")
    src.add_argument("--vae-preset", default="mugv", help="VAE size preset (default: mugv, the published size)")
    src.add_argument("--vae-precision", choices=VAE_PRECISIONS, default="auto",
                     help="VAE compute precision: fp32, tf32, bf16 (autocast) or auto: bf16 on CUDA, fp32 on CPU "
                     "(docs/vae.md)")
    src.add_argument("--lora", default="", help="a LoRA adapter saved by training (lora.safetensors) to apply")
    src.add_argument("--text-encoder", default="t5", choices=["t5", "minilm"], help="text encoder (default: t5)")
    src.add_argument("--text-encoder-path", default="", help="local folder of the text encoder (T5 needs one)")
    what = parser.add_argument_group("what to generate")
    what.add_argument("--prompt", help="the text prompt")
    what.add_argument("--prompts", type=Path, help="CSV with a `prompt` column (optional: image, video, "
                      "continue_frames, negative_prompt, seed, name), one video per row")
    what.add_argument("--image", type=Path, help="reference image for the first frame (I2V)")
    what.add_argument("--video", type=Path, help="video whose first frames the output continues")
    what.add_argument("--continue-frames", type=int, default=9, help="frames of --video to keep (1 + 8k; default 9)")
    what.add_argument("--negative-prompt", default=None, help="negative prompt; '' uses the null text "
                      "(default: the release's negative prompt)")
    size = parser.add_argument_group("size and sampling")
    size.add_argument("--resolution", default="720p", choices=list(RESOLUTIONS))
    size.add_argument("--aspect", default="16:9", choices=list(ASPECT_RATIOS))
    size.add_argument("--height", type=int, help="height in pixels (multiple of 16); overrides --resolution")
    size.add_argument("--width", type=int, help="width in pixels (multiple of 16); overrides --resolution")
    size.add_argument("--frames", type=int, help="frame count (1 + 8k), e.g. 105")
    size.add_argument("--duration", type=float, default=5.0, help="seconds, when --frames is not given (default 5)")
    size.add_argument("--fps", type=float, default=30.0, help="frames per second, conditioning and file (default 30)")
    size.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    size.add_argument("--cfg", type=float, default=DEFAULT_CFG_SCALE,
                      help=f"classifier-free guidance scale (default {DEFAULT_CFG_SCALE:g})")
    size.add_argument("--shift-base-resolution", type=int, default=0,
                      help="pixels (H x W) at which the sampler's time shift is 1; default: the training "
                      "run's flow.base_resolution when --dit lies in a run folder, else 512x512 as released")
    size.add_argument("--seed", type=int, default=0)
    size.add_argument("--aesthetic-score", type=float, default=6.0, help="appended to the prompt as the release does")
    run = parser.add_argument_group("output and device")
    run.add_argument("--out", type=Path, required=True, help="output .mp4 (one prompt) or folder (--prompts)")
    run.add_argument("--device", default="auto", help="cuda, cpu or auto")
    run.add_argument("--offload", action="store_true", help="keep the text encoder and VAE off the GPU while the DiT runs")
    enhance = parser.add_argument_group("enhancement (docs/enhance.md)")
    enhance.add_argument("--enhance", type=Path, metavar="ENHANCER_DIR", help="refine each video with the MUG-V "
                         "enhancer from this folder (dit_i2v.safetensors, pytorch_model.bin); the unenhanced video "
                         "is kept beside it as NAME_raw.mp4")
    enhance.add_argument("--wan-dir", type=Path, help="Wan2.1-T2V-1.3B folder (umT5, its tokenizer, the Wan VAE) "
                         "for --enhance")
    enhance.add_argument("--enhance-presets", default="enhancer,wan2.1", metavar="DIT,VAE",
                         help="enhancer model sizes (default: enhancer,wan2.1; debug,debug for tests)")
    parser.set_defaults(func=run_generate)


def read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise GenerationError(f"cannot read reference image {path}: {exc}") from exc


def read_video(path: Path, frames: int) -> np.ndarray:
    from mugv.video.reader import VideoError, decode

    try:
        return decode(path, max_frames=frames).frames
    except VideoError as exc:
        raise GenerationError(f"cannot read video to continue {path}: {exc}") from exc


def base_request(args: argparse.Namespace) -> GenerationRequest:
    if args.height or args.width:
        if not (args.height and args.width):
            raise GenerationError("give --height and --width together")
        height, width = args.height, args.width
    else:
        height, width = frame_size(args.resolution, args.aspect)
    return GenerationRequest(
        prompt="-", height=height, width=width,
        num_frames=args.frames or frames_for_duration(args.duration, args.fps), fps=args.fps, steps=args.steps,
        cfg_scale=args.cfg, negative_prompt=args.negative_prompt, seed=args.seed, aesthetic_score=args.aesthetic_score,
    )


def requests_from_csv(path: Path, base: GenerationRequest) -> list[GenerationRequest]:
    """Every row checked before any generation: a bad row is reported with its line number."""
    if not path.is_file():
        raise GenerationError(f"prompt file not found: {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        if "prompt" not in columns:
            raise GenerationError(f"{path}: needs a `prompt` column (found: {', '.join(sorted(columns)) or 'none'})")
        unknown = columns - CSV_COLUMNS
        if unknown:
            raise GenerationError(f"{path}: unknown columns {', '.join(sorted(unknown))}; known: {', '.join(sorted(CSV_COLUMNS))}")
        rows = list(reader)
    requests, problems = [], []
    for line, row in enumerate(rows, start=2):
        try:
            req = dataclasses.replace(base, prompt=row["prompt"] or "", name=row.get("name") or f"{line - 1:04d}")
            if row.get("negative_prompt") is not None and row.get("negative_prompt") != "":
                req.negative_prompt = row["negative_prompt"]
            if row.get("seed"):
                req.seed = int(row["seed"])
            if row.get("image"):
                req.image = read_image(Path(row["image"]))
            if row.get("video"):
                req.continue_frames = int(row.get("continue_frames") or 9)
                req.video = read_video(Path(row["video"]), req.continue_frames)
            req.validate()
            requests.append(req)
        except (GenerationError, ValueError) as exc:
            problems.append(f"line {line}: {exc}")
    if problems:
        raise GenerationError(f"{path} has bad rows: " + "; ".join(problems))
    if not requests:
        raise GenerationError(f"{path} has no prompts")
    return requests


def build_requests(args: argparse.Namespace) -> list[GenerationRequest]:
    base = base_request(args)
    if (args.prompt is None) == (args.prompts is None):
        raise GenerationError("give exactly one of --prompt and --prompts")
    if args.prompts is not None:
        return requests_from_csv(args.prompts, base)
    req = dataclasses.replace(base, prompt=args.prompt, name=args.out.stem)
    if args.image is not None:
        req.image = read_image(args.image)
    if args.video is not None:
        req.continue_frames = args.continue_frames
        req.video = read_video(args.video, args.continue_frames)
    req.validate()
    return [req]


def check_model_options(args: argparse.Namespace) -> None:
    """Every model path and option, checked before any weights load (minutes at 10B)."""
    from mugv.models.text.encoders import text_encoder_folder
    from mugv.models.vae.config import VAEConfig
    from mugv.utils.device import resolve_device

    for label, path in (("DiT weights", args.dit), ("VAE weights", args.vae)):
        if not Path(path).exists():
            raise GenerationError(f"{label} not found: {path}")
    if args.lora and not Path(args.lora).is_file():
        raise GenerationError(f"LoRA adapter not found: {args.lora}")
    VAEConfig.from_preset(args.vae_preset)
    text_encoder_folder(args.text_encoder, args.text_encoder_path)
    resolve_device(args.device)


def load_generator(args: argparse.Namespace):
    from mugv.distributed.checkpoint import read_model_weights
    from mugv.infer.pipeline import VideoGenerator
    from mugv.models.dit.config import DiTConfig
    from mugv.models.registry import build_model, family_of
    from mugv.models.text.encoders import build_text_encoder
    from mugv.models.vae.config import VAEConfig
    from mugv.models.vae.precision import describe_vae_precision
    from mugv.utils.device import resolve_device

    device = resolve_device(args.device)
    flow = training_flow_config(Path(args.dit))
    if args.shift_base_resolution:
        flow = dataclasses.replace(flow, base_resolution=args.shift_base_resolution)
    # the small VAE first, so that a bad file of it is reported before the DiT's minutes of loading
    vae_cfg = VAEConfig.from_preset(args.vae_preset)
    vae, vae_family = build_model(vae_cfg), family_of(vae_cfg)
    vae_family.load_weights(vae, vae_family.read_weights(args.vae))
    dit_family = family_of(DiTConfig())
    weights = read_model_weights(args.dit, dit_family.name)
    dit = build_model(DiTConfig.from_weights(weights))
    dit_family.load_weights(dit, weights, layout="mugv")
    if args.lora:
        attach_lora(dit, Path(args.lora))
    encoder = build_text_encoder(args.text_encoder, args.text_encoder_path, max_tokens=dit.cfg.max_text_tokens,
                                 dtype="bf16" if device.type == "cuda" else "fp32",
                                 device="cpu" if args.offload else str(device))
    generator = VideoGenerator(dit, vae, encoder, flow=flow, device=device, offload=args.offload,
                               vae_precision=args.vae_precision)
    print(f"mugv generate: {describe_vae_precision(args.vae_precision, device)}")
    return generator


def training_flow_config(dit: Path):
    """The flow settings the DiT was trained with, so the sampler shifts time as training did:
    read from the run's `config.toml` found beside the weights or up to two folders above them
    (run/ema.safetensors, run/checkpoints/step_N/). Weights from elsewhere get the release's."""
    import dataclasses

    from mugv.config import ConfigError, FlowConfig, from_dict, load_profile_dict

    known = {f.name for f in dataclasses.fields(FlowConfig)}  # runs of older versions held more keys

    start = dit if dit.is_dir() else dit.parent
    for folder in (start, *list(start.parents)[:2]):
        run_config = folder / "config.toml"
        if run_config.is_file():
            try:
                flow = load_profile_dict(str(run_config)).get("flow", {})
                return from_dict(FlowConfig, {k: v for k, v in flow.items() if k in known}, prefix="flow.")
            except ConfigError as exc:
                raise GenerationError(f"{run_config}: {exc}") from exc
    return FlowConfig()


def attach_lora(dit, path: Path) -> None:
    """Apply an adapter written by `mugv train` with lora.rank > 0 (its rank, alpha, targets and
    the modules trained in full beside them are in the file's metadata), merged into the weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from mugv.config import LoRAConfig
    from mugv.errors import reading
    from mugv.train.lora import load_lora, merge_lora

    with reading(path, "LoRA adapter"), safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if not {"rank", "alpha", "targets"} <= set(meta):
        raise GenerationError(f"{path} is not a LoRA adapter saved by mugv train (no rank / alpha / targets metadata)")
    # an adapter of an older mugv has no train_modules entry: it trained the factors only
    modules = [m for m in meta.get("train_modules", "").split(",") if m]
    cfg = LoRAConfig(rank=int(meta["rank"]), alpha=float(meta["alpha"]), targets=meta["targets"].split(","),
                     train_modules=modules)
    try:
        load_lora(dit, load_file(path), cfg)
    except (KeyError, ValueError) as exc:
        raise GenerationError(f"LoRA adapter {path} does not fit this DiT: {exc}") from exc
    merge_lora(dit)


def chained_enhance_args(args: argparse.Namespace, requests: list[GenerationRequest]) -> argparse.Namespace | None:
    """`mugv enhance`'s checked settings for --enhance (None without it); every request must
    share one size and length, which the release's enhancer needs (frames 4k+1, sides / 16)."""
    if args.enhance is None:
        return None
    from mugv.commands.enhance import chained_args

    sizes = {(r.height, r.width, r.num_frames) for r in requests}
    if len(sizes) > 1:
        raise GenerationError(f"--enhance needs one size and length for every video; the requests have {sorted(sizes)}")
    presets = args.enhance_presets.split(",")
    if len(presets) != 2:
        raise GenerationError(f"--enhance-presets {args.enhance_presets!r}: give DIT,VAE, e.g. enhancer,wan2.1")
    (height, width, frames), = sizes
    return chained_args(args.enhance, args.wan_dir, height=height, width=width, frames=frames, device=args.device,
                        offload=args.offload, dit_preset=presets[0], vae_preset=presets[1])


def run_generate(args: argparse.Namespace, _: list[str]) -> int:
    from mugv.utils.progress import progress_bar
    from mugv.video.writer import write_mp4

    check_model_options(args)
    requests = build_requests(args)  # every input checked before any model is loaded
    enhance_args = chained_enhance_args(args, requests)
    generator = load_generator(args)
    enhancer = None
    if enhance_args is not None:
        from mugv.commands.enhance import load_enhancer
        from mugv.enhance.pipeline import EnhanceSettings, enhancer_stages

        enhancer = load_enhancer(enhance_args, enhance_args.weight_paths)
    single = args.prompts is None
    if not single:
        args.out.mkdir(parents=True, exist_ok=True)
    for req in requests:
        out = args.out if single else args.out / f"{req.name}.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        with progress_bar(req.steps, desc=req.name or "sampling", unit="step") as bar:
            video = generator.generate(req, progress=lambda _: bar.update(1))
        frames = video.frames
        if enhancer is not None:
            write_mp4(out.with_name(f"{out.stem}_raw.mp4"), frames, fps=req.fps)
            with progress_bar(enhancer_stages(1), desc=f"enhance {req.name or ''}".strip(), unit="stage") as bar:
                frames = enhancer.enhance(frames, enhance_args.prompt, enhance_args.negative_prompt,
                                          EnhanceSettings(seed=req.seed), progress=bar.update)
        write_mp4(out, frames, fps=req.fps)
        kind = "I2V" if req.image is not None else ("continuation" if req.video is not None else "T2V")
        kind += ", enhanced" if enhancer is not None else ""
        print(f"wrote {out} ({kind}, {len(video.frames)} frames {req.width}x{req.height} at {req.fps:g} fps)")
    return 0
