"""State-dict adapters for MUG-DiT checkpoints.

Two foreign layouts are understood:

* ``"mugv"``: the published MUG-V inference checkpoint (``dit.pt``). Its names are the names of
  our own :class:`~mugv.models.dit.model.MUGDiT`, except that it does not carry the caption-dropout
  null embedding ``y_embedder.y_embedding`` (the inference model has no such buffer and loads
  strictly). Converting is the identity on names; the work here is validation.
* ``"megatron"``: the Megatron-Core training layout (``decoder.layers.{i}...``), one state dict
  per tensor-parallel rank. Besides the renames, Megatron stores the fused self-attention qkv
  (and the cross-attention kv) per head, ``(n heads c) -> (heads n c)``, so that a contiguous
  row block of one rank holds whole heads; column-parallel weights (qkv, q, kv, fc1, and their
  biases) are split on dim 0, row-parallel weights (both attention ``proj`` and ``fc2``) on
  dim 1 with their biases replicated, everything else replicated.

Every conversion checks names: an unknown key is an error naming it (``from_mugv`` lists it in
its report instead), never dropped; only Transformer-Engine ``_extra_state`` entries, which carry
no weights, are dropped, and they are recorded. Loading into
a model (:func:`load_into`) compares names and shapes with the model and raises
:class:`CheckpointLayoutError` listing every missing, unexpected and mis-shaped key; the only keys
allowed to be absent are those a layout is known not to carry (:data:`KNOWN_ABSENT`), which keep
their initial values and are logged by name.

Storage: our checkpoints are safetensors (:func:`save_safetensors`); published ``.pt`` files load
with ``torch.load(weights_only=True)`` (:func:`load_state_dict`).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mugv.errors import MugvError, reading

__all__ = [
    "CheckpointLayoutError",
    "KNOWN_ABSENT",
    "Layout",
    "LoadReport",
    "LoadedCheckpoint",
    "MEGATRON_RULES",
    "compare_state_dicts",
    "detect_layout",
    "from_megatron",
    "from_mugv",
    "load_checkpoint",
    "load_into",
    "load_state_dict",
    "megatron_name",
    "save_safetensors",
    "to_megatron",
    "to_mugv",
]

log = logging.getLogger(__name__)

Layout = Literal["mugv", "megatron"]
StateDict = dict[str, Tensor]

#: Our keys that a foreign checkpoint is known not to carry, per layout. The published inference
#: ``dit.pt`` has no caption-dropout null embedding; Megatron registers ``drop_emb`` only when its
#: caption dropout probability is > 0 (0 in the released scripts).
KNOWN_ABSENT: dict[str, frozenset[str]] = {
    "mugv": frozenset({"y_embedder.y_embedding"}),
    "megatron": frozenset({"y_embedder.y_embedding"}),
}

#: Keys that wrap a state dict inside a published ``.pt`` file, tried in this order.
WRAPPER_KEYS: tuple[str, ...] = ("model", "state_dict", "module", "model_state_dict")


class CheckpointLayoutError(MugvError, ValueError):
    """A checkpoint does not fit the layout or model it is loaded into; the message names keys."""


# --------------------------------------------------------------------------------------------
# Name mapping: ours (== MUG-V inference) <-> Megatron
# --------------------------------------------------------------------------------------------

# How a tensor is laid out and split under Megatron tensor parallelism:
#   "rep"  replicated on every rank
#   "col"  column parallel: split on dim 0 (weights and biases)
#   "row"  row parallel: weight split on dim 1 (its bias is a separate "rep" rule)
#   "qkv"  column parallel, per-head interleaved with n = 3 before the dim-0 split
#   "kv"   column parallel, per-head interleaved with n = 2 before the dim-0 split
Kind = Literal["rep", "col", "row", "qkv", "kv"]


@dataclass(frozen=True)
class _Rule:
    ours: str  # regex on our name; a block index is the group (?P<i>)
    megatron: str  # template, {i} is the block index, {p} the parameter suffix
    kind: Kind
    required: bool = True  # every model has it (False: optional variants, e.g. a norm bias)


def _block(ours: str, megatron: str, kind: Kind, required: bool = True) -> _Rule:
    return _Rule(rf"blocks\.(?P<i>\d+)\.{ours}", "decoder.layers.{i}." + megatron, kind, required)


_W = r"(?P<p>weight|bias)"

#: The mapping table, ours -> Megatron. Order does not matter: patterns are disjoint.
MEGATRON_RULES: tuple[_Rule, ...] = (
    _Rule(rf"x_embedder\.proj\.{_W}", "x_embedder.proj.{p}", "rep"),
    _Rule(rf"t_embedder\.mlp\.(?P<l>0|2)\.{_W}", "timestep_embedder.mlp.{l}.{p}", "rep"),
    _Rule(rf"fps_embedder\.mlp\.(?P<l>0|2)\.{_W}", "fps_embedder.mlp.{l}.{p}", "rep"),
    _Rule(rf"t_block\.1\.{_W}", "timestep_block.1.{p}", "rep"),
    _Rule(rf"y_embedder\.y_proj\.(?P<l>fc1|fc2)\.{_W}", "context_embedder.proj.{l}.{p}", "rep"),
    _Rule(r"y_embedder\.y_embedding", "context_embedder.drop_emb", "rep", required=False),
    _Rule(r"start_token", "start_token", "rep"),
    _Rule(r"end_token", "end_token", "rep"),
    _Rule(r"final_layer\.scale_shift_table", "final_layer.scale_shift_table.bias", "rep"),
    _Rule(rf"final_layer\.linear\.{_W}", "final_layer.linear.{p}", "rep"),
    _block(r"scale_shift_table", "scale_shift_table.bias", "rep"),
    _block(rf"attn\.qkv\.{_W}", "self_attention.linear_qkv.{p}", "qkv"),
    _block(r"attn\.proj\.weight", "self_attention.linear_proj.weight", "row"),
    _block(r"attn\.proj\.bias", "self_attention.linear_proj.bias", "rep"),
    _block(r"attn\.(?P<l>q|k)_norm\.weight", "self_attention.{l}_layernorm.weight", "rep"),
    _block(r"attn\.(?P<l>q|k)_norm\.bias", "self_attention.{l}_layernorm.bias", "rep", False),
    _block(rf"cross_attn_norm\.{_W}", "pre_cross_attn_layernorm.{p}", "rep"),
    _block(rf"cross_attn\.q_linear\.{_W}", "cross_attention.linear_q.{p}", "col"),
    _block(rf"cross_attn\.kv_linear\.{_W}", "cross_attention.linear_kv.{p}", "kv"),
    _block(r"cross_attn\.proj\.weight", "cross_attention.linear_proj.weight", "row"),
    _block(r"cross_attn\.proj\.bias", "cross_attention.linear_proj.bias", "rep"),
    _block(r"cross_attn\.(?P<l>q|k)_norm\.weight", "cross_attention.{l}_layernorm.weight", "rep"),
    _block(r"cross_attn\.(?P<l>q|k)_norm\.bias", "cross_attention.{l}_layernorm.bias", "rep", False),
    _block(rf"mlp\.fc1\.{_W}", "mlp.linear_fc1.{p}", "col"),
    _block(r"mlp\.fc2\.weight", "mlp.linear_fc2.weight", "row"),
    _block(r"mlp\.fc2\.bias", "mlp.linear_fc2.bias", "rep"),
)


def _template_to_regex(template: str) -> str:
    out = re.escape(template)
    out = out.replace(r"\{i\}", r"(?P<i>\d+)")
    out = out.replace(r"\{p\}", r"(?P<p>weight|bias)")
    out = out.replace(r"\{l\}", r"(?P<l>[a-z0-9]+)")
    return out


_OURS_RE = [(re.compile(r.ours + r"\Z"), r) for r in MEGATRON_RULES]
_MEG_RE = [(re.compile(_template_to_regex(r.megatron) + r"\Z"), r) for r in MEGATRON_RULES]


def _match_ours(name: str) -> tuple[_Rule, dict[str, str]] | None:
    for pattern, rule in _OURS_RE:
        m = pattern.match(name)
        if m:
            return rule, {k: v for k, v in m.groupdict().items() if v is not None}
    return None


def _ours_name(rule: _Rule, groups: Mapping[str, str]) -> str:
    """Rebuild our name from a rule and the groups matched on the Megatron side."""
    name = rule.ours
    for key, value in groups.items():
        name = re.sub(r"\(\?P<" + key + r">[^)]*\)", value, name)
    name = name.replace("\\.", ".")
    if re.search(r"[\\()?]", name):
        raise AssertionError(f"unfilled rule pattern {rule.ours!r}")  # a bug in the table
    return name


def _match_megatron(name: str) -> tuple[_Rule, str] | None:
    """Match a Megatron key; return its rule and our name (validated against the rule)."""
    for pattern, rule in _MEG_RE:
        m = pattern.match(name)
        if m:
            ours = _ours_name(rule, {k: v for k, v in m.groupdict().items() if v is not None})
            back = _match_ours(ours)
            if back is not None and back[0] is rule:
                return rule, ours
    return None


def megatron_name(name: str) -> str:
    """Our (== MUG-V inference) key -> its Megatron key. Unknown keys raise."""
    hit = _match_ours(name)
    if hit is None:
        raise CheckpointLayoutError(f"no Megatron name is known for key {name!r}")
    rule, groups = hit
    return rule.megatron.format(**groups)


def _unknown(names: Iterable[str], what: str) -> CheckpointLayoutError:
    listed = "\n  ".join(sorted(names))
    return CheckpointLayoutError(f"{what}:\n  {listed}")


# --------------------------------------------------------------------------------------------
# Load report
# --------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What comparing a converted checkpoint with the expected keys and shapes found."""

    layout: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: name -> (expected shape, checkpoint shape)
    shape_mismatches: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    #: expected keys the layout is known not to carry; they keep their initial values
    absent_in_source_ok: list[str] = field(default_factory=list)
    #: source keys that carry no weights and were dropped on purpose (e.g. TE ``_extra_state``)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def format(self) -> str:
        lines = [f"checkpoint layout {self.layout!r}:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}):")
            lines += [f"    {k}" for k in self.missing]
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}):")
            lines += [f"    {k}" for k in self.unexpected]
        if self.shape_mismatches:
            lines.append(f"  shape mismatches ({len(self.shape_mismatches)}), expected vs found:")
            lines += [f"    {k}: {tuple(e)} vs {tuple(f)}" for k, (e, f) in self.shape_mismatches.items()]
        if self.absent_in_source_ok:
            lines.append("  absent from the source, known for this layout, kept from init:")
            lines += [f"    {k}" for k in self.absent_in_source_ok]
        if self.dropped:
            lines.append(f"  dropped (carry no weights): {len(self.dropped)} keys")
        lines += [f"  note: {n}" for n in self.notes]
        if len(lines) == 1:
            lines.append("  all keys and shapes match")
        return "\n".join(lines)

    def raise_for_errors(self) -> None:
        if not self.ok:
            raise CheckpointLayoutError(self.format())

    def __str__(self) -> str:
        return self.format()


