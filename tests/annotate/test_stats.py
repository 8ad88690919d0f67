"""Statistics against hand computations, published worked examples and simulations with known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mugv.annotate import stats
from mugv.annotate.judged import answer_with_judge
from mugv.annotate.storage import AnswerStore

from conftest import build_campaign


def test_cohen_kappa_by_hand():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = 0.7, p_e = .5*.6 + .5*.4 = 0.5, kappa = 0.4
    first = ["y"] * 25 + ["n"] * 25
    second = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert stats.cohen_kappa(first, second) == pytest.approx(0.4)


def test_fleiss_kappa_worked_example():
    # Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters, 5 categories: P-bar 0.378, P-bar_e 0.213, kappa 0.210
    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                      [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert stats.fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)


def test_krippendorff_alpha_by_hand():
    # units (a, a), (a, b), (b, b): coincidences o_aa = o_bb = 2, o_ab = o_ba = 1, n_a = n_b = 3, n = 6;
    # D_o = 2/6, D_e = 2*3*3/(6*5) = 0.6, alpha = 1 - (1/3)/0.6 = 4/9
    assert stats.krippendorff_alpha([["a", "a"], ["a", "b"], ["b", "b"]]) == pytest.approx(4 / 9)


def test_krippendorff_alpha_worked_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders, 12 units, missing values;
    # published alpha: nominal 0.743, ordinal 0.815, interval 0.849
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
              [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
              [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
              [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    units = [[c[u] for c in coders if c[u] is not None] for u in range(12)]
    assert stats.krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert stats.krippendorff_alpha(units, "ordinal", [1, 2, 3, 4, 5]) == pytest.approx(0.815, abs=5e-4)
    assert stats.krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)


def test_wilson_interval_covers_about_95_percent():
    for n, p in [(30, 0.1), (50, 0.3), (200, 0.5), (120, 0.03)]:
        coverage = 0.0
        for k in range(n + 1):
            lo, hi = stats.wilson_interval(k, n)
            if lo <= p <= hi:
                coverage += scipy_stats.binom.pmf(k, n, p)
        assert 0.92 <= coverage <= 0.985, (n, p, coverage)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


def _simulate(rng, strengths, prompts, votes_per_pair=1, tie_rate=0.0):
    battles = []
    m = len(strengths)
    for p in range(prompts):
        for i in range(m):
            for j in range(i + 1, m):
                for _ in range(votes_per_pair):
                    if rng.random() < tie_rate:
                        battles.append((f"p{p}", f"m{i}", f"m{j}", "tie"))
                        continue
                    win = rng.random() < 1 / (1 + math.exp(-(strengths[i] - strengths[j])))
                    battles.append((f"p{p}", f"m{i}", f"m{j}", "a" if win else "b"))
    return battles


def test_bradley_terry_recovers_simulated_strengths():
    truth = np.array([-1.0, -0.4, 0.0, 0.5, 0.9])
    truth -= truth.mean()
    battles = _simulate(np.random.default_rng(0), truth, prompts=300, votes_per_pair=3)  # standard error about 0.035
    models = [f"m{i}" for i in range(5)]
    _, mats = stats.battle_matrices(battles, models)
    fitted = stats.fit_bradley_terry(mats.sum(axis=0))
    assert np.max(np.abs(fitted - truth)) < 0.15
    assert fitted.sum() == pytest.approx(0.0, abs=1e-9)
    # the fit is a stationary point of the log-likelihood: expected wins equal observed wins
    w = mats.sum(axis=0)
    games = w + w.T
    p = 1 / (1 + np.exp(-(fitted[:, None] - fitted[None, :])))
    assert np.allclose((games * p).sum(axis=1), w.sum(axis=1), atol=1e-3 * games.sum())


def test_unbeaten_model_stays_finite():
    wins = np.array([[0, 10, 10], [0, 0, 5], [0, 5, 0.0]])
    r = stats.fit_bradley_terry(wins)
    assert np.all(np.isfinite(r)) and r[0] > r[1] + 2


def test_bootstrap_intervals_cover_the_truth_about_95_percent():
    truth = np.array([-0.6, 0.0, 0.2, 0.4])
    truth -= truth.mean()
    elo_truth = stats.elo(truth)
    sig = 1 / (1 + np.exp(-(truth[:, None] - truth[None, :])))
    np.fill_diagonal(sig, np.nan)
    ties = 0.1
    field_truth = np.nanmean(ties * 0.5 + (1 - ties) * sig, axis=1)
    rng = np.random.default_rng(1)
    covered_elo, covered_rate, total = 0, 0, 0
    for sim in range(150):
        board = stats.leaderboard(_simulate(rng, truth, prompts=30, tie_rate=ties), rounds=300, seed=sim)
        for row in board["rows"]:
            i = int(row["model"][1:])
            covered_elo += row["elo_low"] <= elo_truth[i] <= row["elo_high"]
            covered_rate += row["win_rate_low"] <= field_truth[i] <= row["win_rate_high"]
            total += 1
    assert 0.88 <= covered_elo / total <= 0.99, covered_elo / total
    assert 0.88 <= covered_rate / total <= 0.99, covered_rate / total


def test_static_winner_warning():
    rng = np.random.default_rng(0)
    static = [(0.01, 0.05) if rng.random() < 0.8 else (0.05, 0.01) for _ in range(60)]
    fair = [(0.01, 0.05) if rng.random() < 0.5 else (0.05, 0.01) for _ in range(60)]
    assert stats.static_winner_check(static)["warning"]
    assert not stats.static_winner_check(fair)["warning"]


def _prefer_a_judge(campaign, item, annotator):
    if campaign.is_pairwise:
        return {aspect: "a" for aspect in campaign.spec.aspects}
    return {"grade": "pass", "tags": []}


def test_agreement_is_measured_on_unswapped_labels(tmp_path):
    campaign = build_campaign(tmp_path, prompts=8, models=("m1", "m2", "m3"), annotators=4, labels_per_item=4)
    store = AnswerStore(tmp_path / "db.sqlite")
    answer_with_judge(campaign, store, _prefer_a_judge)
    answers = store.answers()
    assert any(a.swapped for a in answers) and not all(a.swapped for a in answers)
    report = stats.compute(campaign, answers, rounds=50, motion=lambda vid: 0.0)
    overall = report["agreement"]["overall"]
    assert overall["percent_agreement"] == 1.0
    assert overall["fleiss_raters"] == 4
    # every annotator always picks the same canonical side, so the left share is the share of unswapped items
    left = report["position_bias"]["left_share"]
    assert left == pytest.approx(np.mean([not a.swapped for a in answers]))


def test_position_bias_and_static_winners_are_flagged(tmp_path):
    campaign = build_campaign(tmp_path, prompts=12, models=("m1", "m2"), annotators=3, labels_per_item=3)
    store = AnswerStore(tmp_path / "db.sqlite")

    def left_judge(campaign, item, annotator):  # always the clip shown on the left
        from mugv.annotate.assign import is_swapped

        side = "b" if is_swapped(campaign, annotator, item.id) else "a"
        return {aspect: side for aspect in campaign.spec.aspects}

    answer_with_judge(campaign, store, left_judge)
    report = stats.compute(campaign, store.answers(), rounds=50)
    assert report["position_bias"]["left_share"] == 1.0 and report["position_bias"]["p_value"] < 1e-6
    assert not report["static_winner"]["warning"]

    store2 = AnswerStore(tmp_path / "db2.sqlite")

    def static_judge(campaign, item, annotator):  # m1 (1 px a frame) always beats m2 (2 px a frame)
        a_model = campaign.videos[item.videos[0]].model
        return {aspect: "a" if a_model == "m1" else "b" for aspect in campaign.spec.aspects}

    answer_with_judge(campaign, store2, static_judge)
    report = stats.compute(campaign, store2.answers(), rounds=50)
    assert report["static_winner"]["warning"]
    board = report["leaderboard"]["overall"]
    assert board["rows"][0]["model"] == "m1" and board["rows"][0]["win_rate"] == 1.0


def test_grade_rates(tmp_path):
    campaign = build_campaign(tmp_path, mode="grade", prompts=10, models=("m1", "m2"), annotators=2,
                              labels_per_item=2)
    store = AnswerStore(tmp_path / "db.sqlite")

    def judge(campaign, item, annotator):
        model = campaign.videos[item.videos[0]].model
        return {"grade": "high_quality" if model == "m1" else "fail", "tags": [] if model == "m1" else ["flicker"]}

    answer_with_judge(campaign, store, judge)
    report = stats.compute(campaign, store.answers())
    rates = {r["model"]: r for r in report["rates"]}
    assert rates["m1"]["pass_rate"] == 1.0 and rates["m1"]["high_quality_rate"] == 1.0
    assert rates["m2"]["pass_rate"] == 0.0
    assert rates["m2"]["pass_high"] == pytest.approx(stats.wilson_interval(0, 20)[1])
    assert report["agreement"]["grade"]["percent_agreement"] == 1.0
    assert report["tags"] == {"flicker": 20}
