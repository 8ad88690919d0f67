"""One error boundary: every user error is one `mugv: error:` line on stderr naming the file, key
or value, exit status 2, no traceback unless `--debug`; a bug keeps its traceback."""

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import save_file

from mugv.cli import main
from mugv.models.vae.config import VAEConfig
from mugv.models.vae.model import MUGVideoVAE


def one_error_line(capsys, argv: list[str], *named: str) -> str:
    """Run `mugv argv`, check that it failed as a user error, and return its one stderr line."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mugv: error: "), captured.err
    for text in named:
        assert text in lines[0]
    return lines[0]


@pytest.fixture
def corrupt(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"this is not a safetensors file")
    return path


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "vae.safetensors"
    save_file(MUGVideoVAE(VAEConfig.from_preset("tiny")).state_dict(), path)
    return path


def test_generate_names_a_corrupt_dit_file_on_stderr(capsys, tmp_path, corrupt, tiny_vae):
    one_error_line(capsys, ["generate", "--dit", str(corrupt), "--vae", str(tiny_vae), "--vae-preset", "tiny",
                            "--text-encoder", "minilm", "--prompt", "a cat", "--out", str(tmp_path / "x.mp4")],
                   str(corrupt), "cannot read")


def test_generate_checks_the_text_encoder_before_loading_any_weights(capsys, tmp_path, corrupt):
    # both weight files are corrupt: the text encoder's missing folder is found before either is read
    one_error_line(capsys, ["generate", "--dit", str(corrupt), "--vae", str(corrupt), "--prompt", "a cat",
                            "--out", str(tmp_path / "x.mp4")], "--text-encoder-path")
    one_error_line(capsys, ["generate", "--dit", str(corrupt), "--vae", str(corrupt), "--prompt", "a cat",
                            "--text-encoder", "t5", "--text-encoder-path", str(tmp_path / "t5"),
                            "--out", str(tmp_path / "x.mp4")], str(tmp_path / "t5"))
    one_error_line(capsys, ["generate", "--dit", str(corrupt), "--vae", str(corrupt), "--prompt", "a cat",
                            "--text-encoder", "minilm", "--device", "bogus", "--out", str(tmp_path / "x.mp4")],
                   "'bogus'")


def test_ema_and_expand_name_a_missing_file(capsys, tmp_path):
    missing = str(tmp_path / "missing.safetensors")
    one_error_line(capsys, ["ema", "ensemble", missing, "--decay", "0.5", "--out", str(tmp_path / "o.safetensors")],
                   missing)
    one_error_line(capsys, ["ema", "reconstruct", str(tmp_path / "nowhere"), "--sigma-rel", "0.1",
                            "--out", str(tmp_path / "o.safetensors")], str(tmp_path / "nowhere"))
    one_error_line(capsys, ["ema", "reconstruct", str(tmp_path), "--sigma-rel", "0.5",
                            "--out", str(tmp_path / "o.safetensors")], "sigma_rel", "0.5")
    one_error_line(capsys, ["expand", "--from", missing, "--factor", "2", "--out", str(tmp_path / "o.safetensors")],
                   missing)


def test_transition_training_names_missing_footage(capsys, tmp_path):
    missing = str(tmp_path / "missing.mp4")
    one_error_line(capsys, ["curate", "train-transitions", "--videos", missing, "--model-out",
                            str(tmp_path / "model.json")], missing)


def test_encode_says_when_a_manifest_has_no_kept_clips(capsys, tmp_path):
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"clip_id": ["a", "b"], "path": ["a.mp4", "b.mp4"], "status": ["rejected"] * 2,
                             "reason": ["blurry", "static"]}), manifest)
    one_error_line(capsys, ["encode", str(manifest), "--out", str(tmp_path / "shards"), "--random-vae",
                            "--vae-preset", "tiny", "--no-progress"], str(manifest), "no kept clips")
    one_error_line(capsys, ["encode", str(manifest), "--out", str(tmp_path / "shards"), "--random-vae",
                            "--buckets", "3x5x5"], "3x5x5")


@pytest.mark.parametrize(
    "argv, named",
    [
        (["train", "--config", "vae_tiny", "--dry-run"], ["'vae_tiny'", "mugv vae train --config vae_tiny"]),
        (["vae", "train", "--config", "debug", "--dry-run"], ["'debug'", "mugv train --config debug"]),
        (["curate", "videos/", "--out", "x", "--config", "vae_tiny"], ["'vae_tiny'", "mugv vae train"]),
        # a profile for this command with a bad override is still reported by its key
        (["train", "--config", "debug", "--dry-run", "--optim.lrr=1"], ["optim.lrr", "optim.lr'"]),
    ],
)
def test_a_profile_given_to_the_wrong_command_names_the_right_one(capsys, argv, named):
    one_error_line(capsys, argv, *named)


def test_other_commands_report_bad_input_in_one_line(capsys, tmp_path, corrupt):
    one_error_line(capsys, ["info", "--frames", "9"], "--frames, --height and --width")
    one_error_line(capsys, ["vae", "eval", str(tmp_path), "--weights", str(tmp_path / "vae.pt"), "--preset", "tiny"],
                   str(tmp_path / "vae.pt"))
    one_error_line(capsys, ["vae", "stats", str(tmp_path), "--weights", str(corrupt), "--preset", "tiny"],
                   str(corrupt))
    one_error_line(capsys, ["vae", "train", "--source", str(tmp_path / "none"), "--train.steps=1",
                            f"--run_dir={tmp_path / 'run'}"], str(tmp_path / "none"))
    one_error_line(capsys, ["curate", str(tmp_path / "none"), "--out", str(tmp_path / "out")], str(tmp_path / "none"))
    one_error_line(capsys, ["train", "--train.device=bogus", "--train.steps=1", f"--run_dir={tmp_path / 'dit'}"],
                   "'bogus'")
    one_error_line(capsys, ["train", f"--checkpoint.init_weights={corrupt}", "--train.steps=1",
                            f"--run_dir={tmp_path / 'dit'}"], str(corrupt))


def test_a_failed_demo_stage_is_one_line_naming_the_stage():
    from mugv.demo.run import DemoError, run

    with pytest.raises(DemoError, match=r"^`mugv info --frames 9` failed: give --frames, --height and --width"):
        run(["info", "--frames", "9"])


def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path):
    missing = str(tmp_path / "missing.safetensors")
    for argv in (["--debug", "expand", "--from", missing], ["expand", "--from", missing, "--debug"]):
        with pytest.raises(FileNotFoundError, match="missing.safetensors"):
            main([*argv, "--factor", "2", "--out", str(tmp_path / "o.safetensors")])


def test_a_bug_keeps_its_traceback(monkeypatch):
    import mugv.commands.info as info

    def broken(*_):
        raise TypeError("a bug inside mugv")

    monkeypatch.setattr(info, "run", broken)
    with pytest.raises(TypeError, match="a bug inside mugv"):
        main(["info"])


def test_the_installed_command_prints_one_line_and_exits_2(tmp_path):
    missing = tmp_path / "missing.safetensors"
    done = subprocess.run([sys.executable, "-m", "mugv", "ema", "ensemble", str(missing), "--decay", "0.5",
                           "--out", str(tmp_path / "o.safetensors")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"mugv: error: no DiT weights at {missing}"]
