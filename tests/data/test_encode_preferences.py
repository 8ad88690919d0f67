"""`mugv encode` on the annotation app's preference exports: a pair stays one sample through
shards, buckets, data-parallel splitting and resume, and a DPO step trains on it."""

import json
import math
from pathlib import Path

import pytest
import torch

from mugv.cli import main
from mugv.config import load_config
from mugv.data.encode import EncodeError, run_encode
from mugv.data.encode_preferences import read_preference_manifest
from mugv.data.loader import ShardSource
from mugv.data.preference import REFERENCE_ERRORS_NAME, PreferenceBatch
from mugv.data.shards import ShardStore, read_index
from mugv.train.trainer import Trainer

from preference_shards import encode_options


def shard_source(out, batch_size, rank=0, world=1):
    cfg = load_config("debug", [f"--data.shards={out}", "--data.source=shards", f"--data.batch_size={batch_size}",
                                "--data.batching=fixed", "--data.prefetch=0", "--model.text_dim=32"])
    return cfg, ShardSource(cfg.data, cfg.model, seed=0, dp_rank=rank, dp_world_size=world)


def test_pairs_are_encoded_as_one_sample_and_travel_together(preference_exports, tiny_t5, tmp_path):
    out = tmp_path / "dpo-shards"
    with pytest.warns(UserWarning, match="gone.mp4"):
        summary = run_encode(encode_options(preference_exports / "dpo.jsonl", out, tiny_t5))
    assert summary.encoded == 3 and summary.skipped == {"missing_file": 1}
    records = sorted(read_index(str(out)), key=lambda r: r["key"])
    assert [r["preference"] for r in records] == ["pair"] * 3 and len({r["noise_seed"] for r in records}) == 3
    chosen, text, rejected = ShardStore(str(out)).read([records[0]])[0]
    assert chosen.shape == rejected.shape == (24, 2, 4, 4) and not torch.equal(chosen, rejected)

    # data-parallel ranks each get whole pairs; the pair's halves never part
    cfg, source = shard_source(out, batch_size=1, rank=0, world=2)
    _, other = shard_source(out, batch_size=1, rank=1, world=2)
    batch = source.next_batch()
    assert isinstance(batch, PreferenceBatch) and batch.paired and batch.rejected.shape == batch.latents.shape
    by_seed = {r["noise_seed"]: r for r in records}
    record = by_seed[int(batch.noise_seed[0])]
    expected_chosen, _, expected_rejected = ShardStore(str(out)).read([record])[0]
    torch.testing.assert_close(batch.latents[0], expected_chosen.float())
    torch.testing.assert_close(batch.rejected[0], expected_rejected.float())
    assert int(other.next_batch().noise_seed[0]) != int(batch.noise_seed[0])

    # resume: a source restored from the state continues with the same next pair
    state = source.state_dict()
    following = source.next_batch()
    _, resumed = shard_source(out, batch_size=1, rank=0, world=2)
    resumed.load_state_dict(state)
    again = resumed.next_batch()
    assert torch.equal(again.noise_seed, following.noise_seed) and torch.equal(again.rejected, following.rejected)

    # a rerun finds every pair done (and reports the missing clip again)
    with pytest.warns(UserWarning, match="gone.mp4"):
        assert run_encode(encode_options(preference_exports / "dpo.jsonl", out, tiny_t5)).already_done == 3


def test_dpo_trains_on_encoded_pairs(preference_exports, tiny_t5, tmp_path):
    out = tmp_path / "dpo-shards"
    with pytest.warns(UserWarning, match="gone.mp4"):
        run_encode(encode_options(preference_exports / "dpo.jsonl", out, tiny_t5))
    cfg = load_config("debug", [f"--data.shards={out}", "--data.source=shards", "--data.batch_size=2",
                                "--data.prefetch=0", "--model.text_dim=32", "--train.objective=dpo", "--lora.rank=2",
                                "--train.steps=1", f"--run_dir={tmp_path / 'run'}", "--logging.progress=false",
                                "--logging.tensorboard=false", "--checkpoint.every_steps=0"])
    history = Trainer(cfg).fit()
    assert history[0]["loss"] == pytest.approx(math.log(2), rel=1e-5)  # adapters at zero: policy = reference
    assert {"reward_accuracy", "e_ref_rejected", "kl"} <= set(history[0])


