"""Statistics of a campaign's answers: win rates, Bradley-Terry scores, pass rates, agreement, biases.

Formulas follow shared/reference/ANNOTATION-EVAL.md part C. Intervals over votes on the same
prompt are correlated, so win rates and Bradley-Terry scores are bootstrapped over prompts
(clusters), not over single votes. Agreement is always computed on canonical (un-swapped) labels.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as scipy_stats

from mugv.annotate.campaign import GRADES, Campaign
from mugv.annotate.storage import Answer

Z95 = 1.959963984540054
ELO_BASE, ELO_SCALE = 1000.0, 400.0 / math.log(10.0)
DECIDED = ("a", "b")


# --------------------------------------------------------------------------------------------
# Proportions and pairwise models
# --------------------------------------------------------------------------------------------


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when there are no trials."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


def fit_bradley_terry(wins: np.ndarray, ridge: float = 1e-4, iterations: int = 100) -> np.ndarray:
    """Bradley-Terry log-strengths r (sum zero) maximising sum_ij W_ij log sigmoid(r_i - r_j) - ridge' |r|^2.

    `wins` is [M, M] or a batch [B, M, M]; W_ij counts i's wins over j, a tie adding 1/2 to both.
    ridge' = ridge * (total games of the batch element) keeps an unbeaten model finite. Damped
    Newton: the objective is strictly concave, so it converges from zero in a few steps."""
    w = np.asarray(wins, dtype=np.float64)
    single = w.ndim == 2
    if single:
        w = w[None]
    batch, m, _ = w.shape
    games = w + w.transpose(0, 2, 1)
    lam = ridge * np.maximum(games.sum(axis=(1, 2)) / 2, 1.0)
    r = np.zeros((batch, m))
    eye = np.eye(m)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(r[:, :, None] - r[:, None, :])))
        grad = (w - games * p).sum(axis=2) - 2 * lam[:, None] * r
        curvature = games * p * (1 - p)
        hess = curvature - eye * (curvature.sum(axis=2) + 2 * lam[:, None])[:, :, None]
        step = np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        step = np.clip(step, -2.0, 2.0)
        r = r - step
        if np.max(np.abs(step)) < 1e-10:
            break
    r -= r.mean(axis=1, keepdims=True)
    return r[0] if single else r


def elo(r: np.ndarray) -> np.ndarray:
    """Log-strengths on the Elo scale: P(i beats j) = 1 / (1 + 10^(-(R_i - R_j) / 400))."""
    return ELO_BASE + ELO_SCALE * r


def battle_matrices(battles: Sequence[tuple[str, str, str, str]], models: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Per-prompt win matrices from battles (prompt_id, model_a, model_b, outcome in a / b / tie / both_bad)."""
    index = {m: i for i, m in enumerate(models)}
    prompts = sorted({b[0] for b in battles})
    pindex = {p: i for i, p in enumerate(prompts)}
    mats = np.zeros((len(prompts), len(models), len(models)))
    for prompt, a, b, outcome in battles:
        p, i, j = pindex[prompt], index[a], index[b]
        if outcome == "a":
            mats[p, i, j] += 1
        elif outcome == "b":
            mats[p, j, i] += 1
        else:
            mats[p, i, j] += 0.5
            mats[p, j, i] += 0.5
    return prompts, mats


def prompt_bootstrap(mats: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """[rounds, M, M] win matrices, each the sum over prompts drawn with replacement."""
    n = mats.shape[0]
    draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=rounds).astype(np.float64)
    return np.einsum("bp,pij->bij", draws, mats)


def leaderboard(battles: Sequence[tuple[str, str, str, str]], rounds: int = 1000, seed: int = 0) -> dict:
    """Bradley-Terry (Elo scale) and win rate against the field, both with 95 % prompt-bootstrap intervals,
    plus the head-to-head win-rate matrix."""
    models = sorted({b[1] for b in battles} | {b[2] for b in battles})
    if len(models) < 2:
        return {}
    prompts, mats = battle_matrices(battles, models)
    total = mats.sum(axis=0)
    boot = prompt_bootstrap(mats, rounds, seed)
    score = elo(fit_bradley_terry(total))
    boot_score = elo(fit_bradley_terry(boot))
    with np.errstate(invalid="ignore", divide="ignore"):
        field_rate = total.sum(axis=1) / (total + total.T).sum(axis=1)
        boot_rate = boot.sum(axis=2) / (boot + boot.transpose(0, 2, 1)).sum(axis=2)
        head = total / (total + total.T)
    outcomes = Counter()
    for _, a, b, outcome in battles:
        for model, mine in ((a, "a"), (b, "b")):
            outcomes[model, "win" if outcome == mine else "loss" if outcome in DECIDED else "tie"] += 1
    rows = []
    for i, m in enumerate(models):
        rows.append({
            "model": m,
            "elo": float(score[i]),
            "elo_low": float(np.percentile(boot_score[:, i], 2.5)),
            "elo_high": float(np.percentile(boot_score[:, i], 97.5)),
            "win_rate": float(field_rate[i]),
            "win_rate_low": float(np.nanpercentile(boot_rate[:, i], 2.5)),
            "win_rate_high": float(np.nanpercentile(boot_rate[:, i], 97.5)),
            "wins": outcomes[m, "win"], "ties": outcomes[m, "tie"], "losses": outcomes[m, "loss"],
        })
    rows.sort(key=lambda row: -row["elo_low"])
    return {
        "models": models,
        "prompts": len(prompts),
        "battles": len(battles),
        "rows": rows,
        "head_to_head": [[None if math.isnan(x) else float(x) for x in row] for row in head],
    }


