"""`mugv train` killed with SIGKILL at seeded random moments (during a checkpoint save among them)
and rerun with the same command ends exactly where an uninterrupted run does."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from mugv.distributed.checkpoint import read_tensor_set

STEPS = 10


def command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "mugv", "train", "--config", "debug", f"--run_dir={run_dir}",
            f"--train.steps={STEPS}", "--checkpoint.every_steps=2", "--checkpoint.keep_last=2",
            "--logging.progress=false", "--logging.tensorboard=false", "--logging.every_steps=1"]


def start(run_dir: Path) -> subprocess.Popen:
    # one intra-op thread, as in every test: float results must not depend on the machine's load
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command(run_dir), cwd=run_dir.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)


def kill_after_steps(process: subprocess.Popen, steps: int, delay: float) -> str:
    """SIGKILL `delay` seconds after the process has logged `steps` more steps (or ended)."""
    logged = 0
    while logged < steps:
        line = process.stdout.readline()
        if not line:
            break
        logged += line.startswith("step ")
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    return f"{delay:.2f} s after {logged} more steps"


def kill_during_save(process: subprocess.Popen, checkpoints: Path) -> str:
    """SIGKILL while a checkpoint is being written, i.e. while a temporary directory this
    process created exists (one left by an earlier killed run does not count)."""
    started = time.time() - 1.0  # slack for coarse file-system timestamps; earlier runs lasted longer

    def saving() -> bool:
        return any(p.stat().st_mtime >= started for p in checkpoints.glob("step_*.tmp"))

    while process.poll() is None:
        if saving():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return "during a save" if saving() else "just after a save"
        time.sleep(0.001)
    return "never: the run ended first"


def run_to_the_end(run_dir: Path) -> str:
    process = start(run_dir)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_runs_killed_at_random_moments_and_rerun_end_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    straight.mkdir()
    run_to_the_end(straight)

    killed = tmp_path / "killed"
    killed.mkdir()
    moments = random.Random(14)
    log = []
    # past a checkpoint (its steps' metrics must survive), during a save, then anywhere up to 2
    # steps in (from the start-up on); no run gets far enough to finish before its kill
    for kind in ["past a checkpoint", "during a save", "anywhere"]:
        process = start(killed)
        if kind == "during a save":
            log.append(kill_during_save(process, killed / "checkpoints"))
        else:
            steps = moments.randint(3, 4) if kind == "past a checkpoint" else moments.randint(0, 2)
            log.append(kill_after_steps(process, steps, moments.uniform(0.0, 0.4)))
        process.wait(timeout=300)
        assert process.returncode == -signal.SIGKILL, log
    print("killed:", "; ".join(log))  # shown with pytest -rP
    assert "during a save" in log, log
    assert "resumed from" in run_to_the_end(killed), log

    final = f"checkpoints/step_{STEPS:08d}"
    expected, resumed = read_tensor_set(straight / final), read_tensor_set(killed / final)
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), (name, log)
    records = metrics(killed)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1)), log
    assert [r["loss"] for r in records] == [r["loss"] for r in metrics(straight)], log
