"""Fixtures and the opt-in `ray` marker for the curation tests."""

from __future__ import annotations

import numpy as np
import pytest
from curate_testing import shot


@pytest.fixture(scope="session")
def shots() -> dict[str, np.ndarray]:
    return {name: shot(seed) for name, seed in (("a", 1), ("b", 2), ("c", 3), ("d", 4))}


def pytest_configure(config):
    config.addinivalue_line("markers", "ray: starts a local Ray instance (20-40 s on 2 cores); opt in with -m ray")


def pytest_collection_modifyitems(config, items):
    """Ray tests are opt-in: they only run when the marker expression names them."""
    if "ray" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="starts a Ray instance; run with -m ray")
    for item in items:
        if item.get_closest_marker("ray") is not None:
            item.add_marker(skip)
