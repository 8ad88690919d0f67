"""Single-process training checkpoints: one directory per step, written atomically.

Layout of `step_00000100/`: `model.safetensors` (MUG-V layout names), `optimizer.pt`,
`trainer.json` (step, scheduler, data position, config) and `rng.pt` (every RNG the run uses).
A directory only gets its final name once complete, so a crash mid-save never leaves a
half-written checkpoint that `resume = "auto"` would pick.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointError(RuntimeError):
    pass


@dataclass
class TrainingState:
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    data: dict[str, Any]
    generator: torch.Tensor
    extra: dict[str, Any]
    # further named tensor sets saved beside the model (e.g. EMA weights): <name>.safetensors
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


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


def save_training_state(root: Path, state: TrainingState, keep_last: int) -> Path:
    final = step_dir(root, state.step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.model.items()}, tmp / "model.safetensors")
    for name, tensors in state.tensors.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / f"{name}.safetensors")
    torch.save(state.optimizer, tmp / "optimizer.pt")
    torch.save({"generator": state.generator, "global": global_rng_state()}, tmp / "rng.pt")
    meta = {"step": state.step, "scheduler": state.scheduler, "data": state.data, "tensors": sorted(state.tensors),
            **state.extra}
    (tmp / "trainer.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old)
    return final


def load_training_state(path: Path) -> TrainingState:
    missing = [name for name in ("model.safetensors", "optimizer.pt", "trainer.json", "rng.pt") if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    meta = json.loads((path / "trainer.json").read_text())
    rng = torch.load(path / "rng.pt", weights_only=False)
    restore_global_rng_state(rng["global"])
    tensors = {name: load_file(path / f"{name}.safetensors") for name in meta.pop("tensors", [])}
    return TrainingState(
        tensors=tensors,
        step=int(meta.pop("step")),
        model=load_file(path / "model.safetensors"),
        optimizer=torch.load(path / "optimizer.pt", weights_only=True),
        scheduler=meta.pop("scheduler"),
        data=meta.pop("data"),
        generator=rng["generator"],
        extra=meta,
    )
