"""Preference optimisation: the step time and peak memory of each reference mode, as a ratio to a
plain SFT step measured in the same run.

    python benchmarks/preference.py                     # CPU: a small MUG-DiT, 4 timed steps
    python benchmarks/preference.py --depth 8 --hidden 768 --steps 10 --device cuda

Each mode runs in a fresh process (so that peak memory is its own): a training step (objective,
backward, AdamW) on the same pairs. DPO trains on B pairs = 2B clips; the SFT baseline trains on
the same 2B clips as plain samples, so the ratio is the price of the reference alone.
  full weights: sft vs dpo / frozen_copy (a second model, no optimizer state) and dpo / precomputed
                (one model; the recording pass, one reference forward per clip, is timed apart)
  LoRA:         sft + LoRA vs dpo / adapters_off (one model, a second forward with adapters off)
Memory: CPU, peak RSS above the RSS before the model was built (Linux); CUDA, peak allocated.
Target: adapters_off and precomputed within 1.1x of their SFT step's memory; frozen_copy pays one
model's weights more.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mugv.config import LoRAConfig, load_config
from mugv.data.preference import SyntheticPreferences
from mugv.models.dit.model import MUGDiT
from mugv.train.lora import apply_lora
from mugv.train.objectives import (
    ConditioningPolicy,
    FlowDPOObjective,
    FlowMatchingObjective,
    ReferenceMode,
    build_reference,
)

MODES = {  # name: (objective, reference mode, LoRA)
    "sft": ("flow", ReferenceMode.NONE, False),
    "dpo/frozen_copy": ("dpo", ReferenceMode.FROZEN_COPY, False),
    "dpo/precomputed": ("dpo", ReferenceMode.PRECOMPUTED, False),
    "sft+lora": ("flow", ReferenceMode.NONE, True),
    "dpo/adapters_off": ("dpo", ReferenceMode.ADAPTERS_OFF, True),
}
BASELINE = {"dpo/frozen_copy": "sft", "dpo/precomputed": "sft", "dpo/adapters_off": "sft+lora"}


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_memory(device: torch.device) -> int:
    """Start a new peak-memory window; returns the resident memory now (KiB, CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return 0
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak RSS (VmHWM) to the current RSS
    return proc_status_kib("VmRSS")


def peak_memory_mib(device: torch.device, start_kib: int) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return (proc_status_kib("VmHWM") - start_kib) / 1024


def worker(args) -> dict:
    objective_name, mode, lora = MODES[args.mode]
    device = torch.device(args.device)
    cfg = load_config("debug", [f"--model.depth={args.depth}", f"--model.hidden_size={args.hidden}",
                                f"--data.batch_size={args.pairs}", f"--data.latent_frames={args.frames}",
                                f"--data.latent_height={args.size}", f"--data.latent_width={args.size}"])
    source = SyntheticPreferences(cfg.data, cfg.model.in_channels, cfg.model.text_dim, paired=True)
    batches = [source.batch_at(i * args.pairs) for i in range(args.steps + 2)]
    start_kib = reset_peak_memory(device)
    torch.manual_seed(0)
    model = MUGDiT(cfg.model).to(device)
    policy = ConditioningPolicy()
    if objective_name == "flow":
        objective = FlowMatchingObjective(cfg.flow, policy)
        batches = [b.candidates() for b in batches]  # the same clips, as plain samples
    else:
        objective = FlowDPOObjective(cfg.flow, cfg.preference, policy, mode)
    reference = build_reference(mode, model) if mode is not ReferenceMode.ADAPTERS_OFF else None
    if lora:
        apply_lora(model, LoRAConfig(rank=16))
        if mode is ReferenceMode.ADAPTERS_OFF:
            reference = build_reference(mode, model)
    record_seconds = 0.0
    if mode is ReferenceMode.PRECOMPUTED:  # the recording pass, with the model as it starts
        frozen = build_reference(ReferenceMode.FROZEN_COPY, model)
        begin = time.perf_counter()
        batches = [dataclasses.replace(b, reference_error=objective.reference_errors(frozen, b.to(device)))
                   for b in batches]
        record_seconds = (time.perf_counter() - begin) / len(batches)
        del frozen
        reset_peak_memory(device)  # the recording pass runs before training: its peak is not the step's
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    times = []
    for i, batch in enumerate(batches):
        batch = batch.to(device)
        begin = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        objective.compute(model, batch, generator, reference).loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - begin)
    return {"step_s": sorted(times)[len(times) // 2], "memory_mib": peak_memory_mib(device, start_kib),
            "record_s": record_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--size", type=int, default=8, help="latent height and width")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(worker(args)))
        return
    results = {}
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode], check=True, capture_output=True,
                             text=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    memory = "peak allocated" if args.device.startswith("cuda") else "peak RSS above start"
    print(f"device {args.device}; MUG-DiT depth {args.depth} hidden {args.hidden}; {args.pairs} pairs of "
          f"{args.frames}x{args.size}x{args.size} latents; median of {args.steps} steps; memory: {memory}")
    print(f"{'mode':<18} {'step ms':>9} {'memory MiB':>11} {'time x':>7} {'memory x':>9}  vs")
    for mode, r in results.items():
        base = results[BASELINE.get(mode, mode)]
        print(f"{mode:<18} {1000 * r['step_s']:9.1f} {r['memory_mib']:11.1f} {r['step_s'] / base['step_s']:7.2f} "
              f"{r['memory_mib'] / base['memory_mib']:9.2f}  {BASELINE.get(mode, '-')}")
    record = results["dpo/precomputed"]["record_s"]
    print(f"precomputed: the recording pass costs {1000 * record:.1f} ms per batch, once "
          f"({record / results['sft']['step_s']:.2f} x an SFT step)")


if __name__ == "__main__":
    main()
