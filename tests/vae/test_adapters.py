"""Checkpoint layouts, and numerical parity with the reference MUG-V VAE (tests/golden/vae_tiny_*)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mugv.models.vae import MUGV_LATENT_MEAN, MUGV_LATENT_STD, MUGVideoVAE, VAEConfig
from mugv.models.vae.adapters import (
    DIFFUSERS_UNUSED,
    MUGV_UNUSED,
    VAELayoutError,
    detect_layout,
    diffusers_spatial_name,
    load_into,
    read_state_dict,
    to_mugv,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def golden_config() -> VAEConfig:
    spec = json.loads((GOLDEN / "vae_tiny_golden.json").read_text())["our_config"]
    spec = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    return VAEConfig(**{**spec, "latent_mean": MUGV_LATENT_MEAN, "latent_std": MUGV_LATENT_STD})


@pytest.fixture(scope="module")
def golden_model() -> MUGVideoVAE:
    model = MUGVideoVAE(golden_config()).eval()
    report = load_into(model, load_file(GOLDEN / "vae_tiny_reference_weights.safetensors"))
    assert report.layout == "mugv" and report.ok
    assert sorted(report.dropped) == sorted(MUGV_UNUSED)
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("case", ["t1", "t9", "t17", "t57"])
def test_golden_parity_with_reference(golden_model, case):
    io = load_file(GOLDEN / "vae_tiny_io.safetensors")
    video = io[f"{case}.input"]
    with torch.no_grad():
        posterior = golden_model.encode_posterior(video)
        latent = golden_model.normalize(posterior.mode())
        decoded = golden_model.decode(io[f"{case}.latent_mode"], num_frames=io[f"{case}.decoded"].shape[2])
    assert latent.shape == io[f"{case}.latent_mode"].shape
    assert relative_error(latent, io[f"{case}.latent_mode"]) < 1e-5
    assert relative_error(posterior.logvar, io[f"{case}.logvar"]) < 1e-5
    assert relative_error(decoded, io[f"{case}.decoded"]) < 1e-5


# 1 mod 8 frames past one chunk, where the release's decode crops at the front of the last
# 48-frame chunk (this frame) rather than where encoding put the copies of frame 0.
RELEASE_CROP_AT = {"t57": 48, "t97": 96, "t105": 96}


@pytest.mark.parametrize("case", ["t42", "t50", "t57", "t97", "t105"])
def test_golden_parity_past_one_chunk(golden_model, case):
    # Zero padding sits at the front of the last 48-frame chunk (t42, t50); 1 mod 8 replicates
    # frame 0 (t57, t97, t105). The golden decode is the release's crop at every length.
    # Reference run: tests/golden/vae_tiny_chunks_golden.json. At 8 x 8 pixels the deepest
    # temporal GroupNorms see 4 values each, which amplifies fp32 reduction-order differences:
    # up to 2e-5 between 1 and 2 threads here, so 2e-4 (the wrong padding or crop gives 0.8-1.0).
    tolerance = 2e-4
    io = load_file(GOLDEN / "vae_tiny_chunks_io.safetensors")
    video = io[f"{case}.input"].float()
    golden = io[f"{case}.decoded"]
    with torch.no_grad():
        posterior = golden_model.encode_posterior(video)
        latent = golden_model.normalize(posterior.mode())
        release = golden_model.decode(io[f"{case}.latent_mode"], num_frames=video.shape[2], crop="release")
        decoded = golden_model.decode(io[f"{case}.latent_mode"], num_frames=video.shape[2])
    assert latent.shape == io[f"{case}.latent_mode"].shape
    assert decoded.shape == release.shape == golden.shape == video.shape
    assert relative_error(latent, io[f"{case}.latent_mode"]) < tolerance
    assert relative_error(posterior.logvar, io[f"{case}.logvar"]) < tolerance
    assert relative_error(release, golden) < tolerance
    if case not in RELEASE_CROP_AT:
        assert relative_error(decoded, golden) < tolerance
        return
    # The default drops the 7 copies of frame 0 instead, so it keeps the release's frames 7..c-1
    # as frames 0..c-8, then 7 real frames the release drops, then the release's frames from c on.
    c = RELEASE_CROP_AT[case]
    assert relative_error(decoded[:, :, : c - 7], golden[:, :, 7:c]) < tolerance
    assert relative_error(decoded[:, :, c:], golden[:, :, c:]) < tolerance
    assert relative_error(decoded, golden) > 0.1


def test_mugv_preset_matches_published_layout_exactly():
    layout = json.loads((GOLDEN / "vae_mugv_layout.json").read_text())
    with torch.device("meta"):
        model = MUGVideoVAE(VAEConfig.from_preset("mugv"))
    exported = {k: list(v.shape) for k, v in to_mugv(model.state_dict()).items()}
    assert exported == layout["shapes"]
    assert model.num_params() + 1 + sum(
        torch.Size(layout["shapes"][k]).numel() for k in MUGV_UNUSED if k != "logvar"
    ) == layout["num_parameters"] - 48  # the 24 + 24 normalisation buffers are not parameters


def test_round_trip_through_mugv_layout(tiny_vae):
    exported = to_mugv(tiny_vae.state_dict())
    assert detect_layout(exported) == "mugv"
    fresh = MUGVideoVAE(tiny_vae.cfg)
    report = load_into(fresh, exported)
    assert report.ok and sorted(report.dropped) == sorted(MUGV_UNUSED)
    for name, tensor in tiny_vae.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_missing_unexpected_and_misshaped_keys_are_named(tiny_vae):
    exported = to_mugv(tiny_vae.state_dict())
    del exported["temporal_vae.decoder.conv_out.conv.bias"]
    exported["temporal_vae.decoder.extra.weight"] = torch.zeros(1)
    exported["spatial_vae.module.encoder.conv_in.weight"] = torch.zeros(1, 3, 3, 3)
    with pytest.raises(VAELayoutError) as err:
        load_into(MUGVideoVAE(tiny_vae.cfg), exported)
    message = str(err.value)
    assert "missing keys (1):\n    temporal_vae.decoder.conv_out.conv.bias" in message
    assert "unexpected keys (1):\n    temporal_vae.decoder.extra.weight" in message
    assert "spatial_vae.module.encoder.conv_in.weight: (16, 3, 3, 3) vs (1, 3, 3, 3)" in message


def test_diffusers_autoencoder_kl_names_load_the_spatial_half(tiny_vae):
    spatial = {
        diffusers_spatial_name(k.removeprefix("spatial.")): v
        for k, v in tiny_vae.state_dict().items()
        if k.startswith("spatial.")
    }
    assert "encoder.mid_block.attentions.0.to_out.0.weight" in spatial
    assert "decoder.up_blocks.0.upsamplers.0.conv.weight" in spatial
    spatial["quant_conv.weight"] = torch.zeros(8, 8, 1, 1)
    torch.manual_seed(1)
    fresh = MUGVideoVAE(tiny_vae.cfg)
    others_before = {k: v.clone() for k, v in fresh.state_dict().items() if not k.startswith("spatial.")}
    report = load_into(fresh, spatial)
    assert report.layout == "diffusers" and report.dropped == ["quant_conv.weight"]
    assert "quant_conv.weight" in DIFFUSERS_UNUSED
    for name, tensor in fresh.state_dict().items():
        expected = tiny_vae.state_dict()[name] if name.startswith("spatial.") else others_before[name]
        assert torch.equal(tensor, expected), name


def test_read_state_dict_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_state_dict(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": [1, 2]}, bad)
    with pytest.raises(VAELayoutError, match="bad.pt"):
        read_state_dict(bad)
