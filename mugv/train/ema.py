"""Exponential moving averages of model weights: online, post-hoc (EDM2), and checkpoint ensembles.

* `EMA`: the classic online average with a fixed decay.
* Sharded models (FSDP2, tensor parallel): the averages are made from the parameters
  themselves, so they are DTensors sharded like them; each rank updates only its own shard
  (elementwise, no communication). Gathering full weights (export, snapshots) is left to the
  caller, which knows the layout (`gather`, mugv.distributed.checkpoint.full_tensors).
* `PowerEMA`: EDM2's power-function averages (Karras et al., 2024). An average with exponent
  gamma weighs the past as tau^gamma; its width is the relative standard deviation sigma_rel.
  Snapshots of two such averages saved during training are enough to rebuild, afterwards, the
  average for any other sigma_rel (`posthoc_coefficients`, `reconstruct`).
* `ensemble_checkpoints`: MUG-V's exponentially decayed ensembling of saved checkpoints.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mugv.errors import ConfigError, MugvError, reading


def _float_params(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    for name, param in model.named_parameters():
        if param.is_floating_point():
            yield name, param


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a plain tensor is its own)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _lerp_towards(averages: list[torch.Tensor], params: list[torch.Tensor], weight: float) -> None:
    # on local shards: parameters of one model can live on different meshes (FSDP vs FSDP x TP),
    # which DTensor's multi-tensor ops refuse; the update is elementwise, so shards suffice
    torch._foreach_lerp_([_local(a) for a in averages], [_local(p.detach()).float() for p in params], weight)


Gather = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class EMA:
    """shadow <- decay * shadow + (1 - decay) * weights, in float32."""

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in _float_params(model)}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        names, params = zip(*_float_params(model))
        _lerp_towards([self.shadow[n] for n in names], list(params), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for name, param in _float_params(model):
            param.copy_(self.shadow[name].to(param.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(f"EMA state does not match the model: missing {missing}, unexpected {unexpected}")
        for name, value in state.items():
            self.shadow[name].copy_(value)


# --------------------------------------------------------------------------------------------
# Power-function EMA (EDM2)
# --------------------------------------------------------------------------------------------


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent whose profile tau^gamma has relative standard deviation `sigma_rel`.

    sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)), i.e. the largest real root of
    gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) with s = sigma_rel^-2.
    """
    if not 0 < sigma_rel < 0.28:
        raise ConfigError(f"sigma_rel must be in (0, 0.28), got {sigma_rel}")
    s = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def gamma_to_sigma_rel(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


class PowerEMA:
    """Power-function averages for several widths, updated every step, snapshotted to disk.

    At update number t (from 1) the decay is (1 - 1/t)^(gamma + 1), so the average weighs past
    weights in proportion to tau^gamma over the whole run, independent of its length.
    """

    def __init__(self, model: nn.Module, sigma_rels: Sequence[float] = (0.05, 0.10)):
        self.sigma_rels = tuple(sigma_rels)
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        self.averages = [{n: p.detach().float().clone() for n, p in _float_params(model)} for _ in self.gammas]
        self.t = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.t += 1
        names, params = zip(*_float_params(model))
        for gamma, average in zip(self.gammas, self.averages):
            beta = (1 - 1 / self.t) ** (gamma + 1)
            _lerp_towards([average[n] for n in names], list(params), 1.0 - beta)

    def snapshot(self, directory: Path | None, gather: Gather = dict) -> list[Path]:
        """Write each average as `ema-<t>-<sigma_rel>.safetensors` with its t and gamma.

        Sharded averages: every rank calls this with a `gather` that assembles the full tensors
        (a collective); only a rank given a `directory` writes.
        """
        paths = []
        for sigma_rel, gamma, average in zip(self.sigma_rels, self.gammas, self.averages):
            full = gather(average)
            if directory is None:
                continue
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"ema-{self.t:08d}-{sigma_rel:.3f}.safetensors"
            save_file({n: v.cpu() for n, v in full.items()}, path, metadata={"t": str(self.t), "gamma": repr(gamma)})
            paths.append(path)
        return paths

    def state_dict(self) -> dict:
        return {"t": self.t, "sigma_rels": self.sigma_rels, "averages": self.averages}

    def load_state_dict(self, state: Mapping) -> None:
        if tuple(state["sigma_rels"]) != self.sigma_rels:
            raise ValueError(f"PowerEMA widths differ: saved {state['sigma_rels']}, configured {self.sigma_rels}")
        self.t = int(state["t"])
        for average, saved in zip(self.averages, state["averages"]):
            for name, value in saved.items():
                average[name].copy_(value)


def _profile_dot(t_a: float, gamma_a: float, t_b: float, gamma_b: float) -> float:
    """Inner product of the normalised profiles p(tau) = (g + 1) tau^g / t^(g + 1) on [0, t]."""
    shared = min(t_a, t_b)
    power = gamma_a + gamma_b + 1
    # in logs: the raw powers of t overflow for long runs and sharp profiles
    log_value = (
        math.log(gamma_a + 1) + math.log(gamma_b + 1) + power * math.log(shared)
        - math.log(power) - (gamma_a + 1) * math.log(t_a) - (gamma_b + 1) * math.log(t_b)
    )
    return math.exp(log_value)


def posthoc_coefficients(
    snapshots: Sequence[tuple[float, float]], target_t: float, target_gamma: float
) -> np.ndarray:
    """Least-squares weights x such that sum_i x_i p_i best matches the target profile.

    `snapshots` are (t_i, gamma_i) of saved power-function averages; the rebuilt weights are
    sum_i x_i * snapshot_i.
    """
    gram = np.array([[_profile_dot(ta, ga, tb, gb) for tb, gb in snapshots] for ta, ga in snapshots])
    rhs = np.array([_profile_dot(t, g, target_t, target_gamma) for t, g in snapshots])
    return np.linalg.lstsq(gram, rhs, rcond=None)[0]


SNAPSHOT_NAME = re.compile(r"^ema-(\d{8})-(\d+\.\d{3})\.safetensors$")


def reconstruct(directory: Path, sigma_rel: float, at_step: int | None = None) -> dict[str, torch.Tensor]:
    """Rebuild the power-function average of width `sigma_rel` at `at_step` (default: the last
    snapshot) from the snapshots in `directory` taken up to that step."""
    target_gamma = sigma_rel_to_gamma(sigma_rel)
    found = []
    for path in sorted(directory.iterdir()):
        if SNAPSHOT_NAME.match(path.name):
            from safetensors import safe_open

            with reading(path, "EMA snapshot"), safe_open(str(path), "pt") as f:
                meta = f.metadata()
            found.append((int(meta["t"]), float(meta["gamma"]), path))
    if not found:
        raise FileNotFoundError(f"no EMA snapshots (ema-<step>-<sigma_rel>.safetensors) in {directory}")
    target_t = at_step if at_step is not None else max(t for t, _, _ in found)
    usable = [s for s in found if s[0] <= target_t]
    if not usable:
        raise ConfigError(f"no EMA snapshot in {directory} was taken at or before step {target_t}")
    coefficients = posthoc_coefficients([(t, g) for t, g, _ in usable], target_t, target_gamma)
    return weighted_sum([load_file(p) for _, _, p in usable], coefficients)


def weighted_sum(state_dicts: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    names = set(state_dicts[0])
    for i, sd in enumerate(state_dicts[1:], 1):
        if set(sd) != names:
            raise MugvError(f"weights {i} (from 0) hold other tensors than weights 0: {sorted(names ^ set(sd))[:5]}")
    out = {}
    for name in state_dicts[0]:
        acc = torch.zeros_like(state_dicts[0][name], dtype=torch.float64)
        for sd, w in zip(state_dicts, weights):
            acc += float(w) * sd[name].double()
        out[name] = acc.to(state_dicts[0][name].dtype)
    return out


# --------------------------------------------------------------------------------------------
# Checkpoint ensembling (MUG-V)
# --------------------------------------------------------------------------------------------


def ensemble_weights(count: int, decay: float) -> np.ndarray:
    """Weights decay^(n-1-i) / sum over checkpoints i = 0 (oldest) .. n-1 (newest)."""
    if count < 1:
        raise ConfigError("need at least one checkpoint to ensemble")
    if not 0 < decay <= 1:
        raise ConfigError(f"decay must be in (0, 1], got {decay}")
    raw = decay ** np.arange(count - 1, -1, -1, dtype=np.float64)
    return raw / raw.sum()


def ensemble_checkpoints(state_dicts: Sequence[Mapping[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """Average checkpoints (oldest first) with exponentially decaying weights toward the past."""
    return weighted_sum(state_dicts, ensemble_weights(len(state_dicts), decay))
