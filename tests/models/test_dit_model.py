import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mugv.models.dit.config import PRESETS, DiTConfig, latent_shape_for_pixels
from mugv.models.dit.model import MUGDiT
from mugv.models.dit.rope import rope_angles, token_positions

from numerics_testing import assert_close_to_scale

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_on_meta_with_the_counted_parameters(name):
    cfg = DiTConfig.from_preset(name)
    with torch.device("meta"):
        model = MUGDiT(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()
    assert all(p.device.type == "meta" for p in model.parameters())


def test_10b_has_the_published_size():
    cfg = DiTConfig.from_preset("10b")
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.head_dim) == (56, 3456, 48, 72)
    assert cfg.num_params() == pytest.approx(10.83e9, rel=1e-3)
    per_block = (cfg.num_params() - DiTConfig(**{**cfg.__dict__, "depth": 0}).num_params()) / cfg.depth
    assert per_block == pytest.approx(191e6, rel=5e-3)
    assert DiTConfig.from_preset("2b").hidden_size == 1728


def reference_model() -> MUGDiT:
    model = MUGDiT(DiTConfig.from_preset("debug"))
    weights = load_file(GOLDEN / "dit_debug_mugv_weights.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert missing == ["y_embedder.y_embedding"] and unexpected == []  # the inference layout has no null text
    return model.eval()


@pytest.mark.parametrize("case", ["t2v", "i2v", "odd", "t2v_allvalid"])
def test_outputs_match_the_reference_implementation(case):
    """Golden outputs of the released MUG-V DiT at debug size (see tests/golden/dit_debug_golden.json)."""
    io = load_file(GOLDEN / "dit_debug_io.safetensors")
    model = reference_model()
    with torch.no_grad():
        out = model(
            io[f"{case}.x"],
            io[f"{case}.timestep"],
            io[f"{case}.y"],
            fps=io[f"{case}.fps"],
            text_mask=io[f"{case}.y_mask"],
            frame_mask=io.get(f"{case}.x_mask"),
        )
    ref = io[f"{case}.out"]
    assert out.shape == ref.shape
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5


def test_golden_provenance_is_recorded():
    meta = json.loads((GOLDEN / "dit_debug_golden.json").read_text())
    assert "commit" in json.dumps(meta)


def small_inputs(frames=3, height=6, width=8, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 24, frames, height, width, generator=g)
    text = torch.randn(batch, 5, 64, generator=g)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return x, torch.tensor([900.0, 250.0])[:batch], text, mask, torch.full((batch,), 24.0)


def randomized_model(seed=0) -> MUGDiT:
    torch.manual_seed(seed)
    model = MUGDiT(DiTConfig.from_preset("debug")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the fresh init zeroes the output layer
    return model


def test_text_padding_does_not_change_the_output():
    model = randomized_model()
    x, t, text, mask, fps = small_inputs()
    with torch.no_grad():
        a = model(x, t, text, fps=fps, text_mask=mask)
        text[1, 3:] = 100.0
        b = model(x, t, text, fps=fps, text_mask=mask)
        padded = torch.cat([text, torch.randn(2, 4, 64)], dim=1)
        c = model(x, t, padded, fps=fps, text_mask=torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1))
    assert torch.equal(a, b)  # same shapes, masked values changed: the same sums, bit for bit
    assert_close_to_scale(c, a)  # a longer text sequence sums attention in another order


def test_conditioning_frames_take_the_t0_modulation():
    """A frame marked as conditioning is processed exactly as at timestep 0."""
    model = randomized_model()
    x, _, text, mask, fps = small_inputs()
    frame_mask = torch.tensor([[False, True, True], [False, True, True]])
    zero_t = torch.zeros(2)
    with torch.no_grad():
        masked = model(x, torch.tensor([700.0, 700.0]), text, fps=fps, text_mask=mask, frame_mask=frame_mask)
        at_zero = model(x, zero_t, text, fps=fps, text_mask=mask, frame_mask=frame_mask)
        all_zero = model(x, zero_t, text, fps=fps, text_mask=mask, frame_mask=torch.zeros_like(frame_mask))
    assert not torch.allclose(masked, at_zero)
    assert_close_to_scale(at_zero, all_zero)  # at t = 0 the mask no longer matters
    # Frame 0 output still depends on the noisy frames through attention, so compare only modulation:
    # with every frame conditioning, the timestep has no effect at all.
    with torch.no_grad():
        cond_only = model(x, torch.tensor([700.0, 700.0]), text, fps=fps, text_mask=mask,
                          frame_mask=torch.zeros_like(frame_mask))
    assert_close_to_scale(cond_only, all_zero)


def test_odd_sizes_are_padded_and_cropped():
    model = randomized_model()
    x, t, text, mask, fps = small_inputs(frames=2, height=5, width=7)
    with torch.no_grad():
        out = model(x, t, text, fps=fps, text_mask=mask)
    assert out.shape == (2, 48, 2, 5, 7) and out.dtype == torch.float32


def test_a_sample_does_not_depend_on_its_batch_neighbours():
    model = randomized_model()
    x, t, text, mask, fps = small_inputs()
    with torch.no_grad():
        both = model(x, t, text, fps=fps, text_mask=mask)
        alone = model(x[1:], t[1:], text[1:], fps=fps[1:], text_mask=mask[1:])
    assert_close_to_scale(alone, both[1:])


def test_rope_positions_put_start_and_end_tokens_at_the_corners():
    pos = token_positions(frames=2, height=3, width=4)
    assert pos.shape == (2 * 3 * 4 + 2, 3)
    assert pos[0].tolist() == [0, 0, 0] and pos[-1].tolist() == [2, 3, 3]
    assert pos[1].tolist() == [0, 0, 1] and pos[-2].tolist() == [2, 3, 2]  # (h, w, t), t-major order
    cos, sin = rope_angles(2, 3, 4, head_dim=72)
    assert cos.shape == (26, 36)
    # pair 0 of every axis has frequency 1: the angle is the position itself
    torch.testing.assert_close(torch.atan2(sin[:, [0, 12, 24]], cos[:, [0, 12, 24]]).round(), pos.float())


def test_latent_shape_of_pixel_clips():
    assert latent_shape_for_pixels(105, 720, 1280) == (14, 90, 160)
    assert latent_shape_for_pixels(1, 256, 256) == (1, 32, 32)
    assert latent_shape_for_pixels(16, 64, 64) == (2, 8, 8)


def test_flops_agree_with_the_release_formula_at_720p():
    cfg = DiTConfig.from_preset("10b")
    ours = cfg.train_flops(14, 90, 160, 300)
    assert ours == pytest.approx(cfg.megatron_train_flops(14, 90, 160, 300), rel=1e-3)
    # attention over the real token count: fewer text tokens means fewer FLOPs
    assert cfg.train_flops(14, 90, 160, 20) < ours
