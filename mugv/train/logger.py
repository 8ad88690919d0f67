"""Where training progress goes: a progress bar, log lines, metrics.jsonl, TensorBoard, loss.png."""

from __future__ import annotations

import json
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
        self.jsonl = (run_dir / "metrics.jsonl").open("a")
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

    def finish(self) -> None:
        """Draw the loss curve of the whole run (all resumed segments) to loss.png."""
        self.jsonl.flush()
        loss_by_step = {}  # a resumed run rewrites the steps after its checkpoint: keep the last
        for line in (self.run_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            loss_by_step[record["step"]] = record["loss"]
        if not loss_by_step:
            return
        steps = sorted(loss_by_step)
        losses = [loss_by_step[s] for s in steps]
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
