"""Who sees what, where: per-annotator item order, blind left/right placement, and un-swapping answers.

Placement and order are pure functions of (campaign hash, annotator, item), so a restarted server
shows every annotator the same screen again, and the stored `swapped` flag can be re-derived.
"""

from __future__ import annotations

import hashlib
import random

from mugv.annotate.campaign import GRADES, Campaign, Item
from mugv.annotate.storage import Answer, AnswerStore

SCREEN_ANSWERS = ("left", "right", "tie", "both_bad")
APP_VERSION = "1"


class AnswerError(ValueError):
    """A submitted answer that does not fit its item (unknown item, missing aspect, bad grade or tag)."""


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("|".join(map(str, parts)).encode()).digest()


def is_swapped(campaign: Campaign, annotator: str, item_id: str) -> bool:
    """True when the item's second video is shown on the left for this annotator."""
    return bool(_digest(campaign.hash, annotator, item_id, "side")[0] & 1)


def screen_videos(campaign: Campaign, annotator: str, item: Item) -> tuple[str, ...]:
    """The item's video ids in screen order (left, right), or the single graded video."""
    if len(item.videos) == 2 and is_swapped(campaign, annotator, item.id):
        return item.videos[1], item.videos[0]
    return item.videos


def annotator_order(campaign: Campaign, annotator: str) -> list[Item]:
    order = campaign.orders.get(annotator)
    if order is None:
        order = list(campaign.items)
        random.Random(_digest(campaign.hash, campaign.spec.seed, annotator, "order")).shuffle(order)
        campaign.orders[annotator] = order
    return order


def next_item(campaign: Campaign, store: AnswerStore, annotator: str) -> Item | None:
    """The first item in this annotator's order that they have not answered and that still needs labels.

    Gold items go to every annotator; other items stop being handed out once they hold
    labels_per_item answers (two annotators racing for the last slot both keep their answer)."""
    return queue(campaign, store, annotator)[0]


def queue(campaign: Campaign, store: AnswerStore, annotator: str) -> tuple[Item | None, dict[str, int]]:
    """The annotator's next item and their progress: answers given, items still open to them."""
    done = store.answered_items(annotator)
    counts = store.counts_by_item()
    k = campaign.spec.labels_per_item
    open_items = [item for item in annotator_order(campaign, annotator)
                  if item.id not in done and (item.gold_expected or counts.get(item.id, 0) < k)]
    return (open_items[0] if open_items else None), {"done": len(done), "remaining": len(open_items)}


def build_answer(campaign: Campaign, annotator: str, payload: dict) -> Answer:
    """Check a submitted answer (`item` is the item's opaque key) and un-swap it into canonical a / b labels."""
    item = campaign.item_by_key.get(str(payload.get("item", "")))
    if item is None:
        raise AnswerError(f"unknown item {payload.get('item')!r}")
    shown = screen_videos(campaign, annotator, item)
    answer = Answer(
        campaign_hash=campaign.hash, annotator=annotator, item=item.id, left_video=shown[0],
        right_video=shown[1] if len(shown) == 2 else "", swapped=len(shown) == 2 and shown != item.videos,
        comment=str(payload.get("comment", ""))[:2000], is_gold=bool(item.gold_expected),
        gold_expected=item.gold_expected, app_version=APP_VERSION)
    for name in ("time_ms", "plays", "seeks"):
        value = payload.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise AnswerError(f"{name} = {value!r} must be a non-negative integer")
        setattr(answer, name, value)
    answer.full_watch = bool(payload.get("full_watch", False))
    if campaign.is_pairwise:
        choices = payload.get("choices")
        if not isinstance(choices, dict) or set(choices) != set(campaign.spec.aspects):
            raise AnswerError(f"choices must answer exactly the aspects {', '.join(campaign.spec.aspects)}")
        for aspect, choice in choices.items():
            if choice not in SCREEN_ANSWERS:
                raise AnswerError(f"choices.{aspect} = {choice!r} is not one of {', '.join(SCREEN_ANSWERS)}")
            answer.screen[aspect] = choice
            answer.canonical[aspect] = to_canonical(choice, answer.swapped)
    else:
        grade = payload.get("grade")
        if grade not in GRADES:
            raise AnswerError(f"grade = {grade!r} is not one of {', '.join(GRADES)}")
        tags = payload.get("tags", [])
        if not isinstance(tags, list) or not set(tags) <= set(campaign.spec.defect_tags):
            raise AnswerError(f"tags = {tags!r} must be a list of the campaign's defect tags")
        answer.grade = grade
        answer.tags = sorted(set(tags))
        answer.screen = {"grade": grade}
        answer.canonical = {"grade": grade}
    return answer


_CANONICAL = {(False, "left"): "a", (False, "right"): "b", (True, "left"): "b", (True, "right"): "a"}
_SCREEN = {(swapped, side): screen for (swapped, screen), side in _CANONICAL.items()}


def to_canonical(choice: str, swapped: bool) -> str:
    """A screen answer (left / right / tie / both_bad) as a canonical one (a / b / tie / both_bad)."""
    return _CANONICAL.get((swapped, choice), choice)


def to_screen(canonical: str, swapped: bool) -> str:
    return _SCREEN.get((swapped, canonical), canonical)
