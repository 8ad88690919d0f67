"""Training checkpoints (torch.distributed.checkpoint, DCP) that reshard, and MUG-V exports.

Every training run writes this one format, one process included, so a checkpoint written at one
world size resumes at any other (1 rank -> N ranks and back). What is saved is always
layout-independent: every parameter under its MUG-V name and in its
original row order. Sharded DTensors are saved as shards (each rank writes its own), so a
checkpoint written at one world size / parallel layout loads at another (DCP reshards on load).
The tensor-parallel fused projections, whose rows `parallelize_dit` permutes into rank blocks
(mugv.distributed.tensor_parallel), are saved gathered and un-permuted (with their optimizer
moments) and re-permuted on load; a plain single-process model loads the same files.

Directory layout of `step_00000100/`: the DCP files (`.metadata`, `__*_*.distcp`) holding
`model.*`, `optim.*` and any further tensor sets laid out like the parameters (EMA averages:
`ema.*`, `power_ema_<i>.*`), `trainer.json` (step, scheduler, data position, config, the
names of those sets; rank 0),
`rng/rank_<r>.safetensors` (each rank's global RNG state), `rng/dp_<d>.safetensors` (the step
generator of data-parallel rank d, which all its tp / cp / pp ranks share). The directory gets
its final name only once complete and on disk (mugv.train.checkpoint.publish); the oldest beyond
`checkpoint.keep_last` are removed. One process needs no process group: DCP then reads and writes
as the only rank. Users take weights away as full safetensors: `read_tensor_set` /
`read_model_weights` read a step folder without a process group, `export_mugv_safetensors` and
`full_tensors` gather a live model (the trainer's EMA and LoRA exports).

DCP itself pickles: its `.metadata` file and the non-tensor values of the state (optimizer
hyper-parameters) are unpickled on load. Before DCP reads a checkpoint, `.metadata` is parsed by
an unpickler that admits only DCP's own metadata classes, and the values are read with
`torch.load(weights_only=True)`, so a crafted checkpoint folder cannot run code.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mugv.distributed.tensor_parallel import (
    from_rank_blocks,
    head_blocked_parameters,
    to_rank_blocks,
)
from mugv.train.checkpoint import (
    CheckpointError,
    fsync_file,
    global_rng_state,
    keep_last_checkpoints,
    load_rng_file,
    load_tensor_file,
    publish,
    refuse_pickled_rng,
    restore_global_rng_state,
    save_rng_file,
)


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if _is_dtensor(t) else t


def _distribute_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` (a plain tensor, the same on every rank) placed as `like` is (DTensor or plain)."""
    if not _is_dtensor(like):
        return full.to(device=like.device, dtype=like.dtype)
    from torch.distributed.tensor import DTensor, Replicate

    mesh = like.device_mesh
    rep = DTensor.from_local(full.to(device=like.device, dtype=like.dtype), mesh, [Replicate()] * mesh.ndim,
                             run_check=False)
    return rep.redistribute(mesh, like.placements)


# ----------------------------------------------------------------------------------------------
# Model state in the original layout
# ----------------------------------------------------------------------------------------------


Modules = nn.Module | list[nn.Module]  # a model, or the pipeline stages one rank holds


def _modules(model: Modules) -> list[nn.Module]:
    return list(model) if isinstance(model, (list, tuple)) else [model]


def _named_parameters(model: Modules) -> list[tuple[str, nn.Parameter]]:
    """Every (name, parameter); a name can repeat across pipeline stages (conditioning copies)."""
    return [item for m in _modules(model) for item in m.named_parameters()]


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (non-persistent ones included) by name."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _blocked(model: Modules) -> dict[str, tuple[int, int]]:
    found = {}
    for m in _modules(model):
        found.update(head_blocked_parameters(m))
    return found


def _canonical(name: str, value: torch.Tensor, blocked: dict[str, tuple[int, int]]) -> torch.Tensor:
    if name in blocked:
        return from_rank_blocks(_full(value), *blocked[name])
    return value


