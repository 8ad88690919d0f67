"""Reading and writing DiT weight files: safetensors, published ``.pt`` files (read with
``torch.load(weights_only=True)``) and single-process training checkpoint folders."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from mugv.errors import reading
from mugv.models.dit.adapters.loading import detect_layout
from mugv.models.dit.adapters.megatron import from_megatron
from mugv.models.dit.adapters.names import (
    WRAPPER_KEYS,
    CheckpointLayoutError,
    StateDict,
    log,
)


@dataclass
class LoadedCheckpoint:
    """A state dict read from disk, with where it was found inside the file."""

    state_dict: dict[str, Any]
    path: Path
    format: Literal["safetensors", "torch"]
    #: wrapper keys peeled off, outermost first (e.g. ``["model"]``); empty if none
    unwrapped: list[str] = field(default_factory=list)
    #: a common key prefix removed from every key (e.g. ``"module."``), or ``""``
    stripped_prefix: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def save_safetensors(
    state_dict: Mapping[str, Tensor],
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a state dict as safetensors. Tensors sharing storage are copied apart."""
    from safetensors.torch import save_file

    meta: dict[str, str] = {"format": "pt"}
    for key, value in (metadata or {}).items():
        if not isinstance(value, str):
            raise TypeError(f"safetensors metadata must be str -> str; {key!r} is {type(value)}")
        meta[key] = value
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, t in state_dict.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} is a {type(t).__name__}, not a tensor: cannot save it")
        t = t.detach().cpu()
        storage = t.untyped_storage()
        owns_storage = (
            t.is_contiguous() and t.storage_offset() == 0 and storage.nbytes() == t.numel() * t.element_size()
        )
        if not owns_storage or storage.data_ptr() in seen:
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def _is_state_dict(obj: Any) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    for key, value in obj.items():
        if not isinstance(key, str):
            return False
        if isinstance(value, Tensor):
            continue
        if key.endswith("_extra_state") and (value is None or isinstance(value, io.BytesIO)):
            continue
        return False
    return True


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read a ``.safetensors`` file, or a torch ``.pt`` / ``.pth`` / ``.bin`` file (weights only).

    A ``.pt`` whose top level wraps the state dict under ``model`` / ``state_dict`` / ``module`` /
    ``model_state_dict`` is unwrapped (repeatedly), and a ``module.`` prefix on every key (DDP)
    is removed; both are recorded in the result and logged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        device = str(map_location)
        with reading(path, "safetensors weights"):
            sd = load_file(str(path), device=device)
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
        return LoadedCheckpoint(sd, path, "safetensors", metadata=meta)

    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # an UnpicklingError names the forbidden global
        raise CheckpointLayoutError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({err}). Only plain "
            "tensor state dicts (optionally wrapped in a dict) are accepted; extract the model "
            "state dict from a training checkpoint first."
        ) from err

    unwrapped: list[str] = []
    while not _is_state_dict(obj):
        if not isinstance(obj, Mapping):
            raise CheckpointLayoutError(f"{path}: holds a {type(obj).__name__}, not a state dict")
        key = next((k for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if key is None or len(unwrapped) >= 4:
            bad = [k for k, v in obj.items() if not isinstance(v, Tensor)][:10]
            raise CheckpointLayoutError(
                f"{path}: not a state dict and no wrapper key {list(WRAPPER_KEYS)} found; "
                f"top-level keys holding non-tensors: {bad}"
            )
        others = sorted(k for k in obj if k != key)
        log.info("%s: state dict found under %r (other top-level keys: %s)", path, key, others)
        unwrapped.append(key)
        obj = obj[key]

    sd = dict(obj)
    prefix = ""
    if all(k.startswith("module.") for k in sd):
        prefix = "module."
        sd = {k[len(prefix) :]: v for k, v in sd.items()}
        log.info("%s: removed the %r prefix from every key", path, prefix)
    return LoadedCheckpoint(sd, path, "torch", unwrapped=unwrapped, stripped_prefix=prefix)


def load_state_dict(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state dict in ``path`` (see :func:`load_checkpoint` for formats and unwrapping)."""
    return load_checkpoint(path, map_location=map_location).state_dict


def read_weights(path: str | Path) -> StateDict:
    """DiT weights in our layout from a file: our safetensors, a folder holding ``model.safetensors``
    (a training step folder of an older mugv), the published ``dit.pt``, or a single-file Megatron
    checkpoint. (The DCP step folder that training writes is read one layer up:
    mugv.distributed.checkpoint.read_model_weights.)"""
    path = Path(path)
    if path.is_dir() and (path / ".metadata").is_file():
        raise CheckpointLayoutError(f"{path} is a distributed (DCP) checkpoint: read it with "
                                    "mugv.distributed.checkpoint.read_model_weights")
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no DiT weights at {path}")
    state_dict = load_state_dict(path)
    try:
        layout = detect_layout(state_dict)
    except CheckpointLayoutError as exc:
        raise CheckpointLayoutError(f"{path}: {exc}") from exc
    if layout == "megatron":
        return from_megatron([state_dict])
    return dict(state_dict)
