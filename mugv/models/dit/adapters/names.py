"""Checkpoint key names: our layout (== the MUG-V release) and the Megatron names, the table
that maps them, and the layout error that names keys."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from mugv.errors import MugvError

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
