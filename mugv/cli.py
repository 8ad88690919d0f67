"""The `mugv` command. Each command group lives in its own module exposing `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

from mugv.config import ConfigError

# Modules that add subcommands; each defines `register(subparsers)` and sets `func` on its parsers.
COMMAND_MODULES = [
    "mugv.commands.train",
    "mugv.commands.info",
    "mugv.commands.curate",
    "mugv.commands.expand",
    "mugv.commands.ema",
    "mugv.commands.generate",
    "mugv.commands.demo",
    "mugv.commands.vae",
    "mugv.commands.encode",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mugv", description="Train and run MUG-V-style video diffusion transformers."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args, extra) or 0)
    except ConfigError as exc:
        print(f"mugv: config error: {exc}", file=sys.stderr)
        return 2
