"""Telling a checkpoint's layout from its keys and loading it into a model, strictly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from torch import Tensor, nn

from mugv.models.dit.adapters.megatron import (
    _infer_num_heads,
    _is_extra_state,
    _unstack_layers,
    from_megatron,
)
from mugv.models.dit.adapters.names import (
    KNOWN_ABSENT,
    CheckpointLayoutError,
    Layout,
    log,
)
from mugv.models.dit.adapters.report import LoadReport, compare_state_dicts

_MEGATRON_MARKERS = ("decoder.layers.", "timestep_embedder.", "timestep_block.", "context_embedder.")
_MUGV_MARKERS = ("blocks.", "t_embedder.", "t_block.", "y_embedder.")


def detect_layout(state_dict: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Layout:
    """``"megatron"`` or ``"mugv"`` from key names; a list of shards is judged by its first."""
    sd = state_dict if isinstance(state_dict, Mapping) else state_dict[0]
    meg = any(k.startswith(_MEGATRON_MARKERS) for k in sd)
    ours = any(k.startswith(_MUGV_MARKERS) for k in sd)
    if meg and not ours:
        return "megatron"
    if ours and not meg:
        return "mugv"
    sample = sorted(sd)[:8]
    why = "both" if meg else "neither"
    raise CheckpointLayoutError(
        f"cannot tell the checkpoint layout: keys of {why} MUG-V and Megatron found; first keys: {sample}"
    )


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    layout: Layout | Literal["auto"] = "auto",
) -> LoadReport:
    """Load a MUG-V or Megatron checkpoint into our model, strictly.

    Raises :class:`CheckpointLayoutError` listing every missing, unexpected and mis-shaped key.
    Keys the layout is known not to carry (:data:`KNOWN_ABSENT`) keep their initial values and
    are logged by name. Values are cast to the model's dtypes. Returns the report.
    """
    if layout == "auto":
        layout = detect_layout(state_dict)
    expected = model.state_dict()
    dropped: list[str] = []
    if layout == "megatron":
        shards = [state_dict] if isinstance(state_dict, Mapping) else list(state_dict)
        # Regroup heads as the checkpoint itself says (so a different-size checkpoint is reported
        # key by key below); the model's head count is used only if the checkpoint cannot tell.
        heads = None
        if shards and _infer_num_heads(_unstack_layers(shards[0])) is None:
            heads = _infer_num_heads_from_ours(expected)
        try:
            ours = from_megatron(shards, heads, dropped=dropped)
        except CheckpointLayoutError as err:
            raise CheckpointLayoutError(f"checkpoint layout 'megatron': {err}") from err
    elif layout == "mugv":
        if not isinstance(state_dict, Mapping):
            raise TypeError("a MUG-V layout checkpoint is one state dict, not a list")
        ours = {k: v for k, v in state_dict.items() if not _is_extra_state(k)}
        dropped = [k for k in state_dict if k not in ours]
    else:
        raise ValueError(f"unknown layout {layout!r}; use 'mugv', 'megatron' or 'auto'")

    report = compare_state_dicts(ours, expected, layout=layout, known_absent=KNOWN_ABSENT[layout])
    report.dropped = dropped
    report.raise_for_errors()
    for name in report.absent_in_source_ok:
        log.warning("checkpoint (%s layout) has no %s: keeping its initial value", layout, name)
        ours[name] = expected[name]
    model.load_state_dict(ours, strict=True)
    return report


def _infer_num_heads_from_ours(expected: Mapping[str, Tensor]) -> int | None:
    q = expected.get("blocks.0.attn.q_norm.weight")
    qkv = expected.get("blocks.0.attn.qkv.weight")
    if q is None or qkv is None or not q.numel():
        return None
    return qkv.shape[1] // q.numel()
