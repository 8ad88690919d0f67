"""Text encoders for DiT conditioning: T5 v1.1 XXL (MUG-V) and the bundled MiniLM (small models)."""

from mugv.models.text.encoders import (
    AESTHETIC_SUFFIX,
    TEXT_ENCODERS,
    HFTextEncoder,
    TextEmbeddings,
    build_text_encoder,
    minilm_path,
    with_aesthetic,
)

__all__ = [
    "AESTHETIC_SUFFIX",
    "HFTextEncoder",
    "TEXT_ENCODERS",
    "TextEmbeddings",
    "build_text_encoder",
    "minilm_path",
    "with_aesthetic",
]