def compare_state_dicts(
    found: Mapping[str, Any],
    expected: Mapping[str, Any],
    *,
    layout: str,
    known_absent: Iterable[str] = (),
) -> LoadReport:
    """Compare names and shapes of ``found`` (converted to our names) against ``expected``.

    Values may be tensors or anything with a ``.shape`` (meta tensors work).
    """
    absent_ok = frozenset(known_absent)
    report = LoadReport(layout=layout)
    for name in expected:
        if name not in found:
            (report.absent_in_source_ok if name in absent_ok else report.missing).append(name)
    report.unexpected = [n for n in found if n not in expected]
    for name, value in found.items():
        if name in expected:
            e, f = tuple(expected[name].shape), tuple(value.shape)
            if e != f:
                report.shape_mismatches[name] = (e, f)
    dtypes_found = {str(v.dtype) for v in found.values() if hasattr(v, "dtype")}
    dtypes_expected = {str(v.dtype) for v in expected.values() if hasattr(v, "dtype")}
    if dtypes_found and dtypes_expected and dtypes_found != dtypes_expected:
        report.notes.append(
            f"dtypes {sorted(dtypes_found)} in the checkpoint, {sorted(dtypes_expected)} expected;"
            " values are cast on load"
        )
    return report


def _structural_expected_names(names: Iterable[str]) -> list[str]:
    """Required keys implied by the block indices present (used when no reference is given)."""
    indices = set()
    for name in names:
        hit = _match_ours(name)
        if hit is not None and "i" in hit[1]:
            indices.add(int(hit[1]["i"]))
    depth = max(indices) + 1 if indices else 0
    out: list[str] = []
    for rule in MEGATRON_RULES:
        if not rule.required:
            continue
        for filled in _expand_rule(rule, depth):
            out.append(filled)
    return out