# --------------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------------


def cohen_kappa(first: Sequence, second: Sequence) -> float:
    """Cohen's kappa of two raters over the same items: (p_o - p_e) / (1 - p_e)."""
    if len(first) != len(second) or not first:
        raise ValueError("cohen_kappa needs two equally long, non-empty label lists")
    n = len(first)
    p_o = sum(x == y for x, y in zip(first, second)) / n
    c1, c2 = Counter(first), Counter(second)
    p_e = sum(c1[c] * c2[c] for c in c1) / (n * n)
    return 1.0 if p_e == 1 else (p_o - p_e) / (1 - p_e)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from [N items, C categories] counts, every row summing to the same m raters."""
    counts = np.asarray(counts, dtype=np.float64)
    m = counts.sum(axis=1)
    if counts.shape[0] == 0 or not np.all(m == m[0]) or m[0] < 2:
        raise ValueError("fleiss_kappa needs items rated by the same number (>= 2) of raters")
    m = m[0]
    per_item = ((counts**2).sum(axis=1) - m) / (m * (m - 1))
    p_bar = per_item.mean()
    p_c = counts.sum(axis=0) / counts.sum()
    p_e = float((p_c**2).sum())
    return 1.0 if p_e == 1 else float((p_bar - p_e) / (1 - p_e))


def krippendorff_alpha(units: Sequence[Sequence], metric: str = "nominal", order: Sequence | None = None) -> float:
    """Krippendorff's alpha from the values each unit received (any number of raters, missing allowed).

    metric: nominal, ordinal (needs `order`, lowest first) or interval (numeric values).
    alpha = 1 - D_o / D_e over the coincidence matrix of pairable values (units with >= 2 values)."""
    pairable = [list(u) for u in units if len(u) >= 2]
    present = {v for u in pairable for v in u}
    values = [v for v in order if v in present] if order is not None else sorted(present)
    index = {v: i for i, v in enumerate(values)}
    k = len(values)
    coincidence = np.zeros((k, k))
    for unit in pairable:
        c = Counter(unit)
        m = len(unit)
        for v1, n1 in c.items():
            for v2, n2 in c.items():
                pairs = n1 * (n2 - 1) if v1 == v2 else n1 * n2
                coincidence[index[v1], index[v2]] += pairs / (m - 1)
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    if n < 2 or k < 2:
        return float("nan")
    if metric == "nominal":
        delta = 1.0 - np.eye(k)
    elif metric == "interval":
        x = np.array(values, dtype=np.float64)
        delta = (x[:, None] - x[None, :]) ** 2
    elif metric == "ordinal":
        if order is None:
            raise ValueError("ordinal alpha needs the category order")
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        delta = np.zeros((k, k))
        for c in range(k):
            for d in range(k):
                lo, hi = min(c, d), max(c, d)
                delta[c, d] = (cum[hi + 1] - cum[lo] - (n_c[c] + n_c[d]) / 2) ** 2
    else:
        raise ValueError(f"unknown alpha metric {metric!r}")
    d_o = (coincidence * delta).sum() / n
    d_e = (np.outer(n_c, n_c) * delta).sum() / (n * (n - 1))
    return 1.0 if d_e == 0 else float(1 - d_o / d_e)


def gwet_ac1(units: Sequence[Sequence], categories: Sequence) -> float:
    """Gwet's AC1 for any number of raters (robust to skewed prevalence, where kappa is paradoxically low)."""
    rated = [list(u) for u in units if len(u) >= 2]
    if not rated or len(categories) < 2:
        return float("nan")
    agree = []
    totals = Counter()
    for unit in rated:
        c = Counter(unit)
        m = len(unit)
        agree.append(sum(n * (n - 1) for n in c.values()) / (m * (m - 1)))
        for v, n in c.items():
            totals[v] += n / m
    p_a = float(np.mean(agree))
    pi = np.array([totals[c] / len(rated) for c in categories])
    p_e = float((pi * (1 - pi)).sum() / (len(categories) - 1))
    return 1.0 if p_e == 1 else (p_a - p_e) / (1 - p_e)


