"""Scenarios run on every rank by the harness, and their single-process references.

The parity scenario trains the debug MUG-DiT for a few AdamW steps on fixed batches (drawn
from a seeded generator, identical on every rank; each data-parallel rank takes its slice), and
returns rank 0's view of: the global loss per step, the full gradients after step 1 and the full
weights after the last step, all gathered to plain tensors in the MUG-V layout.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist

from mugv.config import ParallelConfig
from mugv.distributed.checkpoint import _full, full_state_dict, head_blocked_parameters
from mugv.distributed.parallel_dims import ParallelDims
from mugv.distributed.parallelize import (
    clip_grad_norm_,
    finish_gradients,
    parallelize_dit,
)
from mugv.distributed.tensor_parallel import from_rank_blocks
from mugv.flow import masked_flow_loss
from mugv.models.dit.config import DiTConfig
from mugv.models.dit.model import MUGDiT

BATCH = 4
LATENT = (3, 6, 6)  # 3 x 3 x 3 patches + start/end = 29 tokens: uneven for every split
TEXT = 8
LR = 1e-3
CLIP = 0.05  # small enough that clipping is active: the global norm must be right


def model_config(**changes) -> DiTConfig:
    cfg = DiTConfig.from_preset("debug")
    for k, v in changes.items():
        setattr(cfg, k, v)
    return cfg


def make_model(cfg: DiTConfig) -> MUGDiT:
    torch.manual_seed(0)
    model = MUGDiT(cfg)
    with torch.no_grad():  # a trained-looking model: no zero-initialised projections
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def make_batch(step: int, cfg: DiTConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    t, h, w = LATENT
    x0 = torch.randn(BATCH, cfg.in_channels, t, h, w, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    sigma = torch.rand(BATCH, generator=g)
    frame_mask = torch.ones(BATCH, t, dtype=torch.bool)
    frame_mask[::2, 0] = False  # half the samples condition on a clean first frame
    noisy = (1 - sigma[:, None, None, None, None]) * x0 + sigma[:, None, None, None, None] * noise
    noisy = torch.where(frame_mask[:, None, :, None, None], noisy, x0)
    valid = torch.randint(1, TEXT + 1, (BATCH,), generator=g)
    text_mask = torch.arange(TEXT)[None] < valid[:, None]
    return {
        "noisy": noisy, "timestep": sigma * 1000, "text": torch.randn(BATCH, TEXT, cfg.text_dim, generator=g),
        "text_mask": text_mask, "frame_mask": frame_mask, "fps": torch.full((BATCH,), 24.0),
        "target": noise - x0,
    }


def _loss(model, batch) -> torch.Tensor:
    pred = model(batch["noisy"], batch["timestep"], batch["text"], fps=batch["fps"], text_mask=batch["text_mask"],
                 frame_mask=batch["frame_mask"])
    return masked_flow_loss(pred, batch["target"], batch["frame_mask"])


def _slice(batch: dict, index: int, parts: int) -> dict:
    return {k: v.chunk(parts)[index] for k, v in batch.items()}


def reference_run(steps: int, cfg: DiTConfig | None = None, model: MUGDiT | None = None, after_step=None) -> dict:
    """The single-process run the parallel ones must match; `after_step(model)` runs after
    every optimizer step."""
    cfg = cfg or model_config()
    model = model or make_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    losses, grads = [], []
    for step in range(steps):
        loss = _loss(model, make_batch(step, cfg))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})  # every step
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if after_step is not None:
            after_step(model)
    return {"losses": losses, "grads": grads, "weights": {k: v.clone() for k, v in model.state_dict().items()}}


def full_grads(model) -> dict[str, torch.Tensor]:
    blocked = head_blocked_parameters(model)
    out = {}
    for name, p in model.named_parameters():
        if p.grad is None:  # frozen
            continue
        g = _full(p.grad)
        out[name] = from_rank_blocks(g, *blocked[name]) if name in blocked else g.clone()
    return out


def build_parallel(world: int, parallel: dict, cfg: DiTConfig | None = None, model: MUGDiT | None = None):
    cfg = cfg or model_config()
    pcfg = ParallelConfig(**parallel)
    dims = ParallelDims.from_config(pcfg, world, cfg)
    mesh = dims.build_mesh("cpu")
    model = model or make_model(cfg)
    plan = parallelize_dit(model, dims, mesh, pcfg)
    return model, plan


def train_parallel(model, plan, steps: int, first_step: int = 0, cfg: DiTConfig | None = None, opt=None,
                   after_step=None):
    cfg = cfg or model_config()
    dims, coords = plan.dims, plan.coords
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = opt or torch.optim.AdamW(trainable, lr=LR, weight_decay=0.01, foreach=False)
    losses, grads = [], []
    for step in range(first_step, first_step + steps):
        batch = _slice(make_batch(step, cfg), coords["dp"], dims.dp)
        loss = _loss(model, batch)
        loss.backward()
        finish_gradients(model, plan)
        clip_grad_norm_(trainable, CLIP)
        if step in (first_step, first_step + steps - 1):
            grads.append(full_grads(model))
        opt.step()
        opt.zero_grad()
        if after_step is not None:
            after_step(model)
        global_loss = loss.detach().clone()
        if dims.dp > 1:
            dist.all_reduce(global_loss, group=plan.group("dp"))
            global_loss /= dims.dp
        losses.append(global_loss.item())
    return {"losses": losses, "grads": grads, "weights": full_state_dict(model)}, opt


def parity(rank: int, world: int, parallel: dict, steps: int = 3) -> dict:
    model, plan = build_parallel(world, parallel)
    result, _ = train_parallel(model, plan, steps)
    return result


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30)).item()


def max_relative_error(result: dict, reference: dict) -> dict[str, float]:
    """Worst relative error (max |a - b| / max |b| per tensor) of: the loss of every step; every
    gradient tensor of the first step (same weights, same batch); every gradient tensor of the
    last step and every weight after it (these follow the AdamW trajectory)."""
    loss = max(abs(a - b) / abs(b) for a, b in zip(result["losses"], reference["losses"], strict=True))
    errors = [max(relative_error(ours[n], g) for n, g in theirs.items())
              for ours, theirs in zip(result["grads"], reference["grads"], strict=True)]
    weight = max(relative_error(result["weights"][n], w) for n, w in reference["weights"].items())
    return {"loss": loss, "grad": errors[0], "grad_last": errors[-1], "weight": weight}


def initial_weights(cfg: DiTConfig | None = None) -> dict[str, torch.Tensor]:
    return copy.deepcopy(make_model(cfg or model_config()).state_dict())


def save_and_continue(rank: int, world: int, parallel: dict, ckpt_dir: str, export: str, steps: int = 2) -> dict:
    """Train `steps`, save a DCP checkpoint and a MUG-V export, then train `steps` more."""

    from mugv.distributed.checkpoint import export_mugv_safetensors, save_distributed

    model, plan = build_parallel(world, parallel)
    _, opt = train_parallel(model, plan, steps)
    # async: the write runs in the background while training goes on; what lands on disk must
    # still be the state at the save (the loading scenarios check that)
    path, pending = save_distributed(Path(ckpt_dir), steps, model, opt, {"step_note": "test"},
                                     torch.Generator().get_state(), keep_last=2, async_save=True)
    export_mugv_safetensors(model, Path(export))
    result, _ = train_parallel(model, plan, steps, first_step=steps, opt=opt)
    pending.result()
    return {"path": str(path), **result}


def load_and_continue(rank: int, world: int, parallel: dict, ckpt: str, steps: int = 2) -> dict:

    from mugv.distributed.checkpoint import load_distributed

    model, plan = build_parallel(world, parallel)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01, foreach=False)
    meta, _ = load_distributed(Path(ckpt), model, opt)
    result, _ = train_parallel(model, plan, steps, first_step=meta["step"], opt=opt)
    return result


def load_and_continue_single(ckpt: str, steps: int = 2) -> dict:
    """The same on one plain process: no process group, the unmodified model."""

    from mugv.distributed.checkpoint import load_distributed

    cfg = model_config()
    model = make_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    meta, _ = load_distributed(Path(ckpt), model, opt)
    losses, grads = [], []
    for step in range(meta["step"], meta["step"] + steps):
        loss = _loss(model, make_batch(step, cfg))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        if step in (meta["step"], meta["step"] + steps - 1):
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return {"losses": losses, "grads": grads, "weights": {k: v.clone() for k, v in model.state_dict().items()}}


def trainer_config(run_dir: str, name: str, steps: int, parallel: dict, extra: tuple[str, ...] = ()):
    from mugv.config import load_config

    overrides = [f"--run_dir={run_dir}/{name}", "--logging.progress=false", "--logging.tensorboard=false",
                 f"--train.steps={steps}", "--train.device=cpu", "--checkpoint.every_steps=2",
                 "--optim.warmup_steps=1", "--data.num_samples=64", *extra]
    overrides += [f"--parallel.{k}={v}" for k, v in parallel.items()]
    return load_config("debug", overrides)


def trainer_resume(rank: int, world: int, parallel: dict, run_dir: str) -> dict:
    """`Trainer` under a process group: 4 steps straight vs a stop after step 2 and a resume (DCP)."""
    from mugv.train.trainer import Trainer

    def cfg(name, steps):
        return trainer_config(run_dir, name, steps, parallel)

    class CrashAtStep3:  # after the step-2 checkpoint: step 3 is lost and redone
        def on_step_end(self, trainer, metrics):
            if trainer.step == 3:
                raise KeyboardInterrupt

    straight = Trainer(cfg("straight", 4)).fit()
    try:
        Trainer(cfg("resumed", 4), hooks=(CrashAtStep3(),)).fit()
    except KeyboardInterrupt:
        pass
    resumed_trainer = Trainer(cfg("resumed", 4))
    resumed = resumed_trainer.fit()
    return {
        "straight": [m["loss"] for m in straight], "resumed": [m["loss"] for m in resumed],
        "grad_norms": ([m["grad_norm"] for m in straight], [m["grad_norm"] for m in resumed]),
        "position": resumed_trainer.data.state_dict()["position"],
    }


def parity_pipeline(rank: int, world: int, parallel: dict, steps: int = 3, depth: int = 2) -> dict:
    """Pipeline parallel (optionally x FSDP): the same training through torch.distributed.pipelining."""
    from mugv.distributed.pipeline import (
        build_pipeline,
        conditioning_duplicates,
        finish_pipeline_gradients,
        pipeline_inputs,
        pipeline_target,
    )

    cfg = model_config(depth=depth)
    pcfg = ParallelConfig(**parallel)
    dims = ParallelDims.from_config(pcfg, world, cfg)
    mesh = dims.build_mesh("cpu")
    coords = dims.coordinates(rank)
    model = make_model(cfg)
    plans = []

    def prepare(stage):
        plans.append(parallelize_dit(stage, dims, mesh, pcfg, rank=rank, blocks=list(stage.blocks.values()),
                                     split_tokens=stage.first))

    schedule, stages = build_pipeline(model, dims, mesh, pcfg, rank, torch.device("cpu"), prepare=prepare)
    params = list({id(p): p for s in stages for p in s.parameters()}.values())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.01, foreach=False)
    pp_group = mesh["pp"].get_group()
    skip = conditioning_duplicates(stages, coords["pp"])
    losses, grads = [], []
    first = any(s.first for s in stages)
    last = any(s.last for s in stages)
    for step in range(steps):
        batch = _slice(make_batch(step, cfg), coords["dp"], dims.dp)
        args = pipeline_inputs(batch["noisy"], batch["timestep"], batch["text"], batch["text_mask"],
                               batch["frame_mask"], batch["fps"])
        target = pipeline_target(batch["target"], batch["frame_mask"])  # unit sample weights
        mb_losses: list = []
        kwargs = {}
        if last:
            kwargs.update(target=target, losses=mb_losses)
        schedule.step(*(args if first else ()), **kwargs)
        for stage, plan in zip(stages, plans, strict=True):
            finish_gradients(stage, plan)
        finish_pipeline_gradients(stages, pp_group)
        clip_grad_norm_(params, CLIP, extra_groups=[pp_group], skip_in_norm=skip)
        if step in (0, steps - 1):
            grads.append(_gather_stage_tensors(stages, lambda p: p.grad))
        opt.step()
        opt.zero_grad()
        loss = torch.stack(mb_losses).mean().detach() if last else torch.zeros(())
        dist.all_reduce(loss, group=pp_group)  # only the last stage holds it
        if dims.dp > 1:
            dist.all_reduce(loss, group=mesh["dp"].get_group())
            loss /= dims.dp
        losses.append(loss.item())
    return {"losses": losses, "grads": grads, "weights": _gather_stage_tensors(stages, lambda p: p, buffers=True)}


def _gather_stage_tensors(stages, pick, buffers: bool = False) -> dict[str, torch.Tensor]:
    """Every stage's parameters (or grads) gathered to full tensors and merged over all ranks."""
    mine: dict[str, torch.Tensor] = {}
    for stage in stages:
        blocked = head_blocked_parameters(stage)
        for name, p in stage.named_parameters():
            value = _full(pick(p).detach()).clone()
            mine[name] = from_rank_blocks(value, *blocked[name]) if name in blocked else value
        if buffers:
            for name, b in stage.named_buffers():
                mine[name] = b.clone()
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    merged = {}
    for part in everyone:
        merged.update(part)
    return merged