def _expand_rule(rule: _Rule, depth: int) -> list[str]:
    """All concrete names a rule stands for, for a model of ``depth`` blocks."""
    alternatives: dict[str, list[str]] = {}
    for m in re.finditer(r"\(\?P<(\w+)>([^)]*)\)", rule.ours):
        key, body = m.group(1), m.group(2)
        alternatives[key] = [str(i) for i in range(depth)] if key == "i" else body.split("|")
    names = [rule.ours]
    for key, values in alternatives.items():
        pat = re.compile(r"\(\?P<" + key + r">[^)]*\)")
        names = [pat.sub(v, n) for n in names for v in values]
    return [n.replace("\\.", ".") for n in names]


# --------------------------------------------------------------------------------------------
# MUG-V inference layout
# --------------------------------------------------------------------------------------------


def to_mugv(state_dict: Mapping[str, Tensor], *, keep_null_embedding: bool = False) -> StateDict:
    """Our state dict -> the published inference layout (what MUG-V's ``dit.pt`` loader takes).

    Names are unchanged. ``y_embedder.y_embedding`` is left out unless ``keep_null_embedding``,
    because the reference inference model loads strictly and has no such buffer. Tensors are
    shared, not copied. Unknown keys raise.
    """
    unknown = [k for k in state_dict if _match_ours(k) is None]
    if unknown:
        raise _unknown(unknown, "keys with no place in the MUG-V layout")
    out: StateDict = {}
    for name, tensor in state_dict.items():
        if name in KNOWN_ABSENT["mugv"] and not keep_null_embedding:
            log.info("to_mugv: leaving out %s (the inference layout does not carry it)", name)
            continue
        out[name] = tensor
    return out


