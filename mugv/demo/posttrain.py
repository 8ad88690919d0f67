"""The demo's post-training stage: the SFT model's own samples, labelled by a judge that knows the
synthetic world's truth, train Flow-DPO (pairs) and Flow-KTO (pass/fail); held-out prompts are scored
before and after.

The labels go through `mugv annotate` (a pairwise campaign and a grading campaign the judge answers as
people would) and their `dpo.jsonl` / `kto.jsonl` exports, then through `mugv encode` and
`mugv train --config dpo-demo` / `kto-demo`: the same files and commands a team labelling real videos
would use.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mugv.demo.adherence import SHAPE_FILL, Reading, box_fill, foreground_color, read_video
from mugv.demo.world import COLORS, Scene, sub_seed

# Samples of each training prompt that the judge compares, every pair of them once.
CANDIDATES_PER_PROMPT = 4
# Candidate seeds start here, away from the held-out prompts' seeds.
CANDIDATE_SEED_BASE = 1000


# Two samples whose judged scores are closer than this are a tie (or both bad): no preference.
TIE_MARGIN = 0.05


def correct_parts(scene: Scene, seen: Reading) -> int:
    """How many of colour, shape and direction a video got right (0 to 3)."""
    return sum(getattr(seen, part) == getattr(scene, part) for part in ("color", "shape", "direction"))


# Colour distance (RGB) at which a sample's colour nearness reaches 0: about half the distance
# between two palette colours.
COLOR_SCALE = 120.0


def nearness(scene: Scene, frames) -> float:
    """Up to one part: half for how near the foreground's fill of its box is to the asked shape's,
    half for how near its mean colour is to the asked colour. Among samples with as many parts right,
    the judge prefers the crisper square and the purer yellow, as a careful person would. Without the
    colour half, preferring shapes alone drifted borderline yellows to green (seed 2: colour 92 % ->
    69 % on held-out prompts)."""
    fill, color = box_fill(frames), foreground_color(frames)
    shape_nearness = 0.0 if fill is None else max(0.0, 1.0 - abs(fill - SHAPE_FILL[scene.shape]) / 0.5)
    color_nearness = 0.0 if color is None else max(0.0, 1.0 - np.linalg.norm(color - COLORS[scene.color]) / COLOR_SCALE)
    return 0.5 * (shape_nearness + color_nearness)


def candidate_table(scenes: list[Scene], seed: int, out: Path) -> tuple[Path, list[tuple[str, Scene]]]:
    """A `mugv generate --prompts` table of CANDIDATES_PER_PROMPT samples of every training prompt."""
    rows, cases = [], []
    for i, scene in enumerate(scenes):
        for k in range(CANDIDATES_PER_PROMPT):
            name = f"cand-{i:02d}-{k}"
            rows.append({"prompt": scene.caption, "name": name,
                         "seed": sub_seed(seed, CANDIDATE_SEED_BASE + CANDIDATES_PER_PROMPT * i + k), "image": ""})
            cases.append((name, scene))
    out.mkdir(parents=True, exist_ok=True)
    table = out / "prompts.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "name", "seed", "image"])
        writer.writeheader()
        writer.writerows(rows)
    return table, cases


def label_candidates(videos: list[tuple[Path, Scene]], out: Path, graded: Path) -> dict:
    """Two `mugv annotate` campaigns over the candidates, answered by a judge that knows the truth.
    Pairwise (under `out`, export dpo.jsonl): the video with more parts right wins, then the higher
    `nearness`; nearly equal scores are a tie when both are fully right, else both bad. Grading (under
    `graded`, export kto.jsonl): pass when colour, shape and direction are all right, else fail.
    Returns the candidate counts."""
    from mugv.annotate.campaign import Video
    from mugv.annotate.judged import judged_campaign
    from mugv.video.reader import decode

    right, scores = {}, {}  # parts right (0 to 3); what the judge weighs: parts right + nearness
    for path, scene in videos:
        frames = decode(path).frames
        right[path.stem] = correct_parts(scene, read_video(frames))
        scores[path.stem] = right[path.stem] + nearness(scene, frames)
    entries = [Video(id=path.stem, path=str(path.resolve()), prompt=scene.caption, model="sft")
               for path, scene in videos]

    def prefer(campaign, item, annotator):
        a, b = item.videos
        if abs(scores[a] - scores[b]) < TIE_MARGIN:
            verdict = "tie" if right[a] == right[b] == 3 else "both_bad"
        else:
            verdict = "a" if scores[a] > scores[b] else "b"
        return {aspect: verdict for aspect in campaign.spec.aspects}

    def grade(campaign, item, annotator):
        return {"grade": "pass" if right[item.videos[0]] == 3 else "fail", "tags": []}

    judged_campaign(entries, out, prefer, mode="pairwise", annotators=1, labels_per_item=1, rounds=200,
                    name="demo-preferences", aspects=["overall"])
    judged_campaign(entries, graded, grade, mode="grade", annotators=1, labels_per_item=1, rounds=200,
                    name="demo-pass-fail")
    return {"candidates": len(right), "candidates_fully_right": sum(n == 3 for n in right.values())}


def kto_label_counts(labels_file: Path) -> tuple[int, int]:
    """(desirable, undesirable) rows of a kto.jsonl."""
    import json

    labels = [bool(json.loads(line)["label"]) for line in labels_file.read_text().splitlines()]
    return sum(labels), len(labels) - sum(labels)


def kto_weights(desirable: int, undesirable: int) -> tuple[float, float]:
    """(lambda_d, lambda_u) that make both classes weigh alike (lambda x count equal), the rarer class
    raised, the other at 1."""
    return max(1.0, undesirable / desirable), max(1.0, desirable / undesirable)


# The post-training runs by objective (also their run folder under post/ and their `{objective}-demo`
# profile): report name, the folder under post/ of their held-out renders, what they train.
POST_RUNS = {"dpo": ("SFT + DPO", "generate", "Flow-DPO"), "kto": ("SFT + KTO", "generate-kto", "Flow-KTO")}


def post_training_section(out: Path, held_out: list[tuple[Path, Scene]], labels: dict) -> tuple["Section", dict]:
    """Held-out adherence of the SFT model and of the same model after Flow-DPO and after Flow-KTO
    (same prompts, same seeds), the labels and each run's reward figures, and the videos side by side."""
    import json

    from mugv.demo.adherence import score
    from mugv.demo.report import Section, Video
    from mugv.demo.summary import filmstrip
    from mugv.video.reader import decode

    post = out / "post"
    trained = [run for run in POST_RUNS if (post / run / "metrics.jsonl").is_file()]
    runs = {"SFT": held_out}
    for run in trained:
        name, renders, _ = POST_RUNS[run]
        runs[name] = [(post / renders / path.name, scene) for path, scene in held_out]
    frames = {name: [decode(path).frames for path, _ in videos] for name, videos in runs.items()}
    reports = {name: score([(scene, f) for (_, scene), f in zip(runs[name], frames[name])]) for name in runs}
    figures: dict = {"labels": labels}
    rows = []
    for name, report in reports.items():
        all_right = sum(r["color_ok"] and r["shape_ok"] and r["direction_ok"] for r in report.rows) / len(report.rows)
        figures[name] = {"color": report.color_accuracy, "shape": report.shape_accuracy,
                         "direction": report.direction_accuracy, "all_three": all_right}
        rows.append([name, report.color_accuracy, report.shape_accuracy, report.direction_accuracy, all_right])
    text = (f"Post-training: the SFT model rendered {CANDIDATES_PER_PROMPT} samples of each training prompt "
            f"({labels['candidates']} videos, {labels['candidates_fully_right']} fully right). A judge that knows each "
            "prompt's colour, shape and direction answered two `mugv annotate` campaigns over them. Pairwise, every "
            "two samples of a prompt (more parts right wins; among as many, the shape and colour nearer the asked "
            f"ones; nearly equal: a tie, or both bad): {labels['pairs']} preference pairs, exported as dpo.jsonl. "
            f"Grading, each sample pass (all three right) or fail: {labels['kto_rows']} labels, exported as "
            "kto.jsonl. ")
    table = [(["model", "colour", "shape", "direction", "all three"], rows)]
    if not trained:
        text += "With no labels of both kinds to learn from, no preference run trained."
        return Section("Post-training: Flow-DPO and Flow-KTO on judged samples", text, tables=table), figures
    for run in trained:
        steps = [json.loads(line) for line in (post / run / "metrics.jsonl").read_text().splitlines()]
        tail = steps[-max(1, len(steps) // 5):]
        # a KTO batch of one label has no margin (it compares the two labels' rewards): such steps are left out
        margins = [m["reward_margin"] for m in tail if "reward_margin" in m]
        figures[run] = {"steps": len(steps),
                        "reward_accuracy": sum(m["reward_accuracy"] for m in tail) / len(tail),
                        "reward_margin": sum(margins) / len(margins) if margins else float("nan")}
        text += (f"`mugv train --config {run}-demo` ({POST_RUNS[run][2]}, LoRA, the adapters-off network as reference): "
                 f"{len(steps)} steps, reward accuracy {figures[run]['reward_accuracy']:.2f} and margin "
                 f"{figures[run]['reward_margin']:.2f} over the last fifth. ")
    shown = []
    for i, (_, scene) in enumerate(held_out):
        for name in runs:
            row, video = reports[name].rows[i], runs[name][i][0]
            shown.append(Video(video, f"{name}: {scene.caption}",
                               note=f"seen: {row['seen_color'] or '-'}, {row['seen_shape'] or '-'}, "
                                    f"{row['seen_direction'] or '-'}",
                               ok=bool(row["color_ok"] and row["shape_ok"] and row["direction_ok"]),
                               strip=filmstrip(frames[name][i], video.with_suffix(".frames.png"))))
    text += ("Below, the held-out prompts rendered by the SFT model and by the same model with each adapter, same "
             "seeds, side by side.")
    return Section("Post-training: Flow-DPO and Flow-KTO on judged samples", text, tables=table,
                   videos=shown), figures
