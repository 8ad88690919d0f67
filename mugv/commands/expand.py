"""`mugv expand`: grow a trained DiT's width (HyperCloning), keeping its function."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from mugv.models.dit.config import PRESETS, DiTConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "expand",
        description="Grow a trained MUG-DiT's width so that it computes the same function, e.g. 2b -> 10b.",
    )
    parser.add_argument("--from", dest="source", required=True,
                        help="weights: our .safetensors, a checkpoint directory (single-process, or the sharded "
                             "DCP one of a torchrun run), MUG-V dit.pt or Megatron .pt")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-preset", choices=list(PRESETS), help="target model preset (depth and head_dim must match)")
    target.add_argument("--factor", type=int, help="integer width factor")
    parser.add_argument("--out", required=True, help="output .safetensors (MUG-V layout)")
    parser.add_argument("--perturbation", type=float, default=0.0,
                        help="symmetry-breaking noise relative to each weight's std (function-preserving); e.g. 0.01")
    parser.add_argument("--seed", type=int, default=0, help="seed of the perturbation")
    parser.add_argument("--verify", action="store_true", help="run both models on a random input and print their difference")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, _: list[str]) -> int:
    from mugv.distributed.checkpoint import read_model_weights
    from mugv.models.dit.adapters import save_safetensors
    from mugv.train.expand import expand_state_dict, expanded_config, expansion_factor

    weights = read_model_weights(args.source)
    small = DiTConfig.from_weights(weights)
    if args.to_preset:
        large = dataclasses.replace(DiTConfig.from_preset(args.to_preset), max_text_tokens=small.max_text_tokens)
        factor = expansion_factor(small, large)
    else:
        factor = args.factor
        large = expanded_config(small, factor)
    print(f"source: {small.preset}, depth {small.depth}, hidden {small.hidden_size}, {small.num_heads} heads "
          f"({small.num_params() / 1e6:.1f} M parameters)")
    print(f"target: hidden {large.hidden_size}, {large.num_heads} heads ({large.num_params() / 1e6:.1f} M parameters), "
          f"factor {factor}, perturbation {args.perturbation}")
    grown = expand_state_dict(weights, factor, perturbation=args.perturbation, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(grown, out, metadata={
        "source": str(args.source),
        "factor": str(factor),
        "perturbation": str(args.perturbation),
        "config": json.dumps(dataclasses.asdict(large)),
    })
    print(f"wrote {out}")
    if args.verify:
        print(f"verify: max relative difference of the outputs {verify(small, weights, large, grown):.2e}")
    return 0


def verify(small_cfg: DiTConfig, small_weights, large_cfg: DiTConfig, large_weights) -> float:
    import torch

    from mugv.models.registry import build_model

    small, large = build_model(small_cfg), build_model(large_cfg)
    small.load_state_dict(small_weights, strict=False)
    large.load_state_dict(large_weights, strict=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, small_cfg.in_channels, 2, 4, 4, generator=g)
    text = torch.randn(1, 4, small_cfg.text_dim, generator=g)
    kw = dict(fps=torch.tensor([24.0]), frame_mask=torch.tensor([[False, True]]))
    with torch.no_grad():
        want, got = small(x, torch.tensor([500.0]), text, **kw), large(x, torch.tensor([500.0]), text, **kw)
    return ((got - want).norm() / want.norm().clamp(min=1e-12)).item()
