"""State-dict adapters between our :class:`~mugv.models.vae.model.MUGVideoVAE` and foreign layouts.

Layouts:

* ``"mugv"``: the published MUG-V ``vae.pt``. Spatial half under ``spatial_vae.module.`` in the
  diffusers AutoencoderKL names, temporal half under ``temporal_vae.`` (every 3D conv wrapped, so
  ``.conv.weight``), normalisation constants as the buffers ``shift`` (mean) and ``scale`` (std).
  It also carries tensors the truncated model never uses (:data:`MUGV_UNUSED`): the spatial
  encoder's output head, the spatial decoder's input conv and a training-loss ``logvar``.
* ``"diffusers"``: a diffusers ``AutoencoderKL`` state dict (e.g. the SDXL VAE), loaded into the
  spatial half only, to initialise a new VAE from an image VAE as the report does.
* ``"ours"``: our own names (what our checkpoints store).

Names map one to one and are generated from the model's own keys, so the map always matches
the configuration. Loading compares names and shapes and raises :class:`VAELayoutError` listing
every missing, unexpected and mis-shaped key by name; known-unused keys are dropped and listed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from mugv.errors import MugvError, reading
from mugv.models.load_report import LoadReport
from mugv.models.vae.model import MUGVideoVAE

__all__ = [
    "DIFFUSERS_UNUSED",
    "LoadReport",
    "MUGV_UNUSED",
    "VAELayoutError",
    "detect_layout",
    "diffusers_spatial_name",
    "load_into",
    "mugv_name",
    "read_state_dict",
    "to_mugv",
]

Layout = Literal["ours", "mugv", "diffusers"]

MUGV_SPATIAL_PREFIX = "spatial_vae.module."
# diffusers names of tensors the truncated spatial stage does not use.
DIFFUSERS_UNUSED = (
    "encoder.conv_norm_out.weight",
    "encoder.conv_norm_out.bias",
    "encoder.conv_out.weight",
    "encoder.conv_out.bias",
    "decoder.conv_in.weight",
    "decoder.conv_in.bias",
    "quant_conv.weight",
    "quant_conv.bias",
    "post_quant_conv.weight",
    "post_quant_conv.bias",
)
# Tensors of the published vae.pt that the model never uses (the release built AutoencoderKL
# without quant convs, and `logvar` belongs to a training loss).
MUGV_UNUSED = tuple(MUGV_SPATIAL_PREFIX + n for n in DIFFUSERS_UNUSED if "quant_conv" not in n) + ("logvar",)


class VAELayoutError(MugvError, ValueError):
    """A checkpoint does not fit the model; the message lists every offending key."""


# --------------------------------------------------------------------------------------------
# Name maps
# --------------------------------------------------------------------------------------------

_SPATIAL_RULES = [
    (r"^encoder\.levels\.", "encoder.down_blocks."),
    (r"^decoder\.levels\.", "decoder.up_blocks."),
    (r"\.blocks\.", ".resnets."),
    (r"\.skip\.", ".conv_shortcut."),
    (r"\.downsample\.", ".downsamplers.0.conv."),
    (r"\.upsample\.", ".upsamplers.0.conv."),
    (r"\.mid\.res1\.", ".mid_block.resnets.0."),
    (r"\.mid\.res2\.", ".mid_block.resnets.1."),
    (r"\.mid\.attn\.norm\.", ".mid_block.attentions.0.group_norm."),
    (r"\.mid\.attn\.(q|k|v)\.", r".mid_block.attentions.0.to_\1."),
    (r"\.mid\.attn\.out\.", ".mid_block.attentions.0.to_out.0."),
    (r"^decoder\.norm_out\.", "decoder.conv_norm_out."),
]

_TEMPORAL_RULES = [
    (r"^(encoder|decoder)\.levels\.", r"\1.block_res_blocks."),
    (r"^encoder\.downsample\.", "encoder.conv_blocks."),
    (r"^decoder\.upsample\.", "decoder.conv_blocks."),
    (r"^decoder\.mid_upsample\.", "decoder.upsample_block."),
    (r"^(encoder|decoder)\.mid\.", r"\1.res_blocks."),
    (r"\.skip$", ".conv3"),
    (r"^(encoder|decoder)\.norm_out$", r"\1.norm1"),
    (r"^encoder\.conv_out$", "encoder.conv2"),
    (r"^decoder\.conv_in$", "decoder.conv1"),
]


def _apply(rules: list[tuple[str, str]], name: str) -> str:
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def diffusers_spatial_name(name: str) -> str:
    """Our spatial-stage name (without the ``spatial.`` prefix) -> diffusers AutoencoderKL name."""
    return _apply(_SPATIAL_RULES, name)


def _temporal_name(name: str) -> str:
    module, param = name.rsplit(".", 1)
    last = module.rsplit(".", 1)[-1]
    renamed = _apply(_TEMPORAL_RULES, module)
    # The release wraps every 3D conv in a module, so its tensors sit one level deeper.
    return f"{renamed}.{param}" if last.startswith("norm") else f"{renamed}.conv.{param}"


def mugv_name(name: str) -> str:
    """Our state-dict name -> its name in the published ``vae.pt``."""
    if name.startswith("spatial."):
        return MUGV_SPATIAL_PREFIX + diffusers_spatial_name(name.removeprefix("spatial."))
    if name.startswith("temporal."):
        return "temporal_vae." + _temporal_name(name.removeprefix("temporal."))
    top = {"latent_mean": "shift", "latent_std": "scale"}
    if name not in top:
        raise VAELayoutError(f"no vae.pt name for our key {name!r}")
    return top[name]


def _unused_fill(name: str, reference: Mapping[str, Tensor], cfg_channels: int) -> Tensor:
    """Shape-correct neutral stand-ins for the release's unused tensors (zeros; norm weights 1)."""
    c = cfg_channels
    spatial_latent = 4  # the released AutoencoderKL has 4 latent channels
    shapes = {
        "encoder.conv_norm_out.weight": (c,),
        "encoder.conv_norm_out.bias": (c,),
        "encoder.conv_out.weight": (2 * spatial_latent, c, 3, 3),
        "encoder.conv_out.bias": (2 * spatial_latent,),
        "decoder.conv_in.weight": (c, spatial_latent, 3, 3),
        "decoder.conv_in.bias": (c,),
    }
    if name == "logvar":
        return torch.zeros(())
    short = name.removeprefix(MUGV_SPATIAL_PREFIX)
    dtype = next(iter(reference.values())).dtype
    fill = torch.ones if short == "encoder.conv_norm_out.weight" else torch.zeros
    return fill(shapes[short], dtype=dtype)


