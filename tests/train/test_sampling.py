import dataclasses

import numpy as np

from mugv.infer.pipeline import GenerationRequest, VideoGenerator
from mugv.models.dit.config import DiTConfig
from mugv.models.dit.model import MUGDiT
from mugv.models.text.encoders import build_text_encoder
from mugv.models.text.tiny import make_tiny_t5
from mugv.models.vae.config import VAEConfig
from mugv.models.vae.model import MUGVideoVAE
from mugv.train.sampling import SampleRenderer, frame_strip


def test_renders_every_n_steps_to_mp4_and_tensorboard(tmp_path):
    encoder = build_text_encoder("t5", str(make_tiny_t5(tmp_path / "t5")), max_tokens=16)
    dit = MUGDiT(dataclasses.replace(DiTConfig.from_preset("debug"), text_dim=encoder.dim))
    generator = VideoGenerator(dit, MUGVideoVAE(VAEConfig.from_preset("tiny")), encoder)
    template = GenerationRequest(prompt="-", height=32, width=32, num_frames=9, steps=2, fps=8)
    renderer = SampleRenderer(generator, ["a red car", "a blue sky"], every_steps=2, run_dir=tmp_path, template=template)

    class FakeTrainer:
        step = 0

    dit.train()
    for step in (1, 2, 3, 4):
        FakeTrainer.step = step
        renderer.on_step_end(FakeTrainer, {})
    rendered = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert rendered == ["step_00000002", "step_00000004"]
    assert (tmp_path / "samples" / "step_00000004" / "01.mp4").stat().st_size > 0
    assert (tmp_path / "samples" / "step_00000004" / "01.txt").read_text() == "a blue sky\n"
    assert dit.training  # the model goes back to training mode
    assert any(p.name.startswith("events") for p in (tmp_path / "tensorboard").iterdir())


def test_frame_strip_picks_evenly_spaced_frames():
    frames = np.arange(9)[:, None, None, None] * np.ones((9, 2, 3, 3), dtype=np.uint8)
    strip = frame_strip(frames, count=3)
    assert strip.shape == (2, 9, 3) and [strip[0, 3 * i, 0] for i in range(3)] == [0, 4, 8]
