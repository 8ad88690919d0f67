"""mugv: train MUG-V-style video diffusion transformers end to end."""

__version__ = "0.1.0"  # the package version (pyproject.toml reads it from here)
