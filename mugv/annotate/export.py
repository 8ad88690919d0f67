"""Exports of a campaign's answers: DPO pairs, KTO labels, battles, the raw log and a dataset card.

The row formats are documented in docs/annotate.md ("Preference data format"); the preference
trainer reads dpo.jsonl and kto.jsonl as written here. Video and image paths are relative to the
export folder, which holds copies (or links) of every file a row names.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mugv.annotate.campaign import Campaign, Item
from mugv.annotate.report import dataset_card
from mugv.annotate.storage import Answer

FILES = ("dpo.jsonl", "dpo_ties.jsonl", "kto.jsonl", "battles.jsonl", "raw_annotations.jsonl", "README.md")


@dataclass
class Consensus:
    outcome: str  # the plurality answer; "" when the top answers are tied
    votes: int
    support: int
    annotators: list[str]

    @property
    def agreement(self) -> float:
        return self.support / self.votes if self.votes else 0.0


def consensus(labels: Sequence[tuple[str, str]]) -> Consensus:
    """Plurality of (annotator, label) votes; no outcome when two labels share the top count."""
    counts = Counter(label for _, label in labels).most_common()
    annotators = sorted(a for a, _ in labels)
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return Consensus("", len(labels), counts[0][1] if counts else 0, annotators)
    return Consensus(counts[0][0], len(labels), counts[0][1], annotators)


class _Files:
    """Copies (or links) each video and image once into the export folder, returning relative paths."""

    def __init__(self, campaign: Campaign, out: Path, link: bool):
        self.campaign, self.out, self.link = campaign, out, link
        self.done: dict[tuple[str, str], str] = {}

    def video(self, video_id: str) -> str:
        return self._place("videos", video_id, self.campaign.video_path(video_id))

    def image(self, item: Item) -> str | None:
        if not item.image:
            return None
        return self._place("images", item.image, self.campaign.image_path(item.image))

    def _place(self, folder: str, video_id: str, source: Path) -> str:
        key = (folder, video_id)
        if key not in self.done:
            relative = f"{folder}/{video_id.replace(':', '_')}{source.suffix}"
            target = self.out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                target.unlink()
            if self.link:
                os.symlink(os.path.relpath(source.resolve(), target.parent), target)
            else:
                shutil.copyfile(source, target)
            self.done[key] = relative
        return self.done[key]


def _with_image(row: dict, image: str | None) -> dict:
    if image:
        row["image"] = image
    return row


def export(campaign: Campaign, answers: Sequence[Answer], out: str | Path, *, min_agreement: float = 0.5,
           include_gold: bool = False, link: bool = False, stats: dict | None = None) -> dict[str, int]:
    """Write every export file under `out` and return the row count of each."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = _Files(campaign, out, link)
    used = [a for a in answers if include_gold or not a.is_gold]
    by_item: dict[str, list[Answer]] = defaultdict(list)
    for a in used:
        by_item[a.item].append(a)
    rows: dict[str, list[dict]] = {name: [] for name in FILES if name.endswith(".jsonl")}
    base = {"campaign_hash": campaign.hash}
    for item_id in sorted(by_item):
        item = campaign.item_by_id[item_id]
        votes = by_item[item_id]
        if campaign.is_pairwise:
            _pair_rows(campaign, item, votes, files, rows, min_agreement, base)
        else:
            _grade_rows(campaign, item, votes, files, rows, min_agreement, base)
    for a in used:
        if campaign.is_pairwise:
            rows["battles.jsonl"].extend(_battles(campaign, a))
    rows["raw_annotations.jsonl"] = [
        {**a.as_row(), "item_videos": list(campaign.item_by_id[a.item].videos)} for a in answers]
    for name, lines in rows.items():
        with (out / name).open("w") as f:
            for row in lines:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = {name: len(lines) for name, lines in rows.items()}
    (out / "README.md").write_text(dataset_card(campaign, counts, stats, min_agreement))
    return counts


def _pair_rows(campaign: Campaign, item: Item, votes: list[Answer], files: _Files, rows: dict,
               min_agreement: float, base: dict) -> None:
    a_id, b_id = item.videos
    va, vb = campaign.videos[a_id], campaign.videos[b_id]
    image = files.image(item)
    for aspect in campaign.spec.aspects:
        c = consensus([(v.annotator, v.canonical[aspect]) for v in votes])
        if not c.outcome or c.agreement < min_agreement:
            continue
        common = {"prompt": item.prompt, "aspect": aspect, "annotators": c.annotators,
                  "agreement": round(c.agreement, 4), "n_votes": c.votes, "prompt_id": item.prompt_id,
                  "item": item.id, **base}
        if c.outcome in ("a", "b"):
            chosen, rejected = (va, vb) if c.outcome == "a" else (vb, va)
            rows["dpo.jsonl"].append(_with_image({
                "prompt": item.prompt, "chosen": files.video(chosen.id), "rejected": files.video(rejected.id),
                **{k: v for k, v in common.items() if k != "prompt"},
                "votes_for_chosen": c.support, "chosen_model": chosen.model, "rejected_model": rejected.model,
                "chosen_seed": chosen.seed, "rejected_seed": rejected.seed}, image))
            continue
        rows["dpo_ties.jsonl"].append(_with_image({
            "prompt": item.prompt, "video_a": files.video(a_id), "video_b": files.video(b_id),
            "outcome": c.outcome, **{k: v for k, v in common.items() if k != "prompt"}}, image))
        if c.outcome == "both_bad" and aspect == "overall":
            for video in (va, vb):
                rows["kto.jsonl"].append(_with_image({
                    "prompt": item.prompt, "completion": files.video(video.id), "label": False, "tags": [],
                    "source": "pair_both_bad", "model": video.model, "n_votes": c.votes,
                    "agreement": round(c.agreement, 4), "annotators": c.annotators, "item": item.id, **base},
                    image))


def _grade_rows(campaign: Campaign, item: Item, votes: list[Answer], files: _Files, rows: dict,
                min_agreement: float, base: dict) -> None:
    video = campaign.videos[item.videos[0]]
    label = consensus([(v.annotator, str(v.grade in ("pass", "high_quality"))) for v in votes])
    if not label.outcome or label.agreement < min_agreement:
        return
    grade = consensus([(v.annotator, v.grade) for v in votes]).outcome
    tag_counts = Counter(t for v in votes for t in v.tags)
    tags = sorted(t for t, n in tag_counts.items() if 2 * n >= len(votes))
    rows["kto.jsonl"].append(_with_image({
        "prompt": item.prompt, "completion": files.video(video.id), "label": label.outcome == "True",
        "tags": tags, "grade": grade, "source": "grade", "model": video.model, "n_votes": label.votes,
        "agreement": round(label.agreement, 4), "annotators": label.annotators, "item": item.id, **base},
        files.image(item)))


def _battles(campaign: Campaign, answer: Answer) -> list[dict]:
    a_id, b_id = campaign.item_by_id[answer.item].videos
    va, vb = campaign.videos[a_id], campaign.videos[b_id]
    if not (va.model and vb.model) or va.model == vb.model:
        return []
    winners = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}
    return [{"model_a": va.model, "model_b": vb.model, "winner": winners[answer.canonical[aspect]],
             "judge": answer.annotator, "tstamp": answer.created_at, "anony": True,
             "prompt_id": campaign.item_by_id[answer.item].prompt_id, "aspect": aspect,
             "campaign_hash": campaign.hash} for aspect in campaign.spec.aspects]
