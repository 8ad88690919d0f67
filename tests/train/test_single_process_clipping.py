"""One process clips gradients exactly as torch does, so a single-process run trains bit-identically
to a plain PyTorch loop (and to mugv before the one training path)."""

import torch

from mugv.distributed.parallelize import clip_grad_norm_


def test_unsharded_gradients_are_clipped_bit_identically_to_torch():
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 33), (33,), (7, 5, 3), (1,)]
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.shape, generator=gen) * 3
        b.grad = a.grad.clone()
    ours.append(torch.nn.Parameter(torch.zeros(2)))  # no gradient: skipped by both
    norm = clip_grad_norm_(ours, 0.5)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    assert torch.equal(norm, expected) and norm > 0.5
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, theirs))
    unclipped = clip_grad_norm_(ours[:1], 0.0)  # 0: no clipping, the norm is still reported
    assert torch.equal(unclipped, torch.linalg.vector_norm(ours[0].grad))
