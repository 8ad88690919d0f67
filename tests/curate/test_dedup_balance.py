"""Dedup (perceptual hashes, caption embeddings, union-find) and balance (ontology, sampling)."""

from __future__ import annotations

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
    hashes = dedup.near_duplicate_hashes(rng, 600, frames)
    embeddings = rng.normal(size=(600, 16)).astype(np.float32)
    embeddings[rng.random(600) < 0.5] = 0  # clips without a real caption
    embeddings[1::7] = embeddings[::7][: len(embeddings[1::7])] + 0.01  # paraphrases
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    cfg = dedup.DedupConfig(max_hash_distance=max_hash_distance, block=128)
    for vectors in (None, embeddings):
        found = dedup.similar_pairs(cfg, hashes, vectors)
        assert found == dedup.brute_force_pairs(cfg, hashes, vectors)
        assert found  # not vacuous: planted copies with few flipped bits are found
        assert dedup.cluster(len(hashes), found) == dedup.cluster(len(hashes), dedup.brute_force_pairs(cfg, hashes, vectors))


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