def test_unpaired_labels_are_kept_and_a_bad_manifest_is_named(preference_exports, tiny_t5, tmp_path):
    out = tmp_path / "kto-shards"
    run_encode(encode_options(preference_exports / "kto.jsonl", out, tiny_t5))
    _, source = shard_source(out, batch_size=4)
    batch = source.next_batch()
    assert not batch.paired and batch.label.dtype == torch.bool
    labels = {r["noise_seed"]: r["label"] for r in read_index(str(out))}
    assert batch.label.tolist() == [labels[int(s)] for s in batch.noise_seed]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "video": "a.mp4"}) + "\n")
    with pytest.raises(EncodeError, match="bad.jsonl is not a preference manifest"):
        run_encode(encode_options(bad, tmp_path / "bad", tiny_t5))


def test_only_the_asked_aspect_of_a_multi_aspect_export_is_encoded(tmp_path):
    """The annotation export writes one pair per judged aspect: a pair is trained on once, not once per aspect."""
    rows = [{"prompt": "p", "chosen": f"c{i}.mp4", "rejected": f"r{i}.mp4", "aspect": aspect}
            for i, aspect in enumerate(["overall", "motion", "overall", "text"])]
    rows.append({"prompt": "p", "chosen": "plain.mp4", "rejected": "other.mp4"})  # no aspect: always kept
    manifest = tmp_path / "dpo.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    chosen = lambda aspect: [Path(r["chosen"]).name for r in read_preference_manifest(str(manifest), aspect)[1]]
    assert chosen("overall") == ["c0.mp4", "c2.mp4", "plain.mp4"]
    assert chosen("motion") == ["c1.mp4", "plain.mp4"]
    with pytest.raises(EncodeError, match="no rows for aspect 'visual'.*overall, text"):
        read_preference_manifest(str(manifest), "visual")


def test_a_recorded_reference_trains_like_a_frozen_copy(preference_exports, tiny_t5, tmp_path):
    out = tmp_path / "dpo-shards"
    with pytest.warns(UserWarning, match="gone.mp4"):
        run_encode(encode_options(preference_exports / "dpo.jsonl", out, tiny_t5))
    base = [f"--data.shards={out}", "--data.source=shards", "--data.batch_size=2", "--data.prefetch=0",
            "--model.text_dim=32", "--train.objective=dpo", "--train.steps=2", "--logging.progress=false",
            "--logging.tensorboard=false", "--checkpoint.every_steps=0", "--optim.lr=1e-2", "--preference.beta=50",
            "--data.i2v_prob=0.5"]
    precomputed = [*base, "--preference.reference=precomputed", f"--run_dir={tmp_path / 'pre'}"]
    assert main(["record-reference", "--config", "debug", *precomputed]) == 0
    assert (out / REFERENCE_ERRORS_NAME).is_file()
    # one model in memory, errors from the data; the same two steps as with a frozen copy
    trainer = Trainer(load_config("debug", precomputed))
    assert trainer.reference is None
    recorded = trainer.fit()
    copy = Trainer(load_config("debug", [*base, "--preference.reference=frozen_copy", f"--run_dir={tmp_path / 'fc'}"]))
    frozen = copy.fit()
    for mine, theirs in zip(recorded, frozen):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert mine["e_ref_rejected"] == pytest.approx(theirs["e_ref_rejected"], rel=1e-5)
    assert recorded[1]["loss"] != pytest.approx(math.log(2))  # the second step's policy has moved
