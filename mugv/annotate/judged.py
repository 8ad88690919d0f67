"""Answer a campaign with a program instead of people: the demo's synthetic judge, simulations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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



def judged_campaign(videos: list, out: Path, judge: Judge, mode: str = "sidebyside", annotators: int = 3,
                    labels_per_item: int = 3, gold: int = 0, rounds: int = 1000, name: str = "judged",
                    aspects: list[str] | None = None) -> dict:
    """Write a campaign of `videos` (campaign.Video entries, paths relative to `out`) under `out`, let
    `judge` stand in for `annotators` people (pairwise: judging `aspects`, default all), and write the stats page (`out/stats.html`), its figures
    (`out/stats.json`) and the exports (`out/export/`). Returns the figures, as `mugv annotate stats` does.

    This is the demo's entry point: its synthetic judge answers as people would through the app."""
    import json

    from mugv.annotate import report, stats
    from mugv.annotate.campaign import Annotator, CampaignFile, new_token, save_campaign
    from mugv.annotate.degrade import add_gold
    from mugv.annotate.export import export

    out = Path(out)
    spec = CampaignFile(name=name, mode=mode, labels_per_item=labels_per_item, lead_token=new_token(),
                        annotators=[Annotator(name=f"judge{i + 1}", token=new_token()) for i in range(annotators)],
                        videos=list(videos), **({"aspects": list(aspects)} if aspects else {}))
    if gold:
        add_gold(spec, out, gold)
    campaign = save_campaign(spec, out / f"{name}.toml")
    store = AnswerStore(campaign.default_db())
    answer_with_judge(campaign, store, judge)
    answers = store.answers()
    figures = stats.compute(campaign, answers, rounds=rounds)
    (out / "stats.json").write_text(json.dumps(figures, indent=1))
    (out / "stats.html").write_text(report.render_html(figures))
    export(campaign, answers, out / "export", stats=figures)
    return figures
