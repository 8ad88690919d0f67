"""Preference samples as the trainer sees them: a pair (chosen and rejected latents of one prompt,
same bucket) or an unpaired sample with its pass/fail label, plus the seed that fixes its noise.

A pair is one sample: it travels as one row of a `PreferenceBatch`, so batching, data-parallel
splitting and resume never separate its two halves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from mugv.config import DataConfig
from mugv.data.batch import LatentBatch
from mugv.utils.seeds import derived_seed

REFERENCE_ERRORS_NAME = "reference_errors.parquet"  # beside a shard set: mugv.train.preference_reference


@dataclass
class PreferenceBatch(LatentBatch):
    """`latents` are the chosen clips (pairs) or the clips (unpaired). rejected: (B, C, T, H, W) for
    pairs, else None. label: (B,) bool, True = desirable, for unpaired samples, else None.
    noise_seed: (B,) int64, the seed of each sample's sigma, noise and conditioning draw (None: drawn
    from the step's generator). reference_error: the reference model's velocity errors recorded
    with those seeds, (B, 2) [chosen, rejected] for pairs or (B,) unpaired (None: not recorded)."""

    rejected: torch.Tensor | None = None
    label: torch.Tensor | None = None
    noise_seed: torch.Tensor | None = None
    reference_error: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        b = self.size
        if (self.rejected is None) == (self.label is None):
            raise ValueError("a preference batch holds either rejected latents (pairs) or labels (unpaired)")
        if self.rejected is not None and self.rejected.shape != self.latents.shape:
            raise ValueError(f"chosen and rejected latents differ in shape: {tuple(self.latents.shape)} vs "
                             f"{tuple(self.rejected.shape)} (a pair must share one bucket)")
        if self.label is not None and self.label.shape != (b,):
            raise ValueError(f"labels must be (B,) = ({b},), got {tuple(self.label.shape)}")
        if self.noise_seed is not None and self.noise_seed.shape != (b,):
            raise ValueError(f"noise seeds must be (B,) = ({b},), got {tuple(self.noise_seed.shape)}")
        if self.reference_error is not None and self.reference_error.shape != ((b, 2) if self.paired else (b,)):
            raise ValueError(f"reference errors of shape {tuple(self.reference_error.shape)} do not fit "
                             f"{b} {'pairs' if self.paired else 'samples'}")

    @property
    def paired(self) -> bool:
        return self.rejected is not None

    def candidates(self) -> LatentBatch:
        """Every clip of the batch as one plain batch: the chosen rows then the rejected rows (pairs),
        or the samples themselves (unpaired). Row i + B of a pair batch is the other half of row i."""
        if not self.paired:
            return LatentBatch(self.latents, self.text, self.text_mask, self.fps, self.pixel_height, self.pixel_width)
        return LatentBatch(
            latents=torch.cat([self.latents, self.rejected]),
            text=self.text.repeat(2, 1, 1),
            text_mask=self.text_mask.repeat(2, 1),
            fps=self.fps.repeat(2),
            pixel_height=self.pixel_height,
            pixel_width=self.pixel_width,
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PreferenceBatch:
        moved = super().to(device, non_blocking=non_blocking)

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(moved, rejected=move(self.rejected), label=move(self.label),
                       reference_error=move(self.reference_error))  # seeds stay on the CPU generators' side


def collate_preferences(records: list[dict[str, Any]], tensors: list[tuple[torch.Tensor, ...]], max_text_tokens: int,
                        pin: bool = False) -> PreferenceBatch:
    """One bucket's preference samples read from shards (mugv.data.loader.collate, plus the
    rejected latents of pairs or the labels of unpaired samples, and the noise seeds)."""
    from mugv.data.loader import collate

    kinds = {r.get("preference") for r in records}
    if len(kinds) != 1 or kinds - {"pair", "unpaired"}:
        raise ValueError(f"a preference batch holds pairs or unpaired samples, not {sorted(map(str, kinds))}")
    base = collate(records, [(t[0], t[1]) for t in tensors], max_text_tokens, pin=pin)
    paired = kinds == {"pair"}
    rejected = torch.stack([t[2].float() for t in tensors]) if paired else None
    label = None if paired else torch.tensor([bool(r["label"]) for r in records])
    recorded = [r.get("reference_error") for r in records]
    reference_error = None
    if all(e is not None for e in recorded):
        reference_error = torch.tensor(recorded, dtype=torch.float32)
        reference_error = reference_error if paired else reference_error[:, 0]
    if pin:
        rejected = rejected.pin_memory() if rejected is not None else None
    return PreferenceBatch(
        latents=base.latents, text=base.text, text_mask=base.text_mask, fps=base.fps,
        pixel_height=base.pixel_height, pixel_width=base.pixel_width, rejected=rejected, label=label,
        noise_seed=torch.tensor([int(r["noise_seed"]) for r in records], dtype=torch.int64),
        reference_error=reference_error,
    )


def attach_reference_errors(root: str, records: list[dict[str, Any]]) -> bool:
    """Give each record the reference errors recorded beside the shard set `root`, when there are
    (`reference_error`: [chosen, rejected], rejected NaN for unpaired samples); False when none."""
    import pyarrow.parquet as pq

    from mugv.data.shards import ShardError, split_url

    fs, path = split_url(root)
    target = f"{path}/{REFERENCE_ERRORS_NAME}"
    if not fs.exists(target):
        return False
    with fs.open(target, "rb") as f:
        table = pq.read_table(f).to_pydict()
    recorded = dict(zip(table["key"], zip(table["error_chosen"], table["error_rejected"])))
    missing = [r["key"] for r in records if r["key"] not in recorded]
    if missing:
        raise ShardError(f"{target} lacks the reference errors of {len(missing)} sample(s) (e.g. {missing[0]}): "
                         "record them again after encoding more data")
    for r in records:
        r["reference_error"] = list(recorded[r["key"]])
    return True


class SyntheticPreferences:
    """An in-memory pool of random preference samples (pairs, or unpaired with alternating labels),
    each with a fixed noise seed: a data source for tests and benchmarks. `reference_errors`, once
    set (index -> value), travel with the samples. Data-parallel rank d of `dp_size` takes the d-th
    `batch_size` samples of each global batch of dp_size x batch_size (a pair is one sample), so the
    global batches are those of one process with dp_size x batch_size."""

    def __init__(self, cfg: DataConfig, latent_channels: int, text_dim: int, paired: bool, seed: int = 0,
                 dp_rank: int = 0, dp_size: int = 1):
        self.cfg = cfg
        self.latent_channels = latent_channels
        self.text_dim = text_dim
        self.paired = paired
        self.seed = seed
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.position = 0  # of the global batch
        self.reference_errors: dict[int, torch.Tensor] = {}

    def indices(self, start: int) -> list[int]:
        """This rank's samples of the global batch that starts at sample `start`."""
        first = start + self.dp_rank * self.cfg.batch_size
        return [(first + i) % self.cfg.num_samples for i in range(self.cfg.batch_size)]

    def batch_at(self, start: int) -> PreferenceBatch:
        cfg, rows = self.cfg, self.indices(start)
        shape = (self.latent_channels, cfg.latent_frames, cfg.latent_height, cfg.latent_width)
        chosen, rejected, texts, valid = [], [], [], []
        for index in rows:
            g = torch.Generator().manual_seed(derived_seed(self.seed, index))
            chosen.append(torch.randn(shape, generator=g))
            rejected.append(torch.randn(shape, generator=g))
            texts.append(torch.randn(cfg.text_tokens, self.text_dim, generator=g))
            valid.append(int(torch.randint(1, cfg.text_tokens + 1, (1,), generator=g)))
        text_mask = torch.arange(cfg.text_tokens)[None, :] < torch.tensor(valid)[:, None]
        recorded = [self.reference_errors.get(i) for i in rows]
        return PreferenceBatch(
            latents=torch.stack(chosen),
            text=torch.stack(texts) * text_mask[..., None],
            text_mask=text_mask,
            fps=torch.full((len(rows),), float(cfg.fps)),
            pixel_height=cfg.latent_height * 8,
            pixel_width=cfg.latent_width * 8,
            rejected=torch.stack(rejected) if self.paired else None,
            label=None if self.paired else torch.tensor([i % 2 == 0 for i in rows]),
            noise_seed=torch.tensor([derived_seed(self.seed, i) for i in rows], dtype=torch.int64),
            reference_error=torch.stack(recorded) if all(r is not None for r in recorded) else None,
        )

    def next_batch(self) -> PreferenceBatch:
        batch = self.batch_at(self.position)
        self.position += self.dp_size * self.cfg.batch_size
        return batch

    def record_reference_errors(self, start: int, errors: torch.Tensor) -> None:
        """Store the reference's errors of this rank's part of the batch that starts at sample `start`."""
        for index, value in zip(self.indices(start), errors.detach().cpu()):
            self.reference_errors[index] = value

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
