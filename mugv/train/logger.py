"""Where training progress goes: a progress bar, log lines, metrics.jsonl, TensorBoard, loss.png.

`metrics.jsonl` holds one line per step: `sync` makes it durable before a checkpoint is
published, and a resumed run first drops the lines after its checkpoint's step (the steps it
redoes), so a run stopped at any moment and rerun has every step exactly once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mugv.config import LoggingConfig
from mugv.utils.progress import progress_bar


def format_metrics(step: int, total: int, m: dict[str, float]) -> str:
    mfu = f"{100 * m['mfu']:.1f}%" if "mfu" in m else "n/a"
    return (
        f"step {step}/{total} loss {m['loss']:.4f} lr {m['lr']:.2e} grad {m['grad_norm']:.3f} | "
        f"{m['samples_per_s']:.2f} samples/s {m['tflops']:.3f} TFLOP/s MFU {mfu} "
        f"data-wait {100 * m['data_wait']:.1f}% | peak mem {m['memory_gib']:.2f} GiB"
    )


class RunLogger:
    def __init__(self, run_dir: Path, cfg: LoggingConfig, total_steps: int, start_step: int = 0):
        self.run_dir = run_dir
        self.cfg = cfg
        self.total = total_steps
        self.bar = progress_bar(total_steps, initial=start_step, enabled=cfg.progress, desc="train", unit="step")
        self.metrics_path = run_dir / "metrics.jsonl"
        keep_metrics_up_to(self.metrics_path, start_step)
        self.jsonl = self.metrics_path.open("a")
        self.writer = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def message(self, text: str) -> None:
        self.bar.write(text) if self.cfg.progress else print(text, flush=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        self.bar.update(1)  # after the postfix, so a progress line shows this step's loss
        self.jsonl.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "step":
                    self.writer.add_scalar(f"train/{key}", value, step)
        if step % self.cfg.every_steps == 0 or step == self.total:
            self.message(format_metrics(step, self.total, metrics))

    def sync(self) -> None:
        """Put every logged step on disk (before a checkpoint that resumes after them is published)."""
        self.jsonl.flush()
        os.fsync(self.jsonl.fileno())

    def finish(self) -> None:
        """Draw the loss curve of the whole run (all resumed segments) to loss.png."""
        self.jsonl.flush()
        records = [json.loads(line) for line in self.metrics_path.read_text().splitlines()]
        if not records:
            return
        steps = [r["step"] for r in records]
        losses = [r["loss"] for r in records]
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, losses, linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("flow-matching loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.run_dir / "loss.png", dpi=120)
        plt.close(fig)

    def close(self) -> None:
        self.bar.close()
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()


def keep_metrics_up_to(path: Path, step: int) -> None:
    """Drop the lines of `path` after `step`, and a last line cut short by a crash: a run resumed
    at `step` logs the later steps again. The shortened file replaces the old one atomically."""
    if not path.is_file():
        return
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    kept = [line for line in lines if line.endswith("\n") and _logged_step(line) <= step]
    if len(kept) == len(lines):
        return
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _logged_step(line: str) -> float:
    """The step a metrics line records; infinity for a line a crash garbled (always dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")
