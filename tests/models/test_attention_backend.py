"""train.attention_backend: the SDPA kernel order it asks for, and that it is harmless off CUDA."""

import pytest
import torch
from torch.nn.attention import SDPBackend

from mugv.config import ConfigError, load_config
from mugv.models.attention import attention_backend, backend_priority, describe_backend


@pytest.mark.parametrize("name, first", [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                                         ("efficient", SDPBackend.EFFICIENT_ATTENTION)])
def test_a_named_backend_goes_first_and_math_is_never_tried(name, first):
    order = backend_priority(name)
    assert order[0] == first
    assert SDPBackend.MATH not in order
    assert len(set(order)) == 3


def test_auto_leaves_torch_in_charge_and_cpu_is_untouched():
    assert backend_priority("auto") == []
    with attention_backend("flash", torch.device("cpu")):
        q = torch.randn(1, 2, 5, 8)
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert "cudnn" in describe_backend("cudnn", torch.device("cpu"))


def test_an_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="train.attention_backend"):
        load_config("debug", ["--train.attention_backend=fastest"])
