import pytest
import torch

from mugv.models.vae import MUGVideoVAE, VAEConfig


@pytest.fixture(scope="module")
def tiny_vae() -> MUGVideoVAE:
    torch.manual_seed(0)
    return MUGVideoVAE(VAEConfig.from_preset("tiny")).eval()
