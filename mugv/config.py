"""One typed configuration tree for every mugv run.

A run is described by a `RunConfig` dataclass tree. It is built from a TOML profile, named (a
user's own `./configs/NAME.toml`, else the one shipped in `mugv/configs/`) or given as a path,
which may `extends` another profile, plus dotted command-line overrides such as
`--optim.lr=1e-4`. Every key is checked against the dataclasses: an unknown or misspelt key is an
error naming the key and the closest valid one. Defaults live in the dataclasses only.

A section whose dataclass has a `from_preset(name)` classmethod (the model) takes `preset = "10b"`
first and then applies its other keys on top, so `--model.preset=2b --model.depth=4` works.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from mugv.enhance.config import WanDiTConfig
from mugv.errors import ConfigError  # re-exported: commands and stages raise it from here
from mugv.models.dit.config import DiTConfig

T = TypeVar("T")

# Where profile names are looked up, first match wins: the working directory's own configs/, then
# the profiles shipped as package data (found the same way in wheel and editable installs).
PROFILE_DIRS = (Path("configs"), Path(str(importlib.resources.files("mugv") / "configs")))


class _CliText(str):
    """A value typed on the command line: parsed according to the field it lands in."""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

# The release's sampling defaults, for every sampler mugv configures (generation, training samples, the demo).
DEFAULT_STEPS = 25
DEFAULT_CFG_SCALE = 4.0
# What the VAE computes in at inference (encode, generate, training's samples); what each
# does: mugv/models/vae/precision.py.
VAEPrecision = Literal["auto", "fp32", "tf32", "bf16"]
VAE_PRECISIONS: tuple[str, ...] = typing.get_args(VAEPrecision)

NEGATIVE_PROMPT = (
    "ugly, blurry, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, "
    "fewer digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, "
    "signature, watermark, username, blurry"
)


@dataclass
class FlowConfig:
    """Rectified-flow objective and sampler (MUGV-SPEC section 2)."""

    num_train_timesteps: int = 1000
    timestep_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: bool = True
    base_resolution: int = 512 * 512
    # "latent" uses the sample's latent frame count, as inference does. The release trained with
    # a fixed 10 ("fixed"), a train/inference mismatch kept available for exact reproduction.
    shift_frames: Literal["latent", "fixed"] = "latent"
    shift_fixed_frames: int = 10
    image_loss_weight: float = 0.3

    def validate(self) -> None:
        _require(self.logit_std > 0, "flow.logit_std", self.logit_std, "must be > 0")
        _require(self.base_resolution > 0, "flow.base_resolution", self.base_resolution, "must be > 0")


@dataclass
class DataConfig:
    """Where training samples come from. `synthetic` draws a fixed, seeded pool of latents;
    `shards` reads latent + text shards written by `mugv encode` (see docs/data.md)."""

    source: Literal["synthetic", "shards", "pairs"] = "synthetic"
    # Samples per batch; with `batching = "cost"` this is the count for the costliest bucket and
    # cheaper buckets take more samples, up to the same estimated compute.
    batch_size: int = 2
    num_samples: int = 64
    latent_frames: int = 3
    latent_height: int = 8
    latent_width: int = 8
    text_tokens: int = 16
    fps: float = 24.0
    i2v_prob: float = 0.5
    caption_dropout: float = 0.1
    num_workers: int = 0
    # --- shards (source = "shards") ---
    shards: str = ""  # folder or fsspec URL of a shard set
    cache_dir: str = ""  # local copies of remote shards (empty: ~/.cache/mugv/shards)
    batching: Literal["cost", "fixed"] = "cost"
    max_batch_size: int = 0  # cap for cheap buckets in cost batching (0: 4 x batch_size)
    balance: bool = True  # give the ranks of a step batches of nearly equal estimated compute
    image_fraction: float = -1.0  # share of samples that are images; negative follows the data
    prefetch: int = 4  # batches loaded ahead in the background (0: load in the training thread)
    pin_memory: bool = True  # pin batches when a GPU exists
    strict: bool = False  # a bad shard stops the run instead of being reported and skipped
    verify_checksums: bool = True
    # --- (degraded, clean) latent pairs of an enhancer (source = "pairs"; mugv.data.pairs) ---
    pairs: str = ""  # folder written by `mugv enhancer pairs`

    def validate(self) -> None:
        _require(self.batch_size >= 1, "data.batch_size", self.batch_size, "must be >= 1")
        _require(self.max_batch_size >= 0, "data.max_batch_size", self.max_batch_size, "must be >= 0")
        _require(self.prefetch >= 0, "data.prefetch", self.prefetch, "must be >= 0")
        _require(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")
        _require(self.image_fraction <= 1.0, "data.image_fraction", self.image_fraction, "must be <= 1 (negative: follow the data)")
        _require(self.source != "shards" or bool(self.shards), "data.shards", self.shards,
                 "must name a shard folder or URL when data.source = 'shards'")
        _require(self.source != "pairs" or bool(self.pairs), "data.pairs", self.pairs,
                 "must name a pair folder (`mugv enhancer pairs`) when data.source = 'pairs'")
        _require(self.num_samples >= 1, "data.num_samples", self.num_samples, "must be >= 1")
        for name in ("latent_frames", "latent_height", "latent_width", "text_tokens"):
            _require(getattr(self, name) >= 1, f"data.{name}", getattr(self, name), "must be >= 1")
        for name in ("i2v_prob", "caption_dropout"):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, f"data.{name}", value, "must be within [0, 1]")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    min_lr_ratio: float = 0.0

    def validate(self) -> None:
        _require(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "optim.min_lr_ratio", self.min_lr_ratio, "must be within [0, 1]")


@dataclass
class TrainConfig:
    steps: int = 100
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Torch's deterministic algorithms and fixed cuDNN / cuBLAS choices: bit-identical GPU runs for
    # some speed. CPU runs are bit-identical without it (docs/training.md, "Reproducibility").
    deterministic: bool = False
    # What the model is trained on: a name in mugv.train.objectives.OBJECTIVES ("flow": rectified flow).
    objective: str = "flow"
    # The fused attention kernel to prefer on CUDA: auto (torch's order), cudnn, flash or efficient
    # (mugv.models.attention; the unfused math kernel is never picked by a named choice).
    attention_backend: Literal["auto", "cudnn", "flash", "efficient"] = "auto"
    # Parameters to keep fixed, as name patterns (e.g. "y_embedder.*" for the text embedder).
    freeze: list[str] = field(default_factory=list)

    def validate(self) -> None:
        _require(self.steps >= 0, "train.steps", self.steps, "must be >= 0")


@dataclass
class ParallelConfig:
    """Degrees of each parallel axis; -1 for dp_shard means 'whatever the world size leaves'."""

    dp_replicate: int = 1
    dp_shard: int = -1
    tp: int = 1
    cp: int = 1
    pp: int = 1
    # Of the cp degree, this many ranks form the ring (ring attention); the rest split heads
    # (Ulysses all-to-all): cp = cp_ring x ulysses. cp_ring = cp is pure ring attention.
    cp_ring: int = 1
    activation_checkpointing: Literal["none", "attention", "selective", "full"] = "none"
    compile: bool = False
    # FSDP2 mixed precision: dtype of the unsharded compute parameters and of the gradient
    # reduction; the sharded master weights and the optimizer state stay float32.
    param_dtype: Literal["fp32", "bf16"] = "fp32"
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    # Pipeline: schedule, microbatches per step, stages per pp rank (interleaved schedules use > 1).
    pp_schedule: Literal["1f1b", "gpipe", "interleaved_1f1b"] = "1f1b"
    pp_microbatches: int = 2
    pp_stages_per_rank: int = 1

    def validate(self) -> None:
        for name in ("dp_replicate", "tp", "cp", "pp", "cp_ring", "pp_microbatches", "pp_stages_per_rank"):
            _require(getattr(self, name) >= 1, f"parallel.{name}", getattr(self, name), "must be >= 1")
        _require(self.dp_shard == -1 or self.dp_shard >= 1, "parallel.dp_shard", self.dp_shard, "must be -1 or >= 1")
        _require(self.cp % self.cp_ring == 0, "parallel.cp_ring", self.cp_ring, f"must divide parallel.cp = {self.cp}")
        _require(
            self.pp == 1 or (self.pp_schedule == "interleaved_1f1b") == (self.pp_stages_per_rank > 1),
            "parallel.pp_stages_per_rank", self.pp_stages_per_rank,
            f"must be > 1 exactly when parallel.pp_schedule = 'interleaved_1f1b' (got {self.pp_schedule!r})",
        )


@dataclass
class CheckpointConfig:
    dir: str = ""  # empty: <run_dir>/checkpoints
    every_steps: int = 0  # 0: only at the end of training
    keep_last: int = 3
    resume: str = "auto"  # "auto" (latest in dir), "none", or a checkpoint directory
    init_weights: str = ""  # start from these weights (ours .safetensors or MUG-V dit.pt; a Wan DiT for wan-dit)
    # The layout init_weights are in: "auto" (told from their key names) or one of the model family's
    # layouts (MUG-DiT: mugv, megatron; wan-dit: wan, diffusers); checked by the trainer, which knows the families.
    init_layout: str = "auto"

    def validate(self) -> None:
        _require(self.every_steps >= 0, "checkpoint.every_steps", self.every_steps, "must be >= 0")
        _require(self.keep_last >= 1, "checkpoint.keep_last", self.keep_last, "must be >= 1")


@dataclass
class LoggingConfig:
    every_steps: int = 10
    tensorboard: bool = True
    progress: bool = True
    # Peak dense bf16 TFLOP/s of one device for MFU; 0 looks the device up (unknown devices: no MFU).
    peak_tflops: float = 0.0

    def validate(self) -> None:
        _require(self.every_steps >= 1, "logging.every_steps", self.every_steps, "must be >= 1")


@dataclass
class ValidationConfig:
    """Loss on held-out data at fixed noise levels with fixed noise (comparable across runs)."""

    every_steps: int = 0  # 0: no validation
    shards: str = ""  # held-out shard set; empty with data.source = "synthetic": a held-out synthetic pool
    batches: int = 4
    sigmas: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])

    def validate(self) -> None:
        _require(self.every_steps >= 0, "validation.every_steps", self.every_steps, "must be >= 0")
        _require(self.batches >= 1, "validation.batches", self.batches, "must be >= 1")
        _require(all(0.0 < s < 1.0 for s in self.sigmas) and bool(self.sigmas), "validation.sigmas", self.sigmas,
                 "must be noise levels within (0, 1)")


@dataclass
class EMAConfig:
    """Online EMA (`decay` > 0) and EDM2 power-function averages for post-hoc EMA."""

    decay: float = 0.0  # 0: off; e.g. 0.9999
    power_sigma_rels: list[float] = field(default_factory=list)  # e.g. [0.05, 0.10]; empty: off
    snapshot_every: int = 0  # steps between power-EMA snapshots (for `mugv ema reconstruct`)

    def validate(self) -> None:
        _require(0.0 <= self.decay < 1.0, "ema.decay", self.decay, "must be within [0, 1)")
        _require(all(0 < s < 0.28 for s in self.power_sigma_rels), "ema.power_sigma_rels", self.power_sigma_rels,
                 "must be within (0, 0.28)")
        _require(not self.power_sigma_rels or self.snapshot_every > 0, "ema.snapshot_every", self.snapshot_every,
                 "must be > 0 when ema.power_sigma_rels is set")


@dataclass
class LoRAConfig:
    rank: int = 0  # 0: no LoRA (full fine-tuning)
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: [
        "blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.cross_attn.q_linear", "blocks.*.cross_attn.kv_linear",
        "blocks.*.cross_attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2",
    ])
    # Modules trained in full beside the adapters (patterns of module names, matched as `targets` are) and
    # saved with them: the enhancer's patch embedding, which holds its condition branch (configs/enhancer-lora.toml).
    train_modules: list[str] = field(default_factory=list)

    def validate(self) -> None:
        _require(self.rank >= 0, "lora.rank", self.rank, "must be >= 0")
        _require(not self.rank or bool(self.targets), "lora.targets", self.targets, "must name linear layers to adapt")
        _require(self.rank or not self.train_modules, "lora.train_modules", self.train_modules,
                 "needs lora.rank > 0 (without LoRA every module trains in full)")


@dataclass
class PreferenceConfig:
    """Preference optimisation: train.objective = "dpo" (pairs) or "kto" (pass/fail labels); docs/preference.md."""

    # Inverse temperature of the implicit reward, constant over training (a time-dependent beta reward-hacks).
    # The DPO logit is beta/2 x a difference of per-sample velocity errors (around 1e-3 apart): watch reward_margin.
    beta: float = 2500.0
    lambda_d: float = 1.0  # KTO weight of desirable samples
    lambda_u: float = 1.0  # KTO weight of undesirable samples
    sft_weight: float = 0.0  # weight of the flow loss on the preferred / desirable samples (a regulariser)
    # auto: LoRA adapters off when lora.rank > 0 (and no lora.train_modules), else a frozen copy;
    # precomputed: recorded in the data
    reference: Literal["auto", "adapters_off", "frozen_copy", "precomputed"] = "auto"
    # frozen_copy only: keep the copy's block weights in CPU memory and stream each block to the
    # device for its forward (sharded: FSDP2's CPUOffloadPolicy); saves one model's weights of device memory
    reference_offload: bool = False

    def validate(self) -> None:
        _require(self.beta > 0, "preference.beta", self.beta, "must be > 0")
        _require(self.lambda_d >= 0, "preference.lambda_d", self.lambda_d, "must be >= 0")
        _require(self.lambda_u >= 0, "preference.lambda_u", self.lambda_u, "must be >= 0")
        _require(self.sft_weight >= 0, "preference.sft_weight", self.sft_weight, "must be >= 0")


@dataclass
class EnhancerTrainConfig:
    """The enhancer's objective (train.objective = "enhancer_flow"): the degraded latents are
    noised to a sigma drawn uniformly from `sigma_range`, around the inference sigma (0.3)."""

    sigma_range: tuple[float, float] = (0.2, 0.4)

    def validate(self) -> None:
        low, high = self.sigma_range
        _require(0 < low <= high <= 1, "enhancer.sigma_range", list(self.sigma_range),
                 "must satisfy 0 < low <= high <= 1")


@dataclass
class SamplingConfig:
    """Render fixed prompts with the weights being trained every `every_steps` steps."""

    every_steps: int = 0  # 0: off
    prompts: list[str] = field(default_factory=list)
    vae: str = ""  # VAE weights to decode with
    vae_preset: str = "tiny"
    vae_precision: VAEPrecision = "auto"  # auto, fp32, tf32, bf16 (mugv/models/vae/precision.py)
    text_encoder: Literal["minilm", "t5"] = "minilm"
    text_encoder_path: str = ""
    height: int = 64
    width: int = 64
    frames: int = 17
    fps: float = 12.0
    steps: int = DEFAULT_STEPS
    cfg_scale: float = DEFAULT_CFG_SCALE

    def validate(self) -> None:
        if self.every_steps:
            _require(bool(self.prompts), "sampling.prompts", self.prompts, "must list prompts when sampling is on")
            _require(bool(self.vae), "sampling.vae", self.vae, "must name VAE weights when sampling is on")


@dataclass
class StageConfig:
    """One curriculum stage. Unset (None) values inherit the run's `data` / `optim` settings.

    The stage ends at the first end condition met: `steps`, `samples`, or a validation-loss
    plateau (no improvement larger than `plateau_min_delta` for `plateau_patience` evaluations).
    """

    name: str = "stage"
    steps: int = 0
    samples: int = 0
    plateau_patience: int = 0
    plateau_min_delta: float = 0.0
    # Share of image samples, annealed linearly from the first to the second value over the stage.
    image_fraction: tuple[float, float] | None = None
    buckets: list[str] = field(default_factory=list)  # allowed buckets "FRAMESxHEIGHTxWIDTH"; empty: all
    first_frame_prob: float | None = None
    last_frame_prob: float = 0.0
    continuation_prob: float = 0.0
    caption_dropout: float | None = None
    lr: float | None = None
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = 0.0

    def validate(self) -> None:
        key = f"stages[{self.name}]"
        _require(self.steps > 0 or self.samples > 0 or self.plateau_patience > 0, key, self.name,
                 "needs an end condition: steps, samples or plateau_patience")
        if self.schedule != "constant":
            _require(self.steps > 0, f"{key}.schedule", self.schedule, "needs the stage's steps to decay over")
        if self.image_fraction is not None:
            _require(all(0.0 <= v <= 1.0 for v in self.image_fraction), f"{key}.image_fraction",
                     self.image_fraction, "must be within [0, 1]")
        probs = [self.first_frame_prob or 0.0, self.last_frame_prob, self.continuation_prob]
        _require(sum(probs) <= 1.0, key, probs, "mask probabilities must add up to at most 1")


@dataclass
class RunConfig:
    name: str = "debug"
    run_dir: str = ""  # empty: runs/<name>
    # The trained model; `model.family` picks its config class (MUG-DiT unless it says otherwise).
    model: DiTConfig | WanDiTConfig = field(default_factory=DiTConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    enhancer: EnhancerTrainConfig = field(default_factory=EnhancerTrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # A curriculum: the trainer moves through these in order; empty trains one stage of train.steps.
    stages: list[StageConfig] = field(default_factory=list)

    def validate(self) -> None:
        _require(self.data.source != "pairs" or self.model.family == "wan-dit", "data.source", self.data.source,
                 f"feeds an enhancer: it needs model.family = 'wan-dit', not {self.model.family!r}")
        _require(
            self.data.text_tokens <= self.model.max_text_tokens,
            "data.text_tokens",
            self.data.text_tokens,
            f"exceeds model.max_text_tokens = {self.model.max_text_tokens}",
        )

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else self.resolved_run_dir / "checkpoints"


def _require(ok: bool, key: str, value: Any, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} {message}")


# --------------------------------------------------------------------------------------------
# Building a tree from dictionaries
# --------------------------------------------------------------------------------------------


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every valid dotted key of a dataclass tree, sections included."""
    keys = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        ftype = typing.get_type_hints(cls)[f.name]
        members = list(_family_members(ftype).values()) or ([ftype] if dataclasses.is_dataclass(ftype) else [])
        for member in members:
            keys.extend(k for k in dotted_keys(member, key + ".") if k not in keys)
    return keys


