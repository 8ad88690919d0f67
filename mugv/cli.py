"""The `mugv` command.

Adding a command: write `mugv/commands/NAME.py` with `register(subparsers)`, which adds the
command's parser (`subparsers.add_parser("NAME", description=...)`) and sets `func` on it (and
`accepts_overrides=True` if it takes --section.key=value overrides); then add one line to
COMMANDS: the name, the module, and the one-line help that `mugv --help` lists. A command's
module is imported only when that command runs or shows its own --help, so `mugv --help`,
`mugv --version` and each command start without loading what the other commands need (torch).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mugv import __version__
from mugv.errors import USER_ERROR_EXIT, user_error_message

# name -> (module that registers the command, one-line help for `mugv --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("mugv.commands.train", "train a MUG-DiT (or, with --config enhancer, a video enhancer)"),
    "info": ("mugv.commands.info", "parameter count and FLOPs of a model preset"),
    "curate": ("mugv.commands.curate", "curate raw videos into a clip manifest"),
    "expand": ("mugv.commands.expand", "grow a trained DiT's hidden width by an integer factor (HyperCloning)"),
    "ema": ("mugv.commands.ema", "post-hoc EMA: rebuild averaged weights after training"),
    "generate": ("mugv.commands.generate", "generate videos from a trained DiT (T2V, I2V, continuation)"),
    "demo": ("mugv.commands.demo", "run the whole system end to end on a small corpus and write report.html"),
    "vae": ("mugv.commands.vae", "train and evaluate the video VAE"),
    "encode": ("mugv.commands.encode", "encode curated clips into latent + text shards"),
    "record-reference": ("mugv.commands.reference", "record a preference run's reference errors (precomputed mode)"),
    "annotate": ("mugv.commands.annotate", "label videos in a local web app: preferences, grades, side-by-side"),
    "eval": ("mugv.commands.eval", "score generated videos offline; every number says official or proxy"),
    "enhance": ("mugv.commands.enhance", "refine videos with the MUG-V enhancer (the release's weights)"),
    "enhancer": ("mugv.commands.enhancer", "train an enhancer: (degraded, clean) pairs, then score it on held-out clips"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `mugv` parser with the full parser of `command`; the other commands are names and help only."""
    parser = argparse.ArgumentParser(
        prog="mugv", description="Train and run MUG-V-style video diffusion transformers."
    )
    parser.add_argument("--version", action="version", version=f"mugv {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error instead of its one-line message")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).register(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def chosen_command(argv: list[str] | None) -> str:
    """The command `argv` names; `mugv --help`, `--version` and a missing or unknown command end here."""
    return build_parser().parse_known_args(argv)[0].command


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(chosen_command(argv))
    args, extra = parser.parse_known_args(argv)
    debug = args.debug or "--debug" in extra  # also taken after the command, where a rerun appends it
    extra = [item for item in extra if item != "--debug"]
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args, extra) or 0)
    except Exception as exc:  # one line for bad input (see mugv/errors.py); a bug keeps its traceback
        message = user_error_message(exc)
        if message is None or debug:
            raise
        print(f"mugv: error: {message}", file=sys.stderr)
        return USER_ERROR_EXIT
