"""Exports: the DPO / KTO rows the preference trainer reads, battles, the raw log and the card."""

from __future__ import annotations

import json

from mugv.annotate.degrade import add_gold
from mugv.annotate.campaign import load_campaign, save_campaign
from mugv.annotate.export import export
from mugv.annotate.judged import answer_with_judge
from mugv.annotate.storage import AnswerStore

from conftest import build_campaign


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scripted_judge(plan):
    """plan: prompt_id -> {annotator: overall answer}; other aspects copy overall."""

    def judge(campaign, item, annotator):
        answer = plan[item.prompt_id][annotator]
        return {aspect: answer for aspect in campaign.spec.aspects}

    return judge


def test_pairwise_export(tmp_path):
    campaign = build_campaign(tmp_path, prompts=4, annotators=3, labels_per_item=3, image=True)
    plan = {"p0": {"ann0": "a", "ann1": "a", "ann2": "b"},        # 2 of 3 for a -> a DPO pair
            "p1": {"ann0": "both_bad", "ann1": "both_bad", "ann2": "tie"},  # both bad -> ties + two KTO false
            "p2": {"ann0": "tie", "ann1": "tie", "ann2": "tie"},   # tie -> never a pair
            "p3": {"ann0": "a", "ann1": "b", "ann2": "tie"}}       # no consensus -> nothing
    store = AnswerStore(tmp_path / "db.sqlite")
    answer_with_judge(campaign, store, _scripted_judge(plan))
    out = tmp_path / "export"
    counts = export(campaign, store.answers(), out)
    dpo = _rows(out / "dpo.jsonl")
    assert counts["dpo.jsonl"] == len(dpo) == 4  # p0, one row per aspect
    row = next(r for r in dpo if r["aspect"] == "overall")
    assert {"prompt", "chosen", "rejected", "image", "aspect", "annotators", "agreement"} <= set(row)
    assert row["chosen"] == "videos/m1.p0.mp4" and row["rejected"] == "videos/m2.p0.mp4"
    assert row["chosen_model"] == "m1" and row["image"] == "images/m1.p0.png"
    assert row["annotators"] == ["ann0", "ann1", "ann2"] and row["agreement"] == round(2 / 3, 4)
    assert row["votes_for_chosen"] == 2 and row["n_votes"] == 3 and row["campaign_hash"] == campaign.hash
    for r in dpo:
        assert (out / r["chosen"]).is_file() and (out / r["rejected"]).is_file() and (out / r["image"]).is_file()
    ties = _rows(out / "dpo_ties.jsonl")
    assert sorted({(r["prompt_id"], r["outcome"]) for r in ties}) == [("p1", "both_bad"), ("p2", "tie")]
    kto = _rows(out / "kto.jsonl")
    assert [(r["completion"], r["label"], r["source"]) for r in kto] == [
        ("videos/m1.p1.mp4", False, "pair_both_bad"), ("videos/m2.p1.mp4", False, "pair_both_bad")]
    battles = _rows(out / "battles.jsonl")
    assert len(battles) == 12 * len(campaign.spec.aspects)
    assert {b["winner"] for b in battles} == {"model_a", "model_b", "tie", "tie (bothbad)"}
    raw = _rows(out / "raw_annotations.jsonl")
    assert len(raw) == 12 and {"swapped", "screen", "canonical", "time_ms", "item_videos"} <= set(raw[0])
    assert "Preference data format" in (out / "README.md").read_text()
    # a stricter consensus drops the 2-of-3 pair
    assert export(campaign, store.answers(), tmp_path / "strict", min_agreement=0.7)["dpo.jsonl"] == 0


def test_grade_export_and_gold_items(tmp_path):
    campaign = build_campaign(tmp_path, mode="grade", prompts=3, models=("m1",), annotators=2, labels_per_item=2)
    spec = campaign.spec
    added = add_gold(spec, tmp_path, count=2, kinds=("frozen", "blur"))
    campaign = save_campaign(spec, campaign.path)
    assert [v.degradation for v in added] == ["frozen", "blur"]
    assert sum(1 for item in campaign.items if item.gold_expected == "fail") == 2

    def judge(campaign, item, annotator):
        video = campaign.videos[item.videos[0]]
        if video.degraded_from:
            return {"grade": "fail", "tags": ["frozen or static"]}
        return {"grade": "pass" if annotator == "ann0" or video.prompt_id != "p2" else "fail",
                "tags": ["flicker"] if annotator == "ann0" else []}

    store = AnswerStore(tmp_path / "db.sqlite")
    answer_with_judge(campaign, store, judge)
    out = tmp_path / "export"
    export(campaign, store.answers(), out)
    kto = {r["completion"]: r for r in _rows(out / "kto.jsonl")}
    assert sorted(kto) == ["videos/m1.p0.mp4", "videos/m1.p1.mp4"]  # p2 split 1-1: no consensus; gold left out
    assert kto["videos/m1.p0.mp4"]["label"] is True and kto["videos/m1.p0.mp4"]["tags"] == ["flicker"]
    with_gold = export(campaign, store.answers(), tmp_path / "with_gold", include_gold=True)
    assert with_gold["kto.jsonl"] == 4
    reloaded = load_campaign(campaign.path)
    assert reloaded.hash == campaign.hash
