"""`mugv train`: train a DiT from a config profile plus dotted overrides."""

from __future__ import annotations

import argparse

from mugv.commands.profiles import reject_foreign_profile
from mugv.config import ConfigError, load_config, to_toml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        description="Train a MUG-DiT, or the model family a profile's [model] family names (--config enhancer: "
                    "a video enhancer). Any config key can be overridden: --optim.lr=1e-4 --train.steps=50.",
    )
    parser.add_argument("--config", default="debug", help="profile name (./configs/NAME.toml, else a shipped one) or a TOML path (default: debug)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config, print the resolved tree (and, with --world-size, the parallel "
                             "plan with per-rank memory estimates), exit")
    parser.add_argument("--deterministic", action="store_true",
                        help="shorthand for --train.deterministic=true: torch's deterministic algorithms, for "
                             "bit-identical GPU runs at some speed (CPU runs are bit-identical without it)")
    parser.add_argument("--world-size", type=int, default=0,
                        help="with --dry-run: plan the device mesh and sharded model for this many ranks")
    parser.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    overrides = [*overrides, "--train.deterministic=true"] if args.deterministic else overrides
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError:
        reject_foreign_profile(args.config, "mugv train")
        raise
    if args.dry_run:
        print(to_toml(cfg), end="")
        if args.world_size:
            from mugv.distributed.plan import format_plan

            print(format_plan(cfg, args.world_size))
        return 0
    from mugv.train.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        return _train(cfg, trainer)
    finally:
        trainer.runtime.close()


def _train(cfg, trainer) -> int:
    runtime = trainer.runtime
    say = print if runtime.is_main else (lambda *a, **k: None)
    params = cfg.model.num_params()
    where = str(trainer.device) if runtime.world_size == 1 else f"{runtime.dims.describe()} ({trainer.device.type})"
    say(f"mugv train: model {cfg.model.preset} ({params / 1e6:.2f} M parameters) on {where}, "
        f"{'bf16' if trainer.use_bf16 else 'fp32'}, run dir {cfg.resolved_run_dir}")
    history = trainer.fit()
    if history:
        first, last = history[0]["loss"], history[-1]["loss"]
        say(f"mugv train: done at step {trainer.step}; loss {first:.4f} -> {last:.4f}; "
              f"loss curve {cfg.resolved_run_dir / 'loss.png'}")
    else:
        say(f"mugv train: nothing to do, already at step {trainer.step} of {cfg.train.steps}")
    return 0
