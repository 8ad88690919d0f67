"""Throughput, MFU and memory accounting for training log lines."""

from __future__ import annotations

import resource
import sys

import torch

from mugv.data.batch import LatentBatch
from mugv.models.dit.config import DiTConfig

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment; the first match wins.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H20", 148.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("A10G", 125.0),
    ("4090", 165.0),
)


def device_peak_tflops(device: torch.device, override: float = 0.0) -> float | None:
    """Peak dense bf16 TFLOP/s of one device, or None when unknown (no MFU is reported then)."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peak in PEAK_BF16_TFLOPS:
        if fragment in name:
            return peak
    return None


def batch_train_flops(model_cfg: DiTConfig, batch: LatentBatch) -> int:
    """Model FLOPs (forward + backward) of a batch, attention over each sample's real text tokens."""
    _, _, t, h, w = batch.latents.shape
    text_tokens = batch.text_mask.sum(dim=1).tolist()
    return sum(model_cfg.train_flops(t, h, w, int(c)) for c in text_tokens)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated device memory (GPU) or peak resident set size of the process (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20
