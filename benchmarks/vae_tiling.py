"""Encode/decode throughput of the VAE, spatially tiled against untiled, measured in one run.

    python benchmarks/vae_tiling.py                      # tiny preset, CPU-sized clip
    python benchmarks/vae_tiling.py --preset mugv --frames 49 --height 720 --width 1280 \
        --tile-size 512 --tile-overlap 128 --precision bf16  # on a GPU

Random weights (throughput does not depend on them); `--precision` as `mugv encode --vae-precision`
(the same context, mugv/models/vae/precision.py). Prints frames/s for both paths, the
tiled/untiled ratio, and the peak memory of each path (CUDA) so the memory saving is visible.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from mugv.config import VAE_PRECISIONS
from mugv.models.vae import MUGVideoVAE, VAEConfig
from mugv.models.vae.precision import vae_precision


def timed(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """Best wall time of `repeats` calls after one warm-up, and peak CUDA memory in GiB."""
    fn()
    best = float("inf")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return best, peak


def mem(gib: float) -> str:
    return "" if gib != gib else f"(peak {gib:.2f} GiB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--tile-overlap", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=VAE_PRECISIONS, default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = VAEConfig.from_preset(args.preset)
    untiled = MUGVideoVAE(dataclasses.replace(cfg, tile_size=0)).to(device).eval()
    tiled = MUGVideoVAE(dataclasses.replace(cfg, tile_size=args.tile_size, tile_overlap=args.tile_overlap))
    tiled = tiled.to(device).eval()
    tiled.load_state_dict(untiled.state_dict())
    video = torch.rand(1, 3, args.frames, args.height, args.width, device=device) * 2 - 1

    print(
        f"VAE preset {args.preset}, {args.frames} x {args.height} x {args.width}, {args.precision}, {device}; "
        f"tiles {args.tile_size} px overlapping {args.tile_overlap} px"
    )
    with torch.inference_mode(), vae_precision(args.precision, device):
        z = untiled.encode(video)
        results = {}
        for name, model in (("untiled", untiled), ("tiled", tiled)):
            enc, enc_mem = timed(lambda m=model: m.encode(video), args.repeats, device)
            dec, dec_mem = timed(lambda m=model: m.decode(z, num_frames=args.frames), args.repeats, device)
            results[name] = (args.frames / enc, args.frames / dec)
            print(
                f"  {name:8s} encode {args.frames / enc:8.2f} frames/s {mem(enc_mem)}   "
                f"decode {args.frames / dec:8.2f} frames/s {mem(dec_mem)}"
            )
    enc_ratio = results["tiled"][0] / results["untiled"][0]
    dec_ratio = results["tiled"][1] / results["untiled"][1]
    print(f"  tiled / untiled throughput: encode {enc_ratio:.2f}x, decode {dec_ratio:.2f}x")


if __name__ == "__main__":
    main()
