"""What `mugv eval` writes: `results.jsonl` (one line per video), `summary.json` (the set), and
`report.html` (tables, distributions and the worst videos as filmstrips); and the side-by-side
comparison of two such summaries.

Every number is written beside its metric's `backend` (`official` / `proxy`) and what it is
`comparable_to`.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mugv.config import ConfigError
from mugv.eval import vbench
from mugv.eval.scores import OFFICIAL, Metric, Score, SetMetric, summarise
from mugv.eval.suite import VideoResult

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
REPORT = "report.html"
WORST_SHOWN = 3

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.3rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.9rem; }
td, th { border: 1px solid #ccc; padding: 0.2rem 0.5rem; vertical-align: top; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.official { color: #1a7f37; font-weight: 600; } .proxy { color: #9a6700; font-weight: 600; }
.muted { color: #777; } .better { color: #1a7f37; } .worse { color: #c62828; }
.hists { display: flex; flex-wrap: wrap; gap: 1rem; } .hists figure { margin: 0; }
figcaption { font-size: 0.8rem; } img.strip { display: block; max-width: 100%; }
"""


def _json_value(value: object) -> object:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, (np.floating, np.integer)):
        return _json_value(value.item())
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def _score_record(score: Score, info: dict) -> dict:
    record = {"value": score.value, **info}
    if score.detail:
        record["detail"] = score.detail
    if score.skipped:
        record["skipped"] = score.skipped
    return record


def result_record(result: VideoResult, metrics: list[Metric]) -> dict:
    """The JSONL line of one video."""
    record = {"video": result.name, "path": result.path, "prompt": result.prompt}
    if result.error:
        return {**record, "error": result.error}
    frames, height, width = result.shape
    record.update(frames=frames, height=height, width=width, fps=result.fps, seconds=result.seconds)
    record["metrics"] = {m.name: _score_record(result.scores[m.name], {"backend": m.backend, "comparable_to": m.comparable_to})
                         for m in metrics if m.name in result.scores}
    return _json_value(record)


def summary(results: list[VideoResult], metrics: list[Metric], set_metrics: list[SetMetric],
            set_scores: dict[str, Score], source: str) -> dict:
    """The set: per-metric mean / spread with backend and comparability, set metrics, VBench
    totals (or why there are none), failures and time per video."""
    scored = [r for r in results if not r.error]
    per_metric = {}
    for metric in metrics:
        scores = [r.scores[metric.name] for r in scored]
        skipped = sorted({s.skipped for s in scores if s.skipped})
        per_metric[metric.name] = {**summarise([s.value for s in scores]), **metric.info(),
                                   **({"skipped": skipped} if skipped else {})}
        if metric.vbench_dimension:
            per_metric[metric.name]["vbench_dimension"] = metric.vbench_dimension
    sets = {m.name: _score_record(set_scores[m.name], m.info()) for m in set_metrics}
    dimension_values, dimension_backends = {}, {}
    # an official measurement of a dimension wins over a proxy of it
    for metric in sorted((m for m in metrics if m.vbench_dimension), key=lambda m: m.backend == OFFICIAL):
        if per_metric[metric.name]["mean"] is not None:
            dimension_values[metric.vbench_dimension] = per_metric[metric.name]["mean"]
            dimension_backends[metric.vbench_dimension] = metric.backend
    seconds = {}
    for name in dict.fromkeys(k for r in scored for k in r.seconds):
        seconds[name] = float(np.mean([r.seconds.get(name, 0.0) for r in scored]))
    return _json_value({
        "source": source,
        "videos": len(results),
        "scored": len(scored),
        "failed": {r.name: r.error for r in results if r.error},
        "metrics": per_metric,
        "set_metrics": sets,
        "vbench": {kind: vbench.total(kind, dimension_values, dimension_backends) for kind in vbench.TOTALS},
        "seconds_per_video": {**seconds, "total": float(sum(seconds.values()))},
    })


def write_results(out: Path, results: list[VideoResult], metrics: list[Metric], set_metrics: list[SetMetric],
                  set_scores: dict[str, Score], source: str) -> dict:
    """results.jsonl, summary.json, report.html (+ strips/) in `out`; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / RESULTS, "w") as f:
        for result in results:
            f.write(json.dumps(result_record(result, metrics)) + "\n")
    figures = summary(results, metrics, set_metrics, set_scores, source)
    (out / SUMMARY).write_text(json.dumps(figures, indent=2))
    write_report(out, results, metrics, figures)
    return figures


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _backend(backend: str) -> str:
    return f"<span class='{html.escape(backend)}'>{html.escape(backend)}</span>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already."""
    head = "".join(f"<th>{h}</th>" for h in header)
    return "<table><tr>" + head + "</tr>" + "".join("<tr>" + "".join(row) + "</tr>" for row in rows) + "</table>"


def _num(value: object) -> str:
    return f"<td class='num'>{html.escape(_fmt(value))}</td>"