def agreement(by_item: dict[str, dict[str, str]], categories: Sequence, order: Sequence | None = None) -> dict:
    """Raw agreement, Cohen (mean over annotator pairs), Fleiss (items with the modal rater count),
    Krippendorff nominal (and ordinal when `order` is given), Gwet AC1. `by_item`: item -> annotator -> label."""
    units = [list(labels.values()) for labels in by_item.values() if len(labels) >= 2]
    out: dict = {"items": len(units), "ratings": sum(len(u) for u in units)}
    if not units:
        return out
    same = [sum(n * (n - 1) for n in Counter(u).values()) / (len(u) * (len(u) - 1)) for u in units]
    out["percent_agreement"] = float(np.mean(same))
    out["krippendorff_nominal"] = krippendorff_alpha(units, "nominal")
    if order is not None:
        out["krippendorff_ordinal"] = krippendorff_alpha(units, "ordinal", order)
    out["gwet_ac1"] = gwet_ac1(units, categories)
    modal = Counter(len(u) for u in units).most_common(1)[0][0]
    rows = [[Counter(u)[c] for c in categories] for u in units if len(u) == modal]
    if len(rows) >= 2:
        out["fleiss_kappa"] = fleiss_kappa(np.array(rows))
        out["fleiss_raters"] = modal
        out["fleiss_items"] = len(rows)
    pair_kappas = []
    annotators = sorted({a for labels in by_item.values() for a in labels})
    for i, x in enumerate(annotators):
        for y in annotators[i + 1:]:
            common = [labels for labels in by_item.values() if x in labels and y in labels]
            if len(common) >= 5:
                pair_kappas.append(cohen_kappa([c[x] for c in common], [c[y] for c in common]))
    if pair_kappas:
        out["cohen_kappa_mean"] = float(np.mean(pair_kappas))
        out["cohen_pairs"] = len(pair_kappas)
    return out


# --------------------------------------------------------------------------------------------
# Whole-campaign report
# --------------------------------------------------------------------------------------------


def clip_motion(path) -> float:
    """How much a clip moves: VBench's dynamic-degree reading (mugv.eval), as a continuous value
    where 1 is VBench's bar for a moving frame pair."""
    from mugv.eval.suite import dynamic_degree_of_file

    return float(dynamic_degree_of_file(path).relative_motion)


def static_winner_check(pairs: Sequence[tuple[float, float]], threshold: float = 0.6) -> dict:
    """pairs: (motion of the winner, motion of the loser) per decided vote. Warns when winners are
    the more static clip clearly more often than half the time (one-sided binomial test)."""
    informative = [(w, l) for w, l in pairs if abs(w - l) > 1e-6]
    static_wins = sum(w < l for w, l in informative)
    n = len(informative)
    share = static_wins / n if n else float("nan")
    p = float(scipy_stats.binomtest(static_wins, n, 0.5, alternative="greater").pvalue) if n else 1.0
    return {"votes": n, "static_winner_share": share, "p_value": p,
            "warning": bool(n >= 10 and share > threshold and p < 0.05)}


def compute(campaign: Campaign, answers: Sequence[Answer], rounds: int = 1000,
            motion: Callable[[str], float] | None = None) -> dict:
    """Every figure of the stats page, as plain JSON-able values. `motion(video_id)` defaults to
    `clip_motion` of the video file (decoded once per video)."""
    report: dict = {"campaign": campaign.spec.name, "campaign_hash": campaign.hash, "mode": campaign.mode,
                    "answers": len(answers), "items": len(campaign.items),
                    "labels_per_item": campaign.spec.labels_per_item}
    regular = [a for a in answers if not a.is_gold]
    report["annotators"] = annotator_table(campaign, answers)
    report["time"] = timing(answers)
    if campaign.is_pairwise:
        report.update(pairwise_report(campaign, regular, rounds, motion))
    else:
        report.update(grade_report(campaign, regular))
    return report


def annotator_table(campaign: Campaign, answers: Sequence[Answer]) -> list[dict]:
    rows = []
    by_annotator: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        by_annotator[a.annotator].append(a)
    for annotator in campaign.spec.annotators:
        mine = by_annotator.get(annotator.name, [])
        gold = [a for a in mine if a.is_gold]
        correct = sum(_gold_correct(a) for a in gold)
        row = {"annotator": annotator.name, "answers": len(mine), "gold": len(gold),
               "gold_accuracy": correct / len(gold) if gold else None,
               "median_seconds": float(np.median([a.time_ms for a in mine]) / 1000) if mine else None}
        sides = [a.screen.get("overall") for a in mine if a.screen.get("overall") in ("left", "right")]
        if sides:
            row["left_share"] = sides.count("left") / len(sides)
        rows.append(row)
    return rows


