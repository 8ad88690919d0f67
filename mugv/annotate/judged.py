"""Answer a campaign with a program instead of people: the demo's synthetic judge, simulations."""

from __future__ import annotations

from collections.abc import Callable

from mugv.annotate import assign
from mugv.annotate.campaign import Campaign, Item
from mugv.annotate.storage import AnswerStore

# judge(campaign, item, annotator) -> canonical answer: {"overall": "a" | "b" | "tie" | "both_bad", ...} for
# pairs (one entry per campaign aspect), or {"grade": "fail" | "pass" | "high_quality", "tags": [...]}.
Judge = Callable[[Campaign, Item, str], dict]


def answer_with_judge(campaign: Campaign, store: AnswerStore, judge: Judge, seconds_per_item: float = 0.0) -> int:
    """Let `judge` answer, for every annotator, each item the app would serve them (k per item, all gold
    items), through the same placement and checks as the web app. Returns the number of new answers."""
    recorded = 0
    for annotator in campaign.spec.annotators:
        while (item := assign.next_item(campaign, store, annotator.name)) is not None:
            verdict = judge(campaign, item, annotator.name)
            payload = {"item": campaign.item_key(item), "time_ms": int(seconds_per_item * 1000), "full_watch": True}
            if campaign.is_pairwise:
                swapped = assign.is_swapped(campaign, annotator.name, item.id)
                payload["choices"] = {aspect: assign.to_screen(verdict[aspect], swapped) for aspect in campaign.spec.aspects}
            else:
                payload.update(grade=verdict["grade"], tags=list(verdict.get("tags", [])))
            recorded += store.record(assign.build_answer(campaign, annotator.name, payload))
    return recorded

