"""LoRA fine-tuning of a model's linear layers.

The low-rank factors live on the targeted `nn.Linear` modules themselves (`lora_A`, `lora_B`)
and a forward hook adds `scale * B A x` to their output. The base weights keep their names, so
checkpoints stay in the MUG-V layout, FSDP2 shards the factors with the block they belong to,
and merging is a plain `weight += scale * B @ A`.

`lora.train_modules` keeps whole modules trainable beside the adapters (the enhancer's patch
embedding, which holds its condition branch). Their parameters keep their names too and travel
with the adapter (`lora_state_dict`); in the PEFT layout they are PEFT's `modules_to_save`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mugv.config import ConfigError, LoRAConfig

LORA_FACTORS = ("lora_A", "lora_B")  # the parameter names on an adapted layer: A (rank x in), B (out x rank)
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # PEFT's path to the wrapped model's modules, in its saved keys


def _lora_output(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    if not module.lora_enabled:
        return None  # the base layer alone
    x = args[0]
    return output + module.lora_scale * F.linear(F.linear(x, module.lora_A.to(x.dtype)), module.lora_B.to(x.dtype))


def targeted_linears(model: nn.Module, patterns: Sequence[str]) -> dict[str, nn.Linear]:
    found = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }
    if not found:
        raise ValueError(f"LoRA targets {list(patterns)} match no linear layer of the model")
    return found


def trained_module_of(name: str, patterns: Sequence[str]) -> str | None:
    """The outermost module on the path of `name` (a parameter's or module's) that a pattern
    matches; None when none does."""
    parts = name.split(".")
    for end in range(1, len(parts) + 1):
        prefix = ".".join(parts[:end])
        if any(fnmatch.fnmatchcase(prefix, p) for p in patterns):
            return prefix
    return None


def train_in_full(model: nn.Module, patterns: Sequence[str], layers: Mapping[str, nn.Linear]) -> None:
    """Make the modules that `lora.train_modules` names trainable, and mark them for
    `lora_state_dict`. Every pattern must match a module, and none may hold an adapted layer: its
    weight would then be trained twice over, in full and through the factors."""
    modules = dict(model.named_modules())
    del modules[""]  # the model itself: a pattern names its parts
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in modules):
            raise ConfigError(f"lora.train_modules pattern {pattern!r} matches no module of the model")
    outermost = {trained_module_of(name, patterns) for name in modules} - {None}
    for name in sorted(outermost):
        adapted = sorted(layer for layer in layers if layer == name or layer.startswith(name + "."))
        if adapted:
            raise ConfigError(f"lora.train_modules would train {name} in full, but it holds LoRA targets "
                              f"({', '.join(adapted[:3])}): adapt a layer or train it in full, not both")
        modules[name].requires_grad_(True)
        modules[name].lora_trained_in_full = True


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> dict[str, nn.Linear]:
    """Freeze the model, add trainable rank-`cfg.rank` factors to the targeted linears and keep
    the modules of `cfg.train_modules` trainable in full."""
    if cfg.rank < 1:
        raise ValueError("apply_lora needs lora.rank >= 1")
    for param in model.parameters():
        param.requires_grad_(False)
    layers = targeted_linears(model, cfg.targets)
    train_in_full(model, cfg.train_modules, layers)
    for module in layers.values():
        if hasattr(module, "lora_A"):
            raise ValueError("LoRA is already applied to this model")
        weight = module.weight
        module.lora_A = nn.Parameter(torch.empty(cfg.rank, module.in_features, device=weight.device, dtype=torch.float32))
        module.lora_B = nn.Parameter(torch.zeros(module.out_features, cfg.rank, device=weight.device, dtype=torch.float32))
        nn.init.kaiming_uniform_(module.lora_A, a=math.sqrt(5))
        module.lora_scale = cfg.alpha / cfg.rank
        module.lora_enabled = True
        module._lora_hook = module.register_forward_hook(_lora_output)
    return layers


def has_lora(model: nn.Module) -> bool:
    return any(hasattr(module, "lora_A") for module in model.modules())


@contextlib.contextmanager
def lora_disabled(model: nn.Module):
    """Run `model` as its base weights: every adapter off inside the block, back on after it (the
    modules trained in full keep their trained weights: not the base model then)."""
    layers = [module for module in model.modules() if hasattr(module, "lora_A")]
    for module in layers:
        module.lora_enabled = False
    try:
        yield model
    finally:
        for module in layers:
            module.lora_enabled = True


def trained_in_full(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of the modules `lora.train_modules` trains in full, by name."""
    marked = [(name, module) for name, module in model.named_modules() if getattr(module, "lora_trained_in_full", False)]
    return {name: param for prefix, module in marked for name, param in module.named_parameters(prefix=prefix)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter alone, for saving it: the LoRA factors (`<layer>.lora_A` / `.lora_B`) and the
    parameters of the modules trained in full beside them (under their own names)."""
    factors = {name: p.detach() for name, p in model.named_parameters() if name.endswith((".lora_A", ".lora_B"))}
    return {**factors, **{name: p.detach() for name, p in trained_in_full(model).items()}}


def load_lora(model: nn.Module, state: Mapping[str, torch.Tensor], cfg: LoRAConfig) -> None:
    """Attach an adapter saved by `lora_state_dict` to a model without LoRA: the factors, and the
    trained modules' parameters in place of the model's."""
    layers = apply_lora(model, cfg)
    full = trained_in_full(model)
    expected = {f"{name}.{part}" for name in layers for part in ("lora_A", "lora_B")} | set(full)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"LoRA adapter does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, module in layers.items():
            module.lora_A.copy_(state[f"{name}.lora_A"])
            module.lora_B.copy_(state[f"{name}.lora_B"])
        for name, param in full.items():
            param.copy_(state[name])


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight and remove it; returns how many were merged. The
    modules trained in full already hold their trained weights: they only stop being part of
    the adapter."""
    merged = 0
    for module in model.modules():
        if getattr(module, "lora_trained_in_full", False):
            del module.lora_trained_in_full
        if isinstance(module, nn.Linear) and hasattr(module, "lora_A"):
            delta = module.lora_scale * (module.lora_B.float() @ module.lora_A.float())
            module.weight.add_(delta.to(module.weight.dtype))
            module._lora_hook.remove()
            del module.lora_A, module.lora_B, module.lora_scale, module.lora_enabled, module._lora_hook
            merged += 1
    return merged


def peft_adapter(state: Mapping[str, torch.Tensor], cfg: LoRAConfig,
                 base_model: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """An adapter saved by `lora_state_dict` in the PEFT layout: the tensors of
    `adapter_model.safetensors` (`base_model.model.<layer>.lora_A.weight`, A as [rank, in] and B
    as [out, rank], as mugv stores them) and the content of `adapter_config.json`. PEFT scales a
    LoRA update by lora_alpha / r, as mugv does, so alpha and rank carry over unchanged; the
    targets are the adapted layers' full paths (PEFT does not read fnmatch patterns). The modules
    of `cfg.train_modules` are PEFT's `modules_to_save`, by their full paths too, their
    parameters stored as PEFT saves them: `base_model.model.<module>.<parameter>`."""
    tensors, layers, saved = {}, set(), set()
    for name, tensor in state.items():
        layer, factor = name.rsplit(".", 1)
        if factor in LORA_FACTORS:
            tensors[f"{PEFT_PREFIX}{layer}.{factor}.weight"] = tensor.detach().contiguous()
            layers.add(layer)
            continue
        module = trained_module_of(name, cfg.train_modules)
        if module is None or module == name:
            raise KeyError(f"{name!r} is neither a LoRA factor (<layer>.lora_A / <layer>.lora_B) nor a parameter of "
                           f"lora.train_modules {list(cfg.train_modules)}")
        tensors[f"{PEFT_PREFIX}{name}"] = tensor.detach().contiguous()
        saved.add(module)
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model, "revision": None,
        "inference_mode": True, "r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": 0.0,
        "target_modules": sorted(layers), "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "init_lora_weights": True, "modules_to_save": sorted(saved) or None,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    return tensors, config


def save_peft_adapter(folder: str | Path, state: Mapping[str, torch.Tensor], cfg: LoRAConfig,
                      base_model: str | None = None) -> Path:
    """Write `folder/adapter_model.safetensors` and `folder/adapter_config.json`, which
    `peft.PeftModel.from_pretrained(model, folder)` loads onto the base model."""
    from safetensors.torch import save_file

    tensors, config = peft_adapter(state, cfg, base_model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / PEFT_WEIGHTS, {"format": "pt"})
    (folder / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder
