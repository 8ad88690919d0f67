"""Preference runs on encoded preference shards, stopped after a checkpoint and resumed
(checkpoint.resume = auto), end bit-identical to an uninterrupted run: weights, LoRA adapters,
optimizer state, EMA, the frozen reference copy, the step generator, the data position and every
step's loss and metrics. Flow-DPO on pairs and Flow-KTO on labelled clips, with each reference
mode (adapters off, frozen copy, precomputed), and one run SIGKILLed in a subprocess."""

import json
import shutil
import signal

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mugv.cli import main
from mugv.config import load_config
from mugv.data.encode import run_encode
from mugv.data.preference import REFERENCE_ERRORS_NAME
from mugv.distributed.checkpoint import read_tensor_set
from mugv.models.registry import build_model
from mugv.train.trainer import Trainer

from killed_runs import kill_after_steps, metrics, run_to_the_end, start
from preference_shards import MISSING_CLIP, encode_options

STEPS = 4  # a checkpoint every 2 steps: stopped during step 3, resumed from step 2
# per-step figures that measure the machine, not the training
TIMINGS = {"step_time", "data_wait", "samples_per_s", "tflops", "memory_gib", "mfu"}


@pytest.fixture(scope="module")
def shards(preference_exports, tiny_t5, tmp_path_factory):
    """Encoded shards per objective: 3 pairs (dpo), 4 labelled clips (kto)."""
    root = tmp_path_factory.mktemp("preference-shards")
    with pytest.warns(UserWarning, match=MISSING_CLIP):
        run_encode(encode_options(preference_exports / "dpo.jsonl", root / "dpo", tiny_t5))
    run_encode(encode_options(preference_exports / "kto.jsonl", root / "kto", tiny_t5))
    return root


@pytest.fixture(scope="module")
def sft_weights(tmp_path_factory):
    """The starting point of a preference run (an SFT checkpoint): debug-model weights with noise
    added, since at its initialisation (zero output layers) no gradient reaches the LoRA adapters."""
    cfg = load_config("debug", ["--model.text_dim=32"])
    torch.manual_seed(1)
    model = build_model(cfg.model)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    path = tmp_path_factory.mktemp("sft") / "sft.safetensors"
    save_file(model.state_dict(), path)
    return path


def overrides(shard_dir, objective: str, reference: str, init_weights) -> list[str]:
    """A tiny preference run: LoRA (with an EMA of the weights) for the adapters-off reference,
    full weights otherwise. KTO takes 2 of its 4 clips per step, DPO 1 of its 3 pairs, so resume
    lands inside an epoch of the shuffled data; batches are loaded ahead in the background (data.prefetch)."""
    lora = ["--lora.rank=2", "--lora.alpha=4", "--ema.decay=0.9"] if reference == "adapters_off" else ["--lora.rank=0"]
    return [f"--data.shards={shard_dir}", "--data.source=shards", "--model.text_dim=32",
            f"--data.batch_size={2 if objective == 'kto' else 1}", f"--train.objective={objective}",
            f"--preference.reference={reference}", "--preference.beta=50", "--preference.sft_weight=0.5",
            "--optim.lr=1e-3", "--optim.warmup_steps=1", "--data.i2v_prob=0.5", f"--checkpoint.init_weights={init_weights}",
            *lora]


def config(run_dir, settings: list[str]):
    return load_config("debug", [*settings, f"--run_dir={run_dir}", f"--train.steps={STEPS}",
                                 "--checkpoint.every_steps=2", "--logging.progress=false",
                                 "--logging.tensorboard=false", "--logging.every_steps=1"])


class StopDuringStep3:
    """A crash after step 2's checkpoint: step 3 is lost and redone by the resumed run."""

    def on_step_end(self, trainer, step_metrics):
        if trainer.step == 3:
            raise KeyboardInterrupt


def training_figures(run_dir) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMINGS} for record in metrics(run_dir)]


def assert_policy_moved(figures: list[dict]) -> None:
    """Every step trained (a gradient), and the policy has left the reference: the equalities can fail."""
    assert all(f["grad_norm"] > 0 for f in figures), figures
    last = figures[-1]
    assert any(last[f"e_theta_{side}"] != last[f"e_ref_{side}"] for side in ("chosen", "rejected") if
               f"e_ref_{side}" in last), last


