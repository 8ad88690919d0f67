"""The release's enhancer files -> diffusers / transformers modules: names, LoRA merge, errors."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from mugv.enhance import adapters
from mugv.enhance.adapters import EnhancerWeightsError
from mugv.enhance.config import WanDiTConfig, WanVAEConfig
from mugv.errors import UnreadableFileError
from mugv.models.registry import build_model, get_family

pytest.importorskip("diffusers")

GOLDEN = Path(__file__).parent.parent / "golden"


@pytest.fixture(scope="module")
def base():
    return adapters.read_weights(GOLDEN / "enhancer_tiny_dit_i2v.safetensors")


@pytest.fixture(scope="module")
def cond():
    return adapters.read_torch_file(GOLDEN / "enhancer_tiny_cond.bin", "condition checkpoint")


def test_families_are_registered_with_the_release_sizes():
    dit, vae = get_family("wan-dit"), get_family("wan-vae")
    # the release's 1 419 096 640 less one patch-embedding bias (the two fold into one)
    assert dit.num_params(WanDiTConfig.from_preset("enhancer")) == 1_419_096_640 - 1536
    assert vae.num_params(WanVAEConfig.from_preset("wan2.1")) == 126_892_531
    assert dit.layouts == ("wan", "diffusers") and "debug" in dit.presets


def test_every_release_dit_key_has_a_diffusers_name(base):
    names = [adapters.wan_dit_name(k) for k in base if not k.startswith("patch_embedding")]
    assert None not in names and len(set(names)) == len(names)
    assert adapters.wan_dit_name("blocks.3.norm3.weight") == "blocks.3.norm2.weight"
    assert adapters.wan_dit_name("blocks.0.cross_attn.o.bias") == "blocks.0.attn2.to_out.0.bias"
    assert adapters.wan_dit_name("blocks.0.modulation") == "blocks.0.scale_shift_table"


def test_condition_branch_folds_into_one_patch_embedding(base):
    model = build_model(WanDiTConfig.from_preset("debug"))
    adapters.load_dit(model, base)
    x, y = torch.randn(1, 16, 2, 4, 6), torch.randn(1, 16, 2, 4, 6)
    conv = torch.nn.functional.conv3d
    expected = (conv(x, base["patch_embedding.weight"], base["patch_embedding.bias"], stride=(1, 2, 2))
                + conv(y, base["patch_embedding2.weight"], base["patch_embedding2.bias"], stride=(1, 2, 2)))
    with torch.no_grad():
        got = model.patch_embedding(torch.cat([x, y], dim=1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_lora_merge_is_exact_and_overrides_apply(base, cond):
    merged = adapters.merge_condition_checkpoint(base, cond, lora_alpha=4.0)
    assert adapters.lora_rank(cond) == 8
    a = cond["pipe.dit.blocks.1.ffn.2.lora_A.default.weight"]
    b = cond["pipe.dit.blocks.1.ffn.2.lora_B.default.weight"]
    expected = base["blocks.1.ffn.2.weight"].double() + (4.0 / 8) * (b.double() @ a.double())
    torch.testing.assert_close(merged["blocks.1.ffn.2.weight"].double(), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(merged["patch_embedding2.weight"], cond["pipe.dit.patch_embedding2.weight"])
    adapted = collections.Counter(k.rsplit(".", 1)[0] for k in merged if not torch.equal(merged[k], base[k]))
    assert len(adapted) == 2 * 10 + 1  # 10 layers per block, 2 blocks, plus the condition branch


def test_peft_base_layer_names_override_the_plain_weight(base):
    weight = torch.ones_like(base["blocks.0.self_attn.q.weight"])
    merged = adapters.merge_condition_checkpoint(base, {"pipe.dit.blocks.0.self_attn.q.base_layer.weight": weight}, 4.0)
    assert torch.equal(merged["blocks.0.self_attn.q.weight"], weight)


@pytest.mark.parametrize("extra, message", [
    ({"pipe.vae.encoder.conv1.weight": torch.zeros(1)}, "pipe.vae.encoder.conv1.weight"),
    ({"pipe.dit.blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(8, 64)}, "blocks.0.self_attn.q.lora_B"),
    ({"pipe.dit.blocks.9.ffn.0.weight": torch.zeros(96, 64)}, "blocks.9.ffn.0.weight"),
    ({"pipe.dit.patch_embedding2.bias": torch.zeros(3)}, "patch_embedding2.bias is (3,)"),
])
def test_condition_checkpoint_problems_are_named(base, extra, message):
    with pytest.raises(EnhancerWeightsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        adapters.merge_condition_checkpoint(base, extra, 4.0)


def test_dit_weights_report_missing_and_unexpected_keys(base):
    model = build_model(WanDiTConfig.from_preset("debug"))
    broken = {k: v for k, v in base.items() if k != "blocks.1.cross_attn.k.bias"}
    with pytest.raises(EnhancerWeightsError, match=r"missing 1 keys: blocks\.1\.attn2\.to_k\.bias"):
        adapters.load_dit(model, broken)
    with pytest.raises(EnhancerWeightsError, match=r"blocks\.0\.extra\.weight"):
        adapters.load_dit(model, {**base, "blocks.0.extra.weight": torch.zeros(1)})
    with pytest.raises(EnhancerWeightsError, match="no condition branch"):
        adapters.load_dit(model, {k: v for k, v in base.items() if not k.startswith("patch_embedding2")}, "wan")


def test_vae_and_umt5_weights_report_unexpected_keys():
    vae_state = adapters.read_torch_file(GOLDEN / "enhancer_tiny_vae.pth", "VAE")
    with pytest.raises(EnhancerWeightsError, match=r"unexpected 1 keys: decoder\.bogus"):
        adapters.load_vae(build_model(WanVAEConfig.from_preset("debug")), {**vae_state, "decoder.bogus": torch.zeros(1)})
    t5 = adapters.read_torch_file(GOLDEN / "enhancer_tiny_umt5.pth", "umT5")
    with pytest.raises(EnhancerWeightsError, match=r"blocks\.0\.attn\.rel"):
        adapters.build_umt5({**t5, "blocks.0.attn.rel.weight": torch.zeros(1)})


class _Payload:
    pass


def test_torch_files_never_unpickle_code(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"w": torch.zeros(1), "obj": _Payload()}, path)
    with pytest.raises(UnreadableFileError, match="evil.bin"):
        adapters.read_torch_file(path, "condition checkpoint")
    with pytest.raises(EnhancerWeightsError, match="not found"):
        adapters.read_torch_file(tmp_path / "absent.pth", "VAE weights")


def release_dit_shapes(dim=1536, ffn=8960, text=4096, freq=256, layers=30) -> dict[str, tuple[int, ...]]:
    """The 827 tensors of the release's dit_i2v.safetensors (ENHANCER-SPEC §5.1)."""
    shapes = {"head.modulation": (1, 2, dim), "head.head.weight": (64, dim), "head.head.bias": (64,)}
    for name in ("patch_embedding", "patch_embedding2"):
        shapes |= {f"{name}.weight": (dim, 16, 1, 2, 2), f"{name}.bias": (dim,)}
    for name, (out, inp) in {"text_embedding.0": (dim, text), "text_embedding.2": (dim, dim),
                             "time_embedding.0": (dim, freq), "time_embedding.2": (dim, dim),
                             "time_projection.1": (6 * dim, dim)}.items():
        shapes |= {f"{name}.weight": (out, inp), f"{name}.bias": (out,)}
    for i in range(layers):
        p = f"blocks.{i}."
        shapes |= {p + "modulation": (1, 6, dim), p + "norm3.weight": (dim,), p + "norm3.bias": (dim,),
                   p + "ffn.0.weight": (ffn, dim), p + "ffn.0.bias": (ffn,), p + "ffn.2.weight": (dim, ffn),
                   p + "ffn.2.bias": (dim,)}
        for attn in ("self_attn", "cross_attn"):
            shapes |= {p + f"{attn}.norm_q.weight": (dim,), p + f"{attn}.norm_k.weight": (dim,)}
            for w in "qkvo":
                shapes |= {p + f"{attn}.{w}.weight": (dim, dim), p + f"{attn}.{w}.bias": (dim,)}
    return shapes


def test_the_full_size_release_layout_loads_into_the_enhancer_preset():
    """At full size on the meta device (nothing allocated): the release's 827 DiT tensors and a
    rank-256 LoRA on the 300 adapted layers fit the `enhancer` preset exactly."""
    shapes = release_dit_shapes()
    assert len(shapes) == 827
    with torch.device("meta"):
        base = {k: torch.empty(s) for k, s in shapes.items()}
        cond = {}
        for k, s in shapes.items():
            if k.endswith(".weight") and any(f".{t}.weight" in k for t in ("q", "k", "v", "o", "ffn.0", "ffn.2")) \
                    and "norm" not in k:
                module = k[: -len(".weight")]
                cond[f"pipe.dit.{module}.lora_A.default.weight"] = torch.empty(256, s[1])
                cond[f"pipe.dit.{module}.lora_B.default.weight"] = torch.empty(s[0], 256)
        assert len(cond) == 600
        merged = adapters.merge_condition_checkpoint(base, cond, lora_alpha=4.0)
        model = build_model(WanDiTConfig.from_preset("enhancer"))
    adapters.load_dit(model, merged)
