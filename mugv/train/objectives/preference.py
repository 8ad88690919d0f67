"""Preference optimisation in the flow-matching form: Flow-DPO on pairs, Flow-KTO on pass/fail labels.

A clip's "error" e(x) is its per-sample velocity error (mugv.flow.per_sample_flow_loss: the mean
over generated tokens of ||v(x_sigma) - u||^2, frame masks respected). The implicit reward of the
policy theta over the frozen reference is g = e_ref - e_theta: positive where the policy predicts
the clip's velocity better than the reference did. The two clips of a pair, and the policy and the
reference, all see one sigma, one noise and one conditioning draw, fixed by the sample's seed, so
that a reference pass recorded earlier (ReferenceMode.PRECOMPUTED) gives the same numbers.
See docs/preference.md.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from mugv.config import FlowConfig, LoRAConfig, PreferenceConfig
from mugv.data.batch import LatentBatch
from mugv.data.preference import PreferenceBatch
from mugv.errors import ConfigError
from mugv.flow import per_sample_flow_loss
from mugv.train.objectives.base import ObjectiveOutput, ReferenceMode
from mugv.train.objectives.flow import ConditioningPolicy, FlowMatchingObjective, StepInputs

SEED_RANGE = 2**62  # per-sample seeds drawn from the step generator when the data carries none


def dpo_loss(policy_chosen: torch.Tensor, reference_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair Flow-DPO loss and its logit, from (B,) velocity errors:
    -log sigmoid(-beta/2 * [(e_theta(w) - e_ref(w)) - (e_theta(l) - e_ref(l))])."""
    logit = -0.5 * beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    return -F.logsigmoid(logit), logit


def global_sum(value: torch.Tensor, dp_group=None) -> torch.Tensor:
    """The sum of a detached `value` over the data-parallel ranks (`dp_group`; None: this rank alone)."""
    value = value.detach().clone()
    if dp_group is not None:
        torch.distributed.all_reduce(value, group=dp_group)
    return value


def global_means(values: dict[str, torch.Tensor], dp_group=None) -> dict[str, float]:
    """The mean of each named 1-D tensor over the global batch (its elements on every rank of
    `dp_group`), in one all-reduce; a name with no element on any rank is left out."""
    sums = [v.detach().float().sum() for v in values.values()]
    counts = [torch.tensor(float(v.numel()), device=s.device) for v, s in zip(values.values(), sums, strict=True)]
    totals = global_sum(torch.stack(sums + counts), dp_group).tolist()
    n = len(values)
    return {name: totals[i] / totals[n + i] for i, name in enumerate(values) if totals[n + i] > 0}


