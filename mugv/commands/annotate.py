"""`mugv annotate`: build a labelling campaign, serve it, and turn its answers into stats and exports."""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

from mugv.config import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "annotate", help="human preference labels and human evaluation (local web app)",
        description="Label videos in a browser: pairwise preferences, pass/fail grades, side-by-side model "
                    "evaluation. See docs/annotate.md.")
    sub = parser.add_subparsers(dest="annotate_command", required=True, metavar="SUBCOMMAND")

    new = sub.add_parser("new", help="write a campaign TOML from `mugv generate` outputs or a manifest")
    new.add_argument("--out", type=Path, required=True, help="the campaign file to write (.toml)")
    new.add_argument("--mode", choices=["pairwise", "grade", "sidebyside"], required=True)
    source = new.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="CSV / Parquet / JSONL with `path` and `prompt` columns "
                        "(optional: id, model, seed, prompt_id, image)")
    source.add_argument("--generated", action="append", metavar="[MODEL=]DIR",
                        help="a `mugv generate --prompts` output folder (repeat per model); needs --prompts")
    new.add_argument("--prompts", type=Path, help="the prompt CSV given to `mugv generate --prompts`")
    new.add_argument("--annotators", default="annotator1,annotator2,annotator3",
                     help="comma-separated names; each gets a secret link (default: three)")
    new.add_argument("--labels-per-item", type=int, default=3, help="answers wanted per item (default 3)")
    new.add_argument("--gold", type=int, default=0, help="degraded copies to add as gold items (default 0)")
    new.add_argument("--name", default="", help="campaign name (default: the file name)")
    new.add_argument("--instructions", default="", help="guidelines shown to annotators")
    new.add_argument("--seed", type=int, default=0)
    new.set_defaults(func=run_new)

    serve = sub.add_parser("serve", help="start the web app and print each annotator's link")
    serve.add_argument("campaign", type=Path)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.add_argument("--db", type=Path, help="answer database (default: beside the campaign, .sqlite)")
    serve.set_defaults(func=run_serve)

    stats = sub.add_parser("stats", help="print the campaign's statistics (no server needed)")
    stats.add_argument("campaign", type=Path)
    stats.add_argument("--db", type=Path)
    stats.add_argument("--json", type=Path, help="also write every figure as JSON")
    stats.add_argument("--html", type=Path, help="also write the stats page as HTML")
    stats.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds (default 1000)")
    stats.set_defaults(func=run_stats)

    export = sub.add_parser("export", help="write DPO / KTO / battles / raw answers and a dataset card")
    export.add_argument("campaign", type=Path)
    export.add_argument("--out", type=Path, required=True, help="export folder")
    export.add_argument("--db", type=Path)
    export.add_argument("--min-agreement", type=float, default=0.5,
                        help="least share of votes the consensus answer needs (default 0.5)")
    export.add_argument("--include-gold", action="store_true", help="also export gold items")
    export.add_argument("--link", action="store_true", help="symlink videos instead of copying them")
    export.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds for the card's tables")
    export.set_defaults(func=run_export)


def _open(args: argparse.Namespace):
    from mugv.annotate.campaign import load_campaign
    from mugv.annotate.storage import AnswerStore

    campaign = load_campaign(args.campaign)
    db = args.db or campaign.default_db()
    if args.annotate_command != "serve" and not db.exists():
        raise ConfigError(f"no answers yet: {db} does not exist (serve the campaign first, or pass --db)")
    return campaign, AnswerStore(db)


def run_serve(args: argparse.Namespace, _: list[str]) -> int:
    try:
        from mugv.annotate.server import make_server, urls
    except ImportError as exc:
        raise SystemExit(f"mugv annotate serve needs fastapi and uvicorn ({exc}): "
                         "pip install -c constraints.txt -e '.[annotate]'") from None

    campaign, store = _open(args)
    server, sock = make_server(campaign, store, args.host, args.port)
    port = sock.getsockname()[1]
    print(f"mugv annotate: campaign {campaign.spec.name!r} ({campaign.mode}, {len(campaign.items)} items), "
          f"answers in {store.path}")
    for who, url in urls(campaign, args.host, port).items():
        print(f"  {who}: {url}")
    print("Ctrl+C stops the server; every submitted answer is already saved.", flush=True)
    server.run(sockets=[sock])
    return 0


