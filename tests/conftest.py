import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Fixed intra-op threads so float results do not depend on how busy the machine is."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A random-weight T5 encoder small enough to encode captions in tests."""
    from mugv.models.text.tiny import make_tiny_t5

    return make_tiny_t5(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="session")
def preference_exports(tmp_path_factory):
    """The annotation app's preference exports over tiny clips (tests/preference_shards.py)."""
    from preference_shards import write_exports

    return write_exports(tmp_path_factory.mktemp("export"))
