"""Campaign files (typed, unknown keys are errors), the balanced design, and the CLI without a server."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from mugv.annotate.campaign import load_campaign
from mugv.annotate.judged import answer_with_judge
from mugv.annotate.storage import AnswerStore
from mugv.cli import main
from mugv.config import ConfigError

from conftest import build_campaign, make_clip


def test_unknown_keys_and_bad_values_are_errors_naming_them(tmp_path):
    campaign = build_campaign(tmp_path)
    text = campaign.path.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("labels_per_item = 2", "labels_per_itme = 2"))
    with pytest.raises(ConfigError, match="labels_per_itme"):
        load_campaign(bad)
    bad.write_text(text.replace('path = "clips/m1.mp4"', 'path = "clips/missing.mp4"', 1))
    with pytest.raises(ConfigError, match="missing.mp4"):
        load_campaign(bad)
    bad.write_text(text.replace('mode = "pairwise"', 'mode = "pairs"'))
    with pytest.raises(ConfigError, match="mode"):
        load_campaign(bad)
    bad.write_text(text.replace('token = "token-ann-0001"', 'token = "token-ann-0000"'))
    with pytest.raises(ConfigError, match="token"):
        load_campaign(bad)


def test_sidebyside_design_is_balanced(tmp_path):
    campaign = build_campaign(tmp_path, mode="sidebyside", prompts=4, models=("m1", "m2", "m3"))
    assert len(campaign.items) == 4 * 3
    pairs = Counter(tuple(campaign.videos[v].model for v in item.videos) for item in campaign.items)
    assert pairs == {("m1", "m2"): 4, ("m1", "m3"): 4, ("m2", "m3"): 4}


def test_cli_new_from_generated_folders_then_stats_and_export(tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    with prompts.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "seed"])
        writer.writerows([["a red square moving left", 1], ["a blue circle moving up", 2]])
    for model, speed in (("base", 1), ("tuned", 3)):
        for name in ("0001", "0002"):  # mugv generate's file names for rows without a name
            make_clip(tmp_path / model / f"{name}.mp4", speed=speed, colour=(240, 220, 40))
    out = tmp_path / "campaign" / "eval.toml"
    assert main(["annotate", "new", "--mode", "sidebyside", "--generated", f"base={tmp_path / 'base'}",
                 "--generated", f"tuned={tmp_path / 'tuned'}", "--prompts", str(prompts), "--out", str(out),
                 "--annotators", "ann,bob", "--labels-per-item", "2", "--gold", "2"]) == 0
    campaign = load_campaign(out)
    assert len(campaign.items) == 2 + 2 and sum(bool(i.gold_expected) for i in campaign.items) == 2
    assert {v.model for v in campaign.spec.videos} == {"base", "tuned"}

    assert main(["annotate", "stats", str(out)]) == 2  # no answers yet: one clear line
    assert "no answers yet" in capsys.readouterr().err

    def judge(campaign, item, annotator):
        a, b = (campaign.videos[v] for v in item.videos)
        if item.gold_expected:
            return {aspect: item.gold_expected for aspect in campaign.spec.aspects}
        return {aspect: "a" if a.model == "tuned" else "b" for aspect in campaign.spec.aspects}

    answer_with_judge(campaign, AnswerStore(campaign.default_db()), judge, seconds_per_item=5)
    html = tmp_path / "stats.html"
    stats_json = tmp_path / "stats.json"
    assert main(["annotate", "stats", str(out), "--rounds", "100", "--html", str(html), "--json", str(stats_json)]) == 0
    printed = capsys.readouterr().out
    assert "Leaderboard" in printed and "tuned" in printed
    figures = json.loads(stats_json.read_text())
    assert figures["leaderboard"]["overall"]["rows"][0]["model"] == "tuned"
    assert all(row["gold_accuracy"] == 1.0 for row in figures["annotators"])
    assert "<table>" in html.read_text()
    assert main(["annotate", "export", str(out), "--out", str(tmp_path / "export"), "--rounds", "100"]) == 0
    dpo = [json.loads(line) for line in (tmp_path / "export" / "dpo.jsonl").read_text().splitlines()]
    assert len(dpo) == 2 * len(campaign.spec.aspects) and all(r["chosen_model"] == "tuned" for r in dpo)
    assert "Leaderboard" in (tmp_path / "export" / "README.md").read_text()


def test_cli_new_from_manifest(tmp_path):
    for i in range(4):
        make_clip(tmp_path / "clips" / f"{i}.mp4", speed=i, colour=(240, 220, 40))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,prompt\n" + "".join(f"clips/{i}.mp4,prompt {i % 2}\n" for i in range(4)))
    out = tmp_path / "grade.toml"
    assert main(["annotate", "new", "--mode", "grade", "--manifest", str(manifest), "--out", str(out)]) == 0
    assert len(load_campaign(out).items) == 4
    out = tmp_path / "pairs.toml"
    assert main(["annotate", "new", "--mode", "pairwise", "--manifest", str(manifest), "--out", str(out)]) == 0
    assert len(load_campaign(out).items) == 2  # one pair per prompt
    manifest.write_text("path,caption\nclips/0.mp4,x\n")
    assert main(["annotate", "new", "--mode", "grade", "--manifest", str(manifest), "--out", str(out)]) == 2


def test_each_item_gets_k_labels_and_gold_goes_to_everyone(tmp_path):
    from mugv.annotate.degrade import add_gold
    from mugv.annotate.campaign import save_campaign

    campaign = build_campaign(tmp_path, prompts=4, annotators=3, labels_per_item=2)
    add_gold(campaign.spec, tmp_path, count=1, kinds=("shuffled",))
    campaign = save_campaign(campaign.spec, campaign.path)
    store = AnswerStore(tmp_path / "db.sqlite")
    answer_with_judge(campaign, store, lambda c, item, who: {a: "tie" for a in c.spec.aspects})
    per_item = Counter(a.item for a in store.answers())
    gold = [i.id for i in campaign.items if i.gold_expected]
    assert len(gold) == 1 and per_item[gold[0]] == 3
    assert all(n == 2 for item, n in per_item.items() if item not in gold)
    assert len(per_item) == len(campaign.items)