def _text(value: object) -> str:
    return f"<td>{html.escape(_fmt(value))}</td>"


def histogram_svg(series: list[tuple[str, list[float]]], title: str, bins: int = 12) -> str:
    """Overlaid histograms of one metric (one colour per series) as inline SVG."""
    values = [v for _, vs in series for v in vs]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    counts = [np.histogram(vs, edges)[0] for _, vs in series]
    tallest = max(1, max(int(c.max()) for c in counts))
    width, height, colours = 260, 110, ["#3465a4", "#c17d11"]
    bar = width / bins
    parts = [f"<svg width='{width}' height='{height + 30}' role='img'><title>{html.escape(title)}</title>"]
    for k, count in enumerate(counts):
        for i, c in enumerate(count):
            h = height * c / tallest
            parts.append(f"<rect x='{i * bar + 1:.1f}' y='{height - h:.1f}' width='{bar - 2:.1f}' height='{h:.1f}' "
                         f"fill='{colours[k % 2]}' fill-opacity='{0.85 if len(series) == 1 else 0.5}'/>")
    parts.append(f"<text x='0' y='{height + 14}' font-size='11'>{_fmt(float(low))}</text>"
                 f"<text x='{width}' y='{height + 14}' font-size='11' text-anchor='end'>{_fmt(float(high))}</text>")
    legend = "  ".join(f"{name} (n={len(vs)})" for name, vs in series)
    parts.append(f"<text x='0' y='{height + 28}' font-size='11'>{html.escape(legend)}</text></svg>")
    return "".join(parts)


def _save_strip(out: Path, result: VideoResult) -> str:
    folder = out / "strips"
    folder.mkdir(exist_ok=True)
    path = folder / f"{result.name}.png"
    if not path.exists() and result.strip is not None:
        Image.fromarray(result.strip).save(path)
    return html.escape(os.path.relpath(path, out))


def _video_link(out: Path, result: VideoResult) -> str:
    return f"<a href='{html.escape(os.path.relpath(result.path, out))}'>{html.escape(result.name)}</a>"


def _metric_rows(figures: dict) -> list[list[str]]:
    rows = []
    for name, m in figures["metrics"].items():
        better = "higher" if m["higher_is_better"] else "lower"
        note = f"<br><span class='muted'>skipped: {html.escape('; '.join(m['skipped']))}</span>" if m.get("skipped") else ""
        rows.append([f"<td><b>{html.escape(name)}</b><br><span class='muted'>{html.escape(m['description'])}</span>{note}</td>",
                     _num(m["mean"]), _num(m["std"]), _num(m["min"]), _num(m["max"]), _num(m["count"]),
                     f"<td>{_backend(m['backend'])}</td>", _text(m["comparable_to"]), _text(better)])
    return rows


def write_report(out: Path, results: list[VideoResult], metrics: list[Metric], figures: dict) -> Path:
    scored = [r for r in results if not r.error]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>mugv eval: {html.escape(figures['source'])}</title>",
             f"<style>{STYLE}</style></head><body><h1>mugv eval</h1>",
             f"<p class='muted'>{html.escape(figures['source'])}: {figures['scored']} of {figures['videos']} videos scored. "
             f"<span class='official'>official</span>: the published formula on the published backbone or parameters; "
             f"<span class='proxy'>proxy</span>: a stand-in, comparable only as its row says.</p>",
             "<h2>The set</h2>",
             _table(["metric", "mean", "std", "min", "max", "n", "backend", "comparable to", "better"], _metric_rows(figures))]
    if figures["set_metrics"]:
        rows = [[_text(name), _num(s["value"]), f"<td>{_backend(s['backend'])}</td>", _text(s["comparable_to"]),
                 _text(s.get("skipped", ""))] for name, s in figures["set_metrics"].items()]
        parts.append(_table(["set metric", "value", "backend", "comparable to", "skipped"], rows))
    rows = [[_text(kind), _num(t["value"]), _text(t.get("reason", ", ".join(f"{g} {v:.4f}" for g, v in t.get("groups", {}).items())))]
            for kind, t in figures["vbench"].items()]
    parts.append(_table(["VBench total", "value", "groups, or why it is not given"], rows))
    if figures["failed"]:
        parts.append("<h2>Unreadable files</h2>" + _table(["video", "reason"], [[_text(k), _text(v)] for k, v in figures["failed"].items()]))
    parts.append("<h2>Distributions</h2><div class='hists'>")
    for metric in metrics:
        values = [r.scores[metric.name].value for r in scored if r.scores[metric.name].value is not None]
        parts.append(f"<figure>{histogram_svg([('videos', values)], metric.name)}<figcaption>{html.escape(metric.name)}</figcaption></figure>")
    parts.append("</div><h2>Worst videos</h2>")
    for metric in metrics:
        ranked = sorted((r for r in scored if r.scores[metric.name].value is not None),
                        key=lambda r: r.scores[metric.name].value, reverse=not metric.higher_is_better)
        if not ranked:
            continue
        parts.append(f"<h3>{html.escape(metric.name)} ({'lowest' if metric.higher_is_better else 'highest'})</h3>")
        for result in ranked[:WORST_SHOWN]:
            parts.append(f"<p>{_video_link(out, result)} {html.escape(_fmt(result.scores[metric.name].value))} "
                         f"<span class='muted'>{html.escape(result.prompt)}</span>"
                         f"<img class='strip' src='{_save_strip(out, result)}' alt='frames of {html.escape(result.name)}'></p>")
    parts.append("<h2>Every video</h2>")
    rows = [[f"<td>{_video_link(out, r)}<br><span class='muted'>{html.escape(r.prompt)}</span></td>"]
            + [_num(r.scores[m.name].value) for m in metrics] for r in scored]
    parts.append(_table(["video"] + [html.escape(m.name) for m in metrics], rows))
    seconds = figures["seconds_per_video"]
    parts.append("<h2>Time per video</h2>" + _table(["stage", "seconds"], [[_text(k), _num(v)] for k, v in seconds.items()]))
    parts.append("</body></html>")
    path = out / REPORT
    path.write_text("\n".join(parts))
    return path


