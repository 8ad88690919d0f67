"""`mugv ema`: rebuild post-hoc EMA weights after training."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ema", description="Post-hoc EMA: rebuild averaged weights after training.")
    commands = parser.add_subparsers(dest="ema_command", required=True, metavar="ACTION")

    posthoc = commands.add_parser(
        "reconstruct", help="EDM2 post-hoc EMA: any width from the power-function snapshots of a run"
    )
    posthoc.add_argument("snapshots", type=Path, help="folder of ema-<step>-<sigma_rel>.safetensors snapshots")
    posthoc.add_argument("--sigma-rel", type=float, required=True, help="EMA width to rebuild, e.g. 0.07")
    posthoc.add_argument("--step", type=int, default=None, help="rebuild the average as of this step (default: last)")
    posthoc.add_argument("--out", type=Path, required=True, help="output .safetensors")
    posthoc.set_defaults(func=run_reconstruct)

    ensemble = commands.add_parser(
        "ensemble", help="MUG-V checkpoint ensembling: average checkpoints with exponentially decaying weights"
    )
    ensemble.add_argument("checkpoints", nargs="+", help="weights or checkpoint directories, oldest first")
    ensemble.add_argument("--decay", type=float, required=True, help="weight ratio between consecutive checkpoints")
    ensemble.add_argument("--out", type=Path, required=True, help="output .safetensors")
    ensemble.set_defaults(func=run_ensemble)


def run_reconstruct(args: argparse.Namespace, _: list[str]) -> int:
    from mugv.models.dit.adapters import save_safetensors
    from mugv.train.ema import reconstruct

    weights = reconstruct(args.snapshots, args.sigma_rel, args.step)
    save_safetensors(weights, args.out, metadata={"sigma_rel": str(args.sigma_rel), "source": str(args.snapshots)})
    print(f"wrote {args.out}: power-function EMA with sigma_rel {args.sigma_rel}")
    return 0


def run_ensemble(args: argparse.Namespace, _: list[str]) -> int:
    from mugv.distributed.checkpoint import read_model_weights
    from mugv.models.dit.adapters import save_safetensors
    from mugv.train.ema import ensemble_checkpoints, ensemble_weights

    shares = ", ".join(f"{w:.3f}" for w in ensemble_weights(len(args.checkpoints), args.decay))  # checks --decay
    weights = ensemble_checkpoints([read_model_weights(p) for p in args.checkpoints], args.decay)
    save_safetensors(weights, args.out, metadata={"decay": str(args.decay), "sources": " ".join(args.checkpoints)})
    print(f"wrote {args.out}: {len(args.checkpoints)} checkpoints weighted {shares} (oldest first)")
    return 0