def canonical_tensors(model: Modules, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors`, named and laid out like `model`'s parameters (the parameters themselves, or
    averages of them), in the saved layout: sharded ones as DTensors, TP-permuted ones gathered
    and restored to the original row order (a collective: every rank must call it)."""
    blocked = _blocked(model)
    return {name: _canonical(name, value.detach(), blocked) for name, value in tensors.items()}


def model_state(model: Modules) -> dict[str, torch.Tensor]:
    """Parameters and buffers by MUG-V name in the saved layout (`canonical_tensors`). For a list
    of pipeline stages: the union of their tensors (copies share a name and a value)."""
    return canonical_tensors(model, {name: value for m in _modules(model) for name, value in model_tensors(m).items()})


def full_tensors(model: Modules, tensors: Mapping[str, torch.Tensor], keep: bool = True) -> dict[str, torch.Tensor]:
    """Plain full CPU copies of `tensors` (named like `model`'s parameters) in the MUG-V layout.

    A collective: every rank calls it. Only ranks with `keep` hold the result, and tensors are
    gathered one at a time, so no rank holds more than one full tensor on its device.
    """
    blocked = _blocked(model)
    out = {}
    for name, value in tensors.items():
        full = _full(_canonical(name, value.detach(), blocked)).to("cpu", copy=True)
        if keep:
            out[name] = full
    return out


def full_state_dict(model: nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """Every tensor gathered to a plain CPU tensor in the MUG-V layout (collective; for export and tests)."""
    return full_tensors(model, model_tensors(model), keep)


@torch.no_grad()
def load_model_state(model: Modules, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` (the layout `model_state` produces: DTensors or plain, original row order) in."""
    if isinstance(model, (list, tuple)):
        for m in model:
            load_model_state(m, state)
        return
    _copy_into(model_tensors(model), state, head_blocked_parameters(model))


@torch.no_grad()
def load_tensors(model: Modules, own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` (as `canonical_tensors` lays it out) into `own`, tensors named and laid out
    like `model`'s parameters (e.g. EMA averages)."""
    _copy_into(own, state, _blocked(model))


def _copy_into(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
               blocked: dict[str, tuple[int, int]]) -> None:
    for name, target in own.items():
        if name not in state:
            raise CheckpointError(f"checkpoint has no tensor {name}")
        copy_canonical(target, state[name], blocked.get(name))


@torch.no_grad()
def copy_canonical(target: torch.Tensor, value: torch.Tensor, rank_blocks: tuple[int, int] | None = None) -> None:
    """Copy `value` (original row order; a DTensor, or a plain tensor equal on every rank) into
    `target`, this rank's part of it: its shard, rows permuted into `rank_blocks` when given."""
    if rank_blocks is not None:
        value = _distribute_like(to_rank_blocks(_full(value), *rank_blocks), target)
    elif _is_dtensor(target) and not _is_dtensor(value):
        value = _distribute_like(value, target)
    if _is_dtensor(target):
        target._local_tensor.copy_(value._local_tensor)
    else:
        target.copy_(_full(value))


def export_mugv_safetensors(model: nn.Module, path: Path) -> Path | None:
    """Gather the model and write one safetensors file in MUG-V layout (rank 0 writes)."""
    from mugv.models.dit.adapters import save_safetensors

    full = full_state_dict(model, keep=_rank() == 0)
    if _rank() == 0:
        save_safetensors(full, path)
        return Path(path)
    return None


# ----------------------------------------------------------------------------------------------
# Optimizer state, keyed by parameter name
# ----------------------------------------------------------------------------------------------


def _settings(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """{"state": {name: {step, exp_avg, ...}}, "param_groups": [...]} with names, not indices;
    moments of TP-permuted parameters gathered and in the original row order. Groups with the
    same settings are saved as one (the optimizer splits its groups by device mesh,
    mugv.distributed.optim), so the saved groups are the same at every layout."""
    blocked = _blocked(model)
    names = {id(p): n for n, p in _named_parameters(model)}
    state: dict[str, dict[str, Any]] = {}
    groups: list[dict[str, Any]] = []
    for group in optimizer.param_groups:
        settings = _settings(group)
        params = [names[id(p)] for p in group["params"]]
        same = next((g for g in groups if _settings(g) == settings), None)
        if same is None:
            groups.append({**settings, "params": params})
        else:
            same["params"] = same["params"] + params
        for p in group["params"]:
            if p not in optimizer.state:
                continue
            name = names[id(p)]
            entry = {}
            for key, value in optimizer.state[p].items():
                if torch.is_tensor(value) and value.ndim > 0:
                    value = _canonical(name, value, blocked)
                entry[key] = value
            state[name] = entry
    return {"state": state, "param_groups": groups}


# How the optimizer computes, not what it computes: they follow this run's layout, not the saved one's.
IMPLEMENTATION_SWITCHES = ("foreach", "fused", "capturable", "differentiable")


@torch.no_grad()
def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    blocked = _blocked(model)
    params: dict[str, list] = {}
    for n, p in _named_parameters(model):
        params.setdefault(n, []).append(p)
    saved_group = {name: group for group in saved["param_groups"] for name in group["params"]}
    name_of = {id(p): n for n, p in _named_parameters(model)}
    for group in optimizer.param_groups:  # each takes the settings of the saved group its parameters were in
        names = [name_of[id(p)] for p in group["params"] if name_of[id(p)] in saved_group]
        if not names:
            continue
        for key, value in saved_group[names[0]].items():
            if key not in ("params", *IMPLEMENTATION_SWITCHES):
                group[key] = value
    # fused and capturable AdamW keep the step count on the parameter's device, the others on the CPU
    steps_on_device = {id(p) for g in optimizer.param_groups if g.get("fused") or g.get("capturable")
                       for p in g["params"]}
    for name, entry in saved["state"].items():
        for p in params[name]:  # every pipeline-stage copy of the parameter gets the state
            optimizer.state[p] = _optimizer_entry(name, entry, p, blocked, id(p) in steps_on_device)


def _optimizer_entry(name: str, entry: dict, p: torch.Tensor, blocked, scalars_on_device: bool) -> dict[str, Any]:
    state = {}
    for key, value in entry.items():
        if torch.is_tensor(value) and value.ndim > 0:
            like = p.detach()
            if name in blocked:
                value = _distribute_like(to_rank_blocks(_full(value), *blocked[name]), like)
            elif _is_dtensor(like) and not _is_dtensor(value):
                value = _distribute_like(value, like)
            elif not _is_dtensor(like):
                value = _full(value)
            value = value.clone()
        elif torch.is_tensor(value):
            value = _full(value).clone().to(p.device if scalars_on_device else "cpu")
        state[key] = value
    return state


def _optimizer_template(model: nn.Module, optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]) -> dict[str, Any]:
    """Empty-valued optimizer state in `optimizer_state` form for this layout (for DCP to fill),
    for the parameters that have state in the checkpoint (`saved`: its DCP metadata by key; a
    parameter that never had a gradient before the save has none)."""
    blocked = _blocked(model)
    template: dict[str, Any] = {"state": {}, "param_groups": optimizer_state(model, optimizer)["param_groups"]}
    for name, p in _named_parameters(model):
        if not p.requires_grad or f"optim.state.{name}.step" not in saved:
            continue
        p = p.detach()
        if name in blocked:  # saved gathered, in the original row order
            moments = [torch.zeros(p.shape, dtype=p.dtype) for _ in range(2)]
        else:
            moments = [torch.zeros_like(p) for _ in range(2)]
        template["state"][name] = {"step": torch.zeros((), dtype=torch.float32), "exp_avg": moments[0],
                                   "exp_avg_sq": moments[1]}
    return template


# ----------------------------------------------------------------------------------------------
# Whole training checkpoints
# ----------------------------------------------------------------------------------------------


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _alone() -> bool:
    """No process group: DCP reads and writes as the only rank."""
    return not dist.is_initialized()


@contextlib.contextmanager
def _as_only_rank() -> Iterator[None]:
    """DCP warns on every call made without a process group; one process is a layout of its own."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def save_distributed(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    generator: torch.Tensor,
    keep_last: int,
    async_save: bool = False,
    dp_rank: int = 0,
    dp_leader: bool = True,
    tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> tuple[Path, Future | None]:
    """Write step `step` under `root` with DCP; returns its path and, with `async_save`, the
    future of the background write (the tensors are staged to memory before returning).

    `tensors`: further named sets of tensors laid out like the model's parameters (EMA
    averages), saved sharded like them under `<set>.<parameter name>`.
    """
    import torch.distributed.checkpoint as dcp

    final = root / f"step_{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    _barrier()
    tensors = tensors or {}
    state = {"model": model_state(model), "optim": optimizer_state(model, optimizer),
             **{name: canonical_tensors(model, values) for name, values in tensors.items()}}
    # each rank makes its own files durable (on a shared file system rank 0 cannot do it for them)
    rank_file = tmp / "rng" / f"rank_{_rank()}.safetensors"
    save_rng_file(rank_file, global_state=global_rng_state())
    fsync_file(rank_file)
    if dp_leader:  # one writer per data-parallel rank
        save_rng_file(tmp / "rng" / f"dp_{dp_rank}.safetensors", generator=generator)
        fsync_file(tmp / "rng" / f"dp_{dp_rank}.safetensors")

    def finish() -> None:
        _barrier()
        if _rank() == 0:
            (tmp / "trainer.json").write_text(json.dumps({"step": step, "tensors": sorted(tensors), **meta}, indent=2))
            publish(tmp, final)
            keep_last_checkpoints(root, keep_last)
        _barrier()

    if async_save:
        with _as_only_rank():
            future = dcp.async_save(state, checkpoint_id=str(tmp), no_dist=_alone())

        def done() -> None:
            future.result()
            finish()

        return final, _Pending(done)
    with _as_only_rank():
        dcp.save(state, checkpoint_id=str(tmp), no_dist=_alone())
    finish()
    return final, None


class _Pending:
    """The end of an async save: `result()` waits for the write and renames the directory."""

    def __init__(self, fn):
        self.fn = fn

    def result(self) -> None:
        self.fn()


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The trainer's record of checkpoint `path` (step, scheduler, data position, config)."""
    if not (path / "trainer.json").is_file() or not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no trainer.json or .metadata)")
    return json.loads((path / "trainer.json").read_text())


