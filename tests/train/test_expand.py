import dataclasses

import pytest
import torch

from mugv.models.dit.config import DiTConfig
from mugv.models.dit.model import MUGDiT
from mugv.train.expand import ExpansionError, expand_state_dict, expanded_config, expansion_factor

from numerics_testing import scale_relative_error


def trained_like_model(seed=0) -> MUGDiT:
    """A small model with every weight random (a fresh init leaves zeros that would hide mistakes)."""
    torch.manual_seed(seed)
    model = MUGDiT(DiTConfig.from_preset("debug"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 24, 3, 6, 8, generator=g)
    text = torch.randn(2, 5, 64, generator=g)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    frame_mask = torch.tensor([[False, True, True], [True, True, True]])
    return x, torch.tensor([640.0, 90.0]), text, dict(fps=torch.tensor([24.0, 30.0]), text_mask=mask,
                                                       frame_mask=frame_mask)


def expand(model: MUGDiT, factor=2, perturbation=0.0) -> MUGDiT:
    large = MUGDiT(expanded_config(model.cfg, factor))
    large.load_state_dict(expand_state_dict(model.state_dict(), factor, perturbation=perturbation, seed=3))
    return large


@pytest.mark.parametrize("factor, perturbation", [(2, 0.0), (2, 0.05), (3, 0.05)])
def test_expanded_model_computes_the_small_models_function(factor, perturbation):
    small = trained_like_model()
    large = expand(small, factor, perturbation)
    assert large.cfg.num_heads == small.cfg.num_heads * factor and large.cfg.head_dim == small.cfg.head_dim
    x, t, text, kw = inputs()
    with torch.no_grad():
        want, got = small(x, t, text, **kw), large(x, t, text, **kw)
    assert ((got - want).norm() / want.norm()).item() < 1e-5


def hidden_copy_gap(model: MUGDiT) -> float:
    """Largest difference between the two halves of the first block's output, relative to the output's
    scale: 0 while they are copies."""
    seen = {}
    handle = model.blocks[0].register_forward_hook(lambda mod, args, out: seen.update(out=out))
    x, t, text, kw = inputs()
    with torch.no_grad():
        model(x, t, text, **kw)
    handle.remove()
    out = seen["out"]
    half = out.shape[-1] // 2
    return scale_relative_error(out[..., :half], out[..., half:], scale=out)


def train_a_few_steps(model: MUGDiT, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t, text, kw = inputs(seed=5)
    for _ in range(steps):
        opt.zero_grad()
        model(x, t, text, **kw)[:, :24].pow(2).mean().backward()
        opt.step()


def test_without_perturbation_the_copies_never_separate_and_with_it_they_do():
    small = trained_like_model()
    symmetric, broken = expand(small), expand(small, perturbation=0.05)
    assert hidden_copy_gap(symmetric) == 0.0
    assert hidden_copy_gap(broken) < 1e-5  # the perturbation keeps the function: copies agree to rounding
    train_a_few_steps(symmetric)
    train_a_few_steps(broken)
    assert hidden_copy_gap(symmetric) == 0.0
    assert hidden_copy_gap(broken) > 1e-4  # measured 2.6e-3 after 3 steps; rounding leaves ~4e-7


def test_presets_2b_to_10b_is_a_factor_two():
    assert expansion_factor(DiTConfig.from_preset("2b"), DiTConfig.from_preset("10b")) == 2
    with pytest.raises(ExpansionError, match="multiple"):
        expansion_factor(DiTConfig.from_preset("2b"), DiTConfig.from_preset("4b"))
    with pytest.raises(ExpansionError, match="keeps depth"):
        expansion_factor(DiTConfig.from_preset("debug"), dataclasses.replace(DiTConfig.from_preset("debug"),
                                                                              hidden_size=576, num_heads=8, depth=3))


def test_unknown_tensors_are_refused_by_name():
    with pytest.raises(ExpansionError, match="blocks.0.extra.weight"):
        expand_state_dict({"blocks.0.extra.weight": torch.zeros(2, 2)}, 2)


def test_expand_command_writes_weights_that_keep_the_function(tmp_path, capsys):
    from pathlib import Path

    from safetensors.torch import load_file

    from mugv.cli import main

    golden = Path(__file__).resolve().parents[1] / "golden" / "dit_debug_mugv_weights.safetensors"
    out = tmp_path / "wide.safetensors"
    assert main(["expand", "--from", str(golden), "--factor", "2", "--perturbation", "0.01", "--out", str(out),
                 "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "target: hidden 576, 8 heads" in printed
    assert float(printed.split("outputs ")[1].split()[0]) < 1e-5
    assert load_file(out)["blocks.0.attn.qkv.weight"].shape == (3 * 576, 576)
