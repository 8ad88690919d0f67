"""The Megatron-Core training layout: renames, per-head regrouping and tensor-parallel splits."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mugv.models.dit.adapters.names import (
    CheckpointLayoutError,
    StateDict,
    _match_megatron,
    _match_ours,
    _unknown,
)


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
