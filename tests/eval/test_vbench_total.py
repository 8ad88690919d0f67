"""VBench's normalised totals, and the refusal to compute them from proxies."""

from __future__ import annotations

import pytest

from mugv.eval import vbench


def _all(kind: str, at: str) -> dict[str, float]:
    """Every dimension of `kind` at its normalisation minimum or maximum."""
    index = 0 if at == "min" else 1
    return {name: bounds[index] for _, dims, _ in vbench.TOTALS[kind] for name, bounds in dims.items()}


@pytest.mark.parametrize("kind", list(vbench.TOTALS))
def test_totals_span_zero_to_one_between_the_normalisation_bounds(kind):
    official = {name: "official" for name in _all(kind, "min")}
    assert vbench.total(kind, _all(kind, "min"), official)["value"] == pytest.approx(0.0)
    assert vbench.total(kind, _all(kind, "max"), official)["value"] == pytest.approx(1.0)


def test_t2v_total_weights_quality_four_to_one_and_dynamic_degree_half():
    values = _all("vbench_total", "max")
    values["dynamic degree"] = 0.0  # quality: (5.5 * 1 + 0.5 * 0) / 6.5 ; semantic 1
    result = vbench.total("vbench_total", values, {name: "official" for name in values})
    quality = 6.0 / 6.5
    assert result["groups"]["quality"] == pytest.approx(quality)
    assert result["value"] == pytest.approx((4 * quality + 1) / 5)


def test_i2v_total_weights_camera_motion_a_tenth():
    values = _all("vbench_i2v_total", "max")
    values["camera motion"] = 0.0  # i2v group: (1 + 1) / 2.1
    result = vbench.total("vbench_i2v_total", values, {name: "official" for name in values})
    assert result["groups"]["i2v"] == pytest.approx(2 / 2.1)
    assert result["value"] == pytest.approx((1 + 2 / 2.1) / 2)


def test_a_proxy_or_missing_dimension_gives_no_total():
    values = _all("vbench_total", "max")
    backends = {name: "official" for name in values}
    backends["dynamic degree"] = "proxy"
    refused = vbench.total("vbench_total", values, backends)
    assert refused["value"] is None and "proxy: dynamic degree" in refused["reason"]
    del values["color"]
    assert "not measured: color" in vbench.total("vbench_total", values, backends)["reason"]


def test_summary_takes_the_official_measurement_of_a_dimension_over_its_proxy():
    from mugv.eval.report import summary
    from mugv.eval.scores import Metric, Score
    from mugv.eval.suite import VideoResult

    metrics = [Metric("raft", "official", "VBench", True, "", lambda v: 0.0, vbench_dimension="dynamic degree"),
               Metric("dis", "proxy", "mugv", True, "", lambda v: 0.0, vbench_dimension="dynamic degree")]
    result = VideoResult("v", "v.mp4", scores={"raft": Score(1.0), "dis": Score(0.0)}, seconds={"raft": 1.0})
    figures = summary([result], metrics, [], {}, "test")
    reason = figures["vbench"]["vbench_total"]["reason"]
    assert "dynamic degree" not in reason and "not measured: subject consistency" in reason
