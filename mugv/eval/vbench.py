"""VBench's normalised totals (Vchitect/VBench `scripts/constant.py`, `cal_final_score.py`,
`cal_i2v_final_score.py`): each dimension mapped to (x - min) / (max - min), weighted, averaged
within its group, and the groups combined (T2V: Quality 4 : Semantic 1; I2V: Quality 1 : I2V 1).

A total is only produced when every dimension of it was measured on VBench's own backbone
(`official`); otherwise the reason is returned instead, so a proxy never becomes a VBench number.
"""

from __future__ import annotations

# dimension: (min, max, weight), VBench's NORMALIZE_DIC and DIM_WEIGHT
T2V_QUALITY = {
    "subject consistency": (0.1462, 1.0, 1.0),
    "background consistency": (0.2615, 1.0, 1.0),
    "temporal flickering": (0.6293, 1.0, 1.0),
    "motion smoothness": (0.706, 0.9975, 1.0),
    "aesthetic quality": (0.0, 1.0, 1.0),
    "imaging quality": (0.0, 1.0, 1.0),
    "dynamic degree": (0.0, 1.0, 0.5),
}
T2V_SEMANTIC = {
    "object class": (0.0, 1.0, 1.0),
    "multiple objects": (0.0, 1.0, 1.0),
    "human action": (0.0, 1.0, 1.0),
    "color": (0.0, 1.0, 1.0),
    "spatial relationship": (0.0, 1.0, 1.0),
    "scene": (0.0, 0.8222, 1.0),
    "appearance style": (0.0009, 0.2855, 1.0),
    "temporal style": (0.0, 0.364, 1.0),
    "overall consistency": (0.0, 0.364, 1.0),
}
I2V_QUALITY = {
    "subject consistency": (0.1462, 1.0, 1.0),
    "background consistency": (0.2615, 1.0, 1.0),
    "motion smoothness": (0.706, 0.9975, 1.0),
    "dynamic degree": (0.0, 1.0, 0.5),
    "aesthetic quality": (0.0, 1.0, 1.0),
    "imaging quality": (0.0, 1.0, 1.0),
}
I2V_CONDITION = {
    "camera motion": (0.0, 1.0, 0.1),
    "i2v subject": (0.1462, 1.0, 1.0),
    "i2v background": (0.2615, 1.0, 1.0),
}
TOTALS = {
    "vbench_total": (("quality", T2V_QUALITY, 4.0), ("semantic", T2V_SEMANTIC, 1.0)),
    "vbench_i2v_total": (("quality", I2V_QUALITY, 1.0), ("i2v", I2V_CONDITION, 1.0)),
}


def group_score(values: dict[str, float], dimensions: dict[str, tuple[float, float, float]]) -> float:
    """Weighted mean of the normalised dimensions of one group."""
    total = sum(weight * (values[name] - low) / (high - low) for name, (low, high, weight) in dimensions.items())
    return total / sum(weight for _, _, weight in dimensions.values())


def total(kind: str, values: dict[str, float], backends: dict[str, str]) -> dict:
    """{"value", "groups": {group: score}} for `kind` (a key of TOTALS), or {"value": None, "reason"} when a
    dimension is missing or was not measured on VBench's backbone. `values`: set means by VBench
    dimension name, in VBench's units (0-1)."""
    groups = TOTALS[kind]
    needed = [name for _, dimensions, _ in groups for name in dimensions]
    missing = [name for name in needed if name not in values]
    proxies = [name for name in needed if name in values and backends.get(name) != "official"]
    if missing or proxies:
        parts = ([f"not measured: {', '.join(missing)}"] if missing else []) + (
            [f"measured by a proxy: {', '.join(proxies)}"] if proxies else [])
        return {"value": None, "reason": "; ".join(parts)}
    scores = {group: group_score(values, dimensions) for group, dimensions, _ in groups}
    weights = [weight for _, _, weight in groups]
    value = sum(w * s for w, s in zip(weights, scores.values())) / sum(weights)
    return {"value": value, "groups": scores}
