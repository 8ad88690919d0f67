"""Helpers of the kill-and-rerun tests: `mugv train` in a subprocess, SIGKILLed at a chosen moment
and rerun with the same command."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def command(run_dir: Path, steps: int, overrides: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "mugv", "train", "--config", "debug", f"--run_dir={run_dir}",
            f"--train.steps={steps}", "--checkpoint.every_steps=2", "--checkpoint.keep_last=2",
            "--logging.progress=false", "--logging.tensorboard=false", "--logging.every_steps=1", *overrides]


def start(run_dir: Path, steps: int, *overrides: str) -> subprocess.Popen:
    """`mugv train --config debug` for `steps` steps (a checkpoint every 2, every step logged), plus `overrides`."""
    # one intra-op thread, as in every test: float results must not depend on the machine's load
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command(run_dir, steps, overrides), cwd=run_dir.parent, env=env, stdout=subprocess.PIPE,
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


def run_to_the_end(run_dir: Path, steps: int, *overrides: str) -> str:
    process = start(run_dir, steps, *overrides)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
