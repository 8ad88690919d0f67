"""Dedup (perceptual hashes, caption embeddings, union-find) and balance (ontology, sampling)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mugv.config import ConfigError
from mugv.curate import balance, dedup
from mugv.video import synthetic


def test_frame_hashes_match_for_reencoded_content_and_differ_across_scenes(shots):
    same = np.array([dedup.frame_hashes(shots["a"])], dtype=np.uint64)
    brighter = np.array([dedup.frame_hashes(np.clip(shots["a"].astype(int) + 12, 0, 255).astype(np.uint8))], dtype=np.uint64)
    slightly_blurred = np.array([dedup.frame_hashes(synthetic.blur(shots["a"], sigma=1.0))], dtype=np.uint64)
    other = np.array([dedup.frame_hashes(shots["b"])], dtype=np.uint64)
    assert dedup.hash_distances(same, same)[0, 0] == 0
    assert dedup.hash_distances(same, brighter)[0, 0] <= 4
    assert dedup.hash_distances(same, slightly_blurred)[0, 0] <= 8
    assert dedup.hash_distances(same, other)[0, 0] > 20


def test_hash_distance_counts_bits():
    a = np.array([[0b1011, 0]], dtype=np.uint64)
    b = np.array([[0b0001, 2**63]], dtype=np.uint64)
    assert dedup.hash_distances(a, b)[0, 0] == pytest.approx((2 + 1) / 2)


def test_union_find_clusters_transitively():
    assert dedup.cluster(6, [(0, 2), (2, 4), (1, 5)]) == [0, 1, 0, 3, 0, 1]


def test_similar_pairs_by_hash_or_caption_in_blocks():
    hashes = np.array([[0, 0], [1, 1], [2**40, 2**40], [2**64 - 1, 2**64 - 1]], dtype=np.uint64)
    cfg = dedup.DedupConfig(max_hash_distance=2, block=2)
    assert dedup.similar_pairs(cfg, hashes, None) == [(0, 1), (0, 2), (1, 2)]
    embeddings = np.eye(4, dtype=np.float32)
    embeddings[3] = embeddings[0]
    assert dedup.similar_pairs(dedup.DedupConfig(max_hash_distance=0, block=3), hashes, embeddings) == [(0, 3)]



@pytest.mark.parametrize("frames", [3, 1])
@pytest.mark.parametrize("max_hash_distance", [0.0, 2.5, 8.0, 22 / 3, 12.0, 30.0])
def test_multi_index_hashing_finds_exactly_the_brute_force_pairs(frames, max_hash_distance):
    rng = np.random.default_rng(int(max_hash_distance * 3) + frames)
    hashes, _ = dedup.planted_near_duplicates(rng, 600, frames)
    embeddings = rng.normal(size=(600, 16)).astype(np.float32)
    embeddings[rng.random(600) < 0.5] = 0  # clips without a real caption
    embeddings[1::7] = embeddings[::7][: len(embeddings[1::7])] + 0.01  # paraphrases
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    cfg = dedup.DedupConfig(max_hash_distance=max_hash_distance, block=128, method="exact")
    for vectors in (None, embeddings):
        found = dedup.similar_pairs(cfg, hashes, vectors)
        assert found == dedup.brute_force_pairs(cfg, hashes, vectors)
        assert found  # not vacuous: planted copies with few flipped bits are found
        assert dedup.cluster(len(hashes), found) == dedup.cluster(len(hashes), dedup.brute_force_pairs(cfg, hashes, vectors))


@pytest.mark.parametrize(("frames", "max_hash_distance"), [(3, 8.0), (3, 4.0), (3, 12.0), (1, 8.0)])
def test_lsh_reports_only_true_pairs_and_finds_the_documented_share(frames, max_hash_distance):
    hashes, source = dedup.planted_near_duplicates(np.random.default_rng(frames), 3000, frames)
    cfg = dedup.DedupConfig(max_hash_distance=max_hash_distance)
    found = dedup.similar_pairs(cfg, hashes, None)
    every = dedup.brute_force_pairs(replace(cfg, block=256), hashes, None)
    assert every == dedup.planted_pairs(hashes, source, max_hash_distance)  # the benchmark's truth at scale
    assert set(found) <= set(every)  # each reported pair checked by its true distance
    assert len(set(found) & set(every)) >= cfg.recall * len(every) > 100
    assert found == sorted(set(found)) == dedup.similar_pairs(cfg, hashes, None)  # ordered, once each, repeatable


def test_lsh_bands_reach_the_recall_at_the_threshold_and_give_way_when_too_loose():
    for clips in (100, 10_000, 10**8):
        bands = dedup.lsh_bands(clips, 3, 24, 0.99, seed=0)
        assert dedup.lsh_recall(3, 24, bands) >= 0.99 and dedup.lsh_recall(3, 8, bands) > 0.99999
        assert bands.shape[1] >= np.log2(clips) and len(np.unique(bands[0])) == bands.shape[1]
    assert dedup.lsh_bands(10**8, 3, 24, 0.99, seed=0).shape[0] < 300
    assert dedup.lsh_bands(2000, 3, 90, 0.99, seed=0) is None  # mean distance 30 of 64: the exact search


def test_lsh_bucket_cap_bounds_the_checks_of_identical_clips_yet_keeps_one_cluster():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**64, (1500, 3), dtype=np.uint64)
    hashes[:1000] = hashes[0]
    pairs = dedup.similar_pairs(dedup.DedupConfig(bucket_cap=4), hashes, None)
    assert all(b < 1000 for _, b in pairs) and len(pairs) < 1000 * 4 * 20
    assert set(dedup.cluster(len(hashes), pairs)[:1000]) == {0}


def test_lsh_partitioned_by_band_and_key_finds_what_one_machine_finds_from_part_of_the_clips():
    hashes, _ = dedup.planted_near_duplicates(np.random.default_rng(3), 2000)
    cfg = dedup.DedupConfig(partitions=3)
    max_total = 24
    bands = dedup.lsh_bands(len(hashes), 3, max_total, cfg.recall, cfg.seed)
    shards = [dedup._route_shard(start, hashes[start : start + 700], bands, cfg.partitions) for start in (0, 700, 1400)]
    pairs = []
    for part in range(len(bands) * cfg.partitions):
        pieces = [shard[part] for shard in shards]
        assert sum(len(ids) for ids, _, _ in pieces) < 0.5 * len(hashes)  # no task sees every clip
        pairs.append(dedup._partition_pairs(part // cfg.partitions, bands.shape[1], max_total, cfg.bucket_cap, *pieces))
    left, right = (np.concatenate(side) for side in zip(*pairs))
    assert dedup._as_sorted_tuples([(left, right)], len(hashes)) == dedup.similar_pairs(cfg, hashes, None)


def test_lsh_and_exact_give_the_same_clusters_on_real_frame_hashes(shots):
    variants = []
    for frames in shots.values():
        variants += [frames, np.clip(frames.astype(int) + 12, 0, 255).astype(np.uint8), synthetic.blur(frames, sigma=1.0)]
    hashes = np.array([dedup.frame_hashes(frames) for frames in variants], dtype=np.uint64)
    exact = dedup.cluster(len(hashes), dedup.similar_pairs(dedup.DedupConfig(method="exact"), hashes, None))
    assert dedup.cluster(len(hashes), dedup.similar_pairs(dedup.DedupConfig(), hashes, None)) == exact
    assert len(set(exact)) == len(shots)  # each shot and its variants: one cluster


def test_the_runner_rejects_the_same_duplicates_with_lsh_and_exact(shots):
    from mugv.curate.config import CurateConfig
    from mugv.curate.runner import apply_dedup

    def rows():
        out = []
        for name, frames in shots.items():
            for variant, copy in enumerate((frames, np.clip(frames.astype(int) + 12, 0, 255).astype(np.uint8), frames[::-1])):
                out.append(
                    {"clip_id": f"{name}{variant}", "status": "kept", "reason": None, "dup_cluster": None, "quality": float(variant % 2),
                     "caption_source": "template", "caption": "", "phash": dedup.frame_hashes(copy)}
                )
        return out

    outcomes = []
    for method in ("lsh", "exact"):
        cfg = CurateConfig()
        cfg.dedup = replace(cfg.dedup, method=method)
        curated = rows()
        apply_dedup(curated, cfg)
        outcomes.append([(r["clip_id"], r["status"], r["reason"], r["dup_cluster"]) for r in curated])
    assert outcomes[0] == outcomes[1]
    assert sum(status == "rejected" for _, status, _, _ in outcomes[0]) == len(shots)  # one of each shot and its brighter copy


@pytest.mark.parametrize("setting", [{"method": "minhash"}, {"backend": "spark"}, {"recall": 1.0}, {"bucket_cap": 0}])
def test_bad_dedup_settings_name_the_key(setting):
    with pytest.raises(ConfigError, match=f"dedup.{next(iter(setting))}"):
        dedup.DedupConfig(**setting).validate()


def test_caption_embeddings_link_paraphrases_not_different_scenes():
    vectors = dedup.caption_embeddings(
        ["A brown dog runs along the beach.", "A brown dog is running along a beach.", "Traffic at night in a big city."]
    )
    assert vectors.shape == (3, 384)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.9 and similarity[0, 2] < 0.5


def test_entities_and_category_from_captions():
    entities, category = balance.extract_entities("Two dogs and a man walk past parked cars on a city street.")
    assert entities == ["animals:dog", "people:man", "urban:city", "urban:street", "vehicles:car"]
    assert category == "urban"
    assert balance.extract_entities("An abstract swirl of colours.") == ([], "other")


def test_stratified_sample_follows_the_mix_and_prefers_quality():
    categories = ["people"] * 10 + ["nature"] * 4 + ["urban"] * 6
    quality = np.arange(20, dtype=float)
    cfg = balance.BalanceConfig(mix=["people=0.5", "nature=0.5"])
    chosen = balance.stratified_sample(categories, quality, cfg)
    # nature has 4 clips, so the 50/50 mix allows 8 in all: the 4 best people clips join them
    assert chosen.sum() == 8
    assert chosen[10:14].all() and list(np.flatnonzero(chosen[:10])) == [6, 7, 8, 9] and not chosen[14:].any()
    capped = balance.stratified_sample(categories, quality, balance.BalanceConfig(mix=["people=0.5", "nature=0.5"], max_clips=4))
    assert capped.sum() == 4 and capped[12:14].all() and capped[8:10].all()


def test_balance_mix_is_validated():
    with pytest.raises(ConfigError, match="unknown categories"):
        balance.BalanceConfig(mix=["dinosaurs=1"]).validate()
    with pytest.raises(ConfigError, match="category=0.3"):
        balance.BalanceConfig(mix=["people"]).validate()