def _expected_from_reference(reference: Any) -> Mapping[str, Any]:
    """Expected names and shapes from a state dict, a module, or a DiT config."""
    if isinstance(reference, Mapping):
        return reference
    if isinstance(reference, nn.Module):
        return reference.state_dict()
    # A config: build the model on the meta device (no memory, no init cost).
    from mugv.models.dit.model import MUGDiT

    with torch.device("meta"):
        model = MUGDiT(reference)
    return model.state_dict()


def from_mugv(state_dict: Mapping[str, Tensor], *, reference: Any = None) -> tuple[StateDict, LoadReport]:
    """A MUG-V inference-layout state dict -> ours, with a :class:`LoadReport`.

    ``reference`` tells what is expected: our model's state dict, the model itself, or a
    ``DiTConfig``. Without it, the keys are checked against the layout (every key must be known)
    and for completeness given the block indices present; shapes are then not checked.
    The report is returned, not raised: call ``report.raise_for_errors()``, or use
    :func:`load_into`, which raises.
    """
    out: StateDict = dict(state_dict)
    if reference is not None:
        expected = _expected_from_reference(reference)
        report = compare_state_dicts(out, expected, layout="mugv", known_absent=KNOWN_ABSENT["mugv"])
    else:
        report = LoadReport(layout="mugv")
        report.unexpected = [k for k in out if _match_ours(k) is None]
        for name in _structural_expected_names(out):
            if name not in out:
                report.missing.append(name)
        report.absent_in_source_ok = [k for k in KNOWN_ABSENT["mugv"] if k not in out]
        report.notes.append("no reference given: names checked, shapes not")
    return out, report


