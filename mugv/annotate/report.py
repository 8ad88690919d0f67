"""The stats of a campaign as tables: rendered to text (CLI), HTML (stats page) and the dataset card."""

from __future__ import annotations

import html
import math
from importlib import resources
from string import Template

from mugv.annotate.campaign import ASPECTS, Campaign

Table = tuple[str, list[str], list[list[str]]]


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f} %"


def _num(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def warnings(stats: dict) -> list[str]:
    out = []
    bias = stats.get("position_bias", {})
    if bias.get("votes", 0) >= 20 and bias.get("p_value", 1) < 0.05:
        out.append(f"Position bias: the left clip wins {_pct(bias['left_share'])} of decided votes "
                   f"(p = {bias['p_value']:.3g}).")
    static = stats.get("static_winner", {})
    if static.get("warning"):
        out.append(f"Winners are the more static clip in {_pct(static['static_winner_share'])} of "
                   f"{static['votes']} decided votes (p = {static['p_value']:.3g}): annotators may be rewarding "
                   "clips that barely move.")
    for row in stats.get("annotators", []):
        if row["gold"] >= 3 and row["gold_accuracy"] < 0.7:
            out.append(f"Annotator {row['annotator']} answered {_pct(row['gold_accuracy'])} of {row['gold']} gold "
                       "items correctly: check their labels before using them.")
    return out


def tables(stats: dict) -> list[Table]:
    out: list[Table] = []
    for aspect, board in stats.get("leaderboard", {}).items():
        if not board:
            continue
        rows = [[r["model"], f"{r['elo']:.0f}", f"{r['elo_low']:.0f} - {r['elo_high']:.0f}", _pct(r["win_rate"]),
                 f"{_pct(r['win_rate_low'])} - {_pct(r['win_rate_high'])}", f"{r['wins']} / {r['ties']} / {r['losses']}"]
                for r in board["rows"]]
        out.append((f"Leaderboard: {ASPECTS.get(aspect, aspect)} ({board['battles']} votes, {board['prompts']} prompts)",
                    ["model", "Bradley-Terry (Elo)", "95 % interval", "win rate", "95 % interval", "W / T / L"], rows))
        models = board["models"]
        out.append((f"Head to head: {ASPECTS.get(aspect, aspect)} (row beats column, ties count half)",
                    ["", *models], [[m, *(_pct(x) if x is not None else "-" for x in board["head_to_head"][i])]
                                    for i, m in enumerate(models)]))
    if "rates" in stats:
        out.append(("Pass and high-quality rate (Wilson 95 % intervals over answers)",
                    ["model", "answers", "pass rate", "95 % interval", "high-quality rate", "95 % interval"],
                    [[r["model"], str(r["answers"]), _pct(r["pass_rate"]), f"{_pct(r['pass_low'])} - {_pct(r['pass_high'])}",
                      _pct(r["high_quality_rate"]), f"{_pct(r['high_quality_low'])} - {_pct(r['high_quality_high'])}"]
                     for r in stats["rates"]]))
    if "outcomes" in stats:
        kinds = ["a", "b", "tie", "both_bad"]
        out.append(("Answers per aspect (canonical: a = the item's first video)", ["aspect", *kinds],
                    [[ASPECTS.get(k, k), *(str(v.get(c, 0)) for c in kinds)] for k, v in stats["outcomes"].items()]))
    if stats.get("agreement"):
        rows = [[name, str(a.get("items", 0)), _pct(a.get("percent_agreement")), _num(a.get("cohen_kappa_mean")),
                 _num(a.get("fleiss_kappa")), _num(a.get("krippendorff_nominal")), _num(a.get("krippendorff_ordinal")),
                 _num(a.get("gwet_ac1"))] for name, a in stats["agreement"].items()]
        out.append(("Agreement on un-swapped labels (items with 2+ labels)",
                    ["labels", "items", "raw agreement", "Cohen kappa (mean of pairs)", "Fleiss kappa",
                     "Krippendorff alpha (nominal)", "alpha (ordinal)", "Gwet AC1"], rows))
    if "position_bias" in stats:
        b = stats["position_bias"]
        out.append(("Position bias (decided overall votes)", ["votes", "left share", "95 % interval", "p (binomial vs 1/2)"],
                    [[str(b["votes"]), _pct(b["left_share"]), f"{_pct(b['low'])} - {_pct(b['high'])}", _num(b["p_value"])]]))
    if "static_winner" in stats:
        s = stats["static_winner"]
        out.append(("Static-winner check (motion of winner vs loser)", ["decided votes", "winner is more static", "p"],
                    [[str(s["votes"]), _pct(s["static_winner_share"]), _num(s["p_value"])]]))
    if stats.get("time"):
        t = stats["time"]
        out.append(("Time per item", ["median", "10th pct", "90th pct", "under 2 s", "watched both to the end"],
                    [[f"{t['median_seconds']:.1f} s", f"{t['p10_seconds']:.1f} s", f"{t['p90_seconds']:.1f} s",
                      _pct(t["too_fast_share"]), _pct(t["full_watch_share"])]]))
    out.append(("Annotators", ["name", "answers", "gold items", "gold accuracy", "median time", "left share"],
                [[r["annotator"], str(r["answers"]), str(r["gold"]), _pct(r["gold_accuracy"]),
                  "-" if r["median_seconds"] is None else f"{r['median_seconds']:.1f} s", _pct(r.get("left_share"))]
                 for r in stats.get("annotators", [])]))
    return out


def header(stats: dict) -> str:
    return (f"campaign {stats['campaign']} ({stats['mode']}, hash {stats['campaign_hash']}): {stats['answers']} answers "
            f"on {stats['items']} items, {stats['labels_per_item']} labels wanted per item")


def render_markdown(stats: dict) -> str:
    parts = []
    for w in warnings(stats):
        parts.append(f"**Warning.** {w}\n")
    for title, head, rows in tables(stats):
        parts.append(f"### {title}\n")
        parts.append("| " + " | ".join(head) + " |")
        parts.append("|" + "---|" * len(head))
        parts.extend("| " + " | ".join(row) + " |" for row in rows)
        parts.append("")
    return "\n".join(parts)


def render_html(stats: dict) -> str:
    body = [f"<p>{html.escape(header(stats))}</p>"]
    body += [f'<p class="warning">{html.escape(w)}</p>' for w in warnings(stats)]
    for title, head, rows in tables(stats):
        body.append(f"<h2>{html.escape(title)}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                    + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                                        for row in rows) + "</table>")
    package = resources.files("mugv.annotate")
    page = package.joinpath("templates/stats.html").read_text()
    css = package.joinpath("static/annotate.css").read_text()
    return Template(page).substitute(title=html.escape(stats["campaign"] or "campaign"), body="\n".join(body), css=css)


def dataset_card(campaign: Campaign, counts: dict[str, int], stats: dict | None, min_agreement: float) -> str:
    spec = campaign.spec
    lines = [
        f"# {spec.name or 'mugv annotation campaign'}",
        "",
        f"Human labels collected with `mugv annotate` ({spec.mode} mode), campaign hash `{campaign.hash}`.",
        f"{len(campaign.items)} items, {len(spec.videos)} videos, {len(spec.annotators)} annotators, "
        f"{spec.labels_per_item} labels wanted per item. Left/right placement was random per annotator and item; "
        "every label here is un-swapped (a = the item's first video).",
        "",
        "## Files",
        "",
        f"- `dpo.jsonl` ({counts.get('dpo.jsonl', 0)} rows): preference pairs `prompt`, `chosen`, `rejected` "
        f"(paths relative to this folder), one row per pair and aspect whose plurality answer is a side and holds at "
        f"least {_pct(min_agreement)} of the votes.",
        f"- `dpo_ties.jsonl` ({counts.get('dpo_ties.jsonl', 0)} rows): pairs whose consensus is a tie or both bad; never DPO pairs.",
        f"- `kto.jsonl` ({counts.get('kto.jsonl', 0)} rows): unpaired labels `prompt`, `completion`, `label`; "
        "from grades (pass or high quality = true) and, in pairwise campaigns, both clips of a pair judged "
        "\"both bad\" overall (label false, `source` = `pair_both_bad`).",
        f"- `battles.jsonl` ({counts.get('battles.jsonl', 0)} rows): one row per vote and aspect between two models, "
        "FastChat style (`winner` = model_a / model_b / tie / tie (bothbad)).",
        f"- `raw_annotations.jsonl` ({counts.get('raw_annotations.jsonl', 0)} rows): every answer as stored, with "
        "screen side, swap flag, timing and gold flags.",
        "",
        "Format details: docs/annotate.md, section \"Preference data format\".",
        "",
        "## Guidelines given to annotators",
        "",
        spec.instructions or "(none written in the campaign file)",
        "",
    ]
    if stats:
        lines += ["## Statistics", "", header(stats), "", render_markdown(stats)]
    return "\n".join(lines) + "\n"
