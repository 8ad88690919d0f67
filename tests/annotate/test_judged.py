"""The demo's entry point: a synthetic judge answers a whole campaign through the app's own checks."""

from __future__ import annotations

import json

import pytest

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


def test_the_preference_trainer_trains_on_a_campaign_export(tmp_path):
    """The loop of the post-training pillar: labels exported by the app -> `mugv encode` -> a DPO step."""
    import math

    from mugv.config import load_config
    from mugv.data.buckets import parse_buckets
    from mugv.data.encode import EncodeOptions, run_encode
    from mugv.models.text.tiny import make_tiny_t5
    from mugv.train.trainer import Trainer

    videos = []
    for model, speed in (("static", 0), ("moving", 3)):
        for p in range(2):
            make_clip(tmp_path / "campaign" / f"{model}{p}.mp4", speed=speed, colour=(200, 40, 40), frames=9)
            videos.append(Video(id=f"{model}.{p}", path=f"{model}{p}.mp4", prompt=f"a red square, take {p}",
                                prompt_id=f"p{p}", model=model))

    def judge(campaign, item, annotator):
        a, _ = (campaign.videos[v] for v in item.videos)
        return {aspect: "a" if a.model == "moving" else "b" for aspect in campaign.spec.aspects}

    judged_campaign(videos, tmp_path / "campaign", judge, annotators=1, labels_per_item=1, rounds=10)
    pairs = tmp_path / "campaign" / "export" / "dpo.jsonl"
    assert all("moving" in json.loads(line)["chosen"] for line in pairs.read_text().splitlines())
    shards = tmp_path / "shards"
    run_encode(EncodeOptions(manifest=str(pairs), out=str(shards), buckets=parse_buckets("9x32x32"), text_encoder="t5",
                             text_encoder_path=str(make_tiny_t5(tmp_path / "t5")), vae_preset="tiny", random_vae=True,
                             progress=False))
    cfg = load_config("debug", [f"--data.shards={shards}", "--data.source=shards", "--data.batch_size=1",
                                "--data.prefetch=0", "--model.text_dim=32", "--train.objective=dpo", "--lora.rank=2",
                                # a fresh DiT's output layer is zero: adapt it, so the first step moves the policy
                                '--lora.targets=["final_layer.linear", "blocks.*.mlp.fc2"]', "--train.steps=2", f"--run_dir={tmp_path / 'run'}", "--logging.progress=false",
                                "--logging.tensorboard=false", "--checkpoint.every_steps=0", "--optim.lr=1e-2",
                                "--optim.warmup_steps=0"])
    history = Trainer(cfg).fit()
    assert history[0]["loss"] == pytest.approx(math.log(2), rel=1e-5)  # adapters at zero: policy = reference
    assert history[1]["loss"] != history[0]["loss"]