def to_mugv(state_dict: Mapping[str, Tensor], *, fill_unused: bool = True) -> dict[str, Tensor]:
    """Our state dict -> the published ``vae.pt`` layout. With `fill_unused`, the release's
    unused tensors are added as neutral values so the release's strict loader accepts it."""
    out = {mugv_name(k): v for k, v in state_dict.items()}
    if fill_unused:
        channels = state_dict["spatial.encoder.mid.res1.conv1.weight"].shape[0]
        for name in MUGV_UNUSED:
            out[name] = _unused_fill(name, state_dict, channels)
    return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def detect_layout(state_dict: Mapping[str, Tensor]) -> Layout:
    keys = list(state_dict)
    if any(k.startswith(("spatial_vae.", "temporal_vae.")) for k in keys):
        return "mugv"
    if any(k.startswith(("spatial.", "temporal.")) for k in keys):
        return "ours"
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return "diffusers"
    raise VAELayoutError(f"cannot tell the VAE checkpoint layout from its keys; first keys: {sorted(keys)[:6]}")


def load_into(
    model: MUGVideoVAE, state_dict: Mapping[str, Tensor], layout: Layout | Literal["auto"] = "auto"
) -> LoadReport:
    """Load a checkpoint of any layout into `model`, strictly (``"diffusers"``: the spatial half
    only; the rest keeps its values). Raises :class:`VAELayoutError` with the full report."""
    if layout == "auto":
        layout = detect_layout(state_dict)
    ours = model.state_dict()
    if layout == "ours":
        target = {k: k for k in ours}
        unused_names: tuple[str, ...] = ()
    elif layout == "mugv":
        target = {mugv_name(k): k for k in ours}
        unused_names = MUGV_UNUSED
    elif layout == "diffusers":
        target = {diffusers_spatial_name(k.removeprefix("spatial.")): k for k in ours if k.startswith("spatial.")}
        unused_names = DIFFUSERS_UNUSED
    else:
        raise ValueError(f"unknown layout {layout!r}; use 'ours', 'mugv', 'diffusers' or 'auto'")

    report = LoadReport(layout=layout, subject="VAE checkpoint", error=VAELayoutError, dropped_why="unused by the model")
    converted: dict[str, Tensor] = {}
    for name, tensor in state_dict.items():
        if name in target:
            expected = tuple(ours[target[name]].shape)
            if tuple(tensor.shape) != expected:
                report.shape_mismatches[name] = (expected, tuple(tensor.shape))
            converted[target[name]] = tensor
        elif name in unused_names:
            report.dropped.append(name)
        else:
            report.unexpected.append(name)
    report.missing = sorted(theirs for theirs, mine in target.items() if mine not in converted)
    report.raise_for_errors()
    model.load_state_dict(converted, strict=layout != "diffusers")
    return report


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pt`` file (loaded with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VAE checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        with reading(path, "VAE weights"):
            return load_file(str(path))
    with reading(path, "VAE weights"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise VAELayoutError(f"{path}: not a state dict of tensors")
    return obj
