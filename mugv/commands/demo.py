"""`mugv demo`: the whole pipeline on a generated corpus, ending in report.html."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        description="Build a small raw corpus (real sample clips + captioned synthetic clips with planted faults), "
        "curate it, train the tiny VAE, encode shards, train a small DiT, generate held-out prompts and an I2V "
        "case, score prompt adherence, and write DIR/report.html. Rerun to resume.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--quick", action="store_true", help="a smoke-test size: every stage, minimal work")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every random choice: held-out scenes, corpus, training, sampling (default: 0); "
                        "the same seed on the same machine gives the same files")
    parser.add_argument("--deterministic", action="store_true",
                        help="train with torch's deterministic algorithms (slower on GPU; CPU runs are deterministic "
                        "without it)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, _: list[str]) -> int:
    from mugv.demo.run import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, deterministic=args.deterministic)
    return 0