# --------------------------------------------------------------------------------------------
# Megatron layout
# --------------------------------------------------------------------------------------------


def _num_heads_of(cfg_or_num_heads: Any) -> int:
    if isinstance(cfg_or_num_heads, int):
        return cfg_or_num_heads
    for attr in ("num_heads", "heads", "n_heads"):
        value = getattr(cfg_or_num_heads, attr, None)
        if isinstance(value, int):
            return value
    raise TypeError(f"expected a head count or a config with `num_heads`, got {type(cfg_or_num_heads)!r}")


def _interleave(t: Tensor, n: int, heads: int) -> Tensor:
    """``(n heads c, ...) -> (heads n c, ...)``: per-head grouping, as Megatron stores it."""
    rows = t.shape[0]
    c = rows // (n * heads)
    return t.reshape(n, heads, c, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()


def _deinterleave(t: Tensor, n: int, heads: int) -> Tensor:
    """``(heads n c, ...) -> (n heads c, ...)``: the inverse of :func:`_interleave`."""
    rows = t.shape[0]
    c = rows // (n * heads)
    return t.reshape(heads, n, c, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()


_N_OF: dict[str, int] = {"qkv": 3, "kv": 2, "col": 1}


def _check_rows(name: str, t: Tensor, n: int, heads: int) -> None:
    if t.shape[0] % (n * heads):
        raise CheckpointLayoutError(f"{name}: {t.shape[0]} rows are not {n} x {heads} heads x head_dim")


def _check_tp(num_heads: int, tp: int) -> None:
    if tp < 1:
        raise ValueError(f"tensor-parallel size must be >= 1, got {tp}")
    if num_heads % tp:
        raise ValueError(
            f"num_heads={num_heads} is not divisible by tensor-parallel size tp={tp}: Megatron "
            "shards attention by whole heads"
        )


_EXTRA_STATE_LAYERS = (
    "linear_qkv",
    "linear_q",
    "linear_kv",
    "linear_proj",
    "linear_fc1",
    "linear_fc2",
    "scale_shift_table",
)


def to_megatron(
    state_dict: Mapping[str, Tensor],
    cfg_or_num_heads: Any,
    tp: int = 1,
    *,
    include_null_embedding: bool = True,
    extra_state: bool = False,
    dtype: torch.dtype | None = None,
) -> list[StateDict]:
    """Our state dict -> Megatron-Core state dicts, one per tensor-parallel rank.

    qkv / kv weights and biases are regrouped per head (n = 3 / 2) and, like q and fc1, split on
    dim 0; attention ``proj`` and ``fc2`` weights are split on dim 1; all else is replicated
    (replicated tensors are shared between the rank dicts, split ones are fresh contiguous
    copies). ``include_null_embedding=False`` leaves out ``context_embedder.drop_emb`` (a Megatron
    model built with caption dropout 0 has no such buffer). ``extra_state=True`` adds the
    ``_extra_state: None`` entries Transformer-Engine layers expect (for ``torch.save``; not
    storable in safetensors). ``dtype`` casts floating tensors.
    """
    heads = _num_heads_of(cfg_or_num_heads)
    _check_tp(heads, tp)
    unknown = [k for k in state_dict if _match_ours(k) is None]
    if unknown:
        raise _unknown(unknown, "keys with no Megatron name")

    shards: list[StateDict] = [{} for _ in range(tp)]
    for name, tensor in state_dict.items():
        rule, groups = _match_ours(name)  # type: ignore[misc]
        if rule.megatron == "context_embedder.drop_emb" and not include_null_embedding:
            continue
        target = rule.megatron.format(**groups)
        t = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        if rule.kind == "rep":
            for shard in shards:
                shard[target] = t
            continue
        if rule.kind in _N_OF:
            n = _N_OF[rule.kind]
            _check_rows(name, t, n, heads)
            if n > 1:
                t = _interleave(t, n, heads)
            dim = 0
        else:  # row
            dim = 1
        if t.shape[dim] % tp:
            raise ValueError(f"{name}: dim {dim} of size {t.shape[dim]} does not split into {tp}")
        for shard, piece in zip(shards, torch.chunk(t, tp, dim=dim), strict=True):
            shard[target] = piece.clone(memory_format=torch.contiguous_format)

    if extra_state:
        for shard in shards:
            for key in list(shard):
                owner, _, _ = key.rpartition(".")
                if owner.rpartition(".")[2] in _EXTRA_STATE_LAYERS:
                    shard.setdefault(owner + "._extra_state", None)  # type: ignore[arg-type]
    return shards


def _is_extra_state(name: str) -> bool:
    return name.endswith("_extra_state")


def _unstack_layers(shard: Mapping[str, Any]) -> dict[str, Any]:
    """Megatron dist-checkpoint keys ``decoder.layers.X`` (a leading layer dim) -> per layer."""
    out: dict[str, Any] = {}
    depth: int | None = None
    for name, value in shard.items():
        m = re.match(r"decoder\.layers\.(?!\d+\.)(.+)\Z", name)
        if m is None or not isinstance(value, Tensor):
            out[name] = value
            continue
        if depth is None:
            depth = value.shape[0]
        elif value.shape[0] != depth:
            raise CheckpointLayoutError(
                f"{name}: stacked layer dim {value.shape[0]}, other stacked keys have {depth}"
            )
        for i in range(depth):
            out[f"decoder.layers.{i}.{m.group(1)}"] = value[i]
    return out


def _infer_num_heads(shard: Mapping[str, Tensor]) -> int | None:
    """num_heads = hidden / head_dim, from a q-norm weight (head_dim) and a qkv weight."""
    for name, t in shard.items():
        m = re.match(r"decoder\.layers\.(\d+)\.self_attention\.q_layernorm\.weight\Z", name)
        if m:
            qkv = shard.get(f"decoder.layers.{m.group(1)}.self_attention.linear_qkv.weight")
            if qkv is not None and t.numel() and qkv.shape[1] % t.numel() == 0:
                return qkv.shape[1] // t.numel()
    return None


def from_megatron(
    shards: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    num_heads: int | Any | None = None,
    *,
    dropped: list[str] | None = None,
) -> StateDict:
    """Megatron-Core state dicts (one per TP rank, rank order) -> our state dict.

    Split tensors are concatenated (dim 0 for qkv / q / kv / fc1 and their biases, dim 1 for
    attention ``proj`` and ``fc2`` weights); replicated tensors must be equal on every rank; qkv
    and kv are regrouped from per-head back to ``[q; k; v]`` / ``[k; v]``. A single dict is taken
    as TP = 1; a dist-checkpoint dict with stacked ``decoder.layers.*`` keys is unstacked.
    ``num_heads`` (an int or a config) is inferred from the q-norm size when not given, and
    checked when given. ``_extra_state`` keys carry no weights: they are dropped, and their names
    appended to ``dropped`` when a list is passed. Any other unknown key raises.

    Shards must come from one pipeline stage set with global layer numbers (PP = 1, or a
    dist-checkpoint flattened to one dict).
    """
    shard_list = [shards] if isinstance(shards, Mapping) else list(shards)
    if not shard_list:
        raise ValueError("from_megatron: no shards given")
    tp = len(shard_list)

    cleaned: list[dict[str, Tensor]] = []
    for rank, shard in enumerate(shard_list):
        flat = _unstack_layers(shard)
        keep: dict[str, Tensor] = {}
        for name, value in flat.items():
            if _is_extra_state(name):
                if rank == 0 and dropped is not None:
                    dropped.append(name)
                continue
            if not isinstance(value, Tensor):
                raise CheckpointLayoutError(f"rank {rank}: {name} is a {type(value).__name__}, not a tensor")
            keep[name] = value
        cleaned.append(keep)

    names0 = set(cleaned[0])
    for rank, shard in enumerate(cleaned[1:], start=1):
        if set(shard) != names0:
            only0 = sorted(names0 - set(shard))
            only_r = sorted(set(shard) - names0)
            raise CheckpointLayoutError(
                f"TP shards disagree on keys: only in rank 0: {only0}; only in rank {rank}: {only_r}"
            )

    resolved = {name: _match_megatron(name) for name in cleaned[0]}
    unknown = [n for n, hit in resolved.items() if hit is None]
    if unknown:
        raise _unknown(unknown, "Megatron keys with no MUG-DiT name")

    # q-norm weights are replicated and qkv columns (the hidden size) are not split, so the
    # head count can be read off any one rank.
    inferred = _infer_num_heads(cleaned[0])
    if num_heads is None:
        if inferred is None:
            raise CheckpointLayoutError(
                "cannot infer num_heads (no self_attention q_layernorm / linear_qkv); pass it"
            )
        heads = inferred
    else:
        heads = _num_heads_of(num_heads)
        if inferred is not None and inferred != heads:
            raise CheckpointLayoutError(
                f"num_heads={heads} given, but the checkpoint's q-norm size says {inferred}"
            )
    _check_tp(heads, tp)

    out: StateDict = {}
    for name, hit in resolved.items():
        rule, ours = hit  # type: ignore[misc]
        pieces = [shard[name] for shard in cleaned]
        if rule.kind == "rep":
            for rank, piece in enumerate(pieces[1:], start=1):
                if piece.shape != pieces[0].shape or not torch.equal(piece, pieces[0]):
                    raise CheckpointLayoutError(
                        f"{name} is replicated in Megatron but differs between rank 0 and {rank}"
                    )
            out[ours] = pieces[0]
            continue
        dim = 1 if rule.kind == "row" else 0
        full = pieces[0] if tp == 1 else torch.cat(pieces, dim=dim)
        n = _N_OF.get(rule.kind, 1)
        if rule.kind != "row":
            _check_rows(name, full, n, heads)
        out[ours] = _deinterleave(full, n, heads) if n > 1 else full
    return out


# --------------------------------------------------------------------------------------------
# Layout detection and loading into a model
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# File I/O
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    """A state dict read from disk, with where it was found inside the file."""

    state_dict: dict[str, Any]
    path: Path
    format: Literal["safetensors", "torch"]
    #: wrapper keys peeled off, outermost first (e.g. ``["model"]``); empty if none
    unwrapped: list[str] = field(default_factory=list)
    #: a common key prefix removed from every key (e.g. ``"module."``), or ``""``
    stripped_prefix: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def save_safetensors(
    state_dict: Mapping[str, Tensor],
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a state dict as safetensors. Tensors sharing storage are copied apart."""
    from safetensors.torch import save_file

    meta: dict[str, str] = {"format": "pt"}
    for key, value in (metadata or {}).items():
        if not isinstance(value, str):
            raise TypeError(f"safetensors metadata must be str -> str; {key!r} is {type(value)}")
        meta[key] = value
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, t in state_dict.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} is a {type(t).__name__}, not a tensor: cannot save it")
        t = t.detach().cpu()
        storage = t.untyped_storage()
        owns_storage = (
            t.is_contiguous() and t.storage_offset() == 0 and storage.nbytes() == t.numel() * t.element_size()
        )
        if not owns_storage or storage.data_ptr() in seen:
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def _is_state_dict(obj: Any) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    for key, value in obj.items():
        if not isinstance(key, str):
            return False
        if isinstance(value, Tensor):
            continue
        if key.endswith("_extra_state") and (value is None or isinstance(value, io.BytesIO)):
            continue
        return False
    return True


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read a ``.safetensors`` file, or a torch ``.pt`` / ``.pth`` / ``.bin`` file (weights only).

    A ``.pt`` whose top level wraps the state dict under ``model`` / ``state_dict`` / ``module`` /
    ``model_state_dict`` is unwrapped (repeatedly), and a ``module.`` prefix on every key (DDP)
    is removed; both are recorded in the result and logged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        device = str(map_location)
        with reading(path, "safetensors weights"):
            sd = load_file(str(path), device=device)
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
        return LoadedCheckpoint(sd, path, "safetensors", metadata=meta)

    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # an UnpicklingError names the forbidden global
        raise CheckpointLayoutError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({err}). Only plain "
            "tensor state dicts (optionally wrapped in a dict) are accepted; extract the model "
            "state dict from a training checkpoint first."
        ) from err

    unwrapped: list[str] = []
    while not _is_state_dict(obj):
        if not isinstance(obj, Mapping):
            raise CheckpointLayoutError(f"{path}: holds a {type(obj).__name__}, not a state dict")
        key = next((k for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if key is None or len(unwrapped) >= 4:
            bad = [k for k, v in obj.items() if not isinstance(v, Tensor)][:10]
            raise CheckpointLayoutError(
                f"{path}: not a state dict and no wrapper key {list(WRAPPER_KEYS)} found; "
                f"top-level keys holding non-tensors: {bad}"
            )
        others = sorted(k for k in obj if k != key)
        log.info("%s: state dict found under %r (other top-level keys: %s)", path, key, others)
        unwrapped.append(key)
        obj = obj[key]

    sd = dict(obj)
    prefix = ""
    if all(k.startswith("module.") for k in sd):
        prefix = "module."
        sd = {k[len(prefix) :]: v for k, v in sd.items()}
        log.info("%s: removed the %r prefix from every key", path, prefix)
    return LoadedCheckpoint(sd, path, "torch", unwrapped=unwrapped, stripped_prefix=prefix)


def load_state_dict(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state dict in ``path`` (see :func:`load_checkpoint` for formats and unwrapping)."""
    return load_checkpoint(path, map_location=map_location).state_dict


def read_weights(path: str | Path) -> StateDict:
    """DiT weights in our layout from a file: our safetensors, a single-process training checkpoint
    directory, the published ``dit.pt``, or a single-file Megatron checkpoint. (The sharded DCP
    folder of a torchrun run is read one layer up: mugv.distributed.checkpoint.read_model_weights.)"""
    path = Path(path)
    if path.is_dir() and (path / ".metadata").is_file():
        raise CheckpointLayoutError(f"{path} is a distributed (DCP) checkpoint: read it with "
                                    "mugv.distributed.checkpoint.read_model_weights")
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no DiT weights at {path}")
    state_dict = load_state_dict(path)
    try:
        layout = detect_layout(state_dict)
    except CheckpointLayoutError as exc:
        raise CheckpointLayoutError(f"{path}: {exc}") from exc
    if layout == "megatron":
        return from_megatron([state_dict])
    return dict(state_dict)
