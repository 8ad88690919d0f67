"""The demo's generated videos, assessed two more ways: `mugv eval`'s offline metrics, and a
grading campaign of `mugv annotate` in which a synthetic judge that knows the world's truth stands
in for three people."""

from __future__ import annotations

import json
import random
from pathlib import Path

from mugv.demo.adherence import read_video
from mugv.demo.report import Section
from mugv.demo.world import Scene

JUDGES = 3
# Each synthetic judge misreads this share of videos, as people sometimes do, so that the
# agreement figures have something to measure.
JUDGE_SLIP = 0.1


def eval_section(eval_dir: Path) -> Section:
    summary = json.loads((eval_dir / "summary.json").read_text())
    rows = [[name, m["mean"], m["backend"], m["comparable_to"]] for name, m in summary["metrics"].items()
            if m.get("mean") is not None]
    seconds = summary["seconds_per_video"]["total"]
    text = (f"`mugv eval` on the {summary['scored']} generated videos ({seconds:.2f} s per video). Every figure says whether it is an official metric or a proxy, and what it is comparable to; "
            "per-video scores and the worst videos are in eval/report.html.")
    return Section("Offline metrics (mugv eval)", text, tables=[(["metric", "mean", "backend", "comparable to"], rows)])


def truth_grade(scene: Scene, frames) -> tuple[str, list[str]]:
    """What a careful person would answer: fail unless colour and direction are right; high
    quality when the shape is right too."""
    seen = read_video(frames)
    tags = []
    if seen.direction is None:
        tags.append("frozen or static")
    if (seen.color, seen.shape, seen.direction) != (scene.color, scene.shape, scene.direction):
        tags.append("prompt mismatch")
    if seen.color != scene.color or seen.direction != scene.direction:
        return "fail", tags
    return ("high_quality" if seen.shape == scene.shape else "pass"), tags


def grade_campaign(videos: list[tuple[Path, Scene]], out: Path, seed: int) -> dict:
    """Grade every generated video with `mugv annotate`'s statistics and exports, the synthetic
    judges answering through the app's own assignment and storage."""
    from mugv.annotate.campaign import GRADES, Video
    from mugv.annotate.judged import judged_campaign
    from mugv.video.reader import decode

    truth = {path.stem: truth_grade(scene, decode(path).frames) for path, scene in videos}
    entries = [Video(id=path.stem, path=str(path.resolve()), prompt=scene.caption, model="demo-dit")
               for path, scene in videos]
    slips = {f"judge{i + 1}": random.Random(seed * 1000 + i) for i in range(JUDGES)}

    def judge(campaign, item, annotator):
        grade, tags = truth[item.videos[0]]
        rng = slips[annotator]
        if rng.random() < JUDGE_SLIP:
            grade = rng.choice([g for g in GRADES if g != grade])
        return {"grade": grade, "tags": tags}

    return judged_campaign(entries, out, judge, mode="grade", annotators=JUDGES, labels_per_item=JUDGES,
                           name="demo-grades")


def annotation_section(figures: dict) -> Section:
    rates = next(r for r in figures["rates"] if r["model"] == "(all)" or r["model"] == "demo-dit")
    agreement = figures["agreement"]["grade"]
    rows = [["pass rate", rates["pass_rate"], f"{rates['pass_low']:.2f} - {rates['pass_high']:.2f}"],
            ["high-quality rate", rates["high_quality_rate"],
             f"{rates['high_quality_low']:.2f} - {rates['high_quality_high']:.2f}"]]
    rows += [[name.replace("_", " "), value, ""] for name, value in agreement.items()
             if name in ("percent_agreement", "fleiss_kappa", "krippendorff_ordinal", "gwet_ac1")]
    text = (f"A grading campaign of `mugv annotate` over the generated videos: {JUDGES} synthetic judges that "
            "know each prompt's colour, shape and direction grade every video fail / pass / high quality (pass: "
            "colour and direction right; high quality: the shape too), each misreading "
            f"{JUDGE_SLIP:.0%} of the videos at random. Rates carry 95 % Wilson intervals; the full stats page "
            "is annotate/stats.html and the KTO labels a preference run reads are in annotate/export/.")
    return Section("Human-evaluation stand-in (mugv annotate)", text,
                   tables=[(["figure", "value", "95 % interval"], rows)])
