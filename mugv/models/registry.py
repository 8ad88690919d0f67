"""Model families: one place that maps a family name to everything the rest of mugv needs.

A family is a config class and its presets, a builder, the checkpoint adapters (which layouts
its weights load from, e.g. the MUG-V release, Megatron, our own), and its size and FLOP
counts. Training, generation, `mugv info`, expansion and checkpoint loading look a family up by
the `family` field of its config; nothing else names a model class. The parallelize plan of a
family lives one layer up, keyed by the same name (mugv.distributed.parallelize.PARALLELIZE).

A new family (e.g. the enhancer's Wan DiT and VAE) is a config class with a `family` field plus
one `register(ModelFamily(...))` call in its package; see docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from mugv.errors import ConfigError


@dataclass(frozen=True)
class ModelFamily:
    name: str
    role: str  # "denoiser" (trained with an objective) or "autoencoder" (maps pixels to latents)
    config_cls: type
    build: Callable[[Any], nn.Module]
    from_preset: Callable[[str], Any]
    presets: tuple[str, ...]
    layouts: tuple[str, ...]  # checkpoint layouts `load_weights` converts from ("auto" detects)
    read_weights: Callable[[str], Mapping[str, Any]]
    load_weights: Callable[..., Any]  # (model, state_dict, layout="auto") -> a load report
    num_params: Callable[[Any], int]
    # (config, latent frames, latent height, latent width, text tokens) -> forward + backward FLOPs
    train_flops: Callable[..., int] | None = None
    # As `load_weights`, for the weights a training run starts from (`checkpoint.init_weights`), which
    # may be a related model's: the wan-dit takes a Wan2.1 T2V DiT, its condition branch at zero.
    # None: `load_weights`.
    load_init_weights: Callable[..., Any] | None = None


FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    if family.name in FAMILIES and FAMILIES[family.name] is not family:
        raise ValueError(f"model family {family.name!r} is registered twice")
    FAMILIES[family.name] = family
    return family


def _load_builtin_families() -> None:
    import mugv.enhance.families  # noqa: F401  (registers the enhancer's Wan DiT and Wan VAE)
    import mugv.models.families  # noqa: F401  (registers MUG-DiT and the MUG-V VAE)


def get_family(name: str) -> ModelFamily:
    _load_builtin_families()
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"model family {name!r} is not registered; known: {', '.join(sorted(FAMILIES))}") from None


def family_of(cfg: Any) -> ModelFamily:
    """The family of a model config (its `family` field)."""
    return get_family(cfg.family)


def build_model(cfg: Any) -> nn.Module:
    """A fresh model of `cfg`'s family."""
    return family_of(cfg).build(cfg)
