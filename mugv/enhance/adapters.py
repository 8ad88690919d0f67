"""The release's enhancer files -> diffusers' and transformers' modules (ENHANCER-SPEC §5, §8).

* `dit_i2v.safetensors`: Wan-native names (827 tensors at full size). The condition branch
  `patch_embedding2` is folded into one 32-channel patch embedding: both convolutions share
  kernel and stride, so pe(x) + pe2(y) == conv([x; y], [W_pe | W_pe2]) + (b_pe + b_pe2).
  Training starts the branch at zero on a Wan2.1 T2V DiT (no `patch_embedding2`):
  `load_dit(..., zero_condition=True)`, the family's `load_init_weights`.
* `pytorch_model.bin` (the "cond" checkpoint): its keys lose their first five characters
  ("pipe.") as the release's loader drops them; `dit.*.lora_{A,B}.default.weight` pairs are
  merged exactly in float32 (W + alpha/r * B @ A) and any other `dit.*` tensor replaces the base
  weight (the release loads the file non-strictly over the LoRA-injected pipeline).
* umT5 `.pth` (Wan's T5 names) -> `UMT5EncoderModel`; Wan2.1 VAE `.pth` -> `AutoencoderKLWan`.

Every `.bin` / `.pth` is read with `torch.load(weights_only=True)`; a missing, unexpected or
mis-shaped key is an `EnhancerWeightsError` naming it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from mugv.errors import MugvError, reading

StateDict = dict[str, Tensor]
LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<half>[AB])(?:\.default)?\.weight")
PREFIX_LENGTH = 5  # the release's loader drops `key[:5]`, i.e. "pipe."
log = logging.getLogger(__name__)


class EnhancerWeightsError(MugvError, ValueError):
    """An enhancer weight file that does not fit the model it is loaded into (names the keys)."""


def read_torch_file(path: str | Path, what: str) -> StateDict:
    """A `.pth` / `.bin` state dict, read without running any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise EnhancerWeightsError(f"{what} not found: {path}")
    with reading(path, what):
        try:  # memory-mapped, so an 11 GB text encoder is not copied through RAM twice
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("model_state"), Mapping):
        state = state["model_state"]  # some Wan VAE files wrap their weights (diffsynth unwraps it too)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise EnhancerWeightsError(f"{path}: {what} is not a state dict of tensors")
    return dict(state)


def read_safetensors(path: str | Path, what: str) -> StateDict:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise EnhancerWeightsError(f"{what} not found: {path}")
    with reading(path, what):
        return load_file(str(path))


def read_weights(path: str | Path) -> StateDict:
    """Weights of either family: safetensors by suffix, else a torch file."""
    if str(path).endswith(".safetensors"):
        return read_safetensors(path, "weights")
    return read_torch_file(path, "weights")


