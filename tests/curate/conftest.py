"""Fixtures and the `ray` marker for the curation tests."""

from __future__ import annotations

import numpy as np
import pytest
from curate_testing import shot


@pytest.fixture(scope="session")
def shots() -> dict[str, np.ndarray]:
    return {name: shot(seed) for name, seed in (("a", 1), ("b", 2), ("c", 3), ("d", 4))}


def pytest_configure(config):
    config.addinivalue_line("markers", "ray: uses a local Ray instance (a few seconds to start); deselect with -m 'not ray'")
