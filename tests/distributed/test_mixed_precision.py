"""Mixed precision: bf16 compute where it is meant, float32 where rounding would hurt."""

import tempfile

import torch
import torch.distributed as dist

from mugv.config import ParallelConfig
from mugv.distributed.parallel_dims import ParallelDims
from mugv.distributed.parallelize import ParallelPlan, apply_fsdp
from mugv.models.dit.config import DiTConfig
from mugv.models.dit.model import MUGDiT


def test_bf16_fsdp_keeps_timestep_and_rope_in_fp32():
    with tempfile.NamedTemporaryFile() as store_file:
        dist.init_process_group("gloo", store=dist.FileStore(store_file.name, 1), rank=0, world_size=1)
        try:
            torch.manual_seed(0)
            model = MUGDiT(DiTConfig.from_preset("debug"))
            cfg = ParallelConfig(dp_shard=1, param_dtype="bf16")
            dims = ParallelDims.from_config(cfg, world_size=1)
            plan = ParallelPlan(dims=dims, mesh=dims.build_mesh("cpu"), coords=dims.coordinates(0))
            apply_fsdp(model, list(model.blocks), plan, cfg)  # one rank: FSDP2's casts without the sharding
            seen = {}
            model.t_embedder.register_forward_pre_hook(lambda m, args: seen.update(timestep=args[0]))
            model.blocks[0].attn.register_forward_pre_hook(lambda m, args: seen.update(block=args))
            timestep = torch.tensor([873.1])
            out = model(torch.randn(1, 24, 2, 4, 4), timestep, torch.randn(1, 3, 64), fps=torch.tensor([24.0]))
        finally:
            dist.destroy_process_group()
    assert seen["timestep"].dtype == torch.float32 and seen["timestep"].item() == timestep.item()
    tokens, (cos, sin) = seen["block"]
    assert tokens.dtype == torch.bfloat16  # the residual stream runs in the compute dtype
    assert cos.dtype == sin.dtype == torch.float32
    assert out.dtype == torch.float32


def test_autocast_residual_stream_stays_in_bf16():
    torch.manual_seed(0)
    model = MUGDiT(DiTConfig.from_preset("debug"))
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.update({"in": args[0].dtype}))
    model.blocks[-1].register_forward_hook(lambda m, args, out: seen.update(out=out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(1, 24, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, 64), fps=torch.tensor([24.0]),
              frame_mask=torch.tensor([[False, True]]))
    assert seen == {"in": torch.bfloat16, "out": torch.bfloat16}