def load_distributed(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    dp_rank: int = 0,
    tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Load a DCP checkpoint into `model` / `optimizer` (and the named sets of `tensors`, see
    `save_distributed`) of any layout; returns (trainer meta, the step generator of
    data-parallel rank `dp_rank`, or None when the checkpoint has none)."""
    meta = read_checkpoint_meta(path)
    pickled = sorted((path / "rng").glob("*.pt"))
    if pickled:
        refuse_pickled_rng(pickled[0])
    tensors = tensors or {}
    missing = sorted(set(tensors) - set(meta.get("tensors", [])))
    if missing:
        raise CheckpointError(f"checkpoint {path} has no {', '.join(missing)} tensors: the run that wrote it "
                              "did not keep them")
    state: dict[str, Any] = {"model": model_state(model),
                             **{name: canonical_tensors(model, own) for name, own in tensors.items()}}
    if optimizer is not None:
        state["optim"] = _optimizer_template(model, optimizer, _checked_metadata(path).state_dict_metadata)
    _load_dcp(state, path, no_dist=_alone())
    load_model_state(model, state["model"])
    for name, own in tensors.items():
        load_tensors(model, own, state[name])
    if optimizer is not None:
        load_optimizer_state(model, optimizer, state["optim"])
    rng_file = path / "rng" / f"rank_{_rank()}.safetensors"
    if rng_file.is_file():
        _, global_state = load_rng_file(rng_file)
        if global_state is not None:
            restore_global_rng_state(global_state)
    gen_file = path / "rng" / f"dp_{dp_rank}.safetensors"
    generator = load_rng_file(gen_file)[0] if gen_file.is_file() else None
    return meta, generator


def read_tensor_set(path: Path, name: str = "model") -> dict[str, torch.Tensor]:
    """One tensor set of a DCP checkpoint (`model`, `ema`, ...) as plain full tensors in the
    MUG-V layout, read by this process alone (no process group needed): how tools such as
    `mugv expand` take the weights of a torchrun run."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(path)
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} is not a distributed checkpoint (no .metadata)")
    prefix = f"{name}."
    saved = _checked_metadata(path).state_dict_metadata
    tensors = {key[len(prefix):]: torch.empty(meta.size, dtype=meta.properties.dtype)
               for key, meta in saved.items() if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)}
    if not tensors:
        raise CheckpointError(f"checkpoint {path} holds no '{name}' tensors")
    _load_dcp({name: tensors}, path, no_dist=True)
    return tensors


