"""Width expansion of a trained MUG-DiT that keeps its function (HyperCloning).

Growing the hidden width by an integer factor e makes every hidden vector the e-fold tiling of
the small model's: [h, h, ..., h]. A linear layer keeps that property when its weight is tiled
e x e and scaled by 1/e on the expanded input side, and its bias tiled. Heads double with the
head dimension kept, so the fused qkv (and kv) are tiled chunk by chunk ([q; q; k; k; v; v]) and
every new head is a copy of an old one; RoPE, the QK-norms, LayerNorms (statistics of a tiled
vector equal the original's), modulation tables and tokens follow by tiling.

The copies of a tiled network receive identical gradients and never separate. The symmetry
breaking here adds noise that sums to zero across the e input copies of each weight: because
those inputs are equal, the output is unchanged, yet the copies now see different gradients
and diverge once training starts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import torch

from mugv.errors import MugvError
from mugv.models.dit.config import DiTConfig

# How each tensor grows: (row chunks to tile, or 0 to keep the rows), whether the expanded input
# side (last dim) is tiled with 1/e (a matmul input) or plainly tiled (a value), or kept.
ROWS, MATMUL_IN, VALUE = "rows", "matmul_in", "value"
_RULES: tuple[tuple[str, int, str | None], ...] = (
    (r"x_embedder\.proj\.(weight|bias)", 1, None),
    (r"(t|fps)_embedder\.mlp\.0\.(weight|bias)", 1, None),
    (r"(t|fps)_embedder\.mlp\.2\.weight", 1, MATMUL_IN),
    (r"(t|fps)_embedder\.mlp\.2\.bias", 1, None),
    (r"t_block\.1\.weight", 6, MATMUL_IN),
    (r"t_block\.1\.bias", 6, None),
    (r"y_embedder\.y_proj\.fc1\.(weight|bias)", 1, None),
    (r"y_embedder\.y_proj\.fc2\.weight", 1, MATMUL_IN),
    (r"y_embedder\.y_proj\.fc2\.bias", 1, None),
    (r"y_embedder\.y_embedding", 0, None),
    (r"(start|end)_token", 0, VALUE),
    (r"blocks\.\d+\.scale_shift_table", 0, VALUE),
    (r"blocks\.\d+\.attn\.qkv\.weight", 3, MATMUL_IN),
    (r"blocks\.\d+\.attn\.qkv\.bias", 3, None),
    (r"blocks\.\d+\.(attn|cross_attn)\.(q|k)_norm\.weight", 0, None),
    (r"blocks\.\d+\.(attn|cross_attn)\.proj\.weight", 1, MATMUL_IN),
    (r"blocks\.\d+\.(attn|cross_attn)\.proj\.bias", 1, None),
    (r"blocks\.\d+\.cross_attn_norm\.(weight|bias)", 0, VALUE),
    (r"blocks\.\d+\.cross_attn\.q_linear\.weight", 1, MATMUL_IN),
    (r"blocks\.\d+\.cross_attn\.q_linear\.bias", 1, None),
    (r"blocks\.\d+\.cross_attn\.kv_linear\.weight", 2, MATMUL_IN),
    (r"blocks\.\d+\.cross_attn\.kv_linear\.bias", 2, None),
    (r"blocks\.\d+\.mlp\.fc1\.weight", 1, MATMUL_IN),
    (r"blocks\.\d+\.mlp\.fc1\.bias", 1, None),
    (r"blocks\.\d+\.mlp\.fc2\.weight", 1, MATMUL_IN),
    (r"blocks\.\d+\.mlp\.fc2\.bias", 1, None),
    (r"final_layer\.scale_shift_table", 0, VALUE),
    (r"final_layer\.linear\.weight", 0, MATMUL_IN),
    (r"final_layer\.linear\.bias", 0, None),
)
_COMPILED = tuple((re.compile(rf"^{pattern}$"), rows, inputs) for pattern, rows, inputs in _RULES)


class ExpansionError(MugvError, ValueError):
    pass


def expanded_config(cfg: DiTConfig, factor: int) -> DiTConfig:
    """The config of `cfg` grown `factor` times in width: heads x factor, head_dim and depth kept."""
    if factor < 1:
        raise ExpansionError(f"expansion factor must be a positive integer, got {factor}")
    return dataclasses.replace(
        cfg, hidden_size=cfg.hidden_size * factor, num_heads=cfg.num_heads * factor, preset=f"{cfg.preset}x{factor}"
    )


def expansion_factor(small: DiTConfig, large: DiTConfig) -> int:
    """The integer width factor from `small` to `large`, checking that only the width differs."""
    if large.hidden_size % small.hidden_size:
        raise ExpansionError(
            f"target hidden size {large.hidden_size} is not a multiple of the source's {small.hidden_size}"
        )
    factor = large.hidden_size // small.hidden_size
    for name in ("depth", "head_dim", "text_dim", "in_channels", "out_channels", "patch_size", "mlp_ratio"):
        if getattr(small, name) != getattr(large, name):
            raise ExpansionError(
                f"width expansion keeps {name}: source has {getattr(small, name)}, target {getattr(large, name)}"
            )
    return factor


def _rule_for(name: str) -> tuple[int, str | None]:
    for pattern, rows, inputs in _COMPILED:
        if pattern.match(name):
            return rows, inputs
    raise ExpansionError(f"no expansion rule for tensor '{name}'")


def _tile_rows(t: torch.Tensor, chunks: int, factor: int) -> torch.Tensor:
    parts = t.reshape(chunks, t.shape[0] // chunks, *t.shape[1:])
    return parts.repeat(1, factor, *([1] * (t.ndim - 1))).reshape(-1, *t.shape[1:])


def _tile_inputs(t: torch.Tensor, factor: int, scale: bool, noise_std: float, generator: torch.Generator) -> torch.Tensor:
    block = t / factor if scale else t
    copies = [block] * factor
    if noise_std > 0 and factor > 1:
        noise = torch.randn((factor, *t.shape), generator=generator, dtype=torch.float64) * noise_std
        noise -= noise.mean(dim=0, keepdim=True)  # sums to zero over the copies: output unchanged
        copies = [block + noise[k].to(t.dtype) for k in range(factor)]
    return torch.cat(copies, dim=-1)


def expand_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    factor: int,
    *,
    perturbation: float = 0.0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Expand a MUG-DiT state dict (our / MUG-V names) `factor` times in width.

    `perturbation` is the symmetry-breaking noise relative to each matmul weight's std
    (0 keeps the copies identical). The expanded model computes the same function either way.
    """
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(state_dict):
        tensor = state_dict[name]
        rows, inputs = _rule_for(name)
        grown = _tile_rows(tensor, rows, factor) if rows else tensor
        if inputs == VALUE:
            grown = grown.repeat(*([1] * (grown.ndim - 1)), factor)
        elif inputs == MATMUL_IN:
            noise_std = perturbation * float(tensor.float().std()) / factor if perturbation else 0.0
            grown = _tile_inputs(grown, factor, scale=True, noise_std=noise_std, generator=generator)
        out[name] = grown.contiguous()
    return out
