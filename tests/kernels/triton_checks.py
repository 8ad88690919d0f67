"""Each Triton kernel against its plain PyTorch reference, forward and backward, on the CPU
through Triton's interpreter. Run in a process of their own by test_triton_kernels.py: once
torch.compile has run in a process, Triton's interpreter no longer works there."""

import os

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"  # before triton decorates the kernels: they run on the CPU
pytest.importorskip("triton")

from mugv import kernels  # noqa: E402
from mugv.kernels import reference, triton_ops  # noqa: E402


def assert_close_to_scale(actual, expected, rel):
    scale = expected.abs().max().clamp_min(1e-12)
    diff = (actual.float() - expected.float()).abs().max()
    assert diff <= rel * scale, f"max diff {diff:.3e} > {rel:g} x scale {scale:.3e}"


def leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_(t.dtype.is_floating_point) for t in tensors]


def check_forward_backward(fused_op, reference_op, inputs, rel, seed=0):
    fused_inputs, ref_inputs = leaves(*inputs), leaves(*inputs)
    fused_out, ref_out = fused_op(*fused_inputs), reference_op(*ref_inputs)
    assert fused_out.dtype == inputs[0].dtype
    assert_close_to_scale(fused_out, ref_out, rel)
    grad = torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(seed)).to(ref_out.dtype)
    fused_out.backward(grad)
    ref_out.backward(grad)
    for name, f, r in zip(range(len(inputs)), fused_inputs, ref_inputs):
        if r is None or r.grad is None:
            assert f is None or f.grad is None
            continue
        assert f.grad is not None, f"input {name} got no gradient"
        assert_close_to_scale(f.grad, r.grad, rel)


def rows(batch, hidden, gen):
    return [torch.randn(batch, hidden, generator=gen) * 0.5 for _ in range(4)]


@pytest.mark.parametrize("with_select", [False, True])
def test_modulate_matches_reference(with_select):
    gen = torch.Generator().manual_seed(1)
    b, n, h = 2, 77, 200  # neither the token count nor the width is a multiple of the blocks
    x = torch.randn(b, n, h, generator=gen)
    scale, shift, scale0, shift0 = rows(b, h, gen)
    select = torch.rand(b, n, 1, generator=gen) > 0.3 if with_select else None
    if not with_select:
        scale0 = shift0 = None
    check_forward_backward(
        lambda x, a, s, a0, s0: triton_ops.modulate(x, a, s, a0, s0, select),
        lambda x, a, s, a0, s0: reference.modulate(x, a, s, a0, s0, select),
        [x, scale, shift, scale0, shift0], rel=1e-5,
    )


@pytest.mark.parametrize("with_select", [False, True])
def test_gate_residual_matches_reference(with_select):
    gen = torch.Generator().manual_seed(2)
    b, n, h = 2, 70, 130
    residual, y = torch.randn(b, n, h, generator=gen), torch.randn(b, n, h, generator=gen)
    gate, gate0, _, _ = rows(b, h, gen)
    select = torch.rand(b, n, 1, generator=gen) > 0.5 if with_select else None
    check_forward_backward(
        lambda r, y, g, g0: triton_ops.gate_residual(r, y, g, g0, select),
        lambda r, y, g, g0: reference.gate_residual(r, y, g, g0, select),
        [residual, y, gate, gate0 if with_select else None], rel=1e-5,
    )


def test_rms_norm_rope_matches_reference_on_a_strided_qkv_view():
    from mugv.models.dit.rope import rope_angles

    gen = torch.Generator().manual_seed(3)
    b, heads, head_dim, grid = 2, 3, 24, (2, 3, 5)
    n = grid[0] * grid[1] * grid[2] + 2
    qkv = torch.randn(b, n, 3 * heads * head_dim, generator=gen)
    q = qkv.view(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)[0]  # as SelfAttention slices it
    assert not q.is_contiguous()
    weight = 1 + 0.1 * torch.randn(head_dim, generator=gen)
    cos, sin = rope_angles(*grid, head_dim)
    check_forward_backward(
        lambda x, w: triton_ops.rms_norm_rope(x, w, 1e-6, cos, sin),
        lambda x, w: reference.rms_norm_rope(x, w, 1e-6, cos, sin),
        [q, weight], rel=1e-5,
    )


def test_bf16_output_is_within_one_bf16_step_of_the_fp32_answer():
    gen = torch.Generator().manual_seed(4)
    x, scale, shift = (t.bfloat16() for t in (torch.randn(1, 40, 64, generator=gen), *rows(1, 64, gen)[:2]))
    exact = reference.modulate(x.float(), scale.float(), shift.float())
    fused = triton_ops.modulate(x, scale, shift)
    assert fused.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits; the interpreter's rounding is not round-to-nearest, so allow a full step.
    assert ((fused.float() - exact).abs() <= exact.abs() * 2**-7 + 1e-6).all()


def test_backward_is_deterministic():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 150, 64, generator=gen)
    scale, shift, scale0, shift0 = rows(1, 64, gen)
    select = torch.rand(1, 150, 1, generator=gen) > 0.5
    grads = []
    for _ in range(2):
        s = scale.clone().requires_grad_()
        triton_ops.modulate(x, s, shift, scale0, shift0, select).square().sum().backward()
        grads.append(s.grad)
    assert torch.equal(grads[0], grads[1])


def test_dispatch_uses_the_reference_off_gpu():
    x = torch.randn(1, 4, 8)
    assert not kernels.use_fused(x)
    scale, shift = torch.randn(1, 8), torch.randn(1, 8)
    assert torch.equal(kernels.modulate(x, scale, shift), reference.modulate(x, scale, shift))


def test_mugdit_with_fused_kernels_matches_its_eager_path(monkeypatch):
    """The whole debug MUG-DiT, conditioning frames included: output and every parameter gradient."""
    from mugv.models.dit.config import DiTConfig
    from mugv.models.dit.model import MUGDiT

    torch.manual_seed(0)
    model = MUGDiT(DiTConfig.from_preset("debug"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the fresh init zeroes the output layer
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, 3, 4, 6, generator=gen)
    text = torch.randn(2, 5, 64, generator=gen)
    frame_mask = torch.tensor([[False, True, True], [True, True, True]])
    args = dict(fps=torch.full((2,), 24.0), text_mask=torch.ones(2, 5, dtype=torch.bool), frame_mask=frame_mask)

    def run():
        model.zero_grad()
        out = model(x, torch.tensor([900.0, 250.0]), text, **args)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    eager_out, eager_grads = run()
    monkeypatch.setattr(kernels, "_plain_cuda", lambda tensors: True)  # the interpreter runs on the CPU
    calls = []
    monkeypatch.setattr(triton_ops, "modulate", lambda *a, _f=triton_ops.modulate: calls.append(1) or _f(*a))
    fused_out, fused_grads = run()
    assert calls, "the fused path was not taken"
    assert_close_to_scale(fused_out, eager_out, 1e-5)
    for name, grad in eager_grads.items():
        assert_close_to_scale(fused_grads[name], grad, 1e-4)
