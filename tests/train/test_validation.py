import pytest

from mugv.config import load_config
from mugv.data.synthetic import SyntheticLatents
from mugv.models.dit.model import MUGDiT
from mugv.train.validation import validation_loss


def test_validation_loss_is_reproducible_and_reports_each_noise_level():
    cfg = load_config("debug")
    batches = [SyntheticLatents(cfg.data, 24, 64, seed=9).next_batch() for _ in range(2)]
    model = MUGDiT(cfg.model)
    a = validation_loss(model, batches, sigmas=(0.2, 0.8))
    b = validation_loss(model, batches, sigmas=(0.2, 0.8))
    assert a == b and set(a) == {"val/loss@0.20", "val/loss@0.80", "val/loss"}
    # the fresh model predicts zero velocity: the loss is E|x0 - noise|^2 ~ 2 at every level
    assert a["val/loss@0.20"] == pytest.approx(2.0, rel=0.15) and a["val/loss"] == pytest.approx(
        (a["val/loss@0.20"] + a["val/loss@0.80"]) / 2
    )
    assert model.training  # the model's mode is restored
