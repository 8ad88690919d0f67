"""Context-parallel attention on 4 gloo ranks against plain attention over the whole sequence.

Ring attention runs a fused SDPA kernel per key block and merges the blocks through their
log-sum-exp; its backward gets every block's dk, dv around the ring to their owner. Ulysses cuts
the padded keys off instead of masking them. Tolerances are relative to the values' scale:
float32 1e-5 (reduction order only), bfloat16 3e-2 (inputs and per-block outputs rounded).
"""

from __future__ import annotations

import pytest
import ring_attention_scenarios as rs
import torch
from dist_harness import run_once, run_scenarios

from mugv.distributed.context_parallel import _FUSED_KERNELS, fused_kernel

WORLD = 4
SCENARIOS = rs.ring_scenarios(WORLD)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_once(tmp_path_factory, "ring-attention-4-ranks", lambda _: run_scenarios(WORLD, SCENARIOS))[0]


def _ok(results, name):
    status, value = results[name]
    assert status == "ok", value
    return value


@pytest.mark.parametrize("name", [name for name, _, _ in SCENARIOS])
def test_matches_full_attention_forward_and_gradients(results, name):
    result = _ok(results, name)
    low_precision = "bfloat16" in name or "autocast" in name
    print(name, {k: f"{e:.1e}" for k, e in result["errors"].items()})
    for tensor, error in result["errors"].items():
        assert error < (3e-2 if low_precision else 1e-5), (tensor, error)
    if "autocast" in name:  # computed in autocast's dtype, as SDPA does
        assert result["out_dtype"] == "torch.bfloat16"


@pytest.mark.parametrize("name", [name for name, _, _ in SCENARIOS if name.startswith("ring")])
def test_ring_runs_the_fused_kernel_and_never_builds_a_score_matrix(results, name):
    result = _ok(results, name)
    called = {op for op, _ in result["fused"]}
    assert called == {"_scaled_dot_product_flash_attention_for_cpu",
                      "_scaled_dot_product_flash_attention_for_cpu_backward"}, called
    # a (queries x keys) block is (..., 13, k) with k > head_dim; nothing else has that shape
    scores = [(op, shape) for op, shape in result["shapes"]
              if len(shape) >= 2 and shape[-2] == 13 and shape[-1] > rs.HEAD_DIM]
    assert not scores, scores


def test_ulysses_cuts_padded_keys_off_instead_of_masking(results):
    result = _ok(results, "ulysses, padded")
    assert result["fused"] and not any(masked for _, masked in result["fused"]), result["fused"]


def test_fused_kernel_per_device_and_dtype():
    assert fused_kernel(torch.empty(0)) is fused_kernel(torch.empty(0, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="device type 'meta'"):
        fused_kernel(torch.empty(0, device="meta"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_kernels_bind_to_their_op_schemas(dtype):
    """The CUDA entries (flash for 16-bit floats, efficient for float32) called on the meta device:
    the argument lists bind to this torch's op schemas and the shapes come back as the ring
    expects (the kernels themselves need a GPU)."""
    kernel = _FUSED_KERNELS["cuda"](dtype)
    q = torch.empty(2, 3, 40, 72, device="meta", dtype=dtype)
    k, v = (torch.empty(2, 3, 33, 72, device="meta", dtype=dtype) for _ in range(2))
    out, lse, extra = kernel.forward(q, k, v)
    assert out.shape == q.shape and lse.shape == (2, 3, 40) and lse.dtype == torch.float32
    dq, dk, dv = kernel.backward(out, q, k, v, out, lse, extra)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
