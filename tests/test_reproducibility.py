"""Same seed, same machine, same files: the same bytes.

A VAE and a DiT training run twice, at once, in fresh processes with different PYTHONHASHSEEDs, on
copies of their data in two different folders (one path deeper than the other), writing to two run
folders: the weights must be bit-identical. The DiT run's loader uses its prefetch thread and
worker threads. Files the demo writes (its corpus, the curation ids that order every later stage) are
compared byte for byte.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mugv.config import load_config
from mugv.curate.inputs import read_inputs
from mugv.curate.runner import video_id
from mugv.data.testing import write_random_shards
from mugv.demo.corpus import CorpusSpec, build_corpus
from mugv.demo.run import Demo, DemoError, DemoPlan
from mugv.demo.world import render, split_scenes
from mugv.distributed.checkpoint import read_tensor_set
from mugv.train.checkpoint import latest_checkpoint
from mugv.train.trainer import Trainer
from mugv.utils.determinism import use_deterministic_algorithms
from mugv.video import write_mp4
from mugv.video.synthetic import panning_shot


def twice(tmp_path: Path, data: Path, commands) -> list[Path]:
    """Run the mugv commands `commands(data_copy, run_dir)` in one fresh process, twice at once;
    return the two run folders."""
    procs, runs = [], []
    for i in range(2):
        copy = tmp_path / f"place{i}" / ("deeper/" * i) / "data"
        shutil.copytree(data, copy)
        run_dir = tmp_path / f"run{i}"
        script = f"import sys; from mugv.cli import main; sys.exit(any([main(c) for c in {commands(copy, run_dir)!r}]))"
        env = {**os.environ, "PYTHONHASHSEED": str(i + 1)}
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
        runs.append(run_dir)
    for proc in procs:
        output = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, output
    return runs


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    differ = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differ, f"{len(differ)} of {len(first)} tensors differ, e.g. {differ[:3]}"


def final_checkpoint(run_dir: Path) -> Path:
    return latest_checkpoint(run_dir / "checkpoints")


def final_weights(run_dir: Path, stage: str) -> dict[str, torch.Tensor]:
    """The weights of the run's last checkpoint: the VAE trainer's file, the DiT trainer's DCP folder."""
    if stage == "vae":
        return load_file(final_checkpoint(run_dir) / "model.safetensors")
    return read_tensor_set(final_checkpoint(run_dir))


def test_vae_and_dit_training_are_bit_identical_run_to_run_wherever_files_live(tmp_path):
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    for i in range(3):
        write_mp4(data / "clips" / f"{i}.mp4", panning_shot(seed=i, frames=12, height=32, width=32), fps=8)
    (data / "list.txt").write_text("clips/0.mp4\nclips/1.mp4\nclips/2.mp4\n")  # relative to the list
    write_random_shards(str(data / "shards"), {"1x32x32": 10, "9x32x32": 8, "17x32x48": 6}, shard_size=5)
    quiet = ["--train.device=cpu", "--optim.warmup_steps=1", "--logging.progress=false", "--logging.tensorboard=false"]

    def commands(data: Path, run: Path) -> list[list[str]]:
        vae = ["vae", "train", "--config", "vae_tiny", "--source", str(data / "list.txt"), f"--run_dir={run}/vae",
               "--data.height=16", "--data.width=16", "--train.steps=3", "--stages.spatial_steps=1",
               "--stages.temporal_steps=1", "--samples.count=0", *quiet]
        # the loader with its prefetch thread and two worker threads
        dit = ["train", "--config", "shards-debug", f"--data.shards={data / 'shards'}", f"--run_dir={run}/dit",
               f"--data.cache_dir={run}/cache", "--data.prefetch=3", "--data.num_workers=2", "--data.i2v_prob=0.5",
               "--data.caption_dropout=0.3", "--model.text_dim=64", "--model.max_text_tokens=16", "--train.steps=3",
               "--checkpoint.every_steps=0", *quiet]
        return [vae, dit]

    runs = twice(tmp_path, data, commands)
    for stage in ("vae", "dit"):
        assert_same_weights(*(final_weights(r / stage, stage) for r in runs))
    for rng_file in ("rank_0", "dp_0"):  # every generator the checkpoint saves, the global ones among them
        rngs = [(final_checkpoint(r / "dit") / "rng" / f"{rng_file}.safetensors").read_bytes() for r in runs]
        assert rngs[0] == rngs[1], rng_file