def _listed(names, limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def load_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load `state` into `model`, every key present and of the right shape; values are cast to
    the model's dtypes. Raises one error naming the missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    problems = []
    if missing := set(expected) - set(state):
        problems.append(f"missing {len(missing)} keys: {_listed(missing)}")
    if unexpected := set(state) - set(expected):
        problems.append(f"unexpected {len(unexpected)} keys: {_listed(unexpected)}")
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {_listed(shapes, 4)}")
    if problems:
        raise EnhancerWeightsError(f"{source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


# ---------------------------------------------------------------- Wan DiT
_DIT_TOP = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}
# Within a block. Wan's norm3 (the cross-attention's affine norm) is diffusers' norm2; Wan's norm2
# (the FFN's, no parameters) is diffusers' norm3.
_DIT_BLOCK = {
    "modulation": "scale_shift_table",
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    **{f"{attn}.{w}": f"{new}.to_{w}" for attn, new in (("self_attn", "attn1"), ("cross_attn", "attn2"))
       for w in "qkv"},
    **{f"{attn}.o": f"{new}.to_out.0" for attn, new in (("self_attn", "attn1"), ("cross_attn", "attn2"))},
    **{f"{attn}.{n}": f"{new}.{n}" for attn, new in (("self_attn", "attn1"), ("cross_attn", "attn2"))
       for n in ("norm_q", "norm_k")},
}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")


def wan_dit_name(key: str) -> str | None:
    """A Wan-native DiT key -> its diffusers `WanTransformer3DModel` name; None if unknown."""
    if key == "head.modulation":
        return "scale_shift_table"
    if m := re.fullmatch(r"blocks\.(\d+)\.modulation", key):
        return f"blocks.{m[1]}.scale_shift_table"
    if m := _BLOCK_KEY.fullmatch(key):
        new = _DIT_BLOCK.get(m[2])
        return f"blocks.{m[1]}.{new}.{m[3]}" if new else None
    module, _, leaf = key.rpartition(".")
    new = _DIT_TOP.get(module)
    return f"{new}.{leaf}" if new and leaf in ("weight", "bias") else None


def fold_condition_branch(state: StateDict) -> StateDict:
    """`patch_embedding` + `patch_embedding2` -> one patch embedding over [latents; condition]."""
    state = dict(state)
    if "patch_embedding2.weight" not in state or "patch_embedding2.bias" not in state:
        raise EnhancerWeightsError("the DiT weights have no condition branch (patch_embedding2.weight/bias): "
                                   "not the enhancer's dit_i2v.safetensors")
    state["patch_embedding.weight"] = torch.cat([state["patch_embedding.weight"],
                                                 state.pop("patch_embedding2.weight")], dim=1)
    state["patch_embedding.bias"] = state["patch_embedding.bias"] + state.pop("patch_embedding2.bias")
    return state


def with_zero_condition_branch(state: Mapping[str, Tensor], channels: int) -> StateDict:
    """A T2V DiT's weights with a `patch_embedding2` of zeros over `channels` condition channels:
    folded, the model computes what the T2V model does, whatever the condition."""
    state = dict(state)
    weight = state["patch_embedding.weight"]
    state["patch_embedding2.weight"] = weight.new_zeros(weight.shape[0], channels, *weight.shape[2:])
    state["patch_embedding2.bias"] = weight.new_zeros(weight.shape[0])
    return state


def dit_to_diffusers(state: Mapping[str, Tensor], condition_branch: bool = True) -> StateDict:
    """Wan-native DiT weights (LoRA already merged) -> diffusers names; unknown keys raise."""
    state = fold_condition_branch(dict(state)) if condition_branch else dict(state)
    out, unknown = {}, []
    for key, value in state.items():
        name = wan_dit_name(key)
        if name is None:
            unknown.append(key)
        else:
            out[name] = value
    if unknown:
        raise EnhancerWeightsError(f"DiT weights: {len(unknown)} keys with no place in the Wan DiT: {_listed(unknown)}")
    return out


def detect_dit_layout(state: Mapping[str, Tensor]) -> str:
    return "wan" if "patch_embedding2.weight" in state or "head.head.weight" in state else "diffusers"


def load_dit(model: nn.Module, state: Mapping[str, Tensor], layout: str = "auto", *,
             zero_condition: bool = False) -> None:
    """Load Wan-native (the release's dit_i2v.safetensors, LoRA merged) or diffusers-named
    weights into a `WanTransformer3DModel` built by the `wan-dit` family. With `zero_condition`,
    weights without a condition branch (a Wan2.1 T2V DiT's: no `patch_embedding2`, a patch
    embedding over the latent channels only) load into a model with one too, the branch at zero."""
    if layout == "auto":
        layout = detect_dit_layout(state)
    if layout not in ("wan", "diffusers"):
        raise EnhancerWeightsError(f"unknown Wan DiT layout {layout!r}; use 'wan', 'diffusers' or 'auto'")
    # a training step folder also holds the non-persistent buffers (the RoPE tables), which the model rebuilds
    rebuilt = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    state = {k: v for k, v in state.items() if k not in rebuilt}
    channels = model.config.in_channels - model.config.out_channels
    embedding = state.get("patch_embedding.weight")
    if (zero_condition and channels and "patch_embedding2.weight" not in state and embedding is not None
            and embedding.shape[1] == model.config.out_channels):
        log.warning("the DiT weights have no condition branch (a T2V DiT's): its %d input channels start at zero",
                    channels)
        state = with_zero_condition_branch(state, channels)
        if layout == "diffusers":  # the Wan layout folds it below, with the rest of its names
            state = fold_condition_branch(state)
    if layout == "wan":
        state = dit_to_diffusers(state, condition_branch=channels > 0)
    load_strict(model, state, f"DiT weights ({layout} layout)")


def split_condition_checkpoint(cond: Mapping[str, Tensor], source: str = "condition checkpoint"
                               ) -> tuple[dict[str, dict[str, Tensor]], StateDict]:
    """The release's `pytorch_model.bin` -> (LoRA pairs by Wan module name, full-tensor
    overrides by Wan name). Keys lose their first five characters as in predict.py; only `dit.*`
    keys can apply to the DiT, so anything else is reported."""
    pairs: dict[str, dict[str, Tensor]] = {}
    overrides: StateDict = {}
    foreign = []
    for key, value in cond.items():
        name = key[PREFIX_LENGTH:]
        if not name.startswith("dit."):
            foreign.append(key)
            continue
        name = name[len("dit."):]
        if m := LORA_KEY.fullmatch(name):
            pairs.setdefault(m["module"], {})[m["half"]] = value
        else:  # a full tensor (PEFT keeps the wrapped layer's own weight under `.base_layer.`)
            overrides[name.replace(".base_layer.", ".")] = value
    if foreign:
        raise EnhancerWeightsError(f"{source}: {len(foreign)} keys outside the DiT (expected 'pipe.dit.*'): "
                                   f"{_listed(foreign)}")
    halves = [f"{m}.lora_{'B' if 'A' in ab else 'A'}" for m, ab in pairs.items() if len(ab) != 2]
    if halves:
        raise EnhancerWeightsError(f"{source}: LoRA pairs without their other half: {_listed(halves)}")
    return pairs, overrides


def merge_condition_checkpoint(base: Mapping[str, Tensor], cond: Mapping[str, Tensor], lora_alpha: float,
                               source: str = "condition checkpoint") -> StateDict:
    """Wan-native base DiT weights with the release's LoRA merged (float32 arithmetic, exact:
    W + alpha/r * B @ A, r read from the file) and its full-tensor overrides applied. The
    result keeps float32 for the merged and overridden tensors."""
    pairs, overrides = split_condition_checkpoint(cond, source)
    out = dict(base)
    unknown = sorted(set(overrides) - set(base)) + sorted(f"{m}.weight" for m in pairs if f"{m}.weight" not in base)
    if unknown:
        raise EnhancerWeightsError(f"{source}: {len(unknown)} keys match no DiT weight: {_listed(unknown)}")
    for name, value in overrides.items():
        if value.shape != base[name].shape:
            raise EnhancerWeightsError(f"{source}: {name} is {tuple(value.shape)}, the DiT's is {tuple(base[name].shape)}")
        out[name] = value.float()
    for module, ab in pairs.items():
        a, b, weight = ab["A"].float(), ab["B"].float(), out[f"{module}.weight"].float()
        rank = a.shape[0]
        if b.shape[1] != rank or (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise EnhancerWeightsError(f"{source}: LoRA of {module} is A {tuple(a.shape)}, B {tuple(b.shape)}; "
                                       f"its weight is {tuple(weight.shape)}")
        out[f"{module}.weight"] = weight + (lora_alpha / rank) * (b @ a)
    return out


def lora_rank(cond: Mapping[str, Tensor]) -> int | None:
    """The rank of the release checkpoint's LoRA (None when it holds none)."""
    pairs, _ = split_condition_checkpoint(cond)
    ranks = {ab["A"].shape[0] for ab in pairs.values()}
    if len(ranks) > 1:
        raise EnhancerWeightsError(f"condition checkpoint mixes LoRA ranks {sorted(ranks)}")
    return ranks.pop() if ranks else None


# ---------------------------------------------------------------- umT5 text encoder
_UMT5_BLOCK = {
    "norm1": "layer.0.layer_norm",
    **{f"attn.{w}": f"layer.0.SelfAttention.{w}" for w in "qkvo"},
    "pos_embedding.embedding": "layer.0.SelfAttention.relative_attention_bias",
    "norm2": "layer.1.layer_norm",
    "ffn.gate.0": "layer.1.DenseReluDense.wi_0",
    "ffn.fc1": "layer.1.DenseReluDense.wi_1",
    "ffn.fc2": "layer.1.DenseReluDense.wo",
}


def umt5_to_transformers(state: Mapping[str, Tensor]) -> StateDict:
    """Wan's umT5 encoder `.pth` names -> `transformers.UMT5EncoderModel` names."""
    out, unknown = {}, []
    for key, value in state.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif (m := re.fullmatch(r"blocks\.(\d+)\.(.+)\.weight", key)) and m[2] in _UMT5_BLOCK:
            out[f"encoder.block.{m[1]}.{_UMT5_BLOCK[m[2]]}.weight"] = value
        else:
            unknown.append(key)
    if unknown:
        raise EnhancerWeightsError(f"umT5 weights: {len(unknown)} keys with no place in umT5: {_listed(unknown)}")
    return out


def umt5_config(state: Mapping[str, Tensor]):
    """The `UMT5Config` of Wan-named umT5 weights, read from their shapes (umT5-XXL: 24 layers,
    64 heads of 64, d_ff 10240, vocab 256384)."""
    from transformers import UMT5Config

    try:
        vocab, dim = state["token_embedding.weight"].shape
        buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        inner = state["blocks.0.attn.q.weight"].shape[0]
        ffn = state["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as exc:
        raise EnhancerWeightsError(f"umT5 weights have no {exc.args[0]}: not Wan's umT5 encoder .pth") from None
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    return UMT5Config(vocab_size=vocab, d_model=dim, d_kv=inner // heads, d_ff=ffn, num_layers=layers,
                      num_heads=heads, relative_attention_num_buckets=buckets, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                      is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1)


def build_umt5(state: Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(state))
    converted = {k: v.to(dtype) for k, v in umt5_to_transformers(state).items()}
    expected = set(model.state_dict())
    problems = [f"missing: {_listed(expected - set(converted))}"] if expected - set(converted) else []
    if set(converted) - expected:
        problems.append(f"unexpected: {_listed(set(converted) - expected)}")
    if problems:
        raise EnhancerWeightsError("umT5 weights do not fit UMT5EncoderModel: " + "; ".join(problems))
    model.load_state_dict(converted, strict=True, assign=True)
    model.tie_weights()
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------- Wan VAE
def vae_to_diffusers(state: Mapping[str, Tensor]) -> StateDict:
    """Wan2.1 VAE `.pth` names -> `AutoencoderKLWan` names (diffusers' own converter)."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    return convert_wan_vae_to_diffusers(dict(state))


def detect_vae_layout(state: Mapping[str, Tensor]) -> str:
    return "wan" if "encoder.conv1.weight" in state else "diffusers"


def load_vae(model: nn.Module, state: Mapping[str, Tensor], layout: str = "auto") -> None:
    if layout == "auto":
        layout = detect_vae_layout(state)
    converters: dict[str, Callable[[Mapping[str, Tensor]], StateDict]] = {"wan": vae_to_diffusers, "diffusers": dict}
    if layout not in converters:
        raise EnhancerWeightsError(f"unknown Wan VAE layout {layout!r}; use 'wan', 'diffusers' or 'auto'")
    load_strict(model, converters[layout](state), f"VAE weights ({layout} layout)")
