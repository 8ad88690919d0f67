"""DiT checkpoint adapters: MUG-V inference layout, Megatron layout (TP shards), file I/O."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mugv.models.dit.adapters import (
    CheckpointLayoutError,
    detect_layout,
    from_megatron,
    from_mugv,
    load_checkpoint,
    load_into,
    load_state_dict,
    megatron_name,
    save_safetensors,
    to_megatron,
    to_mugv,
)
from mugv.models.dit.config import DiTConfig
from mugv.models.dit.model import MUGDiT

# The debug flavour: depth 2, hidden 288, 4 heads of 72, text 64, latent 24 in / 48 out.
DEPTH, HIDDEN, HEADS, HEAD_DIM, TEXT_DIM, C_IN, C_OUT = 2, 288, 4, 72, 64, 24, 48
PATCH = (1, 2, 2)


def published_layout_shapes(
    depth: int = DEPTH,
    hidden: int = HIDDEN,
    heads: int = HEADS,
    text_dim: int = TEXT_DIM,
    c_in: int = C_IN,
    c_out: int = C_OUT,
    text_tokens: int = 300,
) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the published inference layout, plus our `y_embedder.y_embedding`."""
    h, hd = hidden, hidden // heads
    s: dict[str, tuple[int, ...]] = {
        "x_embedder.proj.weight": (h, c_in, *PATCH),
        "x_embedder.proj.bias": (h,),
    }
    for emb in ("t_embedder", "fps_embedder"):
        s |= {
            f"{emb}.mlp.0.weight": (h, 256),
            f"{emb}.mlp.0.bias": (h,),
            f"{emb}.mlp.2.weight": (h, h),
            f"{emb}.mlp.2.bias": (h,),
        }
    s |= {"t_block.1.weight": (6 * h, h), "t_block.1.bias": (6 * h,)}
    s |= {
        "y_embedder.y_proj.fc1.weight": (h, text_dim),
        "y_embedder.y_proj.fc1.bias": (h,),
        "y_embedder.y_proj.fc2.weight": (h, h),
        "y_embedder.y_proj.fc2.bias": (h,),
        "y_embedder.y_embedding": (text_tokens, text_dim),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        s |= {
            b + "scale_shift_table": (6, h),
            b + "attn.qkv.weight": (3 * h, h),
            b + "attn.qkv.bias": (3 * h,),
            b + "attn.q_norm.weight": (hd,),
            b + "attn.k_norm.weight": (hd,),
            b + "attn.proj.weight": (h, h),
            b + "attn.proj.bias": (h,),
            b + "cross_attn_norm.weight": (h,),
            b + "cross_attn_norm.bias": (h,),
            b + "cross_attn.q_linear.weight": (h, h),
            b + "cross_attn.q_linear.bias": (h,),
            b + "cross_attn.kv_linear.weight": (2 * h, h),
            b + "cross_attn.kv_linear.bias": (2 * h,),
            b + "cross_attn.q_norm.weight": (hd,),
            b + "cross_attn.k_norm.weight": (hd,),
            b + "cross_attn.proj.weight": (h, h),
            b + "cross_attn.proj.bias": (h,),
            b + "mlp.fc1.weight": (4 * h, h),
            b + "mlp.fc1.bias": (4 * h,),
            b + "mlp.fc2.weight": (h, 4 * h),
            b + "mlp.fc2.bias": (h,),
        }
    s |= {
        "start_token": (h,),
        "end_token": (h,),
        "final_layer.scale_shift_table": (2, h),
        "final_layer.linear.weight": (PATCH[0] * PATCH[1] * PATCH[2] * c_out, h),
        "final_layer.linear.bias": (PATCH[0] * PATCH[1] * PATCH[2] * c_out,),
    }
    return s


def make_model(seed: int = 0) -> MUGDiT:
    torch.manual_seed(seed)
    return MUGDiT(DiTConfig.from_preset("debug"))


def randomize(sd: dict[str, Tensor], seed: int = 1) -> dict[str, Tensor]:
    """Fresh random values everywhere (zero-initialised tensors would hide layout bugs)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g).to(v.dtype) for k, v in sd.items()}


@pytest.fixture
def ours() -> dict[str, Tensor]:
    return randomize(make_model().state_dict())


def assert_same(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert set(a) == set(b), (sorted(set(a) - set(b)), sorted(set(b) - set(a)))
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------------
# Our model really has the published names
# --------------------------------------------------------------------------------------------


def test_model_state_dict_is_the_published_layout() -> None:
    sd = make_model().state_dict()
    cfg = DiTConfig.from_preset("debug")
    expected = published_layout_shapes(text_tokens=cfg.max_text_tokens)
    assert set(sd) == set(expected), (sorted(set(sd) - set(expected)), sorted(set(expected) - set(sd)))
    for name, shape in expected.items():
        assert tuple(sd[name].shape) == shape, name


# --------------------------------------------------------------------------------------------
# MUG-V inference layout
# --------------------------------------------------------------------------------------------


def test_mugv_round_trip_exact(ours: dict[str, Tensor]) -> None:
    published = to_mugv(ours)
    assert "y_embedder.y_embedding" not in published  # dit.pt does not carry it
    back, report = from_mugv(published, reference=ours)
    assert report.ok, report.format()
    assert report.absent_in_source_ok == ["y_embedder.y_embedding"]
    assert_same(back, {k: v for k, v in ours.items() if k != "y_embedder.y_embedding"})

    full = to_mugv(ours, keep_null_embedding=True)
    back, report = from_mugv(full, reference=ours)
    assert report.ok and not report.absent_in_source_ok
    assert_same(back, ours)


def test_from_mugv_reference_may_be_a_module_or_config(ours: dict[str, Tensor]) -> None:
    _, report = from_mugv(to_mugv(ours), reference=make_model())
    assert report.ok, report.format()
    _, report = from_mugv(to_mugv(ours), reference=DiTConfig.from_preset("debug"))  # built on meta
    assert report.ok, report.format()
    bigger = dataclasses.replace(DiTConfig.from_preset("debug"), depth=3, hidden_size=576, num_heads=8)
    _, report = from_mugv(to_mugv(ours), reference=bigger)
    assert report.shape_mismatches["blocks.0.attn.qkv.weight"] == ((3 * 576, 576), (3 * 288, 288))
    assert "blocks.2.mlp.fc2.bias" in report.missing


def test_from_mugv_reports_missing_unexpected_and_shape(ours: dict[str, Tensor]) -> None:
    sd = to_mugv(ours)
    del sd["blocks.1.attn.proj.bias"]
    sd["blocks.0.attn.surprise.weight"] = torch.zeros(3)
    sd["blocks.0.mlp.fc2.weight"] = torch.zeros(HIDDEN, HIDDEN)
    _, report = from_mugv(sd, reference=ours)
    assert not report.ok
    assert report.missing == ["blocks.1.attn.proj.bias"]
    assert report.unexpected == ["blocks.0.attn.surprise.weight"]
    assert report.shape_mismatches == {"blocks.0.mlp.fc2.weight": ((HIDDEN, 4 * HIDDEN), (HIDDEN, HIDDEN))}
    with pytest.raises(CheckpointLayoutError) as err:
        report.raise_for_errors()
    for name in ("blocks.1.attn.proj.bias", "blocks.0.attn.surprise.weight", "blocks.0.mlp.fc2.weight"):
        assert name in str(err.value)


def test_from_mugv_without_reference_checks_names(ours: dict[str, Tensor]) -> None:
    sd = to_mugv(ours)
    _, report = from_mugv(sd)
    assert report.ok, report.format()
    del sd["blocks.0.cross_attn.kv_linear.weight"]
    sd["blocks.0.cross_attn.kv.weight"] = torch.zeros(1)
    _, report = from_mugv(sd)
    assert report.missing == ["blocks.0.cross_attn.kv_linear.weight"]
    assert report.unexpected == ["blocks.0.cross_attn.kv.weight"]


def test_to_mugv_rejects_unknown_keys(ours: dict[str, Tensor]) -> None:
    ours["blocks.0.lora_A.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointLayoutError, match=r"blocks\.0\.lora_A\.weight"):
        to_mugv(ours)


def test_load_into_mugv_keeps_known_absent_from_init(ours, caplog) -> None:
    model = make_model(seed=5)
    init_null = model.state_dict()["y_embedder.y_embedding"].clone()
    with caplog.at_level(logging.WARNING, logger="mugv.models.dit.adapters"):
        report = load_into(model, to_mugv(ours), layout="mugv")
    assert report.absent_in_source_ok == ["y_embedder.y_embedding"]
    assert "y_embedder.y_embedding" in caplog.text
    loaded = model.state_dict()
    assert torch.equal(loaded["y_embedder.y_embedding"], init_null)
    for k, v in ours.items():
        if k != "y_embedder.y_embedding":
            assert torch.equal(loaded[k], v.to(loaded[k].dtype)), k


@pytest.mark.parametrize(
    "edit, names",
    [
        ("missing", ["blocks.1.mlp.fc1.bias", "final_layer.linear.weight"]),
        ("unexpected", ["blocks.7.attn.qkv.weight", "pos_embed"]),
        ("shape", ["blocks.0.attn.qkv.weight"]),
    ],
)
def test_load_into_raises_naming_keys(ours, edit: str, names: list[str]) -> None:
    sd = to_mugv(ours)
    for name in names:
        if edit == "missing":
            del sd[name]
        elif edit == "unexpected":
            sd[name] = torch.zeros(1)
        else:
            sd[name] = sd[name][:-1]
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointLayoutError) as err:
        load_into(model, sd, layout="mugv")
    for name in names:
        assert name in str(err.value)
    assert_same(model.state_dict(), before)  # nothing half-loaded


# --------------------------------------------------------------------------------------------
# Megatron layout
# --------------------------------------------------------------------------------------------


def expected_megatron_keys(depth: int = DEPTH) -> set[str]:
    """The Megatron names, written out by hand (independent of the adapter's rule table)."""
    keys = {
        "x_embedder.proj.weight", "x_embedder.proj.bias",
        "timestep_embedder.mlp.0.weight", "timestep_embedder.mlp.0.bias",
        "timestep_embedder.mlp.2.weight", "timestep_embedder.mlp.2.bias",
        "fps_embedder.mlp.0.weight", "fps_embedder.mlp.0.bias",
        "fps_embedder.mlp.2.weight", "fps_embedder.mlp.2.bias",
        "timestep_block.1.weight", "timestep_block.1.bias",
        "context_embedder.proj.fc1.weight", "context_embedder.proj.fc1.bias",
        "context_embedder.proj.fc2.weight", "context_embedder.proj.fc2.bias",
        "context_embedder.drop_emb",
        "start_token", "end_token",
        "final_layer.scale_shift_table.bias", "final_layer.linear.weight", "final_layer.linear.bias",
    }  # fmt: skip
    for i in range(depth):
        p = f"decoder.layers.{i}."
        keys |= {
            p + "scale_shift_table.bias",
            p + "self_attention.linear_qkv.weight", p + "self_attention.linear_qkv.bias",
            p + "self_attention.q_layernorm.weight", p + "self_attention.k_layernorm.weight",
            p + "self_attention.linear_proj.weight", p + "self_attention.linear_proj.bias",
            p + "pre_cross_attn_layernorm.weight", p + "pre_cross_attn_layernorm.bias",
            p + "cross_attention.linear_q.weight", p + "cross_attention.linear_q.bias",
            p + "cross_attention.linear_kv.weight", p + "cross_attention.linear_kv.bias",
            p + "cross_attention.q_layernorm.weight", p + "cross_attention.k_layernorm.weight",
            p + "cross_attention.linear_proj.weight", p + "cross_attention.linear_proj.bias",
            p + "mlp.linear_fc1.weight", p + "mlp.linear_fc1.bias",
            p + "mlp.linear_fc2.weight", p + "mlp.linear_fc2.bias",
        }  # fmt: skip
    return keys


def test_megatron_names(ours: dict[str, Tensor]) -> None:
    (shard,) = to_megatron(ours, HEADS)
    assert set(shard) == expected_megatron_keys()
    assert megatron_name("blocks.1.attn.qkv.bias") == "decoder.layers.1.self_attention.linear_qkv.bias"
    assert megatron_name("final_layer.scale_shift_table") == "final_layer.scale_shift_table.bias"
    with pytest.raises(CheckpointLayoutError, match="blocks.0.nope"):
        megatron_name("blocks.0.nope")


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_megatron_round_trip_exact(ours: dict[str, Tensor], tp: int) -> None:
    shards = to_megatron(ours, HEADS, tp=tp)
    assert len(shards) == tp
    assert_same(from_megatron(shards, HEADS), ours)
    assert_same(from_megatron(shards), ours)  # head count inferred from the q-norm size


def test_megatron_tp1_qkv_is_per_head_interleaved(ours: dict[str, Tensor]) -> None:
    (shard,) = to_megatron(ours, HEADS)
    for suffix in ("weight", "bias"):
        ours_qkv = ours[f"blocks.0.attn.qkv.{suffix}"]
        meg = shard[f"decoder.layers.0.self_attention.linear_qkv.{suffix}"]
        # Megatron: (heads, [q, k, v], head_dim); ours: ([q, k, v], heads, head_dim)
        meg_view = meg.reshape(HEADS, 3, HEAD_DIM, *meg.shape[1:])
        ours_view = ours_qkv.reshape(3, HEADS, HEAD_DIM, *ours_qkv.shape[1:])
        for h in range(HEADS):
            for j in range(3):
                assert torch.equal(meg_view[h, j], ours_view[j, h])
        kv = ours[f"blocks.0.cross_attn.kv_linear.{suffix}"]
        meg_kv = shard[f"decoder.layers.0.cross_attention.linear_kv.{suffix}"]
        assert torch.equal(
            meg_kv.reshape(HEADS, 2, HEAD_DIM, *meg_kv.shape[1:]),
            kv.reshape(2, HEADS, HEAD_DIM, *kv.shape[1:]).transpose(0, 1),
        )


def test_megatron_tp4_shards_hold_whole_heads(ours: dict[str, Tensor]) -> None:
    tp = 4
    shards = to_megatron(ours, HEADS, tp=tp)
    H, hd = HIDDEN, HEAD_DIM
    per = HEADS // tp  # 1 head per rank
    for r, shard in enumerate(shards):
        p = "decoder.layers.1."
        for suffix in ("weight", "bias"):
            qkv = ours[f"blocks.1.attn.qkv.{suffix}"]  # rows [q_all; k_all; v_all]
            piece = shard[p + f"self_attention.linear_qkv.{suffix}"]
            assert piece.shape[0] == 3 * per * hd
            view = piece.reshape(per, 3, hd, *piece.shape[1:])
            for j in range(3):  # q, k, v of head r
                assert torch.equal(view[0, j], qkv[j * H + r * hd : j * H + (r + 1) * hd])
            kv = ours[f"blocks.1.cross_attn.kv_linear.{suffix}"]  # rows [k_all; v_all]
            piece = shard[p + f"cross_attention.linear_kv.{suffix}"]
            view = piece.reshape(per, 2, hd, *piece.shape[1:])
            for j in range(2):
                assert torch.equal(view[0, j], kv[j * H + r * hd : j * H + (r + 1) * hd])
            q = ours[f"blocks.1.cross_attn.q_linear.{suffix}"]
            assert torch.equal(shard[p + f"cross_attention.linear_q.{suffix}"], q[r * hd : (r + 1) * hd])
            fc1 = ours[f"blocks.1.mlp.fc1.{suffix}"]
            c = 4 * H // tp
            assert torch.equal(shard[p + f"mlp.linear_fc1.{suffix}"], fc1[r * c : (r + 1) * c])
        # row parallel: input columns of head r; biases replicated
        proj = ours["blocks.1.attn.proj.weight"]
        assert torch.equal(shard[p + "self_attention.linear_proj.weight"], proj[:, r * hd : (r + 1) * hd])
        c = 4 * H // tp
        fc2 = ours["blocks.1.mlp.fc2.weight"]
        assert torch.equal(shard[p + "mlp.linear_fc2.weight"], fc2[:, r * c : (r + 1) * c])
        replicated = (
            "self_attention.linear_proj.bias",
            "cross_attention.linear_proj.bias",
            "mlp.linear_fc2.bias",
            "scale_shift_table.bias",
            "self_attention.q_layernorm.weight",
        )
        for name in replicated:
            assert torch.equal(shard[p + name], shards[0][p + name])
        assert torch.equal(shard["final_layer.linear.weight"], ours["final_layer.linear.weight"])


def test_megatron_tp_shards_compute_the_same_function(ours: dict[str, Tensor]) -> None:
    """Run self-attention projections and the MLP the way Megatron's TP ranks do; sum partials."""
    tp = 4
    shards = to_megatron(ours, HEADS, tp=tp)
    torch.manual_seed(0)
    x = torch.randn(5, HIDDEN, dtype=torch.float64)
    w = {k: v.double() for k, v in ours.items()}
    p = "decoder.layers.0."

    # Full model: q, k, v per head from [q_all; k_all; v_all], then attention output projection.
    qkv = F.linear(x, w["blocks.0.attn.qkv.weight"], w["blocks.0.attn.qkv.bias"])
    q, k, v = qkv.reshape(5, 3, HEADS, HEAD_DIM).unbind(1)
    att = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / HEAD_DIM**0.5, dim=-1)
    heads_out = torch.einsum("hqk,khd->qhd", att, v).reshape(5, HIDDEN)
    full = F.linear(heads_out, w["blocks.0.attn.proj.weight"], w["blocks.0.attn.proj.bias"])
    mlp_full = F.linear(
        F.gelu(F.linear(x, w["blocks.0.mlp.fc1.weight"], w["blocks.0.mlp.fc1.bias"]), approximate="tanh"),
        w["blocks.0.mlp.fc2.weight"],
        w["blocks.0.mlp.fc2.bias"],
    )

    partial = torch.zeros_like(full)
    mlp_partial = torch.zeros_like(full)
    for s in shards:
        s = {k_: v_.double() for k_, v_ in s.items()}
        mixed = F.linear(
            x, s[p + "self_attention.linear_qkv.weight"], s[p + "self_attention.linear_qkv.bias"]
        )
        # Megatron's split: [s, heads_per_rank, (q | k | v) * head_dim]
        qr, kr, vr = mixed.reshape(5, HEADS // tp, 3 * HEAD_DIM).split(HEAD_DIM, dim=-1)
        a = torch.softmax(torch.einsum("qhd,khd->hqk", qr, kr) / HEAD_DIM**0.5, dim=-1)
        o = torch.einsum("hqk,khd->qhd", a, vr).reshape(5, -1)
        partial += F.linear(o, s[p + "self_attention.linear_proj.weight"])
        h = F.gelu(
            F.linear(x, s[p + "mlp.linear_fc1.weight"], s[p + "mlp.linear_fc1.bias"]), approximate="tanh"
        )
        mlp_partial += F.linear(h, s[p + "mlp.linear_fc2.weight"])
    partial += s[p + "self_attention.linear_proj.bias"]  # row-parallel bias: added once
    mlp_partial += s[p + "mlp.linear_fc2.bias"]
    torch.testing.assert_close(partial, full)
    torch.testing.assert_close(mlp_partial, mlp_full)


def test_tp_must_divide_heads(ours: dict[str, Tensor]) -> None:
    with pytest.raises(ValueError, match="num_heads=4 is not divisible by .*tp=3"):
        to_megatron(ours, HEADS, tp=3)
    shards = to_megatron(ours, HEADS, tp=1) * 3
    with pytest.raises(ValueError, match="not divisible"):
        from_megatron(shards, HEADS)


def test_to_megatron_takes_a_config(ours: dict[str, Tensor]) -> None:
    class Cfg:
        num_heads = HEADS

    assert_same(from_megatron(to_megatron(ours, Cfg(), tp=2)), ours)


def test_from_megatron_wrong_head_count(ours: dict[str, Tensor]) -> None:
    shards = to_megatron(ours, HEADS, tp=2)
    with pytest.raises(CheckpointLayoutError, match="num_heads=2 given.*says 4"):
        from_megatron(shards, 2)


def test_from_megatron_rejects_unknown_and_inconsistent_keys(ours: dict[str, Tensor]) -> None:
    shards = to_megatron(ours, HEADS, tp=2)
    bad = [dict(s) for s in shards]
    for s in bad:
        s["decoder.layers.0.self_attention.linear_qkv.lora.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointLayoutError, match=r"linear_qkv\.lora\.weight"):
        from_megatron(bad)

    bad = [dict(s) for s in shards]
    del bad[1]["decoder.layers.1.mlp.linear_fc1.bias"]
    with pytest.raises(CheckpointLayoutError, match=r"decoder\.layers\.1\.mlp\.linear_fc1\.bias"):
        from_megatron(bad)

    bad = [dict(s) for s in shards]
    bad[1]["start_token"] = bad[1]["start_token"] + 1
    with pytest.raises(CheckpointLayoutError, match="start_token is replicated"):
        from_megatron(bad)


def test_megatron_extra_state_and_drop_emb(ours: dict[str, Tensor]) -> None:
    shards = to_megatron(ours, HEADS, tp=2, extra_state=True, include_null_embedding=False)
    assert shards[0]["decoder.layers.0.self_attention.linear_qkv._extra_state"] is None
    assert shards[0]["decoder.layers.0.scale_shift_table._extra_state"] is None
    assert shards[0]["final_layer.scale_shift_table._extra_state"] is None
    assert "final_layer.linear._extra_state" not in shards[0]
    assert "context_embedder.drop_emb" not in shards[0]
    dropped: list[str] = []
    back = from_megatron(shards, dropped=dropped)
    assert "decoder.layers.1.mlp.linear_fc2._extra_state" in dropped
    assert_same(back, {k: v for k, v in ours.items() if k != "y_embedder.y_embedding"})


def test_megatron_dist_checkpoint_stacked_layers(ours: dict[str, Tensor]) -> None:
    (shard,) = to_megatron(ours, HEADS)
    stacked: dict[str, Tensor] = {}
    for name, t in shard.items():
        if name.startswith("decoder.layers.0."):
            rest = name[len("decoder.layers.0.") :]
            stacked["decoder.layers." + rest] = torch.stack(
                [shard[f"decoder.layers.{i}.{rest}"] for i in range(DEPTH)]
            )
        elif not name.startswith("decoder.layers."):
            stacked[name] = t
    assert_same(from_megatron(stacked), ours)


def test_load_into_from_megatron_shards(ours: dict[str, Tensor], caplog) -> None:
    shards = to_megatron(ours, HEADS, tp=2, include_null_embedding=False)
    model = make_model(seed=3)
    init_null = model.state_dict()["y_embedder.y_embedding"].clone()
    with caplog.at_level(logging.WARNING, logger="mugv.models.dit.adapters"):
        report = load_into(model, shards)  # layout detected
    assert report.layout == "megatron"
    assert "y_embedder.y_embedding" in caplog.text
    loaded = model.state_dict()
    assert torch.equal(loaded["y_embedder.y_embedding"], init_null)
    for k, v in ours.items():
        if k != "y_embedder.y_embedding":
            assert torch.equal(loaded[k], v.to(loaded[k].dtype)), k

    shards = to_megatron(ours, HEADS, tp=2)
    for s in shards:
        del s["decoder.layers.0.cross_attention.k_layernorm.weight"]
    with pytest.raises(CheckpointLayoutError, match=r"blocks\.0\.cross_attn\.k_norm\.weight"):
        load_into(make_model(), shards, layout="megatron")


def test_load_into_megatron_of_another_size_names_mismatches() -> None:
    small = dataclasses.replace(DiTConfig.from_preset("debug"), hidden_size=144, num_heads=2)
    torch.manual_seed(0)
    shards = to_megatron(MUGDiT(small).state_dict(), small, tp=2)
    with pytest.raises(CheckpointLayoutError) as err:
        load_into(make_model(), shards)
    msg = str(err.value)
    assert "blocks.0.attn.qkv.weight: (864, 288) vs (432, 144)" in msg
    assert "final_layer.linear.weight" in msg


def test_detect_layout(ours: dict[str, Tensor]) -> None:
    assert detect_layout(to_mugv(ours)) == "mugv"
    assert detect_layout(to_megatron(ours, HEADS, tp=2)) == "megatron"
    assert detect_layout(to_megatron(ours, HEADS)[0]) == "megatron"
    with pytest.raises(CheckpointLayoutError, match="neither"):
        detect_layout({"foo.weight": torch.zeros(1)})
    mixed = dict(to_mugv(ours)) | {"decoder.layers.0.mlp.linear_fc1.weight": torch.zeros(1)}
    with pytest.raises(CheckpointLayoutError, match="both"):
        detect_layout(mixed)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def test_safetensors_round_trip(ours: dict[str, Tensor], tmp_path: Path) -> None:
    sd = dict(ours)
    sd["blocks.0.attn.proj.weight"] = sd["blocks.0.attn.proj.weight"].t()  # non-contiguous
    sd["end_token"] = sd["start_token"]  # shared storage
    sd["x_embedder.proj.bias"] = sd["x_embedder.proj.bias"].to(torch.bfloat16)
    path = tmp_path / "ckpt" / "dit.safetensors"
    save_safetensors(sd, path, {"mugv.layout": "mugv", "step": "12"})
    loaded = load_checkpoint(path)
    assert loaded.format == "safetensors"
    assert loaded.metadata["mugv.layout"] == "mugv" and loaded.metadata["step"] == "12"
    assert_same(loaded.state_dict, sd)
    with pytest.raises(TypeError, match="step"):
        save_safetensors(sd, path, {"step": 12})  # type: ignore[dict-item]


def test_safetensors_megatron_shards(ours: dict[str, Tensor], tmp_path: Path) -> None:
    shards = to_megatron(ours, HEADS, tp=4)
    for r, s in enumerate(shards):
        save_safetensors(s, tmp_path / f"mp_rank_{r:02d}.safetensors")
    loaded = [load_state_dict(tmp_path / f"mp_rank_{r:02d}.safetensors") for r in range(4)]
    assert_same(from_megatron(loaded), ours)


@pytest.mark.parametrize(
    "wrap, unwrapped",
    [
        (lambda sd: sd, []),
        (lambda sd: {"model": sd, "iteration": 7, "checkpoint_version": 3.0}, ["model"]),
        (lambda sd: {"state_dict": sd, "epoch": 1}, ["state_dict"]),
        (lambda sd: {"module": sd}, ["module"]),
        (lambda sd: {"module": {"model": sd}}, ["module", "model"]),
    ],
)
def test_pt_loading_unwraps(ours, tmp_path: Path, wrap, unwrapped, caplog) -> None:
    published = to_mugv(ours)
    path = tmp_path / "dit.pt"
    torch.save(wrap(published), path)
    with caplog.at_level(logging.INFO, logger="mugv.models.dit.adapters"):
        loaded = load_checkpoint(path)
    assert loaded.format == "torch"
    assert loaded.unwrapped == unwrapped
    for key in unwrapped:
        assert repr(key) in caplog.text
    assert_same(loaded.state_dict, published)
    assert detect_layout(loaded.state_dict) == "mugv"


def test_pt_loading_strips_ddp_prefix_and_keeps_extra_state(ours, tmp_path: Path) -> None:
    path = tmp_path / "ddp.pt"
    torch.save({"module." + k: v for k, v in to_mugv(ours).items()}, path)
    loaded = load_checkpoint(path)
    assert loaded.stripped_prefix == "module."
    assert_same(loaded.state_dict, to_mugv(ours))

    (shard,) = to_megatron(ours, HEADS, extra_state=True)
    torch.save({"model": shard, "iteration": 1}, path)
    sd = load_state_dict(path)
    assert sd["decoder.layers.0.mlp.linear_fc1._extra_state"] is None
    assert_same(from_megatron(sd), ours)


class _NotAllowed:
    pass


def test_pt_loading_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    torch.save({"weights": {"a": 1}, "note": "x"}, path)
    with pytest.raises(CheckpointLayoutError, match="no wrapper key"):
        load_state_dict(path)
    torch.save({"model": {"w": torch.zeros(1)}, "obj": _NotAllowed()}, path)
    with pytest.raises(CheckpointLayoutError, match="weights_only"):
        load_state_dict(path)
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "absent.pt")
