"""`mugv enhance`: refine videos with the MUG-V enhancer (docs/enhance.md).

Input: one video, a folder of videos, or a CSV with `file_name,text` columns (the release's
format: paths relative to --video-root, by default the CSV's folder; `text` is that video's
prompt). Each video's first --frames frames are resized to cover --height x --width and
center-cropped, enhanced, and written as an mp4 at the input's frame rate (or --fps).
Every input and option is checked before any weights load.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

from mugv.enhance.config import (
    CFG_SCALE,
    FRAMES,
    HEIGHT,
    LORA_ALPHA,
    NEGATIVE_PROMPT,
    QUALITY_PROMPT,
    SIGMA,
    WIDTH,
)
from mugv.errors import MugvError

# The release's file names inside MUG-V-inference/enhancer/ and Wan2.1-T2V-1.3B/.
RELEASE_FILES = {
    "dit": ("enhancer_dir", "dit_i2v.safetensors"),
    "cond": ("enhancer_dir", "pytorch_model.bin"),
    "text_encoder": ("wan_dir", "models_t5_umt5-xxl-enc-bf16.pth"),
    "tokenizer": ("wan_dir", "google/umt5-xxl"),
    "vae": ("wan_dir", "Wan2.1_VAE.pth"),
}
MP4_CRF = 5  # what the release's imageio writer (quality 9) gives libx264


class EnhanceError(MugvError, ValueError):
    """Bad input to `mugv enhance` (names the file, row or value)."""


@dataclass
class Item:
    video: Path
    prompt: str
    out: Path
    fps: float


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "enhance", description="Enhance videos (detail, temporal consistency) with the MUG-V enhancer: "
        "a video, a folder of videos, or a CSV of file_name,text rows.")
    parser.add_argument("input", type=Path, help="a video, a folder of videos, or a CSV (file_name,text)")
    parser.add_argument("--out", type=Path, required=True, help="output .mp4 (one video) or folder")
    parser.add_argument("--video-root", type=Path, help="folder the CSV's file_name values are relative to "
                        "(default: the CSV's folder)")
    weights = parser.add_argument_group("weights (the release's files)")
    weights.add_argument("--enhancer-dir", type=Path, help="MUG-V-inference/enhancer: dit_i2v.safetensors, pytorch_model.bin")
    weights.add_argument("--wan-dir", type=Path, help="Wan2.1-T2V-1.3B: models_t5_umt5-xxl-enc-bf16.pth, "
                         "Wan2.1_VAE.pth, google/umt5-xxl/")
    for name, (folder, file) in RELEASE_FILES.items():
        weights.add_argument(f"--{name.replace('_', '-')}", type=Path, help=f"{file} (default: in --{folder.replace('_', '-')})")
    weights.add_argument("--lora-alpha", type=float, default=LORA_ALPHA, help="LoRA alpha; the scale is alpha / rank "
                         f"(default {LORA_ALPHA:g}, as the release runs its rank-256 LoRA)")
    weights.add_argument("--dit-preset", default="enhancer", help="Wan DiT size (default: enhancer; debug for tests)")
    weights.add_argument("--vae-preset", default="wan2.1", help="Wan VAE size (default: wan2.1; debug for tests)")
    how = parser.add_argument_group("enhancement")
    how.add_argument("--prompt", default=QUALITY_PROMPT, help="prompt for videos without a CSV text "
                     "(default: the release's quality tags)")
    how.add_argument("--negative-prompt", default=NEGATIVE_PROMPT, help="(default: the release's Wan negative prompt)")
    how.add_argument("--height", type=int, default=HEIGHT, help=f"pixels, multiple of 16 (default {HEIGHT})")
    how.add_argument("--width", type=int, default=WIDTH, help=f"pixels, multiple of 16 (default {WIDTH})")
    how.add_argument("--frames", type=int, default=FRAMES, help=f"frames enhanced per video, 4k+1 (default {FRAMES})")
    how.add_argument("--sigma", type=float, default=SIGMA, help=f"noise level the step starts from (default {SIGMA:g})")
    how.add_argument("--steps", type=int, default=1, help="Euler steps from sigma to 0 (default 1, as released)")
    how.add_argument("--cfg", type=float, default=CFG_SCALE, help=f"classifier-free guidance (default {CFG_SCALE:g})")
    how.add_argument("--seed", type=int, default=0, help="noise seed (the release draws unseeded noise)")
    how.add_argument("--fps", type=float, help="frame rate of the written mp4s (default: each input's)")
    run = parser.add_argument_group("device")
    run.add_argument("--device", default="auto", help="cuda, cpu or auto")
    run.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                     help="model precision (auto: bf16 on CUDA, fp32 on the CPU)")
    run.add_argument("--offload", action="store_true", help="keep each model on the CPU except while it runs")
    run.add_argument("--tiled-decode", action="store_true",
                     help="decode in overlapping spatial tiles (less memory; the release decodes whole frames)")
    parser.set_defaults(func=run_enhance)


def check_settings(args: argparse.Namespace) -> None:
    problems = []
    if args.frames < 1 or args.frames % 4 != 1:
        problems.append(f"--frames {args.frames} must be 4k+1 (e.g. 105, 73, 81) for the VAE's 4x time compression")
    for flag in ("height", "width"):
        value = getattr(args, flag)
        if value < 16 or value % 16:
            problems.append(f"--{flag} {value} must be a positive multiple of 16")
    if not 0 < args.sigma <= 1:
        problems.append(f"--sigma {args.sigma:g} must be in (0, 1]")
    if args.steps < 1:
        problems.append(f"--steps {args.steps} must be at least 1")
    if args.fps is not None and args.fps <= 0:
        problems.append(f"--fps {args.fps:g} must be positive")
    if problems:
        raise EnhanceError("; ".join(problems))


def weight_paths(args: argparse.Namespace) -> dict[str, Path]:
    paths = {}
    for name, (folder, file) in RELEASE_FILES.items():
        path = getattr(args, name)
        if path is None:
            root = getattr(args, folder)
            if root is None:
                raise EnhanceError(f"give --{folder.replace('_', '-')} (or --{name.replace('_', '-')}) to locate {file}")
            path = root / file
        if not path.exists():
            raise EnhanceError(f"{file} not found: {path}")
        paths[name] = path
    return paths


def _csv_rows(path: Path, root: Path) -> list[tuple[Path, str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not {"file_name", "text"} <= set(reader.fieldnames or []):
            raise EnhanceError(f"{path}: needs file_name and text columns (found: {', '.join(reader.fieldnames or [])})")
        rows = [(root / row["file_name"], row["text"] or "") for row in reader]
    if not rows:
        raise EnhanceError(f"{path} has no rows")
    return rows


def collect_items(args: argparse.Namespace) -> list[Item]:
    """Every input video with its prompt, output path and frame rate, each probed (not decoded)."""
    from mugv.video.reader import VideoError, is_media_path, probe

    source: Path = args.input
    if source.suffix.lower() == ".csv" and source.is_file():
        rows = _csv_rows(source, args.video_root or source.parent)
    elif source.is_dir():
        rows = [(p, args.prompt) for p in sorted(source.iterdir()) if is_media_path(p)]
        if not rows:
            raise EnhanceError(f"no videos in {source}")
    elif source.is_file():
        rows = [(source, args.prompt)]
    else:
        raise EnhanceError(f"input not found: {source}")
    single_file = len(rows) == 1 and source.is_file() and args.out.suffix.lower() == ".mp4"
    items, problems, names = [], [], set()
    for video, prompt in rows:
        try:
            info = probe(video)
        except (VideoError, OSError) as exc:
            problems.append(f"{video}: {exc}")
            continue
        if 0 < info.frame_count < args.frames:
            problems.append(f"{video} has {info.frame_count} frames, fewer than --frames {args.frames}")
        out = args.out if single_file else args.out / f"{video.stem}_enhance.mp4"
        if out in names:
            problems.append(f"two inputs would both write {out}")
        names.add(out)
        items.append(Item(video, prompt, out, args.fps or info.fps))
    if problems:
        raise EnhanceError(f"{len(problems)} bad inputs: " + "; ".join(problems))
    return items


def load_enhancer(args: argparse.Namespace, paths: dict[str, Path]):
    import torch

    from mugv.enhance import adapters
    from mugv.enhance.config import WanDiTConfig, WanVAEConfig
    from mugv.enhance.pipeline import VideoEnhancer
    from mugv.enhance.text import UMT5PromptEncoder, load_tokenizer
    from mugv.models.registry import build_model, family_of
    from mugv.utils.device import resolve_device

    device = resolve_device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(args.dtype) or (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    dit_cfg, vae_cfg = WanDiTConfig.from_preset(args.dit_preset), WanVAEConfig.from_preset(args.vae_preset)
    tokenizer = load_tokenizer(paths["tokenizer"])  # the quick ones first: a bad file shows in seconds
    vae, vae_family = build_model(vae_cfg), family_of(vae_cfg)
    vae_family.load_weights(vae, vae_family.read_weights(paths["vae"]), layout="wan")
    cond = adapters.read_torch_file(paths["cond"], "enhancer condition checkpoint (pytorch_model.bin)")
    dit, dit_family = build_model(dit_cfg), family_of(dit_cfg)
    base = adapters.read_safetensors(paths["dit"], "enhancer DiT (dit_i2v.safetensors)")
    merged = adapters.merge_condition_checkpoint(base, cond, args.lora_alpha, source=str(paths["cond"]))
    del base, cond
    dit_family.load_weights(dit, merged, layout="wan")
    del merged
    text = UMT5PromptEncoder(adapters.build_umt5(adapters.read_torch_file(paths["text_encoder"], "umT5 encoder"),
                                                 dtype), tokenizer)
    return VideoEnhancer(dit, vae, text, device=device, dtype=dtype, offload=args.offload,
                         tiled_decode=args.tiled_decode)


def chained_args(enhancer_dir: Path, wan_dir: Path | None, *, height: int, width: int, frames: int, device: str,
                 offload: bool, dit_preset: str = "enhancer", vae_preset: str = "wan2.1") -> argparse.Namespace:
    """`mugv enhance`'s settings (its defaults otherwise) for enhancing generated videos
    (`mugv generate --enhance`), checked, with the weights located: call before anything loads."""
    parser = argparse.ArgumentParser(prog="mugv generate --enhance")
    register(parser.add_subparsers())
    argv = ["enhance", "-", "--out", "-", "--enhancer-dir", str(enhancer_dir), "--height", str(height),
            "--width", str(width), "--frames", str(frames), "--device", device, "--dit-preset", dit_preset,
            "--vae-preset", vae_preset, *(["--wan-dir", str(wan_dir)] if wan_dir else []),
            *(["--offload"] if offload else [])]
    args = parser.parse_args(argv)
    check_settings(args)
    args.weight_paths = weight_paths(args)
    return args


def run_enhance(args: argparse.Namespace, _: list[str]) -> int:
    from mugv.enhance.config import WanDiTConfig, WanVAEConfig
    from mugv.enhance.pipeline import EnhanceSettings, enhancer_stages, fit_frames
    from mugv.utils.device import resolve_device
    from mugv.utils.progress import progress_bar
    from mugv.video.reader import VideoError, decode
    from mugv.video.writer import write_mp4

    check_settings(args)
    WanDiTConfig.from_preset(args.dit_preset)
    WanVAEConfig.from_preset(args.vae_preset)
    resolve_device(args.device)
    paths = weight_paths(args)
    items = collect_items(args)  # every input checked before any weights load
    enhancer = load_enhancer(args, paths)
    settings = EnhanceSettings(sigma=args.sigma, steps=args.steps, cfg_scale=args.cfg, seed=args.seed)
    for item in items:
        try:
            frames = decode(item.video, max_frames=args.frames).frames
        except VideoError as exc:
            raise EnhanceError(f"cannot read {item.video}: {exc}") from exc
        if len(frames) < args.frames:
            raise EnhanceError(f"{item.video} decodes to {len(frames)} frames, fewer than --frames {args.frames}")
        frames = fit_frames(frames[: args.frames], args.height, args.width)
        with progress_bar(enhancer_stages(args.steps), desc=item.video.name, unit="stage") as bar:
            enhanced = enhancer.enhance(frames, item.prompt, args.negative_prompt, settings, progress=bar.update)
        item.out.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(item.out, enhanced, fps=item.fps, crf=MP4_CRF)
        print(f"wrote {item.out} ({len(enhanced)} frames {args.width}x{args.height} at {item.fps:g} fps)")
    return 0
