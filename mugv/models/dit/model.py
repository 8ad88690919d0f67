"""MUG-DiT: the MUG-V video diffusion transformer, as plain single-device PyTorch.

Parameter names follow the published MUG-V inference checkpoint (`dit.pt`), so its weights load
without renaming. Parallelism is applied from outside (mugv.distributed); nothing here knows
about process groups.

Shapes: latents `x` are (B, C, T, H, W); `timestep` is tau on the 0..1000 scale (1000 = noise);
`text` is (B, L, text_dim) with `text_mask` (B, L), True for real tokens; `frame_mask` is (B, T),
True for frames to generate and False for clean conditioning frames (I2V / continuation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mugv import kernels
from mugv.kernels.reference import apply_rope, rms_norm
from mugv.models.dit.config import DiTConfig
from mugv.models.dit.rope import rope_angles


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in float32, scaled in the input dtype (as released)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def forward_rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Norm then RoPE, fused into one kernel where mugv.kernels applies."""
        return kernels.rms_norm_rope(x, self.weight, self.eps, cos, sin)


def sinusoid(values: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """`[cos(v f), sin(v f)]` with f_k = exp(-ln(max_period) k / (dim / 2)), in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    args = values.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ScalarEmbedder(nn.Module):
    """A scalar (timestep or fps) -> 256-d sinusoid -> Linear, SiLU, Linear."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoid(values, self.frequency_dim).to(self.mlp[0].weight.dtype))


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TextEmbedder(nn.Module):
    """Non-affine LayerNorm -> MLP to hidden -> non-affine LayerNorm.

    `y_embedding` is the caption-dropout ("null") text, used in place of a dropped caption.
    """

    def __init__(self, text_dim: int, hidden_size: int, max_tokens: int):
        super().__init__()
        self.pre_norm = nn.LayerNorm(text_dim, eps=1e-6, elementwise_affine=False)
        self.y_proj = MLP(text_dim, hidden_size, hidden_size)
        self.post_norm = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.register_buffer("y_embedding", torch.randn(max_tokens, text_dim) / text_dim**0.5)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.post_norm(self.y_proj(self.pre_norm(text)))


class PatchEmbed3D(nn.Module):
    """Conv3d with kernel = stride = patch; pads T, H, W up to multiples of the patch."""

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pt, ph, pw = self.patch_size
        _, _, t, h, w = x.shape
        x = F.pad(x, (0, -w % pw, 0, -h % ph, 0, -t % pt))
        return self.proj(x).flatten(2).transpose(1, 2)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Core attention over (B, heads, N, head_dim) tensors: the default `SelfAttention.core_attention`."""
    return F.scaled_dot_product_attention(q, k, v)


class SelfAttention(nn.Module):
    """Fused qkv laid out [q for all heads; k for all heads; v for all heads].

    `core_attention` maps (q, k, v) of shape (B, heads, N, head_dim) to the attention output; it is
    a seam that context parallelism swaps (mugv.distributed.context_parallel). The head count is
    read from the qkv output, so a tensor-parallel shard holding [q_r; k_r; v_r] works unchanged.
    """

    def __init__(self, hidden_size: int, head_dim: int, qk_norm: bool):
        super().__init__()
        self.head_dim = head_dim
        self.core_attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = sdpa
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        qkv = self.qkv(x)
        b, n, _ = qkv.shape  # n: tokens after the projection (sequence parallel gathers them)
        q, k, v = qkv.view(b, n, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = (
            (self.q_norm.forward_rope(q, *rope), self.k_norm.forward_rope(k, *rope))
            if isinstance(self.q_norm, RMSNorm)
            else (apply_rope(q, *rope), apply_rope(k, *rope))
        )
        out = self.core_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class CrossAttention(nn.Module):
    """Video queries attend to the text tokens; padding tokens are masked out."""

    def __init__(self, hidden_size: int, head_dim: int, qk_norm: bool):
        super().__init__()
        self.head_dim = head_dim
        self.q_linear = nn.Linear(hidden_size, hidden_size)
        self.kv_linear = nn.Linear(hidden_size, 2 * hidden_size)
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_attn_mask: torch.Tensor | None) -> torch.Tensor:
        q = self.q_linear(x)
        b, n, _ = q.shape
        q = self.q_norm(q.view(b, n, -1, self.head_dim)).transpose(1, 2)
        k, v = self.kv_linear(text).view(b, text.shape[1], 2, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        k = self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=text_attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Modulation:
    """adaLN-single modulation for one layer: per-sample rows for t, and for t0 with a token selector.

    `rows` and `rows_t0` are (B, k, hidden); `select` is (B, N, 1), True where a token takes the
    t rows and False where it takes the t0 rows. Without a frame mask every token takes t.
    """

    def __init__(self, rows: torch.Tensor, rows_t0: torch.Tensor | None, select: torch.Tensor | None):
        self.rows, self.rows_t0, self.select = rows, rows_t0, select

    def row(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.rows[:, index], None if self.rows_t0 is None else self.rows_t0[:, index]

    def modulate(self, x: torch.Tensor, shift: int, scale: int) -> torch.Tensor:
        (scale_t, scale_t0), (shift_t, shift_t0) = self.row(scale), self.row(shift)
        return kernels.modulate(x, scale_t, shift_t, scale_t0, shift_t0, self.select)

    def gate_residual(self, residual: torch.Tensor, x: torch.Tensor, index: int) -> torch.Tensor:
        """`residual + gate * x`."""
        return kernels.gate_residual(residual, x, *self.row(index), self.select)


class MUGDiTBlock(nn.Module):
    SHIFT_MSA, SCALE_MSA, GATE_MSA, SHIFT_MLP, SCALE_MLP, GATE_MLP = range(6)

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        h = cfg.hidden_size
        self.norm = nn.LayerNorm(h, eps=1e-6, elementwise_affine=False)
        self.attn = SelfAttention(h, cfg.head_dim, cfg.qk_norm)
        self.cross_attn_norm = nn.LayerNorm(h, eps=1e-6)
        self.cross_attn = CrossAttention(h, cfg.head_dim, cfg.qk_norm)
        self.mlp = MLP(h, cfg.mlp_hidden)
        self.scale_shift_table = nn.Parameter(torch.randn(6, h) / h**0.5)

    def modulation(
        self, t_rows: torch.Tensor, t0_rows: torch.Tensor | None, select: torch.Tensor | None, dtype: torch.dtype
    ) -> Modulation:
        b = t_rows.shape[0]
        rows = (self.scale_shift_table[None] + t_rows.view(b, 6, -1)).to(dtype)
        rows_t0 = None if t0_rows is None else (self.scale_shift_table[None] + t0_rows.view(b, 6, -1)).to(dtype)
        return Modulation(rows, rows_t0, select)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        text_attn_mask: torch.Tensor | None,
        t_rows: torch.Tensor,
        t0_rows: torch.Tensor | None,
        select: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        mod = self.modulation(t_rows, t0_rows, select, x.dtype)
        attn_in = mod.modulate(self.norm(x), self.SHIFT_MSA, self.SCALE_MSA)
        x = mod.gate_residual(x, self.attn(attn_in, rope), self.GATE_MSA)
        x = x + self.cross_attn(self.cross_attn_norm(x), text, text_attn_mask)
        mlp_in = mod.modulate(self.norm(x), self.SHIFT_MLP, self.SCALE_MLP)
        return mod.gate_residual(x, self.mlp(mlp_in), self.GATE_MLP)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, t0: torch.Tensor | None, select: torch.Tensor | None
    ) -> torch.Tensor:
        rows = (self.scale_shift_table[None] + t[:, None]).to(x.dtype)
        rows_t0 = None if t0 is None else (self.scale_shift_table[None] + t0[:, None]).to(x.dtype)
        x = Modulation(rows, rows_t0, select).modulate(self.norm_final(x), shift=0, scale=1)
        return self.linear(x)


@dataclass
class DiTInputs:
    """What the block stack and the head consume: the output of `MUGDiT.embed`.

    Per-token tensors (dim 1 of `tokens` and `select`, dim 0 of the `rope` tables) run over the
    full sequence [start, video tokens..., end]; context parallelism splits them consistently
    (see `MUGDiT.token_split_plan`). `select` is None without a frame mask; `num_tokens` is the
    real (unpadded) sequence length.
    """

    tokens: torch.Tensor | None  # (B, N, hidden); None from `condition` alone
    text: torch.Tensor  # (B, L, hidden), embedded
    text_attn_mask: torch.Tensor | None  # (B, 1, 1, L) bool
    t: torch.Tensor  # (B, hidden): timestep + fps embedding, for the final layer
    t0: torch.Tensor | None  # (B, hidden): the same at timestep 0 (conditioning frames)
    t_rows: torch.Tensor  # (B, 6 * hidden): shared adaLN-single projection of t
    t0_rows: torch.Tensor | None
    select: torch.Tensor | None  # (B, N, 1) bool: True = token takes the t rows, False = t0 rows
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin: (N, head_dim // 2)
    grid: tuple[int, int, int]
    size: tuple[int, int, int]
    num_tokens: int

    def replace(self, **changes) -> DiTInputs:
        return replace(self, **changes)


class MUGDiT(nn.Module):
    # Where the token sequence is split for sequence / context parallelism, declared as data and
    # applied by mugv.distributed.parallelize: the fields of `DiTInputs` that run over tokens and
    # their token dimension. The head's per-token output is gathered along dim 1 before unpatchify.
    token_split_plan: ClassVar[dict[str, int]] = {"tokens": 1, "select": 1, "rope": 0}
    token_gather_dim: ClassVar[int] = 1

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        h = cfg.hidden_size
        self.x_embedder = PatchEmbed3D(cfg.patch_size, cfg.in_channels, h)
        self.t_embedder = ScalarEmbedder(h)
        self.fps_embedder = ScalarEmbedder(h)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(h, 6 * h))
        self.y_embedder = TextEmbedder(cfg.text_dim, h, cfg.max_text_tokens)
        self.blocks = nn.ModuleList([MUGDiTBlock(cfg) for _ in range(cfg.depth)])
        self.start_token = nn.Parameter(torch.empty(h))
        self.end_token = nn.Parameter(torch.empty(h))
        self.final_layer = FinalLayer(h, cfg.patch_volume, cfg.out_channels)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fresh-training init: N(0, init_std) linears, zero biases, zero output projection.

        The zero final projection makes the untrained model predict zero velocity; the zero
        shared adaLN projection starts every block from its own modulation table.
        """
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv3d)):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        h = self.cfg.hidden_size
        for block in self.blocks:
            block.scale_shift_table.normal_(std=h**-0.5)
        self.final_layer.scale_shift_table.normal_(std=h**-0.5)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.t_block[1].weight)
        nn.init.normal_(self.start_token, std=0.02)
        nn.init.normal_(self.end_token, std=0.02)
        self.y_embedder.y_embedding.normal_(std=self.cfg.text_dim**-0.5)

    def null_text(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The caption-dropout text for `batch` samples: (B, max_text_tokens, text_dim) and its mask."""
        text = self.y_embedder.y_embedding[None].expand(batch, -1, -1)
        return text, torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        *,
        fps: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the 48-channel output (the first `in_channels` are the velocity), float32."""
        inputs = self.embed(x, timestep, text, fps=fps, text_mask=text_mask, frame_mask=frame_mask)
        return self.head(self.forward_blocks(inputs), inputs)

    def embed(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        *,
        fps: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> DiTInputs:
        """Stage 1: patch tokens with start/end tokens, the conditioning, RoPE tables, token selector."""
        dtype = self.x_embedder.proj.weight.dtype
        b = x.shape[0]
        tokens = self.x_embedder(x.to(dtype))
        # in the patch tokens' dtype: under autocast fp32 start/end tokens would promote the stream
        start, end = (token.to(tokens.dtype).expand(b, 1, -1) for token in (self.start_token, self.end_token))
        tokens = torch.cat([start, tokens, end], dim=1)
        return self.condition(x.shape, timestep, text, fps=fps, text_mask=text_mask, frame_mask=frame_mask,
                              dtype=dtype, tokens=tokens)

    def condition(
        self,
        shape: torch.Size | tuple[int, ...],
        timestep: torch.Tensor,
        text: torch.Tensor,
        *,
        fps: torch.Tensor,
        text_mask: torch.Tensor | None,
        frame_mask: torch.Tensor | None,
        dtype: torch.dtype,
        tokens: torch.Tensor | None,
    ) -> DiTInputs:
        """The conditioning of latents of `shape` (B, C, T, H, W) without the patch embedding:
        what every pipeline stage recomputes from the raw timestep, fps and text."""
        cfg = self.cfg
        b, _, frames, height, width = shape
        pt, ph, pw = cfg.patch_size
        grid = (-(-frames // pt), -(-height // ph), -(-width // pw))
        device = timestep.device

        fps_emb = self.fps_embedder(fps.expand(b))
        t = self.t_embedder(timestep.expand(b)) + fps_emb
        t_rows = self.t_block(t)
        t0 = t0_rows = select = None
        if frame_mask is not None:
            t0 = self.t_embedder(torch.zeros_like(timestep.expand(b))) + fps_emb
            t0_rows = self.t_block(t0)
            per_frame = frame_mask.to(torch.bool)[:, ::pt]
            select_video = per_frame[:, :, None].expand(b, grid[0], grid[1] * grid[2]).reshape(b, -1, 1)
            special = torch.zeros(b, 1, 1, dtype=torch.bool, device=device)
            select = torch.cat([special, select_video, special], dim=1)

        text_h = self.y_embedder(text.to(dtype))
        text_attn_mask = None if text_mask is None else text_mask.to(torch.bool)[:, None, None, :]
        rope = rope_angles(*grid, cfg.head_dim, cfg.rope_theta, cfg.rope_time_positions, device=device)
        return DiTInputs(
            tokens=tokens, text=text_h, text_attn_mask=text_attn_mask, t=t, t0=t0, t_rows=t_rows,
            t0_rows=t0_rows, select=select, rope=rope, grid=grid, size=(frames, height, width),
            num_tokens=grid[0] * grid[1] * grid[2] + 2,
        )

    def forward_blocks(self, inputs: DiTInputs, blocks: nn.ModuleList | None = None) -> torch.Tensor:
        """Stage 2: the block stack (or the given slice of it) over `inputs.tokens`."""
        tokens = inputs.tokens
        for block in self.blocks if blocks is None else blocks:
            tokens = block(
                tokens, inputs.text, inputs.text_attn_mask, inputs.t_rows, inputs.t0_rows, inputs.select, inputs.rope
            )
        return tokens

    def head(self, tokens: torch.Tensor, inputs: DiTInputs) -> torch.Tensor:
        """Stage 3: the final layer per token (start/end included, then dropped) and unpatchify."""
        out = self.final_layer(tokens, inputs.t, inputs.t0, inputs.select)
        return self.unpatchify(out[:, 1 : inputs.num_tokens - 1], inputs.grid, inputs.size).float()

    def unpatchify(
        self, x: torch.Tensor, grid: tuple[int, int, int], size: tuple[int, int, int]
    ) -> torch.Tensor:
        pt, ph, pw = self.cfg.patch_size
        gt, gh, gw = grid
        b = x.shape[0]
        x = x.view(b, gt, gh, gw, pt, ph, pw, self.cfg.out_channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, self.cfg.out_channels, gt * pt, gh * ph, gw * pw)
        return x[:, :, : size[0], : size[1], : size[2]]