# ---------------------------------------------------------------------------------------------
# Comparison of two evaluated sets


def load_evaluation(folder: Path) -> tuple[dict, list[dict]]:
    """summary.json and the results.jsonl lines of an earlier `mugv eval` output folder."""
    if not (folder / SUMMARY).exists() or not (folder / RESULTS).exists():
        raise ConfigError(f"{folder}: not a mugv eval output folder (no {SUMMARY} / {RESULTS})")
    lines = [json.loads(line) for line in (folder / RESULTS).read_text().splitlines() if line.strip()]
    return json.loads((folder / SUMMARY).read_text()), lines


def compare(a: tuple[str, dict, list[dict]], b: tuple[str, dict, list[dict]]) -> dict:
    """Per metric both means, B - A, and which side is better; only metrics measured the same
    way (same backend) on both sides are compared."""
    (name_a, summary_a, _), (name_b, summary_b, _) = a, b
    rows = {}
    for metric, ma in summary_a["metrics"].items():
        mb = summary_b["metrics"].get(metric)
        if mb is None:
            continue
        row = {"a": ma["mean"], "b": mb["mean"], "backend": ma["backend"], "comparable_to": ma["comparable_to"],
               "higher_is_better": ma["higher_is_better"]}
        if ma["backend"] != mb["backend"] or ma["comparable_to"] != mb["comparable_to"]:
            row["not_compared"] = f"measured differently: {ma['backend']} / {mb['backend']}"
        elif ma["mean"] is not None and mb["mean"] is not None:
            row["delta"] = mb["mean"] - ma["mean"]
            row["better"] = "same" if row["delta"] == 0 else (
                name_b if (row["delta"] > 0) == ma["higher_is_better"] else name_a)
        rows[metric] = row
    return _json_value({"a": name_a, "b": name_b, "videos": [summary_a["scored"], summary_b["scored"]], "metrics": rows})


def write_comparison(out: Path, a: tuple[str, dict, list[dict]], b: tuple[str, dict, list[dict]]) -> dict:
    """compare.json and compare.html in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    table = compare(a, b)
    (out / "compare.json").write_text(json.dumps(table, indent=2))
    name_a, name_b = table["a"], table["b"]
    rows = []
    for metric, row in table["metrics"].items():
        verdict = row.get("not_compared") or row.get("better", "")
        css = "muted" if "not_compared" in row else ("better" if verdict == name_b else "worse" if verdict == name_a else "")
        rows.append([_text(metric), _num(row["a"]), _num(row["b"]), _num(row.get("delta")),
                     f"<td class='{css}'>{html.escape(verdict)}</td>", f"<td>{_backend(row['backend'])}</td>",
                     _text(row["comparable_to"])])
    values = {side: {} for side in (name_a, name_b)}
    for side, (_, _, lines) in zip((name_a, name_b), (a, b)):
        for line in lines:
            for metric, record in line.get("metrics", {}).items():
                if record["value"] is not None:
                    values[side].setdefault(metric, []).append(record["value"])
    hists = "".join(f"<figure>{histogram_svg([(name_a, values[name_a].get(m, [])), (name_b, values[name_b].get(m, []))], m)}"
                    f"<figcaption>{html.escape(m)}</figcaption></figure>" for m in table["metrics"])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>mugv eval: {html.escape(name_a)} vs {html.escape(name_b)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(name_a)} vs {html.escape(name_b)}</h1>"
            f"<p class='muted'>{table['videos'][0]} and {table['videos'][1]} videos. Delta is B - A.</p>"
            + _table(["metric", f"A: {html.escape(name_a)}", f"B: {html.escape(name_b)}", "delta", "better", "backend", "comparable to"], rows)
            + f"<h2>Distributions</h2><div class='hists'>{hists}</div></body></html>")
    (out / "compare.html").write_text(page)
    return table
