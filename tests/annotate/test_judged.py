"""The demo's entry point: a synthetic judge answers a whole campaign through the app's own checks."""

from __future__ import annotations

import json

from mugv.annotate.campaign import Video
from mugv.annotate.judged import judged_campaign

from conftest import make_clip


def test_judged_campaign_writes_stats_and_exports(tmp_path):
    videos = []
    for model, speed in (("small", 1), ("large", 3)):
        for p in range(3):
            make_clip(tmp_path / f"{model}{p}.mp4", speed=speed + p, colour=(240, 220, 40))
            videos.append(Video(id=f"{model}.{p}", path=f"{model}{p}.mp4", prompt=f"prompt {p}", prompt_id=f"p{p}",
                                model=model))

    def judge(campaign, item, annotator):  # the more moving clip wins, gold items answered correctly
        if item.gold_expected:
            return {aspect: item.gold_expected for aspect in campaign.spec.aspects}
        a, b = (campaign.videos[v] for v in item.videos)
        return {aspect: "a" if a.model == "large" else "b" for aspect in campaign.spec.aspects}

    figures = judged_campaign(videos, tmp_path, judge, gold=2, rounds=100)
    board = figures["leaderboard"]["overall"]
    assert board["rows"][0]["model"] == "large" and board["battles"] == 9
    assert all(row["gold_accuracy"] == 1.0 for row in figures["annotators"])
    assert json.loads((tmp_path / "stats.json").read_text())["answers"] == figures["answers"] == 9 + 3 * 2
    assert "Leaderboard" in (tmp_path / "stats.html").read_text()
    assert len((tmp_path / "export" / "dpo.jsonl").read_text().splitlines()) == 3 * 4