def test_the_same_frames_encode_to_the_same_bytes(tmp_path):
    # libx264's macroblock tree made about one 64x64 clip in ten differ from one encode to the next
    train, _ = split_scenes()
    differing = []
    for i, scene in enumerate(train[:40]):
        frames = render(scene, frames=17, height=64, width=64, seed=i)
        encodes = set()
        for attempt in range(3):
            write_mp4(tmp_path / "clip.mp4", frames, fps=12.0)
            encodes.add((tmp_path / "clip.mp4").read_bytes())
        if len(encodes) > 1:
            differing.append(scene)
    assert not differing


def test_the_demo_corpus_is_byte_identical_run_to_run(tmp_path):
    script = ("import sys; from pathlib import Path; from mugv.demo.corpus import CorpusSpec, build_corpus; "
              "from mugv.demo.world import split_scenes; "
              "build_corpus(Path(sys.argv[1]), split_scenes()[0][:6], CorpusSpec(clips_per_scene=1, cuts=1, "
              "blurry=1, frozen=1, duplicates=1), [])")
    folders = [tmp_path / "one", tmp_path / "two" / "deeper"]
    for i, folder in enumerate(folders):
        subprocess.run([sys.executable, "-c", script, str(folder)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(i + 1)})
    names = sorted(p.name for p in (folders[0] / "videos").iterdir())
    assert len(names) == 10 and names == sorted(p.name for p in (folders[1] / "videos").iterdir())
    assert all((folders[0] / "videos" / n).read_bytes() == (folders[1] / "videos" / n).read_bytes() for n in names)


def test_clip_ids_do_not_depend_on_where_or_when_files_were_written(tmp_path):
    first = tmp_path / "first" / "videos"
    first.mkdir(parents=True)
    write_mp4(first / "a.mp4", panning_shot(seed=0, frames=6, height=32, width=32), fps=8)
    shutil.copyfile(first / "a.mp4", first / "copy-of-a.mp4")
    (first.parent / "table.csv").write_text("path,caption\nvideos/a.mp4,x\nvideos/copy-of-a.mp4,y\n")
    second = tmp_path / "elsewhere" / "deeper" / "videos"
    shutil.copytree(first.parent, second.parent)  # copied anew: other paths, other modification times
    for spec in ("videos", "table.csv"):
        ids = [[video_id(item) for item in read_inputs(root.parent / spec)] for root in (first, second)]
        assert ids[0] == ids[1] and len(set(ids[0])) == 2  # a byte-identical copy is still its own file
    os.utime(second / "a.mp4", ns=(1, 1))
    assert video_id(read_inputs(second)[0]) == video_id(read_inputs(first)[0])
    with open(second / "a.mp4", "ab") as f:
        f.write(b"\0")
    assert video_id(read_inputs(second)[0]) != video_id(read_inputs(first)[0])


def test_demo_seed_changes_every_seed_of_the_run(tmp_path):
    base, other = Demo(tmp_path / "s0", DemoPlan.quick()), Demo(tmp_path / "s7", DemoPlan.quick(), seed=7)
    assert other.training_flags() == ["--train.seed=7"] and base.training_flags() == ["--train.seed=0"]
    assert Demo(tmp_path / "det", DemoPlan.quick(), deterministic=True).training_flags()[-1] == \
        "--train.deterministic=true"
    assert base.held_scenes != other.held_scenes
    seeds = [[row.split(",")[2] for row in demo.prompts()[0].read_text().splitlines()[1:]] for demo in (base, other)]
    assert seeds[0] != seeds[1]
    spec = dict(clips_per_scene=1, cuts=0, blurry=0, frozen=0, duplicates=0)
    for seed in (0, 7):
        build_corpus(tmp_path / f"corpus{seed}", base.train_scenes[:1], CorpusSpec(**spec, seed=seed), [])
    clips = [next((tmp_path / f"corpus{seed}" / "videos").iterdir()).read_bytes() for seed in (0, 7)]
    assert clips[0] != clips[1]
    with pytest.raises(DemoError, match="--seed 7"):
        Demo(tmp_path / "s7", DemoPlan.quick(), seed=1)


def test_train_deterministic_switches_torch_to_deterministic_kernels_and_back(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)

    def trainer(*flags):
        return Trainer(load_config("debug", [f"--run_dir={tmp_path}", "--train.device=cpu", *flags]))

    try:
        trainer("--train.deterministic=true")
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        trainer()  # the default: torch's fast kernels (a later run in the same process is not affected)
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    finally:
        use_deterministic_algorithms(False)