def read_model_weights(path: str | Path, family: str = "mug-dit") -> dict[str, torch.Tensor]:
    """A model's weights in our layout from any checkpoint a user may hold: the sharded DCP folder
    of a torchrun run, or whatever the family's own reader takes (files, single-process runs)."""
    from mugv.models.registry import get_family

    path = Path(path)
    if path.is_dir() and (path / ".metadata").is_file():
        return read_tensor_set(path, "model")
    return get_family(family).read_weights(path)


# ----------------------------------------------------------------------------------------------
# DCP reads without unpickling code
# ----------------------------------------------------------------------------------------------


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _MetadataUnpickler(pickle.Unpickler):
    """Rebuilds a DCP `.metadata` file from DCP's own metadata classes, torch sizes, dtypes and
    layouts, and paths; any other global (a function that would run on load) is refused before
    its module is even imported."""

    def find_class(self, module: str, name: str) -> Any:
        if not _metadata_global_allowed(module, name):
            raise _ForbiddenGlobal(f"{module}.{name}")
        return super().find_class(module, name)


_METADATA_GLOBALS = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
                     ("collections", "OrderedDict"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
                     ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath")}


def _metadata_global_allowed(module: str, name: str) -> bool:
    if module == "torch.distributed.checkpoint.metadata":
        import torch.distributed.checkpoint.metadata as metadata

        # the classes defined there (dataclasses and enums that only hold values), nothing it imports
        found = getattr(metadata, name, None)
        return isinstance(found, type) and found.__module__ == module
    if module == "torch":
        found = getattr(torch, name, None)
        return found is torch.Size or isinstance(found, torch.dtype)
    return (module, name) in _METADATA_GLOBALS


def _load_dcp(state: dict[str, Any], path: Path, **options: Any) -> None:
    """`dcp.load` from `path` that unpickles nothing but values (`_checked_metadata`,
    `_weights_only_planner`); a refusal surfaces as the CheckpointError it is, not wrapped."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    _checked_metadata(path)  # before DCP unpickles the same file without restriction
    try:
        with _as_only_rank():
            dcp.load(state, checkpoint_id=str(path), planner=_weights_only_planner(path), **options)
    except CheckpointException as err:
        refused = [exc for exc, _ in err.failures.values() if isinstance(exc, CheckpointError)]
        if refused:
            raise refused[0] from None
        raise


def _checked_metadata(path: Path):
    """The DCP metadata of checkpoint `path`, read with `_MetadataUnpickler`."""
    metadata = path / ".metadata"
    with open(metadata, "rb") as f:
        try:
            return _MetadataUnpickler(f).load()
        except _ForbiddenGlobal as err:
            raise CheckpointError(f"{metadata}: refused to load: it names {err}, which a DCP checkpoint never holds, "
                                  "and unpickling it could run code") from None


def _weights_only_planner(path: Path):
    """DCP's default load planner, whose non-tensor values (read with `torch.load(weights_only=False)`)
    first pass `torch.load(weights_only=True)`, which refuses pickled code."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            load_tensor_file(value, name=f"{path} (value {read_item.dest_index.fqn})")
            value.seek(0)
            super().load_bytes(read_item, value)

    return WeightsOnlyLoadPlanner()
