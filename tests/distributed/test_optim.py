"""AdamW's implementation: multi-tensor (CPU) or fused (CUDA), groups split by device mesh, the
same updates as the for-loop AdamW, and checkpoints whose groups do not depend on the layout.
The 2- and 4-rank layouts are checked in test_parallel.py (adamw scenarios)."""

import copy

import torch
from numerics_testing import assert_close_to_scale

from mugv.config import OptimConfig, load_config
from mugv.distributed.checkpoint import load_optimizer_state, optimizer_state
from mugv.distributed.optim import adamw_implementation, build_adamw, split_by_mesh
from mugv.models.dit.config import DiTConfig
from mugv.models.dit.model import MUGDiT
from mugv.train.trainer import Trainer, param_groups


def test_the_implementation_follows_the_device():
    assert adamw_implementation(torch.device("cuda")) == {"fused": True}
    assert adamw_implementation(torch.device("cpu")) == {"foreach": True}


def test_one_process_trains_on_the_multi_tensor_path(tmp_path):
    trainer = Trainer(load_config("debug", [f"--run_dir={tmp_path}", "--train.device=cpu",
                                            "--optim.weight_decay=0.01"]))
    assert [g["foreach"] for g in trainer.optimizer.param_groups] == [True, True]  # decayed, not decayed
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.01, 0.0]


def test_plain_tensors_are_one_group_per_setting():
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    split = split_by_mesh([{"params": [a, b], "weight_decay": 0.1}, {"params": [], "weight_decay": 0.0},
                           {"params": [c], "weight_decay": 0.0}])
    assert [([id(p) for p in g["params"]], g["weight_decay"]) for g in split] == [
        ([id(a), id(b)], 0.1), ([], 0.0), ([id(c)], 0.0)]


def test_multi_tensor_adamw_matches_the_for_loop():
    torch.manual_seed(0)
    model = MUGDiT(DiTConfig.from_preset("debug"))
    reference = copy.deepcopy(model)
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1)
    ours = build_adamw(param_groups(model, cfg.weight_decay), cfg, torch.device("cpu"))
    theirs = torch.optim.AdamW(param_groups(reference, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                               foreach=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert_close_to_scale(p.detach(), q.detach())


def test_saved_groups_do_not_depend_on_how_they_were_split():
    """A checkpoint's groups are merged by setting, and a loading optimizer takes each group's
    settings by parameter name, however its own groups are split."""
    torch.manual_seed(0)
    model = MUGDiT(DiTConfig.from_preset("debug"))
    params = [p for p in model.parameters() if p.requires_grad]
    half = len(params) // 2
    split = torch.optim.AdamW([{"params": params[:half]}, {"params": params[half:]}], lr=0.5)
    saved = optimizer_state(model, split)
    assert len(saved["param_groups"]) == 1 and len(saved["param_groups"][0]["params"]) == len(params)
    whole = torch.optim.AdamW(params, lr=1e-3)
    load_optimizer_state(model, whole, saved)
    assert whole.param_groups[0]["lr"] == 0.5