def kto_loss(policy_error: torch.Tensor, reference_error: torch.Tensor, desirable: torch.Tensor, beta: float,
             lambda_d: float, lambda_u: float, dp_group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Flow-KTO loss and the reference point z, from (B,) velocity errors and (B,) labels.
    g = e_ref - e_theta; z = the batch mean of g (over the global batch: every rank of `dp_group`),
    detached and clamped at 0; desirable samples pay lambda_d (1 - sigmoid(beta (g - z))),
    undesirable ones lambda_u (1 - sigmoid(beta (z - g)))."""
    gap = reference_error - policy_error
    totals = global_sum(torch.stack([gap.sum(), torch.tensor(float(gap.numel()), device=gap.device)]), dp_group)
    z = (totals[0] / totals[1]).clamp(min=0)
    loss = torch.where(desirable, lambda_d * (1 - torch.sigmoid(beta * (gap - z))),
                       lambda_u * (1 - torch.sigmoid(beta * (z - gap))))
    return loss, z


def cat_inputs(parts: list[StepInputs]) -> StepInputs:
    """One StepInputs from per-sample ones; texts are padded to the longest (padding masked out)."""
    length = max(p.text.shape[1] for p in parts)
    return StepInputs(
        noisy=torch.cat([p.noisy for p in parts]),
        sigma=torch.cat([p.sigma for p in parts]),
        target=torch.cat([p.target for p in parts]),
        frame_mask=torch.cat([p.frame_mask for p in parts]),
        text=torch.cat([F.pad(p.text, (0, 0, 0, length - p.text.shape[1])) for p in parts]),
        text_mask=torch.cat([F.pad(p.text_mask, (0, length - p.text_mask.shape[1])) for p in parts]),
        sample_weight=torch.cat([p.sample_weight for p in parts]),
    )


def row(batch: LatentBatch, i: int) -> LatentBatch:
    return LatentBatch(batch.latents[i:i + 1], batch.text[i:i + 1], batch.text_mask[i:i + 1], batch.fps[i:i + 1],
                       batch.pixel_height, batch.pixel_width)


def resolve_reference_mode(pref: PreferenceConfig, lora: LoRAConfig) -> ReferenceMode:
    if pref.reference == "auto":  # modules trained in full: the adapters off are no longer the starting model
        return ReferenceMode.ADAPTERS_OFF if lora.rank and not lora.train_modules else ReferenceMode.FROZEN_COPY
    return ReferenceMode(pref.reference)


@dataclasses.dataclass
class Errors:
    """Velocity errors of every clip of a batch (candidates order), under the policy and the reference."""

    policy: torch.Tensor  # (N,), with grad
    reference: torch.Tensor  # (N,), no grad
    velocity_gap: torch.Tensor | None  # (N,) mean ||v_theta - v_ref||^2 over generated tokens; None if precomputed


class PreferenceObjective:
    """What DPO and KTO share: per-sample seeded draws and the errors of the policy and the reference."""

    name = "preference"

    def __init__(self, flow: FlowConfig, pref: PreferenceConfig, policy: ConditioningPolicy,
                 reference: ReferenceMode, dp_group=None):
        self.flow = flow
        self.pref = pref
        self.policy = policy
        self.reference = reference
        # the data-parallel ranks that together hold the global batch (None: this process alone);
        # KTO's reference point and its SFT term are means over the global batch
        self.dp_group = dp_group

    def prepare(self, model, batch: PreferenceBatch, generator: torch.Generator) -> StepInputs:
        """Inputs for every clip (candidates order). Each sample's sigma, noise and conditioning come
        from its own seed, the same for both clips of a pair. Caption dropout is off: a preference is
        about the clip under its prompt."""
        if not isinstance(batch, PreferenceBatch):
            raise ConfigError(f"train.objective = {self.name!r} trains on preference data (pairs or labelled "
                              f"samples); the data source gave {type(batch).__name__}")
        seeds = batch.noise_seed
        if seeds is None:
            seeds = torch.randint(0, SEED_RANGE, (batch.size,), generator=generator)
        draw = FlowMatchingObjective(self.flow, dataclasses.replace(self.policy, caption_dropout=0.0))
        clips = batch.candidates()
        parts = [draw.prepare(model, row(clips, i), torch.Generator().manual_seed(int(seeds[i % batch.size])))
                 for i in range(clips.size)]
        return cat_inputs(parts)

    def errors(self, model, batch: PreferenceBatch, generator: torch.Generator, reference=None) -> Errors:
        inputs = self.prepare(model, batch, generator)
        clips = batch.candidates()
        prediction = self.flow_predict(model, inputs, clips)
        policy = per_sample_flow_loss(prediction, inputs.target, inputs.frame_mask)
        if self.reference is ReferenceMode.PRECOMPUTED:
            if batch.reference_error is None or batch.noise_seed is None:
                raise ConfigError("preference.reference = 'precomputed' needs data that carries the reference "
                                  "errors and noise seeds (record them first: mugv.train.objectives.preference."
                                  "record_reference_errors)")
            recorded = batch.reference_error.to(policy.device, policy.dtype)
            return Errors(policy, recorded.T.reshape(-1) if batch.paired else recorded, None)
        if reference is None:
            raise ConfigError(f"train.objective = {self.name!r} needs its reference model ({self.reference.value})")
        reference_prediction = self.flow_predict(reference, inputs, clips).detach()
        ref = per_sample_flow_loss(reference_prediction, inputs.target, inputs.frame_mask)
        gap = per_sample_flow_loss(prediction.detach(), reference_prediction[:, :inputs.target.shape[1]],
                                   inputs.frame_mask)
        return Errors(policy, ref, gap)

    def flow_predict(self, model, inputs: StepInputs, clips: LatentBatch) -> torch.Tensor:
        return FlowMatchingObjective(self.flow, self.policy).predict(model, inputs, clips)

    def reference_errors(self, reference, batch: PreferenceBatch) -> torch.Tensor:
        """The reference's errors with the batch's stored seeds, in the layout PreferenceBatch.reference_error
        holds: (B, 2) [chosen, rejected] for pairs, (B,) unpaired."""
        if batch.noise_seed is None:
            raise ValueError("recording reference errors needs samples with noise seeds")
        with torch.no_grad():
            inputs = self.prepare(reference, batch, torch.Generator())
            prediction = self.flow_predict(reference, inputs, batch.candidates())
            errors = per_sample_flow_loss(prediction, inputs.target, inputs.frame_mask)
        return errors.view(2, batch.size).T if batch.paired else errors


class FlowDPOObjective(PreferenceObjective):
    name = "dpo"

    def compute(self, model, batch: PreferenceBatch, generator: torch.Generator, reference=None) -> ObjectiveOutput:
        if not batch.paired:
            raise ConfigError("train.objective = 'dpo' trains on pairs (prompt, chosen, rejected); this data is "
                              "unpaired (prompt, completion, label): use train.objective = 'kto'")
        e = self.errors(model, batch, generator, reference)
        b = batch.size
        policy_w, policy_l = e.policy[:b], e.policy[b:]
        ref_w, ref_l = e.reference[:b], e.reference[b:]
        per_pair, logit = dpo_loss(policy_w, ref_w, policy_l, ref_l, self.pref.beta)
        loss = per_pair.mean() + self.pref.sft_weight * policy_w.mean()
        values = {"dpo_loss": per_pair, "reward_accuracy": (logit > 0).float(), "reward_margin": logit,
                  "e_theta_chosen": policy_w, "e_theta_rejected": policy_l, "e_ref_chosen": ref_w,
                  "e_ref_rejected": ref_l}
        if e.velocity_gap is not None:
            values["kl"] = e.velocity_gap
        metrics = global_means(values, self.dp_group)  # over the global batch, like the loss
        return ObjectiveOutput(loss=loss, per_sample=per_pair.detach(), metrics=metrics)


class FlowKTOObjective(PreferenceObjective):
    name = "kto"

    def compute(self, model, batch: PreferenceBatch, generator: torch.Generator, reference=None) -> ObjectiveOutput:
        if batch.paired:
            raise ConfigError("train.objective = 'kto' trains on labelled samples (prompt, completion, label); "
                              "this data holds pairs: use train.objective = 'dpo'")
        e = self.errors(model, batch, generator, reference)
        desirable = batch.label.to(e.policy.device)
        p = self.pref
        per_sample, z = kto_loss(e.policy, e.reference, desirable, p.beta, p.lambda_d, p.lambda_u, self.dp_group)
        loss = per_sample.mean()
        if p.sft_weight:
            # the mean over the global batch's desirable samples: data parallelism averages the
            # ranks' gradients, so each rank weighs its sum by (ranks / desirable samples of all ranks)
            ranks = 1 if self.dp_group is None else torch.distributed.get_world_size(self.dp_group)
            count = global_sum(desirable.sum().float(), self.dp_group)
            if count > 0:
                loss = loss + p.sft_weight * e.policy[desirable].sum() * ranks / count
        gap = (e.reference - e.policy).detach()
        right = torch.where(desirable, gap > z, gap < z)

        # per class (desirable as "chosen", undesirable as "rejected"), for the classes the global batch holds
        values = {"kto_loss": per_sample, "reward_accuracy": right.float()}
        for suffix, keep in (("chosen", desirable), ("rejected", ~desirable)):
            values |= {f"e_theta_{suffix}": e.policy[keep], f"e_ref_{suffix}": e.reference[keep],
                       f"gap_{suffix}": gap[keep]}
        if e.velocity_gap is not None:
            values["kl"] = e.velocity_gap
        means = global_means(values, self.dp_group)
        gaps = {suffix: means.pop(f"gap_{suffix}", None) for suffix in ("chosen", "rejected")}
        metrics = {"kto_z": z.item(), **means}
        if None not in gaps.values():
            metrics["reward_margin"] = p.beta * (gaps["chosen"] - gaps["rejected"])
        return ObjectiveOutput(loss=loss, per_sample=per_sample.detach(), metrics=metrics)


def build_preference_objective(kind: type[PreferenceObjective], cfg, policy: ConditioningPolicy,
                               dp_group=None) -> PreferenceObjective:
    if cfg.parallel.pp > 1:  # the pipeline schedule computes the flow loss per microbatch, not a pair's
        raise ConfigError(f"train.objective = {kind.name!r} does not support parallel.pp > 1: use FSDP / tensor / "
                          "context parallelism")
    return kind(cfg.flow, cfg.preference, policy, resolve_reference_mode(cfg.preference, cfg.lora), dp_group)
