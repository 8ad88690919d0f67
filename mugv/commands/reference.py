"""`mugv record-reference --config dpo`: the recording pass of a precomputed preference reference."""

from __future__ import annotations

import argparse

from mugv.config import load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "record-reference",
        description="Record the reference model's velocity errors of every sample of a preference shard set "
        "(data.shards), with each sample's stored noise seed, into reference_errors.parquet beside the shards: "
        "what preference.reference = 'precomputed' trains with (docs/preference.md). Use the run's own config "
        "and overrides; any config key can be overridden.",
    )
    parser.add_argument("--config", default="dpo", help="profile name or TOML path of the preference run")
    parser.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from mugv.train.preference_reference import record_reference_errors

    cfg = load_config(args.config, overrides)
    path, count = record_reference_errors(cfg, progress=cfg.logging.progress)
    print(f"recorded the reference errors of {count} sample(s) into {path}")
    return 0
