"""Preference optimisation: the step time and peak memory of each reference mode, as a ratio to a
plain SFT step measured in the same run.

    python benchmarks/preference.py                     # CPU: a small MUG-DiT, 5 timed rounds
    python benchmarks/preference.py --depth 8 --hidden 768 --steps 10 --device cuda

A step is a training step (objective, backward, AdamW) on the same pairs. Peak memory: each mode
in a fresh process (so that the peak is its own). Step time: all modes in one process, one step of
each per round, median over rounds (CPU: the process's CPU seconds, as a busy machine stretches
wall-clock unevenly). DPO trains on B pairs
= 2B clips; the SFT baseline trains on the same 2B clips as plain samples, so the ratio is the
price of the reference alone.
  full weights: sft vs dpo / frozen_copy (a second model, no optimizer state), the same with the
                copy's blocks in CPU memory, streamed to the device block by block
                (preference.reference_offload), and dpo / precomputed (one model; the recording
                pass, one reference forward per clip, is timed apart)
  LoRA:         sft + LoRA vs dpo / adapters_off (one model, a second forward with adapters off)
Memory: CPU, peak RSS above the RSS before the model was built (Linux); CUDA, peak allocated.
On the CPU the device is the host, so offloading saves nothing there: the run also prints the
most bytes of the copy's block weights that were on the device at once (the streamer's count).
Target: adapters_off and precomputed within 1.1x of their SFT step's memory; frozen_copy pays one
model's weights more, frozen_copy+offload at most two blocks' weights more.
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

MODES = {  # name: (objective, reference mode, LoRA, the frozen copy offloaded)
    "sft": ("flow", ReferenceMode.NONE, False, False),
    "dpo/frozen_copy": ("dpo", ReferenceMode.FROZEN_COPY, False, False),
    "dpo/frozen_copy+offload": ("dpo", ReferenceMode.FROZEN_COPY, False, True),
    "dpo/precomputed": ("dpo", ReferenceMode.PRECOMPUTED, False, False),
    "sft+lora": ("flow", ReferenceMode.NONE, True, False),
    "dpo/adapters_off": ("dpo", ReferenceMode.ADAPTERS_OFF, True, False),
}
BASELINE = {"dpo/frozen_copy": "sft", "dpo/frozen_copy+offload": "sft", "dpo/precomputed": "sft",
            "dpo/adapters_off": "sft+lora"}


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


class ModeStep:
    """One training step (objective, backward, AdamW) of a mode, on its own model from seed 0."""

    def __init__(self, mode_name: str, args, device: torch.device):
        objective_name, mode, lora, offload = MODES[mode_name]
        cfg = load_config("debug", [f"--model.depth={args.depth}", f"--model.hidden_size={args.hidden}",
                                    f"--data.batch_size={args.pairs}", f"--data.latent_frames={args.frames}",
                                    f"--data.latent_height={args.size}", f"--data.latent_width={args.size}"])
        source = SyntheticPreferences(cfg.data, cfg.model.in_channels, cfg.model.text_dim, paired=True)
        self.batches = [source.batch_at(i * args.pairs).to(device) for i in range(args.steps)]
        self.start_kib = reset_peak_memory(device)
        self.device = device
        torch.manual_seed(0)
        self.model = MUGDiT(cfg.model).to(device)
        policy = ConditioningPolicy()
        if objective_name == "flow":
            self.objective = FlowMatchingObjective(cfg.flow, policy)
            self.batches = [b.candidates() for b in self.batches]  # the same clips, as plain samples
        else:
            self.objective = FlowDPOObjective(cfg.flow, cfg.preference, policy, mode)
        self.reference = None
        if mode is not ReferenceMode.ADAPTERS_OFF:
            self.reference = build_reference(mode, self.model, offload=offload)
            if self.reference is not None:
                self.reference.stream_blocks(device)  # when offloaded
        if lora:
            apply_lora(self.model, LoRAConfig(rank=16))
            if mode is ReferenceMode.ADAPTERS_OFF:
                self.reference = build_reference(mode, self.model)
        self.record_s = 0.0
        if mode is ReferenceMode.PRECOMPUTED:  # the recording pass, with the model as it starts
            frozen = build_reference(ReferenceMode.FROZEN_COPY, self.model)
            clock = time.perf_counter if device.type == "cuda" else time.process_time  # as in step()
            begin = clock()
            self.batches = [dataclasses.replace(b, reference_error=self.objective.reference_errors(frozen, b))
                            for b in self.batches]
            self.record_s = (clock() - begin) / len(self.batches)
            del frozen
            reset_peak_memory(device)  # the recording pass runs before training: its peak is not the step's
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-5)
        self.generator = torch.Generator().manual_seed(0)
        self.taken = 0

    def step(self) -> float:
        """Seconds of one step on the next batch: wall-clock on a GPU, this process's CPU time on
        the CPU (a machine shared with other jobs stretches wall-clock unevenly)."""
        batch = self.batches[self.taken % len(self.batches)]
        self.taken += 1
        clock = time.perf_counter if self.device.type == "cuda" else time.process_time
        begin = clock()
        self.optimizer.zero_grad(set_to_none=True)
        self.objective.compute(self.model, batch, self.generator, self.reference).loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return clock() - begin


def memory_worker(args) -> dict:
    """In a fresh process: the peak memory of two steps of one mode."""
    device = torch.device(args.device)
    run = ModeStep(args.mode, args, device)
    run.step()
    run.step()
    out = {"memory_mib": peak_memory_mib(device, run.start_kib)}
    streamer = run.reference.streamer if run.reference is not None else None
    if streamer is not None:
        out["streamed_peak_mib"] = streamer.peak_resident_bytes / 2**20
        blocks = run.reference.module.blocks
        out["copy_blocks_mib"] = sum(p.numel() * p.element_size() for p in blocks.parameters()) / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--size", type=int, default=8, help="latent height and width")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (one step of every mode each)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(memory_worker(args)))
        return
    memory, streamed = {}, {}
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode], check=True, capture_output=True,
                             text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        memory[mode] = result["memory_mib"]
        if "streamed_peak_mib" in result:
            streamed[mode] = (result["streamed_peak_mib"], result["copy_blocks_mib"])
    # Time: every mode in this process, one step each per round, so that a change in the machine's
    # load falls on all modes alike; one warm-up round.
    device = torch.device(args.device)
    runs = {mode: ModeStep(mode, args, device) for mode in MODES}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_index in range(args.steps + 1):
        for mode, run in runs.items():
            seconds = run.step()
            if round_index:
                times[mode].append(seconds)
    step = {mode: sorted(t)[len(t) // 2] for mode, t in times.items()}
    kind = "peak allocated" if device.type == "cuda" else "peak RSS above start"
    clock = "wall-clock" if device.type == "cuda" else "process CPU time"
    print(f"device {args.device}; MUG-DiT depth {args.depth} hidden {args.hidden}; {args.pairs} pairs of "
          f"{args.frames}x{args.size}x{args.size} latents; step: {clock}, median of {args.steps} interleaved "
          f"rounds; memory: {kind}, 2 steps in a fresh process")
    print(f"{'mode':<24} {'step ms':>9} {'memory MiB':>11} {'time x':>7} {'memory x':>9}  vs")
    for mode in MODES:
        base = BASELINE.get(mode, mode)
        print(f"{mode:<24} {1000 * step[mode]:9.1f} {memory[mode]:11.1f} {step[mode] / step[base]:7.2f} "
              f"{memory[mode] / memory[base]:9.2f}  {BASELINE.get(mode, '-')}")
    for mode, (peak, total) in streamed.items():
        print(f"{mode}: at most {peak:.1f} MiB of the copy's {total:.1f} MiB of block weights were on the device "
              f"at once ({peak / total:.2f}); the rest stayed in CPU memory")
    record = runs["dpo/precomputed"].record_s
    print(f"precomputed: the recording pass costs {1000 * record:.1f} ms per batch, once "
          f"({record / step['sft']:.2f} x an SFT step)")


if __name__ == "__main__":
    main()