def trainer_resume_from(rank: int, world: int, parallel: dict, run_dir: str, checkpoint: str,
                        name: str = "elsewhere") -> dict:
    """`Trainer` in another layout resuming a checkpoint of another run (`trainer_resume`'s straight run)."""
    from mugv.train.trainer import Trainer

    cfg = trainer_config(run_dir, name, 4, parallel)
    cfg.checkpoint.resume = checkpoint
    return {"losses": [m["loss"] for m in Trainer(cfg).fit()]}


def adamw_implementations(rank: int, world: int, parallel: dict, steps: int = 3) -> dict:
    """The trainer's AdamW (groups split by mesh, multi-tensor) against the for-loop AdamW on the
    same layout: the groups it made (mesh dimension names, parameter count) and both runs."""
    from mugv.config import OptimConfig
    from mugv.distributed.optim import build_adamw
    from mugv.train.trainer import param_groups

    model, plan = build_parallel(world, parallel)
    opt = build_adamw(param_groups(model, 0.01), OptimConfig(lr=LR), torch.device("cpu"))
    groups = [(p[0].device_mesh.mesh_dim_names if hasattr(p[0], "device_mesh") else None, len(p), g["foreach"])
              for g in opt.param_groups if (p := g["params"])]
    one_mesh = all(len({getattr(q, "device_mesh", None) for q in g["params"]}) <= 1 for g in opt.param_groups)
    multi_tensor, _ = train_parallel(model, plan, steps, opt=opt)
    model, plan = build_parallel(world, parallel)
    for_loop, _ = train_parallel(model, plan, steps)
    return {"groups": groups, "one_mesh": one_mesh, "multi_tensor": multi_tensor, "for_loop": for_loop}


def pipeline_holdings(rank: int, world: int, parallel: dict, run_dir: str) -> dict:
    """Which of the model's tensors each pipeline rank's `Trainer` still holds (not on the meta
    device), and their element count against the whole model's."""
    from mugv.train.trainer import Trainer

    model = Trainer(trainer_config(run_dir, "holdings", 1, parallel)).model
    tensors = [*model.named_parameters(), *model.named_buffers()]
    mine = {"held": sorted(n for n, t in tensors if not t.is_meta),
            "held_elements": sum(t.numel() for _, t in tensors if not t.is_meta),
            "elements": sum(t.numel() for _, t in tensors)}
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    return {"ranks": everyone}
