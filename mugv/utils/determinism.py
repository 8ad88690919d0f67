"""Seeding, and `train.deterministic`: bit-identical GPU training for some speed.

CPU training is bit-identical run to run without it (same seed, machine and thread count). On a
GPU, some fast kernels are not: cuDNN picks convolution algorithms by timing them and some of them
accumulate with atomics, cuBLAS splits reductions by its workspace, and attention and
index/scatter backward passes add into gradients with atomics. Deterministic mode turns on
torch's deterministic algorithms (an op with no deterministic implementation warns, naming
itself), pins cuDNN to deterministic algorithms without autotuning and gives cuBLAS a fixed
workspace. mugv's own Triton kernels reduce in a fixed order either way.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

# cuBLAS reduces in a fixed order only with a fixed workspace (CUDA >= 10.2); it reads this when
# it first runs, so it is set before any GPU work of the run.
CUBLAS_WORKSPACE = ":4096:8"


def use_deterministic_algorithms(enabled: bool) -> None:
    """Switch the process to deterministic kernels (`enabled`) or back to torch's defaults."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    """Seed torch (every device), numpy's and Python's global generators. mugv itself draws from
    generators of its own, seeded from `train.seed`; this covers hooks and libraries that use the
    global ones, and makes the generator states a checkpoint saves the same run to run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