def assert_states_equal(expected: dict, actual: dict, what: str) -> None:
    assert expected.keys() == actual.keys(), what
    for name, tensor in expected.items():
        if isinstance(tensor, dict):
            assert_states_equal(tensor, actual[name], f"{what}.{name}")
        elif isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, actual[name]), f"{what}.{name}"
        else:
            assert tensor == actual[name], f"{what}.{name}"


def assert_exports_equal(expected_run, actual_run) -> None:
    """What a LoRA run with EMA hands out: tensors and metadata equal (the files' bytes are not: the
    order of the metadata in a safetensors header varies from process to process)."""
    for name in ("lora.safetensors", "ema.safetensors", "lora-peft/adapter_model.safetensors"):
        expected, actual = safe_open(expected_run / name, "pt"), safe_open(actual_run / name, "pt")
        assert expected.metadata() == actual.metadata(), name
        assert_states_equal({k: expected.get_tensor(k) for k in expected.keys()},
                            {k: actual.get_tensor(k) for k in actual.keys()}, name)


@pytest.mark.parametrize("objective", ["dpo", "kto"])
@pytest.mark.parametrize("reference", ["adapters_off", "frozen_copy", "precomputed"])
def test_a_stopped_and_resumed_preference_run_ends_bit_identical(shards, sft_weights, objective, reference, tmp_path):
    shard_dir = shards / objective
    if reference == "precomputed":  # the errors are recorded beside a copy of the shards
        shard_dir = tmp_path / "shards"
        shutil.copytree(shards / objective, shard_dir)
        assert main(["record-reference", "--config", "debug", *overrides(shard_dir, objective, reference, sft_weights),
                     "--logging.progress=false"]) == 0
        assert (shard_dir / REFERENCE_ERRORS_NAME).is_file()
    settings = overrides(shard_dir, objective, reference, sft_weights)
    straight = Trainer(config(tmp_path / "straight", settings))
    straight.fit()

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(tmp_path / "stopped", settings), hooks=(StopDuringStep3(),)).fit()
    resumed = Trainer(config(tmp_path / "stopped", settings))
    history = resumed.fit()

    assert [m["step"] for m in history] == [3, 4]
    figures = training_figures(tmp_path / "straight")
    assert training_figures(tmp_path / "stopped") == figures
    assert {f"{objective}_loss", "reward_accuracy", "e_ref_chosen", "e_ref_rejected"} <= set().union(*figures)
    assert_policy_moved(figures)
    assert_states_equal(straight.model.state_dict(), resumed.model.state_dict(), "model")
    assert_states_equal(straight.optimizer.state_dict(), resumed.optimizer.state_dict(), "optimizer")
    if straight.ema is not None:
        assert_states_equal(straight.ema.state_dict(), resumed.ema.state_dict(), "ema")
    if reference == "frozen_copy":
        assert_states_equal(straight.reference.module.state_dict(), resumed.reference.module.state_dict(), "copy")
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())
    assert resumed.data.state_dict() == straight.data.state_dict()
    if reference == "adapters_off":
        assert_exports_equal(tmp_path / "straight", tmp_path / "stopped")


def test_a_killed_dpo_run_with_lora_and_ema_reruns_to_the_same_end(shards, sft_weights, tmp_path):
    """`mugv train` SIGKILLed past its step-2 checkpoint, then rerun with the same command."""
    settings = overrides(shards / "dpo", "dpo", "adapters_off", sft_weights)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir()
    killed.mkdir()
    run_to_the_end(straight, STEPS, *settings)
    process = start(killed, STEPS, *settings)
    moment = kill_after_steps(process, 3, 0.0)
    process.wait(timeout=300)
    assert process.returncode == -signal.SIGKILL, moment
    assert "resumed from" in run_to_the_end(killed, STEPS, *settings), moment

    final = f"checkpoints/step_{STEPS:08d}"
    for tensor_set in ("model", "optim", "ema"):
        expected, resumed = read_tensor_set(straight / final, tensor_set), read_tensor_set(killed / final, tensor_set)
        assert expected, tensor_set
        assert_states_equal(expected, resumed, tensor_set)
    assert any(".lora_B" in name for name in read_tensor_set(killed / final))
    figures = training_figures(straight)
    assert_policy_moved(figures)
    assert training_figures(killed) == figures
    assert_exports_equal(straight, killed)
    record = json.loads((killed / final / "trainer.json").read_text())
    assert record["data"] == json.loads((straight / final / "trainer.json").read_text())["data"]
