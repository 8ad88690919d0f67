"""Render fixed prompts with the weights being trained, every N steps: the run's visual log.

Each render writes `<run_dir>/samples/step_XXXXXXXX/<k>.mp4` and a strip of frames per prompt to
TensorBoard (`samples/<k>`), so a run can be watched as it learns.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from mugv.infer.pipeline import GenerationRequest, VideoGenerator


def frame_strip(frames: np.ndarray, count: int = 5) -> np.ndarray:
    """`count` evenly spaced frames side by side: (H, count * W, 3) uint8."""
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return np.concatenate([frames[i] for i in picks], axis=1)


class SampleRenderer:
    """A trainer hook. `generator` is a VideoGenerator whose DiT is the model being trained."""

    def __init__(self, generator: VideoGenerator, prompts: list[str], every_steps: int, run_dir: Path,
                 template: GenerationRequest, tensorboard: bool = True):
        if every_steps < 1:
            raise ValueError(f"sampling every_steps must be >= 1, got {every_steps}")
        if not prompts:
            raise ValueError("sampling needs at least one prompt")
        self.generator = generator
        self.prompts = prompts
        self.every = every_steps
        self.run_dir = run_dir
        self.template = template
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def render(self, step: int) -> list[Path]:
        from mugv.video.writer import write_mp4

        folder = self.run_dir / "samples" / f"step_{step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        was_training = self.generator.dit.training
        for k, prompt in enumerate(self.prompts):
            # the same seed every time: differences between steps come from the weights alone
            video = self.generator.generate(dataclasses.replace(self.template, prompt=prompt, seed=k))
            path = folder / f"{k:02d}.mp4"
            write_mp4(path, video.frames, fps=self.template.fps)
            (folder / f"{k:02d}.txt").write_text(prompt + "\n")
            paths.append(path)
            if self.writer is not None:
                strip = torch.from_numpy(frame_strip(video.frames)).permute(2, 0, 1)
                self.writer.add_image(f"samples/{k:02d}", strip, step)
                self.writer.add_text(f"samples/{k:02d}/prompt", prompt, step)
        self.generator.dit.train(was_training)
        if self.writer is not None:
            self.writer.flush()
        return paths

    def on_step_end(self, trainer, metrics: dict[str, float]) -> None:
        if trainer.step % self.every == 0:
            self.render(trainer.step)
