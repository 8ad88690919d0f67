"""`mugv eval FOLDER --out DIR`: score a folder of videos offline; `mugv eval --compare A B --out
DIR`: two evaluated folders (or two folders of videos, evaluated first) side by side."""

from __future__ import annotations

import argparse
from pathlib import Path


from mugv.config import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score generated videos offline (VBench-style metrics, NIQE, BRISQUE, FVD, ...)",
        description=(
            "Score every video in FOLDER and write DIR/results.jsonl, DIR/summary.json and DIR/report.html. "
            "Without weights: temporal flickering, dynamic degree, motion smoothness, NIQE, BRISQUE, sharpness, "
            "frozen frames, scene cuts, and the demo world's adherence for its prompts. Give local weights for "
            "CLIPScore, LAION aesthetic, DINO subject consistency, RAFT dynamic degree and FVD. Every number says "
            "whether it is computed as the benchmark does (official) or stands in for it (proxy)."
        ),
    )
    parser.add_argument("input", nargs="?", type=Path, metavar="FOLDER", help="folder of videos")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"),
                        help="compare two mugv eval output folders (or two folders of videos, evaluated first)")
    parser.add_argument("--prompts", type=Path, help="CSV with `prompt` and `name` (video file stem) columns, "
                        "as `mugv generate --prompts` reads")
    parser.add_argument("--skip", nargs="*", default=[], metavar="METRIC", help="metrics not to compute")
    parser.add_argument("--quality-frames", type=int, default=4, help="frames per video for NIQE / BRISQUE / sharpness")
    weights = parser.add_argument_group("local weights (nothing is downloaded)")
    weights.add_argument("--clip-model", type=Path, help="CLIP folder (transformers) for CLIPScore")
    weights.add_argument("--laion-head", type=Path, help="LAION aesthetic MLP weights; needs --clip-model")
    weights.add_argument("--dino", type=Path, help="DINO ViT folder (transformers ViTModel) for subject consistency")
    weights.add_argument("--raft", type=Path, help="RAFT as TorchScript, for VBench's dynamic degree")
    weights.add_argument("--i3d", type=Path, help="StyleGAN-V's i3d_torchscript.pt, for FVD; needs --reference")
    weights.add_argument("--reference", type=Path, help="folder of reference videos for FVD")
    weights.add_argument("--device", default="cpu", help="torch device for the weight-based metrics")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, _: list[str]) -> int:
    from mugv.eval import report

    if args.compare:
        if args.input is not None:
            raise ConfigError("give either FOLDER or --compare A B, not both")
        sides = []
        for index, folder in enumerate(args.compare):
            if not (folder / report.SUMMARY).exists():
                evaluate_folder(args, folder, args.out / f"{'ab'[index]}-{folder.name}")
                folder = args.out / f"{'ab'[index]}-{folder.name}"
            sides.append((args.compare[index].name or str(args.compare[index]), *report.load_evaluation(folder)))
        table = report.write_comparison(args.out, sides[0], sides[1])
        for metric, row in table["metrics"].items():
            print(f"{metric:22s} {_fmt(row['a'])} -> {_fmt(row['b'])}  {row.get('better') or row.get('not_compared', '')}")
        print(f"comparison: {args.out / 'compare.html'}")
        return 0
    if args.input is None:
        raise ConfigError("mugv eval needs a FOLDER of videos (or --compare A B)")
    figures = evaluate_folder(args, args.input, args.out)
    for name, m in figures["metrics"].items():
        print(f"{name:22s} {_fmt(m['mean'])}  [{m['backend']}] n={m['count']}")
    for kind, t in figures["vbench"].items():
        print(f"{kind}: {_fmt(t['value']) if t['value'] is not None else 'not given: ' + t['reason']}")
    print(f"report: {args.out / report.REPORT}")
    return 0


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def evaluate_folder(args: argparse.Namespace, folder: Path, out: Path) -> dict:
    from mugv.eval import report, suite

    paths = suite.list_videos(folder)
    prompts = suite.read_prompts(args.prompts) if args.prompts else {}
    metrics, set_metrics = build_metrics(args, prompts)
    results, set_scores = suite.evaluate(paths, metrics, prompts, set_metrics, args.quality_frames)
    return report.write_results(out, results, metrics, set_metrics, set_scores, str(folder))


def build_metrics(args: argparse.Namespace, prompts: dict[str, str]) -> tuple[list, list]:
    from mugv.eval import frechet, learned, suite

    if args.quality_frames < 1:
        raise ConfigError(f"--quality-frames {args.quality_frames}: must be 1 or more")
    if not suite.brisque_installed():
        print("mugv eval: BRISQUE skipped: its SVM comes with the `brisque` wheel (pip install 'mugv[eval]')")
    metrics = suite.offline_metrics(args.quality_frames)
    if any(prompt in demo_scenes() for prompt in prompts.values()):
        metrics += demo_adherence_metrics()
    if args.laion_head and not args.clip_model:
        raise ConfigError("--laion-head needs --clip-model (the CLIP it was trained on)")
    if args.clip_model:
        metrics.append(learned.clip_score_metric(args.clip_model, args.device))
        if args.laion_head:
            metrics.append(learned.laion_aesthetic_metric(args.clip_model, args.laion_head, args.device))
    if args.dino:
        metrics.append(learned.dino_consistency_metric(args.dino, args.device))
    if args.raft:
        metrics.append(learned.flow_model_dynamic_degree_metric(args.raft, args.device))
    set_metrics = []
    if (args.i3d is None) != (args.reference is None):
        raise ConfigError("FVD needs both --i3d FILE and --reference FOLDER")
    if args.i3d:
        set_metrics.append(frechet.fvd_metric(args.i3d, suite.list_videos(args.reference), args.device))
    unknown = set(args.skip) - {m.name for m in metrics + set_metrics}
    if unknown:
        raise ConfigError(f"--skip {' '.join(sorted(unknown))}: no such metric (have: "
                          f"{', '.join(m.name for m in metrics + set_metrics)})")
    keep = lambda m: m.name not in args.skip  # noqa: E731
    return [m for m in metrics if keep(m)], [m for m in set_metrics if keep(m)]


def demo_scenes() -> dict:
    from mugv.demo.world import all_scenes

    return {scene.caption: scene for scene in all_scenes()}


def demo_adherence_metrics() -> list:
    """Colour, shape and direction of the demo world's moving shape against its prompt (colour and
    direction by mugv.demo.adherence); videos whose prompt is not a
    demo-world caption are skipped."""
    from mugv.demo.adherence import read_shape, read_video
    from mugv.eval.scores import PROXY, Metric, NotMeasurable

    scenes = demo_scenes()
    readers = {"color": lambda frames: read_video(frames).color, "shape": read_shape,
               "direction": lambda frames: read_video(frames).direction}

    def reading(attribute: str):
        def measure(video) -> tuple[float, dict]:
            scene = scenes.get(video.prompt)
            if scene is None:
                raise NotMeasurable("not a demo-world prompt")
            seen = readers[attribute](video.frames)
            return float(seen == getattr(scene, attribute)), {"asked": getattr(scene, attribute), "seen": seen}

        return measure

    return [Metric(f"demo_{attribute}", PROXY, "the mugv demo world only (its palette, shapes and directions)", True,
                   f"1 if the moving shape's {attribute} is the prompted one, else 0", reading(attribute))
            for attribute in readers]
