"""Checkpoint folders: naming, listing, durable publication and pruning, safe reading, RNG files.

Training checkpoints are written by mugv.distributed.checkpoint (DCP, at every world size, one
process included); the VAE trainer writes its own small layout with the same helpers. A step
folder `step_00000100/` only gets its final name once complete and flushed to disk (`publish`),
so neither a crash mid-save nor a power cut after it leaves a half-written checkpoint that
`resume = "auto"` would pick. Nothing is unpickled beyond tensors and plain values
(`load_tensor_file`), so a checkpoint folder from elsewhere cannot run code; RNG states are stored
as tensors plus JSON (`save_rng_file`).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mugv.errors import MugvError

STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointError(MugvError, RuntimeError):
    pass


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------------
# Durable publication
# ----------------------------------------------------------------------------------------------


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_directory(path: Path) -> None:
    """Make the entries of directory `path` (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_file(Path(folder) / name)
        fsync_directory(Path(folder))


def publish(tmp: Path, final: Path) -> None:
    """Give the complete directory `tmp` the name `final`, after its files and entries reach the
    disk, and make the rename itself durable: after a crash `final` is whole or absent."""
    fsync_tree(tmp)
    replaced = None
    if final.exists():  # the same step saved again: moved aside, not deleted first, so a crash never leaves neither
        replaced = final.with_name(f".{final.name}.replaced")
        shutil.rmtree(replaced, ignore_errors=True)
        final.rename(replaced)
    tmp.rename(final)
    fsync_directory(final.parent)
    if replaced is not None:
        shutil.rmtree(replaced)


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint directory; it leaves the `step_*` names first, so a crash mid-delete
    never leaves a partial directory that looks like a checkpoint."""
    doomed = path.with_name(f".{path.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    path.rename(doomed)
    fsync_directory(path.parent)
    shutil.rmtree(doomed)


def keep_last_checkpoints(root: Path, keep_last: int) -> None:
    """Remove all but the newest `keep_last` checkpoints under `root`, and what a crash in an
    earlier removal left behind."""
    for old in list_checkpoints(root)[:-keep_last]:
        remove_checkpoint(old)
    for leftover in root.glob(".step_*.deleting"):
        shutil.rmtree(leftover)


# ----------------------------------------------------------------------------------------------
# Reading without unpickling code
# ----------------------------------------------------------------------------------------------


def load_tensor_file(source: Path | BinaryIO, map_location: str | torch.device | None = None,
                     name: str | None = None) -> Any:
    """`torch.load` restricted to tensors and plain values (`weights_only=True`), so a crafted
    file cannot run code; one holding anything else is refused with a CheckpointError naming
    `name` (default: the path)."""
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"the Python object {found.group(1)}" if found else "Python objects other than tensors and plain values"
        raise CheckpointError(f"{name or source}: refused to load: it holds {what}, and unpickling that could run "
                              "code; use checkpoints written by mugv from a trusted source") from None


# ----------------------------------------------------------------------------------------------
# RNG state as tensors + JSON
# ----------------------------------------------------------------------------------------------


def global_rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng_file(path: Path, generator: torch.Tensor | None = None, global_state: dict[str, Any] | None = None) -> None:
    """Write a step generator's state and / or the process-wide RNG states (`global_rng_state`)
    as one safetensors file: byte and integer tensors, the scalars as JSON in its metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    if generator is not None:
        tensors["generator"] = generator
    if global_state is not None:
        tensors["torch"] = global_state["torch"]
        kind, keys, pos, has_gauss, cached_gaussian = global_state["numpy"]
        tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
        scalars["numpy"] = {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss),
                            "cached_gaussian": float(cached_gaussian)}
        version, internal, gauss_next = global_state["python"]
        tensors["python.state"] = torch.tensor(internal, dtype=torch.int64)
        scalars["python"] = {"version": version, "gauss_next": gauss_next}
        for i, cuda_state in enumerate(global_state.get("cuda", [])):
            tensors[f"cuda.{i}"] = cuda_state
        scalars["cuda_devices"] = len(global_state.get("cuda", []))
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, path, metadata={"rng": json.dumps(scalars)})


def load_rng_file(path: Path) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    """(step generator state or None, global RNG states or None) from a `save_rng_file` file."""
    with safe_open(path, framework="pt") as f:
        scalars = json.loads((f.metadata() or {}).get("rng", "{}"))
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    generator = tensors.get("generator")
    if "torch" not in tensors:
        return generator, None
    numpy_scalars, python_scalars = scalars["numpy"], scalars["python"]
    global_state = {
        "torch": tensors["torch"],
        "numpy": (numpy_scalars["kind"], tensors["numpy.keys"].numpy().astype(np.uint32), numpy_scalars["pos"],
                  numpy_scalars["has_gauss"], numpy_scalars["cached_gaussian"]),
        "python": (python_scalars["version"], tuple(tensors["python.state"].tolist()), python_scalars["gauss_next"]),
    }
    if scalars["cuda_devices"]:
        global_state["cuda"] = [tensors[f"cuda.{i}"] for i in range(scalars["cuda_devices"])]
    return generator, global_state


def refuse_pickled_rng(path: Path) -> None:
    """Checkpoints of earlier mugv versions hold their RNG state as a pickle: name it, never load it."""
    raise CheckpointError(f"{path}: RNG state stored as a Python pickle (a checkpoint from an older mugv, or "
                          "crafted); it is not loaded because unpickling can run code. Start from its weights "
                          "instead with --checkpoint.init_weights=<its model.safetensors> (exact resume is lost)")
