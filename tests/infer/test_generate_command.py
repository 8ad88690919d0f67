import dataclasses

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mugv.cli import main
from mugv.models.dit.config import DiTConfig
from mugv.models.dit.model import MUGDiT
from mugv.models.text.tiny import make_tiny_t5
from mugv.models.vae.config import VAEConfig
from mugv.models.vae.model import MUGVideoVAE

from numerics_testing import assert_close_to_scale


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    t5 = make_tiny_t5(root / "t5")
    torch.manual_seed(0)
    dit = MUGDiT(dataclasses.replace(DiTConfig.from_preset("debug"), text_dim=32))
    save_file(dit.state_dict(), root / "dit.safetensors")
    save_file(MUGVideoVAE(VAEConfig.from_preset("tiny")).state_dict(), root / "vae.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(root / "ref.png")
    (root / "broken.png").write_bytes(b"not an image")
    return root, ["--dit", str(root / "dit.safetensors"), "--vae", str(root / "vae.safetensors"), "--vae-preset",
                  "tiny", "--text-encoder", "t5", "--text-encoder-path", str(t5), "--height", "32", "--width", "48",
                  "--frames", "9", "--steps", "2", "--fps", "12"]


def frame_count(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_text_and_image_to_video_write_mp4s(models, tmp_path, capsys):
    root, common = models
    assert main(["generate", *common, "--prompt", "a red car", "--out", str(tmp_path / "t2v.mp4")]) == 0
    assert main(["generate", *common, "--prompt", "a red car", "--image", str(root / "ref.png"),
                 "--vae-precision", "bf16", "--out", str(tmp_path / "i2v.mp4")]) == 0
    out = capsys.readouterr().out
    assert "(T2V, 9 frames 48x32 at 12 fps)" in out and "(I2V, 9 frames" in out
    assert "VAE precision: fp32 (auto on cpu)" in out and "VAE precision: bf16 (as asked)" in out
    assert frame_count(tmp_path / "t2v.mp4") == 9 and frame_count(tmp_path / "i2v.mp4") == 9


def test_batch_from_csv(models, tmp_path):
    root, common = models
    table = tmp_path / "prompts.csv"
    table.write_text(f"prompt,name,image,seed\na dog runs,dog,,3\na cat,cat,{root / 'ref.png'},\n")
    assert main(["generate", *common, "--prompts", str(table), "--out", str(tmp_path / "many")]) == 0
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["cat.mp4", "dog.mp4"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "x", "--dit", "/nope/dit.pt"], "DiT weights not found: /nope/dit.pt"),
        (["--prompt", "x", "--image", "BROKEN"], "cannot read reference image"),
        (["--prompt", "x", "--height", "40"], "height 40 is not a positive multiple of 16"),
        (["--prompts", "CSV"], "line 3: the prompt is empty"),
    ],
)
def test_bad_input_is_named_before_long_work(models, tmp_path, capsys, extra, message):
    root, common = models
    table = tmp_path / "bad.csv"
    table.write_text("prompt\nfine prompt\n\"\"\n")
    extra = [str(root / "broken.png") if a == "BROKEN" else str(table) if a == "CSV" else a for a in extra]
    assert main(["generate", *common, *extra, "--out", str(tmp_path / "x.mp4")]) == 2
    assert message in capsys.readouterr().err


def test_a_trained_lora_adapter_is_applied_at_generation(models, tmp_path):
    from mugv.commands.generate import attach_lora
    from mugv.config import LoRAConfig
    from mugv.models.dit.adapters import save_safetensors
    from mugv.train.lora import apply_lora, lora_state_dict

    root, common = models
    torch.manual_seed(1)
    tuned = MUGDiT(dataclasses.replace(DiTConfig.from_preset("debug"), text_dim=32))
    tuned.load_state_dict(load_file(root / "dit.safetensors"))
    apply_lora(tuned, LoRAConfig(rank=2, alpha=2, targets=["blocks.*.mlp.fc1"]))
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.1)
    save_safetensors(lora_state_dict(tuned), tmp_path / "lora.safetensors",
                     {"rank": "2", "alpha": "2", "targets": "blocks.*.mlp.fc1"})
    plain = MUGDiT(dataclasses.replace(DiTConfig.from_preset("debug"), text_dim=32))
    plain.load_state_dict(load_file(root / "dit.safetensors"))
    attach_lora(plain, tmp_path / "lora.safetensors")
    x, t, text = torch.randn(1, 24, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, 32)
    with torch.no_grad():
        assert_close_to_scale(plain(x, t, text, fps=torch.tensor([12.0])), tuned(x, t, text, fps=torch.tensor([12.0])))
    assert main(["generate", *common, "--prompt", "a cat", "--lora", str(tmp_path / "lora.safetensors"),
                 "--out", str(tmp_path / "lora.mp4")]) == 0


def test_the_sampler_shifts_time_as_the_training_run_did(tmp_path):
    from mugv.commands.generate import training_flow_config
    from mugv.config import FlowConfig, RunConfig, to_toml

    run = RunConfig()
    run.flow.base_resolution = 64 * 64
    step = tmp_path / "run" / "checkpoints" / "step_00000010"
    step.mkdir(parents=True)
    (tmp_path / "run" / "config.toml").write_text(to_toml(run))
    (tmp_path / "run" / "ema.safetensors").touch()
    assert training_flow_config(step).base_resolution == 4096
    assert training_flow_config(tmp_path / "run" / "ema.safetensors").base_resolution == 4096
    # weights outside a run folder (the published dit.pt) sample with the release's settings
    (tmp_path / "elsewhere").mkdir()
    assert training_flow_config(tmp_path / "elsewhere" / "dit.pt") == FlowConfig()


def test_a_training_step_folder_is_taken_as_the_dit(models, tmp_path):
    """What `mugv train` writes (a DCP step folder, also from one process) is what `--dit` takes."""
    from mugv.config import load_config
    from mugv.distributed.checkpoint import read_model_weights
    from mugv.train.trainer import Trainer

    root, common = models
    trainer = Trainer(load_config("debug", [f"--run_dir={tmp_path / 'run'}", "--model.text_dim=32", "--train.steps=1",
                                            "--logging.progress=false", "--logging.tensorboard=false"]))
    trainer.fit()
    step = tmp_path / "run" / "checkpoints" / "step_00000001"
    weights = read_model_weights(step)
    assert weights.keys() == trainer.model.state_dict().keys()
    assert all(torch.equal(weights[n], t) for n, t in trainer.model.state_dict().items())
    dit = common.index("--dit") + 1
    args = [*common[:dit], str(step), *common[dit + 1:]]
    assert main(["generate", *args, "--prompt", "a red car", "--out", str(tmp_path / "t2v.mp4")]) == 0
    assert frame_count(tmp_path / "t2v.mp4") == 9