def _gold_correct(answer: Answer) -> bool:
    if answer.grade:
        return answer.grade == answer.gold_expected
    got = answer.canonical.get("overall")
    return got == answer.gold_expected or (answer.gold_expected == "tie" and got in ("tie", "both_bad"))


def timing(answers: Sequence[Answer], too_fast_ms: int = 2000) -> dict:
    if not answers:
        return {}
    times = np.array([a.time_ms for a in answers], dtype=np.float64) / 1000
    return {"median_seconds": float(np.median(times)), "p10_seconds": float(np.percentile(times, 10)),
            "p90_seconds": float(np.percentile(times, 90)),
            "too_fast_share": float(np.mean(times < too_fast_ms / 1000)),
            "full_watch_share": float(np.mean([a.full_watch for a in answers]))}


def position_bias(answers: Sequence[Answer]) -> dict:
    sides = [a.screen.get("overall") for a in answers if a.screen.get("overall") in ("left", "right")]
    n = len(sides)
    left = sides.count("left")
    lo, hi = wilson_interval(left, n)
    p = float(scipy_stats.binomtest(left, n, 0.5).pvalue) if n else 1.0
    return {"votes": n, "left_share": left / n if n else float("nan"), "low": lo, "high": hi, "p_value": p}


def pairwise_report(campaign: Campaign, answers: Sequence[Answer], rounds: int,
                    motion: Callable[[str], float] | None) -> dict:
    out: dict = {"position_bias": position_bias(answers)}
    items = campaign.item_by_id
    out["outcomes"] = {aspect: dict(Counter(a.canonical.get(aspect) for a in answers))
                       for aspect in campaign.spec.aspects}
    order = ["a", "tie", "b"]
    out["agreement"] = {}
    for aspect in campaign.spec.aspects:
        by_item: dict[str, dict[str, str]] = defaultdict(dict)
        for a in answers:
            value = a.canonical[aspect]
            by_item[a.item][a.annotator] = "tie" if value == "both_bad" else value
        out["agreement"][aspect] = agreement(by_item, order, order)
    models = {v.model for v in campaign.spec.videos if v.model}
    if len(models) >= 2:
        out["leaderboard"] = {}
        for aspect in campaign.spec.aspects:
            battles = []
            for a in answers:
                x, y = (campaign.videos[v] for v in items[a.item].videos)
                if x.model and y.model and x.model != y.model:
                    battles.append((items[a.item].prompt_id, x.model, y.model, a.canonical[aspect]))
            out["leaderboard"][aspect] = leaderboard(battles, rounds, campaign.spec.seed)
    if motion is None:
        cache: dict[str, float] = {}

        def motion(video_id: str) -> float:
            if video_id not in cache:
                cache[video_id] = clip_motion(campaign.video_path(video_id))
            return cache[video_id]

    decided = []
    for a in answers:
        winner = a.canonical.get("overall")
        if winner in DECIDED:
            x, y = items[a.item].videos
            w, l = (x, y) if winner == "a" else (y, x)
            decided.append((motion(w), motion(l)))
    out["static_winner"] = static_winner_check(decided)
    return out


def grade_report(campaign: Campaign, answers: Sequence[Answer]) -> dict:
    out: dict = {}
    per_model: dict[str, list[str]] = defaultdict(list)
    for a in answers:
        video = campaign.videos[campaign.item_by_id[a.item].videos[0]]
        per_model[video.model or "(all)"].append(a.grade)
        if video.model:
            per_model["(all)"].append(a.grade)
    rates = []
    for model, grades in sorted(per_model.items()):
        n = len(grades)
        passed = sum(g in ("pass", "high_quality") for g in grades)
        high = grades.count("high_quality")
        rates.append({"model": model, "answers": n, "pass_rate": passed / n,
                      "pass_low": wilson_interval(passed, n)[0], "pass_high": wilson_interval(passed, n)[1],
                      "high_quality_rate": high / n, "high_quality_low": wilson_interval(high, n)[0],
                      "high_quality_high": wilson_interval(high, n)[1]})
    out["rates"] = rates
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for a in answers:
        by_item[a.item][a.annotator] = a.grade
    out["agreement"] = {"grade": agreement(by_item, GRADES, GRADES)}
    for tag in campaign.spec.defect_tags:
        by_tag: dict[str, dict[str, str]] = defaultdict(dict)
        for a in answers:
            by_tag[a.item][a.annotator] = "yes" if tag in a.tags else "no"
        if any(tag in a.tags for a in answers):
            out["agreement"][f"tag: {tag}"] = agreement(by_tag, ("yes", "no"))
    out["tags"] = dict(Counter(t for a in answers for t in a.tags).most_common())
    return out