def run_stats(args: argparse.Namespace, _: list[str]) -> int:
    from mugv.annotate import report, stats

    campaign, store = _open(args)
    figures = stats.compute(campaign, store.answers(), rounds=args.rounds)
    print(report.header(figures))
    print(report.render_markdown(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if args.html:
        args.html.write_text(report.render_html(figures))
        print(f"wrote {args.html}")
    return 0


def run_export(args: argparse.Namespace, _: list[str]) -> int:
    from mugv.annotate import export, stats

    campaign, store = _open(args)
    answers = store.answers()
    figures = stats.compute(campaign, answers, rounds=args.rounds)
    counts = export.export(campaign, answers, args.out, min_agreement=args.min_agreement,
                           include_gold=args.include_gold, link=args.link, stats=figures)
    for name, n in counts.items():
        print(f"  {args.out / name}: {n} rows")
    return 0


def run_new(args: argparse.Namespace, _: list[str]) -> int:
    from mugv.annotate.campaign import Annotator, CampaignFile, new_token, save_campaign
    from mugv.annotate.degrade import add_gold

    root = args.out.resolve().parent
    if args.manifest:
        videos = videos_from_manifest(args.manifest, root)
    else:
        if args.prompts is None:
            raise ConfigError("--generated needs --prompts, the CSV the videos were generated from")
        videos = videos_from_generated(args.generated, args.prompts, root)
    names = [n.strip() for n in args.annotators.split(",") if n.strip()]
    spec = CampaignFile(name=args.name or args.out.stem, mode=args.mode, labels_per_item=args.labels_per_item,
                        seed=args.seed, instructions=args.instructions, lead_token=new_token(),
                        annotators=[Annotator(name=n, token=new_token()) for n in names], videos=videos)
    if args.gold:
        add_gold(spec, root, args.gold)
    campaign = save_campaign(spec, args.out)
    gold = sum(1 for i in campaign.items if i.gold_expected)
    print(f"wrote {args.out}: {len(campaign.spec.videos)} videos, {len(campaign.items)} items ({gold} gold), "
          f"{len(names)} annotators; start it with `mugv annotate serve {args.out}`")
    return 0


def _relative(path: Path, root: Path) -> str:
    return os.path.relpath(path.resolve(), root)


def videos_from_manifest(path: Path, root: Path):
    import pandas as pd

    from mugv.annotate.campaign import Video

    if not path.is_file():
        raise ConfigError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    frame = (pd.read_parquet(path) if suffix == ".parquet" else
             pd.read_json(path, lines=True) if suffix in (".jsonl", ".json") else pd.read_csv(path))
    missing = {"path", "prompt"} - set(frame.columns)
    if missing:
        raise ConfigError(f"{path}: needs columns path and prompt (missing: {', '.join(sorted(missing))})")
    videos = []
    for n, row in enumerate(frame.to_dict("records")):
        video_path = _beside(path, str(row["path"]))
        if not video_path.is_file():
            raise ConfigError(f"{path}: row {n + 1}: video {row['path']} not found")
        image = str(row.get("image") or "") if not _is_missing(row.get("image")) else ""
        videos.append(Video(
            id=str(row["id"]) if not _is_missing(row.get("id")) else f"v{n:05d}",
            path=_relative(video_path, root), prompt=str(row["prompt"]),
            prompt_id=str(row["prompt_id"]) if not _is_missing(row.get("prompt_id")) else "",
            model=str(row["model"]) if not _is_missing(row.get("model")) else "",
            seed=int(row["seed"]) if not _is_missing(row.get("seed")) else 0,
            image=_relative(_beside(path, image), root) if image else ""))
    return videos


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value == ""


def _beside(manifest: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else manifest.parent / p


def videos_from_generated(folders: list[str], prompts: Path, root: Path):
    from mugv.annotate.campaign import Video

    if not prompts.is_file():
        raise ConfigError(f"prompt file not found: {prompts}")
    with prompts.open(newline="") as f:
        rows = list(csv.DictReader(f))
    videos = []
    for spec in folders:
        model, _, folder = spec.rpartition("=")
        folder_path = Path(folder)
        model = model or folder_path.name
        if not folder_path.is_dir():
            raise ConfigError(f"--generated {spec}: no such folder")
        for line, row in enumerate(rows, start=1):
            name = row.get("name") or f"{line:04d}"  # mugv generate's default file name
            clip = folder_path / f"{name}.mp4"
            if not clip.is_file():
                raise ConfigError(f"--generated {spec}: {clip} is missing (row {line} of {prompts})")
            image = row.get("image") or ""
            videos.append(Video(id=f"{model}.{name}", path=_relative(clip, root), prompt=row.get("prompt", ""),
                                prompt_id=name, model=model, seed=int(row.get("seed") or 0),
                                image=_relative(Path(image), root) if image else ""))
    return videos