def _family_members(ftype: Any) -> dict[str, type]:
    """A union of model config dataclasses, by the default of their `family` field; {} for any other type."""
    if typing.get_origin(ftype) not in (typing.Union, types.UnionType):
        return {}
    members = [a for a in typing.get_args(ftype) if a is not type(None)]
    if not all(dataclasses.is_dataclass(m) and "family" in m.__dataclass_fields__ for m in members):
        return {}
    return {m.__dataclass_fields__["family"].default: m for m in members}


def _family_config_cls(members: dict[str, type], value: Any, key: str) -> type:
    """The member a section's `family` names (the first member when it names none)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a table, got {value!r}")
    family = value.get("family", next(iter(members)))
    if family not in members:
        raise ConfigError(f"{key}.family = {family!r} is not one of {', '.join(map(repr, members))}")
    return members[family]


def _unknown_key_error(section: type, prefix: str, key: str) -> ConfigError:
    """`key` is not in `section` (the dataclass at `prefix`): name it and its closest valid key there."""
    valid = dotted_keys(section, prefix)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    family = section.__dataclass_fields__.get("family")
    where = f" of model family {family.default!r}" if family is not None and prefix else ""
    return ConfigError(f"unknown config key '{key}'{where}{hint}")


def _coerce(value: Any, ftype: Any, key: str) -> Any:
    """Check `value` against the annotation `ftype`; parse it first if it came from the CLI."""
    if isinstance(value, _CliText) and ftype is not str:
        value = _parse_cli_text(value, ftype)
    origin = typing.get_origin(ftype)
    args = typing.get_args(ftype)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} = {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(ftype):
        return from_dict(ftype, value, prefix=key + ".")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r} must be a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key} = {value!r} must have {len(args)} items")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_type = args[0] if args else Any
            items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or (ftype is Any and isinstance(value, dict)):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r} must be a table")
        value_type = args[1] if args else Any  # nested tables of free-form options stay typed as parsed
        return {str(k): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if ftype is Any:
        return value
    if ftype is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} must be true or false")
        return value
    if ftype is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r} must be an integer")
        return value
    if ftype is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r} must be a number")
        return float(value)
    if ftype is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r} must be a string")
        return str(value)
    raise ConfigError(f"{key}: unsupported annotation {ftype!r}")


def _parse_cli_text(text: str, ftype: Any) -> Any:
    if ftype is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return str(text)


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, checking every key and value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table, got {data!r}")
    data = dict(data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            while isinstance(value, dict) and value:  # name the full dotted key of a misspelt section
                inner, value = next(iter(value.items()))
                key = f"{key}.{inner}"
            raise _unknown_key_error(cls, prefix, prefix + key)
    preset = data.get("preset")
    if preset is not None and hasattr(cls, "from_preset"):
        try:
            base = cls.from_preset(_coerce(preset, str, prefix + "preset"))
        except ValueError as exc:
            raise ConfigError(f"{prefix}preset: {exc}") from exc
    else:
        base = cls()
    values = {}
    for name in names:
        key = prefix + name
        ftype = hints[name]
        if name not in data:
            values[name] = getattr(base, name)
        elif dataclasses.is_dataclass(ftype):
            values[name] = from_dict(ftype, data[name], prefix=key + ".")
        elif members := _family_members(ftype):
            chosen = _family_config_cls(members, data[name], key)
            values[name] = from_dict(chosen, data[name], prefix=key + ".")
        else:
            values[name] = _coerce(data[name], ftype, key)
    cfg = cls(**values)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The tree as plain TOML-able values (None fields are left out)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            out[f.name] = [to_dict(item) for item in value]
        elif value is not None:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def to_toml(cfg: Any) -> str:
    import tomli_w  # only writing TOML needs it; reading uses the standard library

    return tomli_w.dumps(to_dict(cfg))


# --------------------------------------------------------------------------------------------
# Profiles and overrides
# --------------------------------------------------------------------------------------------


def find_profile(name: str) -> Path:
    """A TOML path (it ends in .toml or names a directory), else a profile name in PROFILE_DIRS."""
    path = Path(name)
    if path.suffix == ".toml" or "/" in name or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    for directory in PROFILE_DIRS:
        candidate = directory / f"{name}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in PROFILE_DIRS if d.is_dir() for p in d.glob("*.toml")})
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"no config profile named '{name}'{hint}; known profiles: {', '.join(known) or 'none'}")


def load_profile_dict(name: str, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A profile's raw table, with `extends = "other"` resolved (the child wins)."""
    path = find_profile(name).resolve()
    if path in _seen:
        raise ConfigError(f"config profiles extend each other in a cycle: {' -> '.join(map(str, _seen + (path,)))}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return deep_merge(load_profile_dict(parent, _seen + (path,)), data)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["optim.lr=1e-4", "--model.preset", "2b"]` -> nested dict of CLI text values."""
    tree: dict[str, Any] = {}
    pending: str | None = None
    for item in items:
        if pending is not None:
            key, text = pending, item
            pending = None
        else:
            stripped = item[2:] if item.startswith("--") else item
            if "=" not in stripped:
                if not item.startswith("--"):
                    raise ConfigError(f"override {item!r} must look like --section.key=value")
                pending = stripped
                continue
            key, text = stripped.split("=", 1)
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} sets a key inside a value")
        node[parts[-1]] = _CliText(text)
    if pending is not None:
        raise ConfigError(f"override --{pending} has no value")
    return tree


def load_config(
    profile: str | None = None, overrides: list[str] | None = None, cls: type[T] = RunConfig
) -> T:
    """Build and validate a config from a profile name or path and dotted overrides."""
    data = load_profile_dict(profile) if profile else {}
    data = deep_merge(data, parse_overrides(overrides or []))
    return from_dict(cls, data)
