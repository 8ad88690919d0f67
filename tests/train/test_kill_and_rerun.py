"""`mugv train` killed with SIGKILL at seeded random moments (during a checkpoint save among them)
and rerun with the same command ends exactly where an uninterrupted run does."""

import random
import signal

import torch

from mugv.distributed.checkpoint import read_tensor_set

from killed_runs import kill_after_steps, kill_during_save, metrics, run_to_the_end, start

STEPS = 10


def test_runs_killed_at_random_moments_and_rerun_end_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    straight.mkdir()
    run_to_the_end(straight, STEPS)

    killed = tmp_path / "killed"
    killed.mkdir()
    moments = random.Random(14)
    log = []
    # past a checkpoint (its steps' metrics must survive), during a save, then anywhere up to 2
    # steps in (from the start-up on); no run gets far enough to finish before its kill
    for kind in ["past a checkpoint", "during a save", "anywhere"]:
        process = start(killed, STEPS)
        if kind == "during a save":
            log.append(kill_during_save(process, killed / "checkpoints"))
        else:
            steps = moments.randint(3, 4) if kind == "past a checkpoint" else moments.randint(0, 2)
            log.append(kill_after_steps(process, steps, moments.uniform(0.0, 0.4)))
        process.wait(timeout=300)
        assert process.returncode == -signal.SIGKILL, log
    print("killed:", "; ".join(log))  # shown with pytest -rP
    assert "during a save" in log, log
    assert "resumed from" in run_to_the_end(killed, STEPS), log

    final = f"checkpoints/step_{STEPS:08d}"
    expected, resumed = read_tensor_set(straight / final), read_tensor_set(killed / final)
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), (name, log)
    records = metrics(killed)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1)), log
    assert [r["loss"] for r in records] == [r["loss"] for r in metrics(straight)], log
