import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Fixed intra-op threads so float results do not depend on how busy the machine is."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
