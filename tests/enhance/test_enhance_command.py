"""`mugv enhance` end to end on the CPU with the tiny release-format weights of tests/golden."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mugv.cli import main
from mugv.models.text.tiny import make_tiny_t5
from mugv.video.reader import decode, probe
from mugv.video.writer import write_mp4

pytest.importorskip("diffusers")

GOLDEN = Path(__file__).parent.parent / "golden"
TINY = ["--dit-preset", "debug", "--vae-preset", "debug", "--height", "32", "--width", "48", "--frames", "5"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The release's folder layout, holding the tiny golden weights and a tiny umT5 tokenizer."""
    root = tmp_path_factory.mktemp("release")
    enhancer, wan = root / "enhancer", root / "Wan2.1-T2V-1.3B"
    enhancer.mkdir()
    wan.mkdir()
    shutil.copy(GOLDEN / "enhancer_tiny_dit_i2v.safetensors", enhancer / "dit_i2v.safetensors")
    shutil.copy(GOLDEN / "enhancer_tiny_cond.bin", enhancer / "pytorch_model.bin")
    shutil.copy(GOLDEN / "enhancer_tiny_umt5.pth", wan / "models_t5_umt5-xxl-enc-bf16.pth")
    shutil.copy(GOLDEN / "enhancer_tiny_vae.pth", wan / "Wan2.1_VAE.pth")
    make_tiny_t5(wan / "google" / "umt5-xxl", family="umt5")  # only its tokenizer is read
    rng = np.random.default_rng(0)
    videos = root / "videos"
    videos.mkdir()
    base = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, 2 * i, axis=1) for i in range(7)])
    write_mp4(videos / "clip.mp4", frames, fps=12)
    return root, ["--enhancer-dir", str(enhancer), "--wan-dir", str(wan)]


def frames_of(path: Path) -> np.ndarray:
    return np.asarray(decode(path).frames)


def test_one_video_in_one_mp4_out_at_its_fps(release, tmp_path, capsys):
    root, weights = release
    out = tmp_path / "enhanced.mp4"
    assert main(["enhance", str(root / "videos" / "clip.mp4"), "--out", str(out), *weights, *TINY]) == 0
    info = probe(out)
    assert (info.width, info.height, info.fps) == (48, 32, 12)
    assert len(frames_of(out)) == 5
    assert "wrote" in capsys.readouterr().out
    again = tmp_path / "again.mp4"
    main(["enhance", str(root / "videos" / "clip.mp4"), "--out", str(again), *weights, *TINY])
    assert again.read_bytes() == out.read_bytes()  # seeded
    other = tmp_path / "other.mp4"
    main(["enhance", str(root / "videos" / "clip.mp4"), "--out", str(other), "--seed", "7", "--fps", "8",
          *weights, *TINY])
    assert probe(other).fps == 8
    enhanced, reseeded = frames_of(out).astype(int), frames_of(other).astype(int)
    # frame 0 is the VAE reconstruction of the clean input frame, whatever the noise; the rest is not
    assert np.abs(enhanced[0] - reseeded[0]).max() <= 2
    assert np.abs(enhanced[1:] - reseeded[1:]).mean() > np.abs(enhanced[0] - reseeded[0]).mean()


def test_csv_of_file_name_and_text_writes_a_folder(release, tmp_path):
    root, weights = release
    table = root / "videos" / "list.csv"
    table.write_text("file_name,text\nclip.mp4,a cat walks on the beach\n")
    out = tmp_path / "out"
    assert main(["enhance", str(table), "--out", str(out), *weights, *TINY, "--cfg", "1"]) == 0
    assert [p.name for p in out.iterdir()] == ["clip_enhance.mp4"]


@pytest.mark.parametrize("flags, message", [
    (["--frames", "6"], "--frames 6 must be 4k+1"),
    (["--height", "40"], "--height 40 must be a positive multiple of 16"),
    (["--frames", "9"], "has 7 frames, fewer than --frames 9"),
])
def test_bad_settings_fail_before_any_weights_load(release, tmp_path, capsys, monkeypatch, flags, message):
    root, weights = release

    def no_loading(*_):
        raise AssertionError("weights loaded")

    monkeypatch.setattr("mugv.commands.enhance.load_enhancer", no_loading)
    assert main(["enhance", str(root / "videos" / "clip.mp4"), "--out", str(tmp_path / "x.mp4"),
                 *weights, *TINY, *flags]) == 2
    assert message in capsys.readouterr().err


def test_missing_inputs_and_weights_are_named(release, tmp_path, capsys):
    root, weights = release
    table = tmp_path / "list.csv"
    table.write_text("file_name,text\nabsent.mp4,x\n")
    assert main(["enhance", str(table), "--video-root", str(root / "videos"), "--out", str(tmp_path), *weights,
                 *TINY]) == 2
    assert "absent.mp4" in capsys.readouterr().err
    assert main(["enhance", str(root / "videos"), "--out", str(tmp_path), "--enhancer-dir", str(tmp_path),
                 "--wan-dir", weights[3], *TINY]) == 2
    assert "dit_i2v.safetensors not found" in capsys.readouterr().err



def test_generate_enhance_chains_the_two_pipelines(release, tmp_path, capsys):
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from mugv.models.dit.config import DiTConfig
    from mugv.models.dit.model import MUGDiT
    from mugv.models.vae.config import VAEConfig
    from mugv.models.vae.model import MUGVideoVAE

    _, weights = release
    torch.manual_seed(0)
    save_file(MUGDiT(dataclasses.replace(DiTConfig.from_preset("debug"), text_dim=32)).state_dict(), tmp_path / "dit.safetensors")
    save_file(MUGVideoVAE(VAEConfig.from_preset("tiny")).state_dict(), tmp_path / "vae.safetensors")
    t5 = make_tiny_t5(tmp_path / "t5")
    out = tmp_path / "clip.mp4"
    generate = ["generate", "--dit", str(tmp_path / "dit.safetensors"), "--vae", str(tmp_path / "vae.safetensors"), "--vae-preset", "tiny",
                "--text-encoder-path", str(t5), "--height", "32", "--width", "48", "--frames", "9", "--steps", "1",
                "--fps", "12", "--prompt", "a red car", "--out", str(out)]
    enhance = ["--enhance", weights[1], "--wan-dir", weights[3], "--enhance-presets", "debug,debug"]
    assert main([*generate, *enhance]) == 0
    assert "enhanced" in capsys.readouterr().out
    raw, enhanced = frames_of(tmp_path / "clip_raw.mp4"), frames_of(out)
    assert raw.shape == enhanced.shape == (9, 32, 48, 3)
    assert np.abs(raw.astype(int) - enhanced.astype(int)).mean() > 1  # the random enhancer changed it
    # the enhancer's weights are located before any model loads
    assert main([*generate, "--enhance", weights[1]]) == 2
    assert "give --wan-dir" in capsys.readouterr().err
